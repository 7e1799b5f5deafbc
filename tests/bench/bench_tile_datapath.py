"""Slide-embedding data path alone against the network alone: CPU cores per GPU (run by hand).

    .venv/bin/python tests/bench/bench_tile_datapath.py                  # ~2 min on 2 CPUs
    .venv/bin/python tests/bench/bench_tile_datapath.py --encoder resnet50_trunc --tiles 2000
    .venv/bin/python tests/bench/bench_tile_datapath.py --gpu-tiles-per-s 1500
    .venv/bin/python tests/bench/bench_tile_datapath.py --workdir /tmp/dp  # keep/reuse slides

The data path is what a slide-embedding job's CPUs do per tile, with the job's own code:
`embedding.TileDataset` (OpenSlide read of the tile, JPEG decode, resize to the tile size
when the level read is finer) batched by `embedding.tile_loader` (the real DataLoader), then
`embedding.to_model_input` (on the CPU here; a GPU job runs it on the device). Workers and
torch threads come from `embedding.cpu_budget`, as in the job. Two synthetic Aperio SVS slides
of the same tissue (radpath_demo.slides, as the tests write them): level 0 at 0.25 um/px
(tiles read at level 0, 448 px, area-downsampled to 224) and at 0.5 um/px (224 px read, no
resize). Tile coordinates come from the real tiler (`wsi.tile_slide` -> coords.h5, the
configured tissue and tile settings) in raster order, cycled when the slide has fewer than
--tiles.

Measured:
  * data path, num_workers 0 (all in the main process, 1 torch thread): tiles/s on one core,
    and tiles per CPU second of the process (its every thread: OpenCV may use more than one);
  * data path, num_workers 1 (a worker reads, the main process collects and transforms):
    tiles/s, and tiles per CPU second of the worker = the per-worker rate;
  * a per-tile CPU breakdown of the read (OpenSlide region, RGBA array, RGB on white, resize;
    TileDataset.__getitem__ as a whole, and the collate);
  * the network alone: a forward pass of --encoder (random weights, built by
    `encoders.build_encoder`) on ready tensors, fp32 on the CPU; on a CUDA device (when one is
    available) bf16 autocast, channels_last, batch 256 after warm-up, and end to end with the
    real loader (`embedding.embed_tiles`, 0.25 um/px slide) with num_workers = cores - 1,
    cores = the cores per GPU computed below (at most the CPUs available).
From these: cores per GPU = ceil(GPU network tiles/s / per-worker tiles/s) + 1 (the main
process), for --gpu-tiles-per-s or the measured GPU rate, and a reference table for assumed
H100 network throughputs of the registered encoders (printed as assumptions). The synthetic
slides compress better than real H&E (their compressed bits per pixel are printed), so a real
slide decodes somewhat slower: keep headroom over the table. Rates are per CPU second (user +
sys of the reading process, from /proc for the worker), so that other load on the machine
counts little; on SMT siblings or a busy host they still vary by tens of percent.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from radpath.inputs.configuration import default_config  # noqa: E402
from radpath.pathology import embedding, encoders, wsi  # noqa: E402

PATHOLOGY = default_config()["pathology"]
TISSUE = PATHOLOGY["tissue"]
TILES = PATHOLOGY["tiles"]
SLIDE_MPPS = (0.25, 0.5)
BREAKDOWN_TILES = 256
# Assumed network-alone throughput of one H100 (bf16, batch 256), tiles/s: assumptions to size
# a profile with, not measurements; measure your own with this script on the GPU node.
ASSUMED_H100_TILES_PER_S = {
    "resnet50_trunc": ("ResNet50 trunc (CLAM)", 6000.0),
    "uni": ("ViT-L/16 (UNI)", 1500.0),
    "uni2_h": ("ViT-H/14 (UNI2-h)", 700.0),
    "gigapath": ("ViT-g/16 (GigaPath)", 400.0),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="uni",
                        help="a radpath.pathology.encoders name (uni: ViT-L/16, resnet50_trunc)")
    parser.add_argument("--tiles", type=int, default=1024,
                        help="tiles timed per data-path measurement")
    parser.add_argument("--repeats", type=int, default=2,
                        help="data-path runs of each kind; the fastest is reported")
    parser.add_argument("--batch-size", type=int, default=int(PATHOLOGY["embedding"]["batch_size"]),
                        help="data-path batch (config's pathology.embedding.batch_size)")
    parser.add_argument("--slide-size", default="20000x16000",
                        help="level-0 WIDTHxHEIGHT of the 0.25 um/px slide (the 0.5 um/px one "
                             "is the same tissue at half the pixels)")
    parser.add_argument("--cpu-batch", type=int, default=8, help="network batch on the CPU")
    parser.add_argument("--cpu-batches", type=int, default=2, help="timed CPU network batches")
    parser.add_argument("--gpu-tiles-per-s", type=float, default=None,
                        help="an accelerator's network-alone tiles/s, to size the CPUs for")
    parser.add_argument("--gpu-batch", type=int, default=256)
    parser.add_argument("--gpu-batches", type=int, default=20, help="timed GPU network batches")
    parser.add_argument("--gpu-tiles", type=int, default=8192,
                        help="tiles of the end-to-end run on the GPU")
    parser.add_argument("--workdir", default=None,
                        help="keep the slides and coords here and reuse them (default: a "
                             "temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------ setup


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def write_slides(folder: Path, width: int, height: int, seed: int) -> dict[float, Path]:
    """The same synthetic tissue as an Aperio SVS at 0.25 um/px (width x height) and at 0.5
    um/px (area-downsampled 2x), drawn and written as radpath_demo.slides does for the tests."""
    import cv2

    from radpath_demo.slides import synthetic_he_image, write_pyramidal_tiff

    paths = {mpp: folder / f"slide_{width}x{height}_s{seed}_{mpp:g}mpp.svs" for mpp in SLIDE_MPPS}
    if all(path.is_file() for path in paths.values()):
        return paths
    image, _tissue, _ = synthetic_he_image(width, height, SLIDE_MPPS[0], seed)
    del _tissue
    write_pyramidal_tiff(paths[0.25], image, 0.25)
    half = cv2.resize(image, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
    del image
    write_pyramidal_tiff(paths[0.5], half, 0.5)
    return paths


def slide_coords(path: Path, seed: int) -> tuple[np.ndarray, dict]:
    """The real tiler's coords.h5 (tissue mask, tile grid at the configured mpp), read back."""
    coords_h5 = path.with_suffix(".coords.h5")
    if not coords_h5.is_file():
        wsi.tile_slide(path, path.stem, TISSUE, TILES, seed, coords_h5)
    coords, attrs = wsi.read_coords_h5(coords_h5)
    return coords, attrs


