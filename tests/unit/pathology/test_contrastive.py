"""PathoSig contrastive clustering with real torch on CPU: losses against explicit formulas,
batched augmentation, training with checkpoints and bit-identical resume after a kill,
cluster purity on tiles of known tissue patterns, and slide assignment end to end."""

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import safetensors.torch
import skimage.color
import torch

from radpath.inputs.configuration import default_config
from radpath.pathology import contrastive as cc
from radpath.pathology import wsi
from radpath.pathology.encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderError,
    build_encoder,
    sha256_file,
)
from radpath_demo.slides import (
    TISSUE_PATTERNS,
    corrupt_level0_tile,
    pattern_tile,
    write_synthetic_svs,
)

TILE_PX = 64  # pattern tiles: 64 um at 1 um/px
TILES_PER_PATTERN = 40
# Small enough for CPU tests: a 5M-parameter ResNet at 32 px. A frozen *random* backbone
# gives features too alike to cluster, so its last stage is trained (purity 1.0 in 6 epochs).
SMALL = {
    "backbone": "resnet10t",
    "train_last_block": True,
    "n_clusters": len(TISSUE_PATTERNS),
    "instance_dim": 32,
    "epochs": 6,
    "batch_size": 32,
    "input_size": 32,
    "precision": "fp32",
}
TINY = SMALL | {"train_last_block": False, "epochs": 2, "batch_size": 8}
TISSUE = default_config()["pathology"]["tissue"]
TILES = {"patch_size": 64, "mpp": 1.0, "min_tissue_fraction": 0.6, "max_tiles": 0}
TIMING_KEYS = ("seconds", "tiles_per_s")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One thread: reproducible sums, and no spinning threads fighting over 2 shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pattern_tiles() -> tuple[np.ndarray, np.ndarray]:
    """(uint8 tiles (n, 64, 64, 3), pattern index per tile), TILES_PER_PATTERN per pattern."""
    tiles, labels = [], []
    for label, pattern in enumerate(TISSUE_PATTERNS):
        for i in range(TILES_PER_PATTERN):
            tiles.append(pattern_tile(pattern, TILE_PX, 1.0, seed=1000 * label + i))
            labels.append(label)
    return np.stack(tiles), np.asarray(labels)


@pytest.fixture(scope="module")
def trained(pattern_tiles, tmp_path_factory):
    """SMALL trained on the pattern tiles; the checkpoint files seen after every epoch."""
    checkpoint_dir = tmp_path_factory.mktemp("checkpoints")
    seen_after_epoch = []

    def record(row):
        seen_after_epoch.append((row["epoch"], sorted(p.name for p in checkpoint_dir.iterdir())))

    threads = torch.get_num_threads()  # set up before the one_torch_thread fixture runs
    try:
        result = cc.train_clustering(
            pattern_tiles[0], SMALL, checkpoint_dir, "cpu", seed=0, threads=1, progress=record
        )
    finally:
        torch.set_num_threads(threads)
    return result, seen_after_epoch, checkpoint_dir


def batches_of(tiles: np.ndarray, size: int = 64):
    """(tiles, indices, skipped) batches, as radpath.pathology.embedding.tile_loader yields them."""
    for start in range(0, len(tiles), size):
        indices = torch.arange(start, min(start + size, len(tiles)))
        skipped = torch.empty(0, dtype=torch.int64)
        yield torch.from_numpy(tiles[start : start + size]), indices, skipped


def purity(clusters: np.ndarray, labels: np.ndarray) -> float:
    """Sum over clusters of their majority pattern's count, over all tiles."""
    return sum(np.bincount(labels[clusters == c]).max() for c in np.unique(clusters)) / len(labels)


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------- losses


def reference_nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> float:
    """NT-Xent written out sample by sample (SimCLR eq. 1), cosine similarity."""
    rows = [r.double() for r in (*a, *b)]
    n = len(a)

    def sim(i, j):
        return float(rows[i] @ rows[j] / (rows[i].norm() * rows[j].norm())) / temperature

    losses = []
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        denominator = sum(math.exp(sim(i, k)) for k in range(2 * n) if k != i)
        losses.append(-math.log(math.exp(sim(i, positive)) / denominator))
    return sum(losses) / len(losses)


