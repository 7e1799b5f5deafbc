"""Tile encoders: a registry of named encoders and strict loading of their weights.

Weights never download in a job: `build_encoder` takes "random" (tests and demos) or a local
file, and always calls timm.create_model with pretrained=False. `stage_hub_weights`, run
once on a machine with network (a login node), fetches the published weights and saves the
encoder's state dict as safetensors for `build_encoder` to load.

Loading is strict: a checkpoint whose keys or shapes do not match the architecture (a UNI
checkpoint given to a plain ViT-L) is an error naming every difference, never a model with
silently re-initialised layers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import timm
import timm.layers
import torch
from safetensors import SafetensorError
from torch import nn

from radpath.inputs.io import atomic_path

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM = "random"
SAFETENSORS_SUFFIX = ".safetensors"
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
LISTED = 5  # names shown per kind of problem in an error message


class EncoderError(ValueError):
    """The configured encoder or its weights cannot be used: a problem of the run's settings,
    so every slide job fails (radpath.inputs.runtime.is_bad_input) instead of excluding every slide."""

    excludes_item = False


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one encoder with timm and feed it tiles.

    timm_kwargs stays JSON-serialisable: layer classes are named ("SwiGLUPacked", "SiLU")
    and resolved only when building. input_size None means any tile size (CNNs).
    identity_modules are replaced by nn.Identity after building (truncation).
    """

    name: str
    timm_name: str
    timm_kwargs: dict
    input_size: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dim: int
    hub_name: str
    ignore_keys: tuple[str, ...] = ()
    identity_modules: tuple[str, ...] = ()
    description: str = ""


_UNI2_H_KWARGS = {
    "img_size": 224,
    "patch_size": 14,
    "depth": 24,
    "num_heads": 24,
    "init_values": 1e-5,
    "embed_dim": 1536,
    "mlp_ratio": 2.66667 * 2,
    "num_classes": 0,
    "no_embed_class": True,
    "mlp_layer": "SwiGLUPacked",
    "act_layer": "SiLU",
    "reg_tokens": 8,
    "dynamic_img_size": True,
}

REGISTRY: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec(
            name="resnet50_trunc",
            timm_name="resnet50.tv_in1k",
            timm_kwargs={"num_classes": 0},
            input_size=None,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            dim=1024,
            hub_name="resnet50.tv_in1k",
            ignore_keys=("layer4.", "fc."),
            identity_modules=("layer4",),
            description="CLAM's ImageNet ResNet50 (torchvision weights) up to layer3, "
            "average pooled",
        ),
        EncoderSpec(
            name="resnet50",
            timm_name="resnet50.tv_in1k",
            timm_kwargs={"num_classes": 0},
            input_size=None,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            dim=2048,
            hub_name="resnet50.tv_in1k",
            ignore_keys=("fc.",),
            description="ImageNet ResNet50 (torchvision weights), average pooled",
        ),
        EncoderSpec(
            name="uni",
            timm_name="vit_large_patch16_224",
            timm_kwargs={
                "img_size": 224,
                "patch_size": 16,
                "init_values": 1e-5,
                "num_classes": 0,
                "dynamic_img_size": True,
            },
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            dim=1024,
            hub_name="hf-hub:MahmoodLab/UNI",
            description="UNI (MahmoodLab), ViT-L/16, CLS token",
        ),
        EncoderSpec(
            name="uni2_h",
            # MahmoodLab's get_encoder names vit_giant_patch14_224; the kwargs set every size,
            # so any ViT/14 base gives the same architecture.
            timm_name="vit_giant_patch14_224",
            timm_kwargs=_UNI2_H_KWARGS,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            dim=1536,
            hub_name="hf-hub:MahmoodLab/UNI2-h",
            description="UNI2-h (MahmoodLab), ViT-H/14 with 8 register tokens, CLS token",
        ),
        EncoderSpec(
            name="gigapath",
            timm_name="vit_giant_patch14_dinov2",
            timm_kwargs={
                "img_size": 224,
                "in_chans": 3,
                "patch_size": 16,
                "embed_dim": 1536,
                "depth": 40,
                "num_heads": 24,
                "init_values": 1e-5,
                "mlp_ratio": 5.33334,
                "num_classes": 0,
            },
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            dim=1536,
            hub_name="hf_hub:prov-gigapath/prov-gigapath",
            description="Prov-GigaPath tile encoder, ViT-g/16 (DINOv2), CLS token",
        ),
    )
}


