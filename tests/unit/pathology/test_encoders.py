"""Encoder registry and strict weight loading, with real timm models on CPU (no network)."""

import hashlib
import json
import logging

import pytest
import safetensors.torch
import timm
import torch
import torchvision
from torch import nn

from radpath.pathology import encoders, feature_files
from radpath.pathology.encoders import EncoderError, build_encoder, encoder_spec

PUBLISHED = {  # name: (timm name, dim, input size, hub name)
    "resnet50_trunc": ("resnet50.tv_in1k", 1024, None, "resnet50.tv_in1k"),
    "resnet50": ("resnet50.tv_in1k", 2048, None, "resnet50.tv_in1k"),
    "uni": ("vit_large_patch16_224", 1024, 224, "hf-hub:MahmoodLab/UNI"),
    "uni2_h": ("vit_giant_patch14_224", 1536, 224, "hf-hub:MahmoodLab/UNI2-h"),
    "gigapath": ("vit_giant_patch14_dinov2", 1536, 224, "hf_hub:prov-gigapath/prov-gigapath"),
}


def features(encoder_or_model, size: int = 64, seed: int = 0) -> torch.Tensor:
    model = getattr(encoder_or_model, "model", encoder_or_model)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return model.eval()(x)


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_registered_encoder_builds_on_meta_with_its_dim(name):
    spec = encoder_spec(name)
    assert (spec.timm_name, spec.dim, spec.input_size, spec.hub_name) == PUBLISHED[name]
    assert spec.mean == encoders.IMAGENET_MEAN and spec.std == encoders.IMAGENET_STD
    json.dumps(spec.timm_kwargs)  # config-shaped: layer classes are named, not objects
    model = encoders.instantiate(spec, "meta")
    out = model(torch.empty(2, 3, spec.input_size or 224, spec.input_size or 224, device="meta"))
    assert out.shape == (2, spec.dim)


def test_registry_holds_the_published_encoders():
    assert set(encoders.REGISTRY) >= set(PUBLISHED)


def test_uni2_h_layer_classes_are_resolved_only_when_building():
    kwargs = encoders.resolve_layer_classes(encoder_spec("uni2_h").timm_kwargs)
    assert kwargs["mlp_layer"] is timm.layers.SwiGLUPacked
    assert kwargs["act_layer"] is nn.SiLU
    assert encoder_spec("uni2_h").timm_kwargs["mlp_layer"] == "SwiGLUPacked"


def test_any_timm_name_gets_a_spec_from_the_model():
    cnn = encoder_spec("resnet18")
    assert (cnn.dim, cnn.input_size, cnn.hub_name) == (512, None, "resnet18")
    assert cnn.mean == pytest.approx(encoders.IMAGENET_MEAN)
    assert cnn.timm_kwargs == {"num_classes": 0}
    vit = encoder_spec("vit_tiny_patch16_224", {"img_size": 112})
    assert (vit.dim, vit.input_size, vit.mean) == (192, 112, (0.5, 0.5, 0.5))
    assert vit.timm_kwargs == {"num_classes": 0, "img_size": 112}
    encoder = build_encoder("resnet18", "random")
    assert features(encoder).shape == (2, 512)


def test_unknown_encoder_lists_the_registered_ones():
    for name in ("no_such_model_xyz", "hf-hub:MahmoodLab/UNI"):  # a hub name needs network
        with pytest.raises(EncoderError) as excinfo:
            encoder_spec(name)
        message = one_line_error(excinfo)
        assert all(registered in message for registered in encoders.REGISTRY)
    assert issubclass(EncoderError, ValueError) and EncoderError.excludes_item is False


def test_registered_encoders_take_no_timm_kwargs_and_bad_kwargs_are_errors():
    with pytest.raises(EncoderError, match=r"encoder uni: a registered encoder takes no timm"):
        encoder_spec("uni", {"img_size": 256})
    assert encoder_spec("uni", {}) is encoders.REGISTRY["uni"]
    with pytest.raises(EncoderError, match=r"encoder resnet18: timm cannot build it"):
        encoder_spec("resnet18", {"no_such_argument": 1})