def reference_entropy(p: torch.Tensor) -> float:
    usage = p.double().sum(0) / p.double().sum()
    return -sum(float(q) * math.log(float(q)) for q in usage)


def test_instance_loss_is_nt_xent_over_both_views():
    generator = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(2, 6, 5, generator=generator)
    for temperature in (0.5, 1.0):
        loss = cc.instance_contrastive_loss(z_a, z_b, temperature)
        assert loss.item() == pytest.approx(reference_nt_xent(z_a, z_b, temperature), rel=1e-5)


def test_cluster_loss_is_nt_xent_over_columns_minus_usage_entropy():
    generator = torch.Generator().manual_seed(1)
    p_a, p_b = torch.softmax(torch.randn(2, 9, 4, generator=generator), dim=-1)
    loss, parts = cc.cluster_contrastive_loss(p_a, p_b, 1.0, entropy_weight=0.7)
    contrastive = reference_nt_xent(p_a.T, p_b.T, 1.0)
    entropy = reference_entropy(p_a) + reference_entropy(p_b)
    assert parts["contrastive"].item() == pytest.approx(contrastive, rel=1e-5)
    assert parts["entropy"].item() == pytest.approx(entropy / 2, rel=1e-5)
    assert loss.item() == pytest.approx(contrastive + 0.7 * (2 * math.log(4) - entropy), rel=1e-5)


def test_cluster_loss_prefers_confident_consistent_balanced_assignments():
    n_clusters, per_cluster = 3, 4
    truth = torch.arange(n_clusters).repeat_interleave(per_cluster)
    confident = torch.full((len(truth), n_clusters), 0.01)
    confident[torch.arange(len(truth)), truth] = 0.98
    uniform = torch.full_like(confident, 1 / n_clusters)
    collapsed = torch.full_like(confident, 0.01)
    collapsed[:, 0] = 0.98
    inconsistent = confident[torch.randperm(len(truth), generator=torch.Generator().manual_seed(2))]

    def loss(p_a, p_b):
        return cc.cluster_contrastive_loss(p_a, p_b, 1.0)[0].item()

    best = loss(confident, confident)
    assert best < loss(uniform, uniform)
    assert best < loss(collapsed, collapsed)
    assert best < loss(confident, inconsistent)
    # uniform use of the clusters costs no entropy penalty; collapse costs 2 log K
    assert loss(uniform, uniform) == pytest.approx(math.log(2 * n_clusters - 1), rel=1e-6)
    penalty = loss(collapsed, collapsed) - cc.cluster_contrastive_loss(
        collapsed, collapsed, 1.0, entropy_weight=0.0
    )[0].item()
    expected = 2 * (math.log(n_clusters) - reference_entropy(collapsed))
    assert penalty == pytest.approx(expected, rel=1e-5) and penalty > 0


def test_entropy_term_rewards_spread_cluster_use():
    generator = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(16, 5, generator=generator) * 3, dim=1)
    plain, parts = cc.cluster_contrastive_loss(p, p, 1.0, entropy_weight=0.0)
    weighted, _ = cc.cluster_contrastive_loss(p, p, 1.0, entropy_weight=2.0)
    assert parts["entropy"].item() < math.log(5)
    # the term subtracts the entropies (plus a constant): higher entropy, lower loss
    assert weighted.item() - plain.item() == pytest.approx(
        2.0 * 2 * (math.log(5) - parts["entropy"].item()), rel=1e-5
    )
    assert cc.cluster_usage_entropy(torch.full((7, 5), 0.2)).item() == pytest.approx(math.log(5))


# ---------------------------------------------------------------------------- augmentation


def test_augmentation_shape_dtype_device_and_normalisation(pattern_tiles):
    tiles = torch.from_numpy(pattern_tiles[0][:6])
    augment = cc.TileAugmentation(40, IMAGENET_MEAN, IMAGENET_STD)
    views = augment(tiles, torch.Generator().manual_seed(0))
    assert views.shape == (6, 3, 40, 40)
    assert views.dtype == torch.float32 and views.device == tiles.device
    assert torch.isfinite(views).all()
    low = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))
    high = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))
    assert views.min() >= low - 1e-4 and views.max() <= high + 1e-4