@dataclass
class Encoder:
    """A feature extractor (eval mode), its input normalization, output size and provenance."""

    name: str
    model: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dim: int
    spec: EncoderSpec
    provenance: dict

    @property
    def pretrained(self) -> bool:
        return self.provenance["weights"] != RANDOM


# ---------------------------------------------------------------------------- specs


def encoder_spec(name: str, timm_kwargs: Mapping | None = None) -> EncoderSpec:
    """The registry entry `name`, or a spec for any timm model name built with timm_kwargs.

    Registered encoders are fixed architectures: timm_kwargs must be empty for them.
    Hub names ("hf-hub:...") are not accepted: timm would fetch their config from the network.
    """
    kwargs = dict(timm_kwargs or {})
    name = str(name)
    if name in REGISTRY:
        if kwargs:
            raise EncoderError(
                f"encoder {name}: a registered encoder takes no timm_kwargs (got "
                f"{sorted(kwargs)}); to change its architecture name the timm model "
                f"{REGISTRY[name].timm_name} instead"
            )
        return REGISTRY[name]
    if not timm.is_model(name):
        raise EncoderError(
            f"encoder {name!r}: neither a registered encoder ({', '.join(REGISTRY)}) "
            "nor a timm model name (timm.list_models())"
        )
    return _generic_spec(name, {"num_classes": 0, **kwargs})


def _generic_spec(name: str, kwargs: dict) -> EncoderSpec:
    """Dim, normalization and input size of a timm model, read from it built on `meta`."""
    spec = EncoderSpec(
        name=name, timm_name=name, timm_kwargs=kwargs, input_size=None,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, dim=0, hub_name=name,
        description=f"timm model {name}",
    )
    try:
        model = instantiate(spec, "meta")
    except (TypeError, ValueError, RuntimeError, AssertionError) as err:
        raise EncoderError(f"encoder {name}: timm cannot build it with {kwargs}: {err}") from err
    data = timm.data.resolve_model_data_config(model)
    dim = getattr(model, "head_hidden_size", None) or model.num_features
    return EncoderSpec(
        name=name, timm_name=name, timm_kwargs=kwargs, input_size=_fixed_input_size(model),
        mean=tuple(data["mean"]), std=tuple(data["std"]), dim=int(dim), hub_name=name,
        description=f"timm model {name}",
    )


def _fixed_input_size(model: nn.Module) -> int | None:
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is not None and getattr(patch_embed, "strict_img_size", False):
        return int(patch_embed.img_size[0])
    return None


def resolve_layer_classes(kwargs: Mapping) -> dict:
    """timm_kwargs with named layer classes (`*_layer`: "SwiGLUPacked", "SiLU") resolved
    from timm.layers or torch.nn; other names stay strings for timm to resolve ("gelu")."""
    resolved = dict(kwargs)
    for key, value in kwargs.items():
        if key.endswith("_layer") and isinstance(value, str):
            found = getattr(timm.layers, value, None) or getattr(nn, value, None)
            if isinstance(found, type | functools.partial):  # SwiGLUPacked is a partial
                resolved[key] = found
    return resolved


def instantiate(
    spec: EncoderSpec,
    device: str | torch.device = "cpu",
    pretrained: bool = False,
    create_model: Callable[..., nn.Module] = timm.create_model,
) -> nn.Module:
    """The spec's architecture: timm `timm_name` (or `hub_name` when pretrained), truncated."""
    model_name = spec.hub_name if pretrained else spec.timm_name
    with torch.device(device):
        model = create_model(
            model_name, pretrained=pretrained, **resolve_layer_classes(spec.timm_kwargs)
        )
    for module in spec.identity_modules:
        setattr(model, module, nn.Identity())
    return model


# ---------------------------------------------------------------------------- building