def cycled(coords: np.ndarray, n: int) -> np.ndarray:
    """The first n tiles in raster order, starting over at the end of the slide."""
    return coords[np.arange(n) % len(coords)]


def jpeg_stats(path: Path, coords: np.ndarray, read_size: int) -> tuple[float, float]:
    """(compressed bits per level-0 pixel of the JPEG tiles the tiles touch, JPEG pixels
    decoded per tile pixel read when nothing is cached)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tw, th = page.tilewidth, page.tilelength
        across = -(-page.imagewidth // tw)
        counts = np.asarray(page.databytecounts, dtype=np.int64)
    touched, per_tile = set(), []
    for x, y in coords:
        cols = range(x // tw, (x + read_size - 1) // tw + 1)
        rows = range(y // th, (y + read_size - 1) // th + 1)
        per_tile.append(len(cols) * len(rows))
        touched.update(r * across + c for r in rows for c in cols)
    index = np.fromiter(touched, dtype=np.int64)
    bits = counts[index].sum() * 8 / (len(index) * tw * th)
    amplification = float(np.mean(per_tile)) * tw * th / read_size**2
    return float(bits), amplification


# ------------------------------------------------------------------------- data path


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_data_path(path: Path, coords: np.ndarray, n_tiles: int, batch_size: int,
                   num_workers: int, mean: torch.Tensor, std: torch.Tensor) -> dict:
    """Tiles through TileDataset + tile_loader + to_model_input (CPU), after the first batch
    (worker start and slide opening excluded). `num_workers` + 1 CPUs via cpu_budget."""
    workers, torch_threads = embedding.cpu_budget(num_workers + 1, num_workers, "BENCH")
    torch.set_num_threads(torch_threads)
    dataset = embedding.TileDataset(path, "BENCH", cycled(coords, n_tiles), TILES)
    loader = embedding.tile_loader(dataset, batch_size, workers, pin_memory=False)
    batches = iter(loader)
    first, _, _ = next(batches)
    embedding.to_model_input(first, mean, std)
    pids = [w.pid for w in getattr(batches, "_workers", [])]
    worker_cpu0 = sum(proc_cpu_seconds(pid) for pid in pids)
    main_cpu0, start = time.process_time(), time.perf_counter()
    n, transform_s = 0, 0.0
    for tiles, indices, _skipped in batches:
        t0 = time.perf_counter()
        embedding.to_model_input(tiles, mean, std)
        transform_s += time.perf_counter() - t0
        n += len(indices)
    wall = time.perf_counter() - start
    main_cpu = time.process_time() - main_cpu0
    worker_cpu = sum(proc_cpu_seconds(pid) for pid in pids) - worker_cpu0
    del batches, loader  # shuts the workers down
    dataset.close()
    return {"workers": workers, "torch_threads": torch_threads, "tiles": n, "wall": wall,
            "main_cpu": main_cpu, "worker_cpu": worker_cpu, "transform_s": transform_s}


def breakdown(path: Path, coords: np.ndarray, batch_size: int) -> dict[str, float]:
    """CPU microseconds per tile of each step of the read, in this process (cold slide
    handles); CPU time (all threads) so that other load on the machine does not count."""
    torch.set_num_threads(1)  # as in a DataLoader worker (torch's worker loop sets 1)
    sample = coords[:BREAKDOWN_TILES]
    dataset = embedding.TileDataset(path, "BENCH", sample, TILES)
    t0 = time.process_time()
    items = [dataset[i] for i in range(len(sample))]
    getitem = time.process_time() - t0
    dataset.close()
    t0 = time.process_time()
    for i in range(0, len(items), batch_size):
        embedding.collate_tiles(items[i:i + batch_size])
    collate = time.process_time() - t0
    steps = dict.fromkeys(("level choice (cached)", "OpenSlide read_region (JPEG decode)",
                           "PIL -> numpy RGBA", "RGBA -> RGB on white", "resize to 224"), 0.0)
    with wsi.open_slide(path, "BENCH", check=False) as slide:
        for x, y in sample:
            t0 = time.process_time()
            geom = slide.tile_geometry(TILES)
            t1 = time.process_time()
            region = slide.osr.read_region((int(x), int(y)), geom.level,
                                           (geom.read_size, geom.read_size))
            t2 = time.process_time()
            rgba = np.asarray(region)
            t3 = time.process_time()
            rgb = wsi.rgba_to_rgb_on_white(rgba)
            t4 = time.process_time()
            wsi.resize_rgb(rgb, geom.patch_size)
            t5 = time.process_time()
            for key, seconds in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4),
                                    strict=True):
                steps[key] += seconds
    n = len(sample)
    per_tile = {key: 1e6 * seconds / n for key, seconds in steps.items()}
    per_tile["TileDataset.__getitem__ (all of the above)"] = 1e6 * getitem / n
    per_tile["collate_tiles (stack)"] = 1e6 * collate / n
    return per_tile


# --------------------------------------------------------------------------- network


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_network(encoder: encoders.Encoder, device: torch.device, dtype: torch.dtype,
                 batch: int, batches: int, warmup: int) -> float:
    """Tiles/s of the encoder alone on ready (normalized, channels_last) tensors."""
    model = encoder.model.to(device).eval().to(memory_format=torch.channels_last)
    mean = torch.tensor(encoder.mean, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(encoder.std, device=device).view(1, 3, 1, 1) * 255.0
    size = int(TILES["patch_size"])
    tiles = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=device)
    x = embedding.to_model_input(tiles, mean, std)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    with torch.inference_mode(), autocast:
        for _ in range(warmup):
            model(x)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(batches):
            model(x)
        synchronize(device)
    return batch * batches / (time.perf_counter() - start)


class SteadyTimer:
    """Wraps a loader for embed_tiles: the clock starts when the second batch is asked for
    (worker start-up, slide opening and the first batch excluded)."""

    def __init__(self, loader):
        self.loader = loader
        self.start = None
        self.first = 0

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == 0:
                self.first = len(batch[1])
            elif i == 1:
                self.start = time.perf_counter()
            yield batch


def time_end_to_end(path: Path, coords: np.ndarray, n_tiles: int, encoder: encoders.Encoder,
                    device: torch.device, dtype: torch.dtype, batch: int, cores: int) -> dict:
    """Tiles/s of the real embedding loop (tile_loader + embed_tiles) with cores - 1 workers."""
    if n_tiles <= 2 * batch:
        raise SystemExit(f"--gpu-tiles {n_tiles}: give more than two batches ({2 * batch})")
    workers, torch_threads = embedding.cpu_budget(cores, cores - 1, "BENCH")
    torch.set_num_threads(torch_threads)
    dataset = embedding.TileDataset(path, "BENCH", cycled(coords, n_tiles), TILES)
    try:
        loader = embedding.tile_loader(dataset, batch, workers, pin_memory=device.type == "cuda")
        timer = SteadyTimer(loader)
        _, done = embedding.embed_tiles(timer, n_tiles, encoder, device, dtype)  # syncs at the end
        seconds = time.perf_counter() - timer.start
    finally:
        dataset.close()
    return {"workers": workers, "tiles": int(done.sum()) - timer.first, "seconds": seconds,
            "rate": (int(done.sum()) - timer.first) / seconds}


# ---------------------------------------------------------------------------- report


def reader_rate(run: dict) -> float:
    """Tiles per CPU second of the process that reads: the worker, or the main process."""
    busy = run["worker_cpu"] if run["workers"] else run["main_cpu"]
    return run["tiles"] / busy if busy > 0 else run["tiles"] / run["wall"]


def per_worker_rate(run: dict) -> float:
    """Tiles per CPU second of the one worker (independent of other load on the machine);
    tiles per wall second where the worker's CPU time is unknown."""
    if run["worker_cpu"] > 0:
        return run["tiles"] / run["worker_cpu"]
    return run["tiles"] / run["wall"]