def test_augmentation_is_reproducible_from_the_generator_alone(pattern_tiles):
    tiles = torch.from_numpy(pattern_tiles[0][::20])
    augment = cc.TileAugmentation(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    first = augment(tiles, torch.Generator().manual_seed(11))
    assert torch.equal(first, augment(tiles, torch.Generator().manual_seed(11)))
    assert not torch.allclose(first, augment(tiles, torch.Generator().manual_seed(12)))
    generator = torch.Generator().manual_seed(11)
    view_a, view_b = augment(tiles, generator), augment(tiles, generator)
    assert torch.equal(view_a, first) and not torch.allclose(view_a, view_b)


def test_without_crop_or_jitter_a_view_is_a_flip_or_rotation_of_the_tile(pattern_tiles):
    tiles = torch.from_numpy(pattern_tiles[0][::10, :32, :32])  # tile size = input size
    augment = cc.TileAugmentation(
        32, IMAGENET_MEAN, IMAGENET_STD, crop_scale=(1, 1), crop_ratio=(1, 1), hed_sigma=0
    )
    views = augment(tiles, torch.Generator().manual_seed(4))
    plain = cc.resize_and_normalize(tiles, 32, IMAGENET_MEAN, IMAGENET_STD)
    seen = set()
    for view, original in zip(views, plain, strict=True):
        symmetries = {
            (k, flip): torch.rot90(original.flip(-1) if flip else original, k, dims=(-2, -1))
            for k in range(4)
            for flip in (False, True)
        }
        matches = [key for key, image in symmetries.items() if torch.allclose(view, image, 0, 1e-5)]
        assert matches, "a view is not a dihedral transform of its tile"
        seen.add(matches[0])
    assert len(seen) > 1  # the flips and rotations are random


def test_hed_round_trip_and_agreement_with_skimage():
    rgb = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    rgb = rgb * 0.98 + 0.01
    hed = cc.rgb_to_hed(rgb)
    torch.testing.assert_close(cc.hed_to_rgb(hed), rgb, atol=1e-10, rtol=1e-8)
    reference = skimage.color.rgb2hed(rgb.permute(0, 2, 3, 1).numpy())  # clips negatives
    np.testing.assert_allclose(
        hed.clamp_min(0).permute(0, 2, 3, 1).numpy(), reference, atol=1e-10, rtol=1e-8
    )
    back = skimage.color.hed2rgb(hed.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(cc.hed_to_rgb(hed).permute(0, 2, 3, 1).numpy(), back, atol=1e-10)


def test_hed_jitter_changes_colour_but_not_much(pattern_tiles):
    tiles = torch.from_numpy(pattern_tiles[0][::20, :32, :32])
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    still = dict(crop_scale=(1, 1), crop_ratio=(1, 1))
    plain = cc.TileAugmentation(32, mean, std, hed_sigma=0, **still)
    jittered = cc.TileAugmentation(32, mean, std, hed_sigma=0.05, **still)
    # same generator seed: same flips and rotations, only the stain jitter differs
    a = plain(tiles, torch.Generator().manual_seed(6))
    b = jittered(tiles, torch.Generator().manual_seed(6))
    difference = (a - b).abs().mean(dim=(1, 2, 3))
    assert (difference > 1e-3).all() and (difference < 0.1).all()


def test_resize_and_normalize_is_deterministic_and_normalises():
    tiles = torch.full((2, 48, 48, 3), 128, dtype=torch.uint8)
    x = cc.resize_and_normalize(tiles, 24, (0.5, 0.5, 0.5), (0.5, 0.25, 0.1))
    assert x.shape == (2, 3, 24, 24)
    expected = torch.tensor([128 / 255 - 0.5]) / torch.tensor([0.5, 0.25, 0.1])
    torch.testing.assert_close(x[0, :, 5, 5], expected, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------- network


def test_frozen_backbone_stays_in_eval_mode_and_gets_no_gradients():
    encoder = build_encoder("resnet10t", "random", seed=0)
    net = cc.ContrastiveClusteringNet(encoder, n_clusters=3, instance_dim=8).train()
    assert not any(p.requires_grad for p in net.backbone.parameters())
    assert net.training and net.instance_head.training and not net.backbone.training
    z, p = net(torch.rand(4, 3, 32, 32))
    assert z.shape == (4, 8) and p.shape == (4, 3)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(p.sum(dim=1), torch.ones(4))
    (z.sum() + p[:, 0].sum()).backward()
    assert all(p.grad is None for p in net.backbone.parameters())
    assert net.instance_head[0].weight.grad is not None
    assert all(key.startswith(("instance_head.", "cluster_head.")) for key in net.trainable_keys())
    probabilities = net.cluster_probabilities(torch.ones(2, 3, 32, 32))
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(2))


def test_last_block_of_a_resnet_or_vit_trains_and_others_are_refused():
    resnet = cc.ContrastiveClusteringNet(
        build_encoder("resnet10t", "random"), 3, 8, train_last_block=True
    ).train()
    assert resnet.trainable_blocks == ("layer4",)
    trainable = resnet.backbone.named_parameters()
    assert {name.split(".")[0] for name, p in trainable if p.requires_grad} == {"layer4"}
    assert resnet.backbone.layer4.training and not resnet.backbone.layer3.training
    assert "backbone.layer4.0.bn1.running_mean" in resnet.trainable_keys()
    assert not resnet.eval().backbone.layer4.training

    vit = build_encoder("vit_tiny_patch16_224", "random")
    assert cc.last_block_names(vit.model) == (f"blocks.{len(vit.model.blocks) - 1}", "norm")
    with pytest.raises(ValueError, match="neither a timm ResNet .* nor a ViT") as excinfo:
        cc.last_block_names(build_encoder("mobilenetv3_small_050", "random").model)
    one_line_error(excinfo)


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match=r"unknown clustering settings \['n_cluster'\]"):
        cc.clustering_settings({"n_cluster": 5})
    assert cc.clustering_settings({}) == cc.CLUSTERING_DEFAULTS


# ---------------------------------------------------------------------------- training


def test_loss_falls_and_only_the_two_newest_checkpoints_are_kept(trained):
    result, seen_after_epoch, checkpoint_dir = trained
    history = result["history"]
    assert [row["epoch"] for row in history] == list(range(1, SMALL["epochs"] + 1))
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["cluster_loss"] < history[0]["cluster_loss"]
    for row in history:
        assert row["loss"] == pytest.approx(row["instance_loss"] + row["cluster_loss"])
        assert 0 < row["entropy"] <= math.log(SMALL["n_clusters"]) + 1e-6
        assert row["tiles_per_s"] > 0 and row["seconds"] > 0
    for epoch, names in seen_after_epoch:
        expected = [f"epoch_{e:04d}.pt" for e in (epoch - 1, epoch) if e >= 1]
        assert names == expected
    assert result["resumed_from"] == 0 and result["tiles_per_s"] > 0
    checkpoint = torch.load(
        checkpoint_dir / f"epoch_{SMALL['epochs']:04d}.pt", weights_only=True
    )
    assert checkpoint["epoch"] == SMALL["epochs"]
    assert without_timings(checkpoint["history"]) == without_timings(history)


def test_clusters_of_known_tissue_patterns_are_pure(trained, pattern_tiles):
    result, _, _ = trained
    tiles, labels = pattern_tiles
    encoder = cc.build_backbone(cc.clustering_settings(SMALL), result["seed"])
    net = cc.build_clustering_net(encoder, cc.clustering_settings(SMALL), result["seed"])
    net.load_trainable_state(result["model"])
    cpu = torch.device("cpu")
    clusters, probability, assigned = cc.assign_tiles(
        net, batches_of(tiles), len(tiles), SMALL["input_size"], cpu, torch.float32
    )
    assert assigned.all() and clusters.dtype == np.int16 and probability.dtype == np.float32
    assert purity(clusters, labels) >= 0.8
    assert probability.min() >= 1 / SMALL["n_clusters"]


RESUME_SCRIPT = """
import json, sys
import h5py
from radpath.pathology.contrastive import train_clustering
settings, tiles_h5, checkpoint_dir = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
with h5py.File(tiles_h5, "r") as h5:
    train_clustering(h5["tiles"], settings, checkpoint_dir, device="cpu", seed=7, threads=1)
"""


def test_a_killed_training_resumes_to_the_same_weights(pattern_tiles, tmp_path, repo):
    settings = SMALL | {"epochs": 6, "batch_size": 16}
    tiles_h5 = tmp_path / "tiles.h5"
    with h5py.File(tiles_h5, "w") as h5:  # h5py reads need sorted indices: exercised here
        h5.create_dataset("tiles", data=pattern_tiles[0][::2], chunks=(1, TILE_PX, TILE_PX, 3))
    killed_dir = tmp_path / "killed"
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", RESUME_SCRIPT, json.dumps(settings), tiles_h5, killed_dir],
            env=os.environ | {"PYTHONPATH": str(repo)},
            stderr=stderr,
        )
        deadline = time.monotonic() + 120
        while not (killed_dir / "epoch_0001.pt").exists():
            assert process.poll() is None, (tmp_path / "stderr.txt").read_text(encoding="utf-8")
            assert time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL

    with h5py.File(tiles_h5, "r") as h5:
        tiles = h5["tiles"]
        resumed = cc.train_clustering(tiles, settings, killed_dir, "cpu", seed=7)
        uninterrupted = cc.train_clustering(tiles, settings, tmp_path / "whole", "cpu", seed=7)
    assert 1 <= resumed["resumed_from"] < settings["epochs"]
    assert uninterrupted["resumed_from"] == 0
    assert state_equal(resumed["model"], uninterrupted["model"])
    assert without_timings(resumed["history"]) == without_timings(uninterrupted["history"])
    assert sorted(p.name for p in killed_dir.iterdir()) == ["epoch_0005.pt", "epoch_0006.pt"]