def build_encoder(
    name: str,
    weights: str | os.PathLike,
    timm_kwargs: Mapping | None = None,
    ignore_keys: Iterable[str] = (),
    seed: int = 0,
) -> Encoder:
    """Encoder `name` with `weights`: "random" (seeded init: tests and demos only) or a local
    .safetensors / torch state dict file, loaded strictly.

    Checkpoint keys starting with the spec's or the user's `ignore_keys` are dropped first;
    any other missing, unexpected or mis-shaped key raises EncoderError.
    """
    spec = encoder_spec(name, timm_kwargs)
    if str(weights).strip() == RANDOM:
        log.warning(
            "encoder %s: RANDOM weights (seed %d): features carry no pathology; "
            "for tests and demos only",
            spec.name, seed,
        )
        model = _seeded_model(spec, seed)
        provenance = encoder_provenance(spec, RANDOM, "")
    else:
        path = weights_path(spec, weights)
        state = read_state_dict(path, spec.name)
        model = load_strict(spec, state, path, ignore_keys, seed)
        provenance = encoder_provenance(spec, str(path), sha256_file(path))
    return Encoder(
        name=spec.name, model=model.eval(), mean=spec.mean, std=spec.std, dim=spec.dim,
        spec=spec, provenance=provenance,
    )


