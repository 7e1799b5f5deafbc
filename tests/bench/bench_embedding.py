"""Tile-embedding throughput, stage by stage, on a synthetic slide (run by hand, not by pytest).

    .venv/bin/python tests/bench/bench_embedding.py                       # CPU, small defaults
    .venv/bin/python tests/bench/bench_embedding.py --device cuda --batch-size 256 \
        --num-workers 12 --slide-size 30000x20000

Prints tiles/s for (a) tissue mask + coordinates, (b) reading and decoding tiles through the
DataLoader without a model, (c) the model alone on random tiles already in memory, (d) end to
end (embed_slide), and the ratio end-to-end / model-alone (1.0 = the accelerator never waits).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from radpath.inputs.configuration import default_config  # noqa: E402
from radpath.nn import training as nn_training
from radpath.pathology import (
    embedding,
    encoders,  # noqa: E402
    wsi,
)
from radpath_demo.slides import write_synthetic_svs  # noqa: E402

TISSUE = default_config()["pathology"]["tissue"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument(
        "--encoder", "--model", default="resnet50_trunc",
        help="a radpath.pathology.encoders name or a timm model",
    )
    parser.add_argument("--precision", default="bf16", choices=sorted(embedding.PRECISIONS))
    parser.add_argument(
        "--slide-size", default="6000x4000", help="level-0 WIDTHxHEIGHT at 0.5 um/px"
    )
    parser.add_argument("--patch-size", type=int, default=224)
    parser.add_argument("--model-batches", type=int, default=5, help="timed batches for (c)")
    return parser.parse_args(argv)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} torch threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_coordinates(slide_path, tiles_cfg, coords_h5) -> tuple[int, float]:
    start = time.perf_counter()
    summary = wsi.tile_slide(slide_path, "BENCH", TISSUE, tiles_cfg, 0, coords_h5)
    return summary["n_tiles"], time.perf_counter() - start


def bench_reading(slide_path, coords_h5, tiles_cfg, args, device) -> tuple[int, float]:
    coords, _ = wsi.read_coords_h5(coords_h5)
    dataset = embedding.TileDataset(slide_path, "BENCH", coords, tiles_cfg)
    loader = embedding.tile_loader(
        dataset, args.batch_size, args.num_workers, pin_memory=device.type == "cuda"
    )
    start = time.perf_counter()
    n = 0
    for tiles, _indices, _skipped in loader:
        n += len(tiles)
    return n, time.perf_counter() - start


def bench_model(args, device) -> tuple[int, float]:
    encoder = encoders.build_encoder(args.encoder, "random")  # throughput only: weights don't matter
    model = encoder.model.to(device).eval().to(memory_format=torch.channels_last)
    mean = torch.tensor(encoder.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(encoder.std, device=device).view(1, 3, 1, 1) * 255
    size = args.patch_size
    tiles = torch.randint(
        0, 256, (args.batch_size, size, size, 3), dtype=torch.uint8, device=device
    )
    dtype = embedding.autocast_dtype(args.precision, device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    with torch.inference_mode(), autocast:
        for _ in range(2):  # warm-up: kernel selection, allocator
            model(embedding.to_model_input(tiles, mean, std))
        synchronize(device)
        start = time.perf_counter()
        for _ in range(args.model_batches):
            model(embedding.to_model_input(tiles, mean, std))
        synchronize(device)
    return args.batch_size * args.model_batches, time.perf_counter() - start


def bench_end_to_end(slide_path, coords_h5, tiles_cfg, args, device, out_h5) -> tuple[int, float]:
    emb_cfg = {
        "encoder": args.encoder,
        "weights": "random",
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "precision": args.precision,
    }
    summary = embedding.embed_slide(
        slide_path, "BENCH", coords_h5, out_h5, emb_cfg, tiles_cfg, device=device
    )
    return summary["n_tiles"] + summary["n_skipped"], summary["seconds"]


def main(argv=None) -> None:
    args = parse_args(argv)
    device = nn_training.resolve_device(args.device)
    width, height = (int(v) for v in args.slide_size.lower().split("x"))
    tiles_cfg = {
        "patch_size": args.patch_size,
        "mpp": 0.5,
        "min_tissue_fraction": 0.6,
        "max_tiles": 0,
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        info = write_synthetic_svs(folder / "bench.svs", width, height, 0.5, seed=0)
        write_s = time.perf_counter() - start
        coords_h5 = folder / "coords.h5"
        rows = {
            "(a) tissue mask + coords": bench_coordinates(info.path, tiles_cfg, coords_h5),
            "(b) read + decode (DataLoader)": bench_reading(
                info.path, coords_h5, tiles_cfg, args, device
            ),
            "(c) model alone": bench_model(args, device),
            "(d) end to end (embed_slide)": bench_end_to_end(
                info.path, coords_h5, tiles_cfg, args, device, folder / "features.h5"
            ),
        }
    print(f"device: {device} = {device_name(device)}")
    print(
        f"slide: {width}x{height} px at 0.5 um/px (written in {write_s:.1f} s); "
        f"encoder {args.encoder}, "
        f"{args.precision}, batch {args.batch_size}, workers {args.num_workers}, "
        f"tile {args.patch_size} px"
    )
    print(f"{'stage':34s} {'tiles':>7s} {'seconds':>9s} {'tiles/s':>9s}")
    rate = {}
    for stage, (n, seconds) in rows.items():
        rate[stage] = n / seconds if seconds > 0 else float("nan")
        print(f"{stage:34s} {n:7d} {seconds:9.2f} {rate[stage]:9.1f}")
    ratio = rate["(d) end to end (embed_slide)"] / rate["(c) model alone"]
    print(f"end-to-end / model-alone: {ratio:.2f}")


if __name__ == "__main__":
    main()