@pytest.mark.parametrize(
    "change",
    [{"settings": {"n_clusters": 3}}, {"seed": 1}, {"tiles": "other"}],
    ids=["settings", "seed", "tiles"],
)
def test_a_checkpoint_of_another_training_is_ignored_never_mixed(
    pattern_tiles, tmp_path, caplog, change
):
    tiles = pattern_tiles[0][::8, :32, :32].copy()
    checkpoint_dir = tmp_path / "checkpoints"
    cc.train_clustering(tiles, TINY, checkpoint_dir, "cpu", seed=0)

    settings = TINY | change.get("settings", {})
    seed = change.get("seed", 0)
    if "tiles" in change:
        tiles = tiles.copy()
        tiles[-1] = 255 - tiles[-1]  # same count and shape, other content
    with caplog.at_level(logging.WARNING, logger="radpath.pathology.contrastive"):
        other = cc.train_clustering(tiles, settings, checkpoint_dir, "cpu", seed=seed)
    assert other["resumed_from"] == 0
    assert "made with other settings, tiles, seed or backbone weights: ignored" in caplog.text
    fresh = cc.train_clustering(tiles, settings, tmp_path / "fresh", "cpu", seed=seed)
    assert state_equal(other["model"], fresh["model"])
    assert all(key.startswith(("instance_head.", "cluster_head.")) for key in other["model"])

    # the replacement is resumable, also with more epochs than it was run for
    longer = cc.train_clustering(tiles, settings | {"epochs": 3}, checkpoint_dir, "cpu", seed=seed)
    assert longer["resumed_from"] == 2 and len(longer["history"]) == 3


