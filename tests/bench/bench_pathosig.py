"""PathoSig throughput: clustering training and tile assignment (run by hand, not by pytest).

    .venv/bin/python tests/bench/bench_pathosig.py                      # CPU, demo-sized
    .venv/bin/python tests/bench/bench_pathosig.py --device cuda --input-size 224 \
        --batch-size 256 --n-tiles 8192 --n-clusters 50 --slide-size 30000x20000

Prints tiles/s of (a) one training step of the network alone (two views, forward, both
losses, backward, Adam) on tensors already on the device, (b) training end to end
(train_clustering over an HDF5 tile file: reading, augmentation on the device, the step;
the last epoch), their ratio (1.0 = the accelerator never waits), and (c) assignment end to
end on a synthetic slide (assign_slide: reading through the DataLoader, resizing, network).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_embedding import device_name, synchronize  # noqa: E402

from radpath.inputs.configuration import default_config  # noqa: E402
from radpath.nn import training as nn_training
from radpath.pathology import (
    contrastive,
    embedding,  # noqa: E402
    wsi,
)
from radpath_demo.slides import TISSUE_PATTERNS, pattern_tile, write_synthetic_svs  # noqa: E402

TISSUE = default_config()["pathology"]["tissue"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=224, help="stored tile size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-tiles", type=int, default=256, help="training tiles")
    parser.add_argument("--n-clusters", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-last-block", action="store_true")
    parser.add_argument("--precision", default="bf16", choices=sorted(embedding.PRECISIONS))
    parser.add_argument("--num-workers", type=int, default=0, help="assignment DataLoader")
    parser.add_argument("--slide-size", default="6000x4000", help="WIDTHxHEIGHT at 0.5 um/px")
    parser.add_argument("--steps", type=int, default=5, help="timed steps for (a)")
    return parser.parse_args(argv)


def network_alone(settings: dict, device: torch.device, steps: int) -> tuple[int, float]:
    encoder = contrastive.build_backbone(settings, seed=0)
    net = contrastive.build_clustering_net(encoder, settings, seed=0).to(device)
    net = net.to(memory_format=torch.channels_last).train()
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=settings["learning_rate"])
    size, batch = settings["input_size"], settings["batch_size"]
    views = torch.randn(2 * batch, 3, size, size, device=device)
    views = views.contiguous(memory_format=torch.channels_last)
    dtype = embedding.autocast_dtype(settings["precision"], device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step() -> None:
        with autocast:
            z, p = net(views)
        z_a, z_b = z.float().chunk(2)
        p_a, p_b = p.float().chunk(2)
        loss = contrastive.instance_contrastive_loss(z_a, z_b, settings["instance_temperature"])
        loss = loss + contrastive.cluster_contrastive_loss(
            p_a, p_b, settings["cluster_temperature"], settings["entropy_weight"])[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):  # warm-up
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return batch * steps, time.perf_counter() - start


def training_tiles(path: Path, n: int, size: int) -> None:
    """`n` tiles of the demo's tissue patterns in an HDF5 file like training_tiles.h5."""
    with h5py.File(path, "w") as h5:
        tiles = h5.create_dataset("tiles", (n, size, size, 3), np.uint8, chunks=(1, size, size, 3))
        for i in range(n):
            tiles[i] = pattern_tile(TISSUE_PATTERNS[i % len(TISSUE_PATTERNS)], size, 0.5, i)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = nn_training.resolve_device(args.device)
    settings = contrastive.clustering_settings({
        "backbone": args.backbone, "n_clusters": args.n_clusters, "input_size": args.input_size,
        "batch_size": args.batch_size, "epochs": args.epochs, "precision": args.precision,
        "train_last_block": args.train_last_block, "num_workers": args.num_workers,
    })
    width, height = (int(v) for v in args.slide_size.lower().split("x"))
    tiles_cfg = {"patch_size": args.patch_size, "mpp": 0.5, "min_tissue_fraction": 0.6,
                 "max_tiles": 0}
    rows = {"(a) network alone (train step)": network_alone(settings, device, args.steps)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        training_tiles(folder / "tiles.h5", args.n_tiles, args.patch_size)
        with h5py.File(folder / "tiles.h5") as h5:
            result = contrastive.train_clustering(h5["tiles"], settings, folder / "ckpt",
                                                  device=device, seed=0)
        last = result["history"][-1]
        rows["(b) training end to end (last epoch)"] = (last["n_tiles"], last["seconds"])
        model = folder / "model.pt"
        contrastive.save_clustering_model(model, result, settings)
        slide = write_synthetic_svs(folder / "bench.svs", width, height, 0.5, seed=0,
                                    pattern_proportions=dict.fromkeys(TISSUE_PATTERNS, 1.0))
        wsi.tile_slide(slide.path, "BENCH", TISSUE, tiles_cfg, 0, folder / "coords.h5")
        summary = contrastive.assign_slide(slide.path, "BENCH", folder / "coords.h5", model,
                                           folder / "clusters.h5", settings, tiles_cfg,
                                           device=device)
        rows["(c) assignment end to end"] = (summary["n_tiles"], summary["seconds"])
    print(f"device: {device} = {device_name(device)}")
    print(f"backbone {args.backbone} ({'last block trained' if args.train_last_block else 'frozen'})"
          f", {args.input_size} px input from {args.patch_size} px tiles, batch {args.batch_size},"
          f" K {args.n_clusters}, {args.precision}, {args.n_tiles} training tiles, slide "
          f"{width}x{height}")
    print(f"{'stage':40s} {'tiles':>7s} {'seconds':>9s} {'tiles/s':>9s}")
    rate = {}
    for stage, (n, seconds) in rows.items():
        rate[stage] = n / seconds if seconds > 0 else float("nan")
        print(f"{stage:40s} {n:7d} {seconds:9.2f} {rate[stage]:9.1f}")
    ratio = rate["(b) training end to end (last epoch)"] / rate["(a) network alone (train step)"]
    print(f"training end-to-end / network-alone: {ratio:.2f}")


if __name__ == "__main__":
    main()
