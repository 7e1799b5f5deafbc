import hashlib
import os
import pickle
import shutil

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from radpath.inputs.configuration import default_config
from radpath.pathology import embedding, encoders, feature_files, wsi
from radpath_demo.slides import corrupt_level0_tile, write_synthetic_svs

TISSUE = default_config()["pathology"]["tissue"]
# 112 px at 1 um/px: small tiles keep CPU tests fast; read as 224 px at 0.5 um/px level 0.
TILES = {"patch_size": 112, "mpp": 1.0, "min_tissue_fraction": 0.6, "max_tiles": 0}
EMBEDDING = {
    "encoder": "resnet50_trunc",
    "weights": "random",
    "timm_kwargs": {},
    "ignore_keys": [],
    "batch_size": 4,
    "num_workers": 0,
    "precision": "bf16",
}


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embed")
    info = write_synthetic_svs(folder / "S1.svs", 1600, 1200, 0.5, seed=21)
    coords_h5 = folder / "S1.coords.h5"
    wsi.tile_slide(info.path, "S1", TISSUE, TILES, 0, coords_h5)
    return {"path": info.path, "coords_h5": coords_h5, "folder": folder}


@pytest.fixture(scope="module")
def single_process(slide):
    out = slide["folder"] / "S1.features.h5"
    summary = embedding.embed_slide(
        slide["path"], "S1", slide["coords_h5"], out, EMBEDDING, TILES, device="cpu"
    )
    return summary, out


def test_embed_slide_on_cpu_writes_fp16_features_with_coords(slide, single_process):
    summary, out = single_process
    features, coords, attrs = feature_files.read_features_h5(out)
    expected_coords, _ = wsi.read_coords_h5(slide["coords_h5"])
    assert features.dtype == np.float16
    assert features.shape == (len(expected_coords), 1024)
    assert np.array_equal(coords, expected_coords)
    assert np.isfinite(features).all()
    assert np.ptp(features.astype(np.float32), axis=0).max() > 0  # tiles differ
    assert attrs["encoder"] == "resnet50_trunc"
    assert attrs["feature_dim"] == 1024
    assert attrs["precision"] == ("bf16" if embedding.cpu_has_native_bf16() else "fp32")
    assert attrs["n_skipped"] == 0
    assert attrs["patch_size"] == 112 and attrs["target_mpp"] == 1.0
    assert summary["n_tiles"] == len(expected_coords) and summary["n_skipped"] == 0
    assert summary["tiles_per_s"] > 0
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []


def test_two_workers_open_their_own_handles_and_give_the_same_features(slide, single_process):
    _, reference = single_process
    out = slide["folder"] / "S1.workers.h5"
    cfg = EMBEDDING | {"num_workers": 2}
    embedding.embed_slide(slide["path"], "S1", slide["coords_h5"], out, cfg, TILES, device="cpu")
    np.testing.assert_allclose(
        feature_files.read_features_h5(out)[0].astype(np.float32),
        feature_files.read_features_h5(reference)[0].astype(np.float32),
        rtol=0.02,
        atol=0.02,
    )


class OpenerPidDataset(embedding.TileDataset):
    """Reports, in place of the tile index, the pid that opened the handle it read with."""

    def __getitem__(self, index):
        tile, _, ok = super().__getitem__(index)
        return tile, self._pid, ok


def test_each_worker_reads_with_a_handle_it_opened_itself(slide):
    coords, _ = wsi.read_coords_h5(slide["coords_h5"])
    dataset = OpenerPidDataset(slide["path"], "S1", coords, TILES)
    loader = embedding.tile_loader(dataset, batch_size=1, num_workers=2, pin_memory=False)
    opener_pids = {int(pid) for _, pids, _ in loader for pid in pids}
    assert len(opener_pids) == 2
    assert os.getpid() not in opener_pids
    assert dataset._slide is None  # the parent never opened one


def test_dataset_never_pickles_its_handle(slide):
    coords, _ = wsi.read_coords_h5(slide["coords_h5"])
    dataset = embedding.TileDataset(slide["path"], "S1", coords, TILES)
    tile, index, ok = dataset[0]  # opens a handle in this process
    assert ok and index == 0 and tile.shape == (112, 112, 3) and tile.dtype == torch.uint8
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy._slide is None
    assert torch.equal(copy[0][0], tile)  # the copy opens its own