def _seeded_model(spec: EncoderSpec, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return instantiate(spec, "cpu")


def weights_path(spec: EncoderSpec, weights: str | os.PathLike) -> Path:
    """The absolute path of a local weights file; EncoderError if absent or of unknown type."""
    if weights is None or not str(weights).strip():
        raise EncoderError(
            f"encoder {spec.name}: no weights given: use {RANDOM!r} or a local weights file"
        )
    path = Path(weights).expanduser().resolve()
    if not path.is_file():
        raise EncoderError(f"encoder {spec.name}: weights file {path} not found")
    if path.suffix not in (SAFETENSORS_SUFFIX, *STATE_DICT_SUFFIXES):
        raise EncoderError(
            f"encoder {spec.name}: weights {path}: unknown file type {path.suffix!r} "
            f"(use {SAFETENSORS_SUFFIX} or {', '.join(STATE_DICT_SUFFIXES)})"
        )
    return path


def read_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or torch.load(weights_only), unwrapped from a training
    checkpoint ("state_dict", "model", "model_state_dict") and without DDP's "module."."""
    try:
        if path.suffix == SAFETENSORS_SUFFIX:
            state = safetensors.torch.load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError, SafetensorError) as err:
        message = str(err).replace("\n", " ")
        raise EncoderError(f"encoder {name}: weights {path} unreadable: {message}") from err
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(
        isinstance(value, torch.Tensor) for value in state.values()
    ):
        raise EncoderError(f"encoder {name}: weights {path} hold no state dict of tensors")
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_strict(
    spec: EncoderSpec,
    state: Mapping[str, torch.Tensor],
    path: Path,
    ignore_keys: Iterable[str] = (),
    seed: int = 0,
) -> nn.Module:
    """The spec's model holding exactly `state` (minus ignored keys), else EncoderError.

    The model is built on the meta device and takes the file's tensors (assign=True): no
    random init of a billion parameters only to overwrite them.
    """
    model = instantiate(spec, "meta")
    expected = model.state_dict()
    if isinstance(ignore_keys, str):  # one prefix, not its characters
        ignore_keys = (ignore_keys,)
    ignored = (*spec.ignore_keys, *ignore_keys)
    state = {key: value for key, value in state.items() if not key.startswith(ignored)}
    check_fit(spec, state, expected, path)
    state = {key: value.to(expected[key].dtype) for key, value in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        # buffers computed at init and never saved (rotary tables): build for real
        model = _seeded_model(spec, seed)
        model.load_state_dict(state, strict=True)
    return model


def check_fit(
    spec: EncoderSpec,
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    path: Path,
) -> None:
    """EncoderError (one line) listing missing, unexpected and mis-shaped keys, if any."""
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    problems = [
        _counted(len(missing), "missing key", _key_patterns(missing)),
        _counted(len(unexpected), "unexpected key", _key_patterns(unexpected)),
        _counted(len(mismatched), "shape mismatch", mismatched, plural="es"),
    ]
    problems = [problem for problem in problems if problem]
    if not problems:
        return
    hint = (
        "; if these keys are a head the encoder does not use, list their prefixes in "
        "pathology.embedding.ignore_keys"
        if unexpected
        else "; was the file saved from this architecture?"
    )
    raise EncoderError(
        f"encoder {spec.name}: weights {path} do not fit {spec.timm_name}: "
        f"{'; '.join(problems)}{hint}"
    )


_INDEX = re.compile(r"(?<![^.])\d+(?![^.])")  # a whole dotted component that is a number


def _key_patterns(keys: list[str]) -> list[str]:
    """The real key names, those that differ only in one block number grouped with the
    numbers listed: `blocks.[0-23].ls1.gamma (24 keys)`; keys that differ in several
    numbers as their first and last: `layer1.0.conv3.weight ... layer4.2.conv3.weight
    (12 keys)`."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(_INDEX.sub("*", key), []).append(key)
    described = []
    for pattern, members in groups.items():
        if len(members) == 1:
            described.append(members[0])
            continue
        numbers = [_INDEX.findall(key) for key in members]
        if all(len(found) == 1 for found in numbers):
            listed = _ranges(sorted(int(found[0]) for found in numbers))
            described.append(f"{pattern.replace('*', f'[{listed}]')} ({len(members)} keys)")
        else:
            described.append(f"{members[0]} ... {members[-1]} ({len(members)} keys)")
    return described


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    parts, start = [], numbers[0]
    for previous, current in zip(numbers, [*numbers[1:], None], strict=True):
        if current != previous + 1:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
            start = current
    return ",".join(parts)


def _counted(n: int, noun: str, items: list[str], plural: str = "s") -> str:
    if n == 0:
        return ""
    shown = ", ".join(items[:LISTED])
    more = f", ... +{len(items) - LISTED} more" if len(items) > LISTED else ""
    return f"{n} {noun}{plural if n != 1 else ''} ({shown}{more})"


# ---------------------------------------------------------------------------- provenance


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def encoder_provenance(spec: EncoderSpec, weights: str, sha256: str) -> dict:
    """What made the features: stored as features.h5 attributes (see tile_features)."""
    return {
        "encoder": spec.name,
        "timm_name": spec.timm_name,
        "timm_kwargs": json.dumps(spec.timm_kwargs, sort_keys=True, default=_class_name),
        "weights": weights,
        "weights_sha256": sha256,
        "pretrained": weights != RANDOM,
        "input_size": spec.input_size or 0,
        "mean": [float(v) for v in spec.mean],
        "std": [float(v) for v in spec.std],
        "feature_dim": spec.dim,
    }


def _class_name(value) -> str:
    return getattr(value, "__name__", None) or repr(value)


# ---------------------------------------------------------------------------- staging


def stage_hub_weights(
    name: str,
    out_path: str | os.PathLike,
    timm_kwargs: Mapping | None = None,
    create_model: Callable[..., nn.Module] = timm.create_model,
) -> dict:
    """Download `name`'s published weights and save the encoder's state dict as safetensors.

    Needs network (run it on a login node, never in a job); gated models (UNI, GigaPath)
    also need an accepted licence and HF_TOKEN. The file is written atomically, then loaded
    back strictly with build_encoder; returns its provenance. `create_model` is timm's
    (replaceable so tests need no network).
    """
    spec = encoder_spec(name, timm_kwargs)
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        log.warning("HF_HUB_OFFLINE is set: %s comes from the local cache or fails", spec.hub_name)
    log.info("encoder %s: fetching %s", spec.name, spec.hub_name)
    model = instantiate(spec, "cpu", pretrained=True, create_model=create_model)
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    del model
    with atomic_path(out_path) as tmp:
        safetensors.torch.save_file(
            state, str(tmp), metadata={"encoder": spec.name, "source": spec.hub_name}
        )
    del state
    return build_encoder(name, out_path, timm_kwargs).provenance