def test_a_finished_training_resumes_without_training(pattern_tiles, tmp_path):
    tiles = pattern_tiles[0][::8, :32, :32].copy()
    first = cc.train_clustering(tiles, TINY, tmp_path, "cpu", seed=0)
    again = cc.train_clustering(tiles, TINY, tmp_path, "cpu", seed=0)
    assert again["resumed_from"] == TINY["epochs"] and math.isnan(again["tiles_per_s"])
    assert state_equal(first["model"], again["model"])
    assert again["history"] == first["history"]


# ---------------------------------------------------------------------------- assignment


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slide")
    info = write_synthetic_svs(
        folder / "S1.svs", 2000, 1500, 0.5, seed=21,
        pattern_proportions=dict.fromkeys(TISSUE_PATTERNS, 1.0),
    )
    coords_h5 = folder / "S1.coords.h5"
    wsi.tile_slide(info.path, "S1", TISSUE, TILES, 0, coords_h5)
    return {"path": info.path, "coords_h5": coords_h5, "folder": folder}


@pytest.fixture(scope="module")
def model_file(trained, slide):
    result, _, _ = trained
    path = slide["folder"] / "clustering.pt"
    cc.save_clustering_model(path, result, SMALL)
    return path


def test_model_file_holds_only_tensors_and_plain_types(model_file, trained):
    payload = torch.load(model_file, weights_only=True)
    assert payload["settings"] == cc.clustering_settings(SMALL)
    assert payload["provenance"]["encoder"] == "resnet10t"
    assert payload["provenance"]["weights"] == "random"
    assert state_equal(payload["model"], trained[0]["model"])
    assert any(key.startswith("backbone.layer4.") for key in payload["model"])
    net, metadata = cc.load_clustering_model(model_file, "cpu")
    assert not net.training and metadata["sha256"] == sha256_file(model_file)
    assert state_equal(net.trainable_state_dict(), trained[0]["model"])