def test_corrupt_tile_is_skipped_counted_and_recorded(slide, tmp_path):
    coords, attrs = wsi.read_coords_h5(slide["coords_h5"])
    x, y = coords[len(coords) // 2]
    shutil.copy(slide["path"], tmp_path / "bad.svs")
    bx, by, bw, bh = corrupt_level0_tile(tmp_path / "bad.svs", x + 5, y + 5)
    size = attrs["read_size"]
    overlaps = (
        (coords[:, 0] < bx + bw)
        & (coords[:, 0] + size > bx)
        & (coords[:, 1] < by + bh)
        & (coords[:, 1] + size > by)
    )
    assert 1 <= overlaps.sum() < len(coords)
    out = tmp_path / "bad.h5"
    cfg = EMBEDDING | {"num_workers": 2}
    summary = embedding.embed_slide(
        tmp_path / "bad.svs", "S1", slide["coords_h5"], out, cfg, TILES, device="cpu"
    )
    features, kept, stored = feature_files.read_features_h5(out)
    assert summary["n_skipped"] == stored["n_skipped"] == overlaps.sum()
    assert np.array_equal(kept, coords[~overlaps])  # reads after the failure still work
    assert features.shape == (len(coords) - overlaps.sum(), 1024)
    with h5py.File(out) as h5:
        assert np.array_equal(h5["skipped_coords"][:], coords[overlaps])


def test_collate_drops_failed_tiles():
    good = torch.ones((8, 8, 3), dtype=torch.uint8)
    tiles, indices, skipped = embedding.collate_tiles(
        [(good, 0, True), (good * 0, 1, False), (good, 2, True)]
    )
    assert tiles.shape == (2, 8, 8, 3)
    assert indices.tolist() == [0, 2] and skipped.tolist() == [1]
    tiles, indices, skipped = embedding.collate_tiles([(good, 5, False)])
    assert len(tiles) == 0 and len(indices) == 0 and skipped.tolist() == [5]


def test_all_tiles_unreadable_is_an_error(slide, tmp_path):
    coords, _ = wsi.read_coords_h5(slide["coords_h5"])
    outside = tmp_path / "outside.h5"
    _, attrs = wsi.read_coords_h5(slide["coords_h5"])
    # a slide whose only tile sits on a zeroed JPEG tile
    x, y = coords[0]
    shutil.copy(slide["path"], tmp_path / "bad.svs")
    corrupt_level0_tile(tmp_path / "bad.svs", x + 5, y + 5)
    wsi.write_coords_h5(outside, np.array([[x, y]]), attrs)
    with pytest.raises(wsi.SlideError, match=r"slide S1 .*all 1 tiles of .*outside.h5 unreadable"):
        embedding.embed_slide(
            tmp_path / "bad.svs", "S1", outside, tmp_path / "f.h5", EMBEDDING, TILES, device="cpu"
        )


def test_coords_made_with_other_tile_settings_are_rejected(slide, tmp_path):
    with pytest.raises(wsi.SlideError, match=r"slide S1 .*patch_size=112, now 224; re-run tiling"):
        embedding.embed_slide(
            slide["path"],
            "S1",
            slide["coords_h5"],
            tmp_path / "f.h5",
            EMBEDDING,
            TILES | {"patch_size": 224},
            device="cpu",
        )


def test_features_carry_the_encoder_provenance(slide, single_process, tmp_path):
    """The same encoder from a weights file: identical features, and the file's path and
    sha256 in the attributes (beside the ones CLAM/TRIDENT and tile_features read)."""
    _, random_out = single_process
    weights = tmp_path / "trunc.safetensors"
    save_file(encoders.build_encoder("resnet50_trunc", "random", seed=0).model.state_dict(), weights)
    out = tmp_path / "S1.features.h5"
    cfg = EMBEDDING | {"weights": str(weights)}
    embedding.embed_slide(slide["path"], "S1", slide["coords_h5"], out, cfg, TILES, device="cpu")
    assert np.array_equal(
        feature_files.read_features_h5(out)[0], feature_files.read_features_h5(random_out)[0]
    )
    provenance = feature_files.read_encoder_provenance(out)
    assert provenance.pop("precision") in ("bf16", "fp32")  # bf16 where the CPU has it
    assert provenance == {
        "encoder": "resnet50_trunc",
        "timm_name": "resnet50.tv_in1k",
        "timm_kwargs": '{"num_classes": 0}',
        "weights": str(weights.resolve()),
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "pretrained": True,
        "input_size": 0,
        "mean": pytest.approx(list(encoders.IMAGENET_MEAN)),
        "std": pytest.approx(list(encoders.IMAGENET_STD)),
        "feature_dim": 1024,
    }
    with h5py.File(out) as h5:
        for attrs in (h5.attrs, h5["features"].attrs):
            assert set(feature_files.PROVENANCE_KEYS) <= set(attrs)
            assert {"encoder", "feature_dim", "precision", "device", "n_skipped"} <= set(attrs)
            assert attrs["weights_sha256"] == provenance["weights_sha256"]
        tile_attrs = wsi.read_coords_h5(slide["coords_h5"])[1]
        assert tile_attrs and set(tile_attrs) <= set(h5.attrs)
    assert feature_files.read_encoder_provenance(random_out)["weights"] == "random"
    assert feature_files.read_encoder_provenance(random_out)["pretrained"] is False


def test_an_encoder_of_another_tile_size_fails_before_reading_the_slide(slide, tmp_path):
    with pytest.raises(encoders.EncoderError, match=r"encoder uni takes 224 px tiles but .*112"):
        embedding.embed_slide(
            slide["path"], "S1", slide["coords_h5"], tmp_path / "f.h5",
            EMBEDDING | {"encoder": "uni"}, TILES, device="cpu",
        )
    assert not (tmp_path / "f.h5").exists()


def test_jobs_never_go_to_the_hub():
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # set when radpath.pathology.embedding is imported


def test_a_wrong_encoder_fails_every_slide_job_instead_of_excluding_slides(tmp_path):
    """An encoder setting is the run's problem, not a slide's: with on_patient_error exclude
    it must fail the job, not write an exclusion record for every slide of the cohort."""
    from radpath.inputs.runtime import run_item

    out = tmp_path / "features.h5"
    with pytest.raises(encoders.EncoderError, match="neither a registered encoder"):
        run_item("S1", "slide_id", lambda: encoders.build_encoder("no_such_model", "random"),
                 [str(out)], "exclude")
    assert not out.exists()


def test_autocast_precision_per_device():
    cpu = torch.device("cpu")
    native = embedding.cpu_has_native_bf16()
    assert embedding.autocast_dtype("bf16", cpu) == (torch.bfloat16 if native else torch.float32)
    assert embedding.autocast_dtype("fp32", cpu) == torch.float32
    assert embedding.autocast_dtype("fp16", cpu) == torch.float32  # fp16 autocast is GPU only
    with pytest.raises(ValueError, match="unknown precision"):
        embedding.autocast_dtype("int8", cpu)


def test_model_input_is_normalized_channels_last():
    tiles = torch.full((2, 4, 4, 3), 255, dtype=torch.uint8)
    tiles[..., 0] = 0
    mean = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.5, 0.25, 0.5]).view(1, 3, 1, 1) * 255
    x = embedding.to_model_input(tiles, mean, std)
    assert x.shape == (2, 3, 4, 4)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert x[:, 0].unique().tolist() == [-1.0]
    assert x[:, 1].unique().tolist() == [2.0]