def cores_per_gpu(gpu_rate: float, per_core: float) -> int:
    """Workers to feed `gpu_rate` tiles/s at `per_core` tiles/s each, plus the main process."""
    return math.ceil(gpu_rate / per_core) + 1


def main(argv=None) -> None:
    args = parse_args(argv)
    cpus, threads0 = available_cpus(), torch.get_num_threads()
    load_before = os.getloadavg()[0]
    width, height = (int(v) for v in args.slide_size.lower().split("x"))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.workdir or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        paths = write_slides(folder, width, height, args.seed)
        slides_s = time.perf_counter() - t0
        spec = encoders.encoder_spec(args.encoder)
        mean = torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0
        rows = {}
        for mpp, path in paths.items():
            coords, attrs = slide_coords(path, args.seed)
            bits, amplification = jpeg_stats(path, coords, int(attrs["read_size"]))
            rows[mpp] = {
                "path": path, "coords": coords, "attrs": attrs, "bits": bits,
                "amplification": amplification,
                "breakdown": breakdown(path, coords, args.batch_size),
            }
            runs = {0: [], 1: []}  # workers -> runs, alternated; the fastest per CPU-s kept
            for _ in range(args.repeats):
                for workers, kept in runs.items():
                    kept.append(time_data_path(path, coords, args.tiles, args.batch_size,
                                               workers, mean, std))
            for workers, kept in runs.items():
                rows[mpp][f"w{workers}"] = max(kept, key=reader_rate)
            print(f"data path at {mpp:g} um/px done ({time.perf_counter() - started:.0f} s)",
                  file=sys.stderr, flush=True)

        torch.set_num_threads(threads0)
        encoder = encoders.build_encoder(args.encoder, "random", {}, (), args.seed)
        cpu = torch.device("cpu")
        cpu_net = time_network(encoder, cpu, torch.float32, args.cpu_batch, args.cpu_batches, 1)
        gpu = None
        if torch.cuda.is_available():
            device = torch.device("cuda")
            torch.backends.cudnn.benchmark = True
            dtype = embedding.autocast_dtype("bf16", device)
            gpu = {"name": torch.cuda.get_device_name(device),
                   "net": time_network(encoder, device, dtype, args.gpu_batch, args.gpu_batches, 5)}
            cores = min(cores_per_gpu(gpu["net"], per_worker_rate(rows[0.25]["w1"])), cpus)
            fine = rows[0.25]
            gpu["e2e"] = time_end_to_end(fine["path"], fine["coords"], args.gpu_tiles, encoder,
                                         device, dtype, args.gpu_batch, cores)
        total_s = time.perf_counter() - started
    load_after = os.getloadavg()[0]

    print(f"CPU: {cpu_name()}, {cpus} CPUs available; torch {torch.__version__}; "
          f"OpenCV threads {__import__('cv2').getNumThreads()}; load average {load_before:.2f} "
          f"before, {load_after:.2f} after")
    print(f"slides: synthetic Aperio SVS {width}x{height} at 0.25 um/px and {width // 2}x"
          f"{height // 2} at 0.5 um/px (written in {slides_s:.0f} s); tiles "
          f"{TILES['patch_size']} px at {TILES['mpp']} um/px, min tissue "
          f"{TILES['min_tissue_fraction']}; batch {args.batch_size}; {args.tiles} tiles timed "
          f"per run")
    print()
    print("slide      level read   tiles on slide  JPEG bits/px  JPEG px decoded/px read")
    for mpp, row in rows.items():
        a = row["attrs"]
        print(f"{mpp:4g} um/px  {int(a['level']):5d} {int(a['read_size']):4d}px "
              f"{len(row['coords']):15d} {row['bits']:13.2f} {row['amplification']:24.2f}")
    print("(cycled in raster order when fewer than the tiles timed; px decoded per px read "
          "without OpenSlide's tile cache)")

    print("\nper-tile breakdown, main process, first "
          f"{min(BREAKDOWN_TILES, min(len(r['coords']) for r in rows.values()))} tiles "
          "(CPU us/tile)")
    print(f"{'step':45s} " + " ".join(f"{f'{mpp:g} um/px':>11s}" for mpp in rows))
    for key in rows[0.25]["breakdown"]:
        print(f"{key:45s} " + " ".join(f"{row['breakdown'][key]:11.0f}" for row in rows.values()))

    print("\ndata path (TileDataset + tile_loader + to_model_input on CPU), after the first "
          f"batch; fastest of {args.repeats} runs")
    print(f"{'slide':10s} {'workers':>7s} {'torch thr':>9s} {'tiles/s':>8s} "
          f"{'main CPU s':>10s} {'worker CPU s':>12s} {'transform %':>11s} "
          f"{'tiles/CPU-s':>11s}")
    per_core = {}
    for mpp, row in rows.items():
        for key in ("w0", "w1"):
            r = row[key]
            rate = r["tiles"] / r["wall"]
            per_cpu_s = reader_rate(r)
            print(f"{f'{mpp:g} um/px':10s} {r['workers']:7d} {r['torch_threads']:9d} {rate:8.0f} "
                  f"{r['main_cpu']:10.2f} {r['worker_cpu']:12.2f} "
                  f"{100 * r['transform_s'] / r['wall']:11.1f} {per_cpu_s:11.0f}")
        per_core[mpp] = per_worker_rate(row["w1"])
    print("tiles/CPU-s: tiles per CPU second (user + sys, all threads) of the process that reads: "
          "the main process with 0 workers, the worker with 1")
    print("per-core rate used below = tiles per worker CPU second: " + ", ".join(
        f"{per_core[mpp]:.0f} at {mpp:g} um/px" for mpp in rows))

    print(f"\nnetwork alone: {args.encoder} ({spec.timm_name}, {spec.dim} dims), random weights")
    print(f"  CPU fp32, {threads0} torch threads, batch {args.cpu_batch}: {cpu_net:.2f} tiles/s "
          f"({cpu_net / threads0:.2f} per thread); the data path on one core is "
          f"{per_core[0.25] / (cpu_net / threads0):.0f}x (0.25 um/px) to "
          f"{per_core[0.5] / (cpu_net / threads0):.0f}x (0.5 um/px) faster")
    gpu_rates = {}
    if gpu:
        print(f"  {gpu['name']}, bf16 autocast, channels_last, batch {args.gpu_batch}: "
              f"{gpu['net']:.0f} tiles/s (measured)")
        gpu_rates["measured " + gpu["name"]] = gpu["net"]
    if args.gpu_tiles_per_s:
        gpu_rates["given (--gpu-tiles-per-s)"] = args.gpu_tiles_per_s
    for label, rate in gpu_rates.items():
        print(f"  cores_per_gpu for {rate:.0f} tiles/s ({label}): "
              + ", ".join(f"{cores_per_gpu(rate, per_core[mpp])} at {mpp:g} um/px"
                          for mpp in rows))
    if gpu:
        e2e = gpu["e2e"]
        print(f"  end to end on the GPU (embed_tiles, 0.25 um/px slide, {e2e['workers']} workers, "
              f"{e2e['tiles']} tiles): {e2e['rate']:.0f} tiles/s; end-to-end / network-alone "
              f"{e2e['rate'] / gpu['net']:.2f}")
    if not gpu_rates:
        print("  no CUDA device and no --gpu-tiles-per-s: see the reference table")

    print("\nreference: CPU cores per GPU = ceil(network tiles/s / per-worker tiles/s) + 1, for "
          "ASSUMED H100 network-alone")
    print("throughputs (bf16, batch 256; assumptions, not measured here) and the per-worker "
          "rates measured above")
    print(f"{'network':22s} {'encoder':15s} {'assumed tiles/s':>15s} "
          + " ".join(f"{f'cores {mpp:g} um/px':>16s}" for mpp in rows))
    for name, (label, rate) in ASSUMED_H100_TILES_PER_S.items():
        print(f"{label:22s} {name:15s} {rate:15.0f} "
              + " ".join(f"{cores_per_gpu(rate, per_core[mpp]):16d}" for mpp in rows))
    print("(pathology.threads = these cores, pathology.embedding.num_workers = cores - 1. Real "
          "H&E usually has more compressed bits/px than these synthetic slides and decodes "
          "somewhat slower: keep headroom)")
    print(f"\ntotal {total_s:.0f} s")


if __name__ == "__main__":
    main()