# ---------------------------------------------------------------------------- random


def test_random_weights_are_seeded_and_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="radpath.pathology.encoders"):
        a = build_encoder("resnet50_trunc", "random", seed=3)
    b = build_encoder("resnet50_trunc", "random", seed=3)
    c = build_encoder("resnet50_trunc", "random", seed=4)
    assert "RANDOM weights" in caplog.text
    assert torch.equal(features(a), features(b))
    assert not torch.equal(features(a), features(c))
    assert features(a).shape == (2, 1024) and a.dim == 1024 and not a.pretrained
    assert a.provenance["weights"] == "random" and a.provenance["weights_sha256"] == ""
    assert a.provenance["input_size"] == 0


# ---------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def trunc_source():
    return build_encoder("resnet50_trunc", "random", seed=11)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_saved_weights_load_to_identical_features_with_provenance(trunc_source, tmp_path, suffix):
    state = trunc_source.model.state_dict()
    path = tmp_path / f"trunc{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(state, path)
    else:  # a DDP training checkpoint
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = build_encoder("resnet50_trunc", path, seed=99)
    assert torch.equal(features(loaded), features(trunc_source))
    assert loaded.pretrained
    provenance = loaded.provenance
    assert provenance["weights"] == str(path.resolve())
    assert provenance["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert provenance["encoder"] == "resnet50_trunc"
    assert provenance["timm_name"] == "resnet50.tv_in1k"
    assert json.loads(provenance["timm_kwargs"]) == {"num_classes": 0}
    assert provenance["feature_dim"] == 1024 and provenance["input_size"] == 0
    assert provenance["mean"] == list(encoders.IMAGENET_MEAN)
    assert set(provenance) | {"precision"} == set(feature_files.PROVENANCE_KEYS)


def test_full_torchvision_resnet50_loads_into_resnet50_trunc(tmp_path):
    torch.manual_seed(5)
    full = torchvision.models.resnet50(weights=None).eval()
    path = tmp_path / "resnet50-imagenet.pth"
    torch.save(full.state_dict(), path)  # with layer4.* and fc.*: ignored by the spec
    trunc = build_encoder("resnet50_trunc", path)
    for key, value in trunc.model.state_dict().items():
        assert torch.equal(value, full.state_dict()[key]), key
    full.layer4, full.fc = nn.Identity(), nn.Identity()
    torch.testing.assert_close(features(trunc), features(full))


def test_user_ignore_keys_let_a_checkpoint_with_a_head_load(tmp_path):
    torch.manual_seed(6)
    classifier = timm.create_model("resnet18", num_classes=7).eval()
    path = tmp_path / "finetuned.pth"
    torch.save(classifier.state_dict(), path)
    with pytest.raises(EncoderError) as excinfo:
        build_encoder("resnet18", path)
    message = one_line_error(excinfo)
    assert "2 unexpected keys (fc.weight, fc.bias)" in message
    assert "pathology.embedding.ignore_keys" in message
    encoder = build_encoder("resnet18", path, ignore_keys=["fc."])
    classifier.reset_classifier(0)
    assert torch.equal(features(encoder), features(classifier))


def test_weights_of_another_architecture_list_missing_and_mismatched_keys(tmp_path):
    path = tmp_path / "resnet18.safetensors"
    safetensors.torch.save_file(build_encoder("resnet18", "random").model.state_dict(), path)
    with pytest.raises(EncoderError) as excinfo:
        build_encoder("resnet50_trunc", path)
    message = one_line_error(excinfo)
    assert message.startswith(
        f"encoder resnet50_trunc: weights {path} do not fit resnet50.tv_in1k: "
    )
    assert "missing keys (" in message and "layer1.[0-2].conv3.weight (3 keys)" in message
    assert "shape mismatches (" in message
    assert "layer1.0.conv1.weight: file (64, 64, 3, 3) vs model (64, 64, 1, 1)" in message


def test_missing_or_unknown_weights_files_name_the_path(tmp_path):
    absent = tmp_path / "absent.safetensors"
    with pytest.raises(EncoderError, match=f"encoder uni: weights file {absent} not found"):
        build_encoder("uni", absent)
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"")
    with pytest.raises(EncoderError, match=r"weights\.npz: unknown file type '\.npz'"):
        build_encoder("resnet18", odd)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(EncoderError, match=r"garbage\.safetensors unreadable"):
        build_encoder("resnet18", garbage)
    with pytest.raises(EncoderError, match="no weights given"):
        build_encoder("resnet18", "")