def test_pooling_of_tiles_and_patients(tmp_path):
    features = np.array([[1.0, 4.0], [3.0, 0.0]], dtype=np.float16)
    pooled = feature_files.pool_slide_features(features, ["mean", "max", "std"])
    assert pooled["mean"].tolist() == [2.0, 2.0]
    assert pooled["max"].tolist() == [3.0, 4.0]
    assert pooled["std"].tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="unknown pooling"):
        feature_files.pool_slide_features(features, ["median"])

    def write(name, rows):
        path = tmp_path / name
        embedding.write_features_h5(
            path, np.array(rows), np.zeros((len(rows), 2)), np.zeros((0, 2)), {}, {}
        )
        return path

    table = feature_files.patient_embedding_table(
        {
            "P1": [write("a.h5", [[0.0, 0.0]]), write("b.h5", [[3.0, 6.0], [3.0, 6.0]])],
            "P2": [write("c.h5", [[1.0, 1.0]])],
        },
        ["mean", "max"],
    )
    assert list(table.columns) == ["mean_0000", "mean_0001", "max_0000", "max_0001"]
    assert table.index.name == "patient_id"
    assert table.loc["P1"].tolist() == [2.0, 4.0, 3.0, 6.0]  # tiles weigh, not slides
    assert table.loc["P2"].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_native_bf16_is_read_from_the_cpu_flags():
    assert embedding.cpu_has_native_bf16("flags\t: fpu sse avx2 avx512f avx512_bf16\n")
    assert embedding.cpu_has_native_bf16("flags\t: fpu amx_tile amx_bf16\n")
    assert not embedding.cpu_has_native_bf16("flags\t: fpu sse avx2 fma\n")
    assert not embedding.cpu_has_native_bf16("")