def test_assign_slide_writes_one_cluster_per_tile(slide, model_file):
    out = slide["folder"] / "S1.clusters.h5"
    runtime = SMALL | {"precision": "bf16", "batch_size": 16}
    summary = cc.assign_slide(
        slide["path"], "S1", slide["coords_h5"], model_file, out, runtime, TILES, "cpu", threads=1
    )
    expected_coords, coords_attrs = wsi.read_coords_h5(slide["coords_h5"])
    coords, clusters, probability, attrs = cc.read_clusters_h5(out)
    assert summary["n_tiles"] == len(expected_coords) >= 10 and summary["n_skipped"] == 0
    assert summary["tiles_per_s"] > 0 and summary["device"] == "cpu"
    assert np.array_equal(coords, expected_coords) and coords.dtype == np.int64
    assert clusters.shape == probability.shape == (len(coords),)
    assert clusters.dtype == np.int16 and probability.dtype == np.float32
    assert clusters.min() >= 0 and clusters.max() < SMALL["n_clusters"]
    assert (probability >= 1 / SMALL["n_clusters"] - 1e-3).all() and (probability <= 1).all()
    assert attrs["slide_id"] == "S1" and attrs["n_clusters"] == SMALL["n_clusters"]
    assert attrs["model_sha256"] == sha256_file(model_file) and attrs["n_skipped"] == 0
    for key in ("patch_size", "target_mpp", "slide_mpp", "patch_size_level0"):
        assert attrs[key] == coords_attrs[key]
    counts = cc.cluster_counts(out)
    assert counts.shape == (SMALL["n_clusters"],) and counts.sum() == len(coords)
    assert (counts > 0).sum() >= 2  # a slide of four patterns is not one cluster
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]


def test_a_slide_whose_tiles_are_all_unreadable_is_an_error(slide, model_file, tmp_path):
    coords, attrs = wsi.read_coords_h5(slide["coords_h5"])
    x, y = coords[0]
    shutil.copy(slide["path"], tmp_path / "bad.svs")
    corrupt_level0_tile(tmp_path / "bad.svs", x + 5, y + 5)
    one_tile = tmp_path / "one.coords.h5"
    wsi.write_coords_h5(one_tile, np.array([[x, y]]), attrs)
    out = tmp_path / "c.h5"
    with pytest.raises(wsi.SlideError, match=r"slide S1 .*all 1 tiles of .*one.coords.h5 unread"):
        cc.assign_slide(tmp_path / "bad.svs", "S1", one_tile, model_file, out, SMALL, TILES, "cpu")
    assert not out.exists()


def save_random_weights(path, seed: int) -> None:
    model = build_encoder("resnet10t", "random", seed=seed).model
    safetensors.torch.save_file(model.state_dict(), path)


def test_backbone_weights_changed_since_training_are_refused(pattern_tiles, tmp_path):
    weights = tmp_path / "resnet10t.safetensors"
    save_random_weights(weights, seed=3)
    settings = TINY | {"weights": str(weights), "epochs": 1}
    tiles = pattern_tiles[0][::10, :32, :32].copy()
    result = cc.train_clustering(tiles, settings, tmp_path, "cpu")
    model_path = tmp_path / "clustering.pt"
    cc.save_clustering_model(model_path, result, settings)
    net, metadata = cc.load_clustering_model(model_path, "cpu")
    assert metadata["provenance"]["weights_sha256"] == sha256_file(weights)

    save_random_weights(weights, seed=4)  # the file changed since training
    with pytest.raises(EncoderError) as excinfo:
        cc.load_clustering_model(model_path, "cpu")
    message = one_line_error(excinfo)
    assert isinstance(excinfo.value, ValueError)
    assert str(model_path) in message and str(weights.resolve()) in message
    assert sha256_file(weights) in message and metadata["provenance"]["weights_sha256"] in message