# ---------------------------------------------------------------------------- UNI


@pytest.fixture(scope="module")
def uni_file(tmp_path_factory):
    """The real UNI architecture with seeded random values, saved as the hub would (1.2 GB)."""
    source = build_encoder("uni", "random", seed=1).model
    path = tmp_path_factory.mktemp("uni") / "uni.safetensors"
    safetensors.torch.save_file(source.state_dict(), path)
    yield source, path
    path.unlink()


def test_uni_weights_round_trip_strictly(uni_file):
    source, path = uni_file
    loaded = build_encoder("uni", path)
    assert torch.equal(features(loaded, size=224), features(source, size=224))
    assert loaded.provenance["input_size"] == 224 and loaded.dim == 1024


def test_uni_weights_in_a_plain_vit_large_are_rejected(uni_file):
    _, path = uni_file
    with pytest.raises(EncoderError) as excinfo:
        build_encoder("vit_large_patch16_224", path)
    message = one_line_error(excinfo)
    assert message.startswith(
        f"encoder vit_large_patch16_224: weights {path} do not fit vit_large_patch16_224: "
        "48 unexpected keys (blocks.[0-23].ls1.gamma (24 keys), blocks.[0-23].ls2.gamma (24 keys))"
    )
    assert "missing" not in message and "mismatch" not in message


def test_shape_mismatch_names_both_shapes(uni_file):
    _, path = uni_file
    with pytest.raises(EncoderError) as excinfo:
        build_encoder("vit_large_patch16_224", path, {"init_values": 1e-5, "img_size": 256})
    message = one_line_error(excinfo)
    assert "1 shape mismatch (pos_embed: file (1, 197, 1024) vs model (1, 257, 1024))" in message
    assert "unexpected" not in message and "missing" not in message


# ---------------------------------------------------------------------------- staging


def test_stage_hub_weights_saves_what_build_encoder_loads(tmp_path):
    """Only the download is replaced: the hook builds the full hub architecture (layer4 and
    all) with seeded values where timm would fetch the published ones."""
    calls = []

    def offline_create_model(model_name, pretrained, **kwargs):
        calls.append((model_name, pretrained))
        torch.manual_seed(8)
        return timm.create_model(model_name, pretrained=False, **kwargs)

    out = tmp_path / "weights" / "resnet50_trunc.safetensors"
    provenance = encoders.stage_hub_weights("resnet50_trunc", out, create_model=offline_create_model)
    assert calls == [("resnet50.tv_in1k", True)]
    assert sorted(p.name for p in out.parent.iterdir()) == ["resnet50_trunc.safetensors"]
    saved = safetensors.torch.load_file(out)
    assert not any(key.startswith(("layer4.", "fc.")) for key in saved)  # the encoder only
    assert provenance["weights"] == str(out.resolve())
    assert provenance["weights_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    hub_model = offline_create_model("resnet50.tv_in1k", True, num_classes=0)
    hub_model.layer4 = nn.Identity()
    assert torch.equal(features(build_encoder("resnet50_trunc", out)), features(hub_model))
