"""Fixed cost of slide-embedding jobs against their per-tile cost: one slide per job (before)
against a shard of slides per job (after), end to end (run by hand, not by pytest).

    .venv/bin/python tests/bench/bench_embedding_startup.py                 # ViT-L (UNI shape)
    .venv/bin/python tests/bench/bench_embedding_startup.py --slides 8 --tiles-per-slide 16
    .venv/bin/python tests/bench/bench_embedding_startup.py --encoder resnet50_trunc --batch 32

A job is a new process: it imports torch and radpath, builds the encoder, reads and checks
its weights (SHA-256 for the provenance, strict key check), starts CUDA, then embeds tiles.

1. Steps (--repeats fresh processes): each of those steps timed alone, with the encoder's
   architecture and random weights saved as safetensors (as `stage_encoder_weights` writes
   them), then the network alone per tile.
2. Before vs after, through the real CLI (`python -m radpath.cli slide_embedding`, the
   command of rule slide_embedding) in fresh processes, with those weights as the
   configured local weights file: --slides synthetic slides, tiled once by `slide_tiles`
   (--tiles-per-slide tiles each), embedded BEFORE as one process per slide (`--slides` a
   list of one: what one job per slide cost) and AFTER as one process for all of them (one
   shard: the encoder built, its weights read and hashed once). Each process's wall-clock
   time is split with the per-slide `embedding summary` lines of its log (seconds, n_tiles):
   the slides' own seconds (network, tile reads, features file; per tile) and what is left,
   the fixed cost of the process (interpreter, imports, settings, encoder build, weights
   read and SHA-256, exit). It prints the fixed seconds per job and per slide, before and after, and
   the share of a job that is start-up for typical slides of 5,000, 10,000 and 20,000 tiles
   at an ASSUMED accelerator speed (--gpu-tiles-per-s), one slide per job against
   --slides-per-job slides per shard.

The jobs run on the device `resolve_device` picks (CPU on a machine without a GPU: CUDA's
own start-up, a few seconds more per process, is then not measured). The weights file was
just written, so it is read from the page cache, not from a shared file system.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
from radpath.pathology import embedding, encoders  # noqa: F401  (what the job imports)
t1 = time.perf_counter()
name, path, batch, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
spec = encoders.encoder_spec(name)
state = encoders.read_state_dict(encoders.weights_path(spec, path), spec.name)
t2 = time.perf_counter()
model = encoders.load_strict(spec, state, path).eval()
t3 = time.perf_counter()
digest = encoders.sha256_file(path)
t4 = time.perf_counter()
dev = torch.device(device)
if dev.type == "cuda":
    torch.cuda.init()
    torch.zeros(1, device=dev)
model = model.to(dev)
t5 = time.perf_counter()
size = spec.input_size or 224  # encoders of any tile size (resnet50_trunc) get 224
x = torch.rand(batch, 3, size, size, device=dev)
with torch.inference_mode():
    model(x)
    if dev.type == "cuda":
        torch.cuda.synchronize()
t6 = time.perf_counter()
with torch.inference_mode():
    model(x)
    if dev.type == "cuda":
        torch.cuda.synchronize()
t7 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "read_weights": t2 - t1, "build_and_load": t3 - t2,
                  "sha256": t4 - t3, "to_device": t5 - t4, "first_batch": t6 - t5,
                  "steady_batch": t7 - t6, "batch": batch}))
"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="uni", help="a radpath.pathology.encoders name")
    parser.add_argument("--batch", type=int, default=8,
                        help="tiles per timed forward pass, and the jobs' embedding batch_size")
    parser.add_argument("--device", default="cpu", help="device of the step timings")
    parser.add_argument("--repeats", type=int, default=2,
                        help="fresh processes timed step by step (0: skip the steps)")
    parser.add_argument("--slides", type=int, default=4,
                        help="slides embedded before (one job each) and after (one shard)")
    parser.add_argument("--tiles-per-slide", type=int, default=8,
                        help="tiles of each slide (tiles.max_tiles)")
    parser.add_argument("--threads", type=int, default=2, help="--threads of each job")
    parser.add_argument("--gpu-tiles-per-s", type=float, default=1500.0,
                        help="ASSUMED accelerator end-to-end tiles/s for the projected share "
                             "(default: a UNI-sized ViT-L on an H100 in bf16)")
    parser.add_argument("--slides-per-job", type=int, nargs="+", default=[16, 64],
                        help="shard sizes of the projection")
    return parser.parse_args(argv)


def save_random_weights(name: str, folder: Path) -> Path:
    import safetensors.torch
    import torch

    from radpath.pathology import encoders

    spec = encoders.encoder_spec(name)
    torch.manual_seed(0)
    model = encoders.instantiate(spec, "cpu")
    path = folder / f"{name}.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(path))
    return path


def step_breakdown(args: argparse.Namespace, path: Path) -> float:
    """Each fixed step of a job timed in --repeats fresh processes (best of); returns the
    network's steady seconds per tile."""
    runs = []
    for _ in range(args.repeats):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, args.encoder, str(path), str(args.batch),
             args.device], cwd=REPO, capture_output=True, text=True,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        if out.returncode != 0:
            raise RuntimeError(f"step timing process failed:\n{out.stderr[-3000:]}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = {key: min(run[key] for run in runs) for key in runs[0]}
    fixed = sum(best[k] for k in ("imports", "read_weights", "build_and_load", "sha256",
                                  "to_device"))
    fixed += best["first_batch"] - best["steady_batch"]  # warm-up beyond a steady batch
    per_tile = best["steady_batch"] / args.batch
    print(f"1. steps of one job: device {args.device}, batch {args.batch}, best of "
          f"{args.repeats} fresh processes")
    for key in ("imports", "read_weights", "build_and_load", "sha256", "to_device",
                "first_batch", "steady_batch"):
        print(f"  {key:15s} {best[key]:7.2f} s")
    print(f"fixed cost per job: {fixed:.2f} s; per tile: {per_tile * 1e3:.1f} ms "
          f"({1 / per_tile:.2f} tiles/s on {args.device})")
    for tiles in (5000, 10000, 20000):
        share = fixed / (fixed + tiles * per_tile)
        line = f"  slide of {tiles:6d} tiles: start-up {100 * share:5.1f}% of the job"
        if args.gpu_tiles_per_s:
            gpu_share = fixed / (fixed + tiles / args.gpu_tiles_per_s)
            line += f"; at {args.gpu_tiles_per_s:g} tiles/s: {100 * gpu_share:5.1f}%"
        print(line)
    return per_tile


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def cli(*args: str) -> tuple[float, float]:
    """Run `python -m radpath.cli ARGS` in a fresh process; its wall-clock and CPU seconds."""
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "radpath.cli", *args], cwd=REPO,
                          capture_output=True, text=True, encoding="utf-8", env=cli_env())
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"radpath.cli {args[0]} failed:\n{done.stderr[-3000:]}")
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime


def tiled_slides(args: argparse.Namespace, folder: Path, pathology: dict) -> list[dict]:
    """--slides synthetic slides tiled by `slide_tiles` to --tiles-per-slide tiles each: the
    `--slides` items of slide_embedding (out left to fill in)."""
    import h5py

    from radpath_demo.slides import write_synthetic_svs

    n = args.tiles_per_slide
    # ~1 in 5 grid cells of a synthetic slide are tissue: ~16 cells per wanted tile, 4:3.
    side = int(round((16 * n * 4 / 3) ** 0.5)) + 1
    width, height = 224 * side, 224 * max(1, (3 * side) // 4)
    settings = {key: pathology[key] for key in ("tissue", "tiles", "morphology")}
    settings["tiles"] = settings["tiles"] | {"max_tiles": n}
    settings["morphology"] = settings["morphology"] | {"n_tiles": 2}
    settings |= {"seed": 1, "on_error": "stop"}
    items = []
    for index in range(args.slides):
        slide_id = f"S{index + 1}"
        slide = folder / "slides" / f"{slide_id}.svs"
        slide.parent.mkdir(parents=True, exist_ok=True)
        write_synthetic_svs(slide, width, height, mpp=0.5, seed=index)
        tiles = folder / "tiles" / slide_id
        cli("slide_tiles", "--slide-id", slide_id, "--slide", str(slide), "--mpp=",
            "--log", str(tiles / "tiles.log"), "--settings", json.dumps(settings),
            "--coords", str(tiles / "coords.h5"), "--thumbnail", str(tiles / "thumb.png"),
            "--morphology", str(tiles / "morphology.tsv"))
        with h5py.File(tiles / "coords.h5") as h5:
            got = len(h5["coords"])
        if got != n:
            raise RuntimeError(f"slide {slide_id} ({width}x{height}) has {got} tiles, not {n}")
        items.append({"slide_id": slide_id, "slide": str(slide), "mpp": None,
                      "coords": str(tiles / "coords.h5")})
    return items


def summaries(log_file: Path) -> list[dict]:
    """The `embedding summary` dicts of a slide_embedding log, in order."""
    marker = "embedding summary: "
    return [ast.literal_eval(line.split(marker, 1)[1])
            for line in log_file.read_text(encoding="utf-8").splitlines() if marker in line]


def embedding_job(folder: Path, name: str, items: list[dict], settings: dict,
                  threads: int) -> dict:
    """One slide_embedding process over `items`: wall seconds and its slides' summaries."""
    shard = [item | {"out": str(folder / name / f"{item['slide_id']}.h5")} for item in items]
    log_file = folder / name / "job.log"
    wall, cpu = cli("slide_embedding", "--slides", json.dumps(shard), "--settings",
               json.dumps(settings), "--threads", str(threads), "--log", str(log_file))
    slides = summaries(log_file)
    if len(slides) != len(items):
        raise RuntimeError(f"{log_file}: {len(slides)} embedding summaries, {len(items)} slides")
    return {"wall": wall, "cpu": cpu, "slides": slides, "outs": [item["out"] for item in shard]}


def split(job: dict) -> tuple[float, float]:
    """(fixed seconds, seconds per tile) of a job: its wall time less its slides' own
    seconds, and those seconds per tile. Both come from the same process, so a machine
    busier during one job than another shifts the two less than across processes."""
    in_slides = sum(s["seconds"] for s in job["slides"])
    tiles = sum(s["n_tiles"] for s in job["slides"])
    return job["wall"] - in_slides, in_slides / tiles


def same_features(before: list[dict], after: dict) -> float:
    """Largest difference between the features of the before jobs and of the shard."""
    import h5py
    import numpy as np

    worst = 0.0
    outs = [out for job in before for out in job["outs"]]
    for a, b in zip(outs, after["outs"], strict=True):
        with h5py.File(a) as ha, h5py.File(b) as hb:
            diff = np.abs(ha["features"][:].astype(np.float32) - hb["features"][:])
            worst = max(worst, float(diff.max()))
    return worst


def before_after(args: argparse.Namespace, path: Path, folder: Path,
                 network_per_tile: float | None) -> None:
    """Section 2: N one-slide jobs against one shard of N slides, through the CLI."""
    from radpath.inputs.configuration import default_config

    pathology = default_config()["pathology"]
    start = time.perf_counter()
    items = tiled_slides(args, folder, pathology)
    tiling = time.perf_counter() - start
    settings = {
        "tiles": pathology["tiles"] | {"max_tiles": args.tiles_per_slide},
        "embedding": pathology["embedding"] | {
            "encoder": args.encoder, "weights": str(path), "batch_size": args.batch,
            "num_workers": 0, "precision": "fp32"},
        "seed": 1, "on_error": "stop", "store": "",
    }
    load_tiled = load()
    before = [embedding_job(folder, f"before_{item['slide_id']}", [item], settings,
                            args.threads) for item in items]
    load_before = load()
    after = embedding_job(folder, "after", items, settings, args.threads)
    load_after = load()

    n = len(items)
    splits = [split(job) for job in before]
    fixed_before = sum(fixed for fixed, _ in splits) / n
    tile_before = sum(per_tile for _, per_tile in splits) / n
    fixed_after, tile_after = split(after)

    print(f"\n2. before vs after through `python -m radpath.cli slide_embedding`: {n} slides "
          f"x {args.tiles_per_slide} tiles (tiled once in {tiling:.1f} s), encoder "
          f"{args.encoder} fp32, batch {args.batch}, num_workers 0, --threads {args.threads}, "
          f"device {after['slides'][0]['device']}; load average after tiling {load_tiled}, "
          f"after BEFORE {load_before}, after AFTER {load_after}")
    print(f"  BEFORE: {n} processes of 1 slide: wall " +
          ", ".join(f"{job['wall']:.1f}" for job in before) +
          f" s (total {sum(job['wall'] for job in before):.1f} s, CPU "
          f"{sum(job['cpu'] for job in before):.1f} s)")
    print(f"  AFTER:  1 process of {n} slides: wall {after['wall']:.1f} s (CPU "
          f"{after['cpu']:.1f} s); slides' seconds " +
          ", ".join(f"{s['seconds']:.1f}" for s in after["slides"]))
    print(f"  per tile on CPU (the slides' logged seconds / n_tiles: network, tile reads, "
          f"features file): before {tile_before:.3f} s, after {tile_after:.3f} s "
          f"({1 / tile_after:.2f} tiles/s)")
    if network_per_tile:
        print(f"    the network alone (section 1, a steady batch): "
              f"{network_per_tile:.3f} s/tile")
    if n > 1:
        later = sum(s["seconds"] for s in after["slides"][1:]) / (n - 1)
        print(f"    warm-up: the shard's first slide minus its later ones' mean "
              f"{after['slides'][0]['seconds'] - later:+.2f} s (in the slides' seconds, not fixed)")
    print("  fixed = wall - the slides' logged seconds (interpreter, imports, encoder, weights "
          "read + SHA-256, exit)")
    print(f"  fixed seconds per job:   before {fixed_before:6.2f} (jobs: " +
          ", ".join(f"{fixed:.2f}" for fixed, _ in splits) + f")   after {fixed_after:6.2f}")
    print(f"  fixed seconds per slide: before {fixed_before:6.2f}   after {fixed_after / n:6.2f} "
          f"(= {fixed_after:.2f} / {n})")
    if n > 1:
        extra = (fixed_after - fixed_before) / (n - 1)
        print(f"  check: fixed cost per extra slide of a shard (after - before) / {n - 1}: "
              f"{extra:+.2f} s (noise when near 0)")
    print(f"  features of the shard vs the one-slide jobs: max |diff| "
          f"{same_features(before, after):.2g}")

    gpu = args.gpu_tiles_per_s
    print(f"\n3. projected start-up share of a job, ASSUMING {gpu:g} tiles/s on the "
          f"accelerator (--gpu-tiles-per-s; a UNI-sized ViT-L on an H100 in bf16), with the "
          f"fixed seconds measured above on CPU (CUDA start-up NOT included)")
    header = f"  {'tiles/slide':>11s} {'GPU s/slide':>11s} {'1 slide/job':>12s}"
    header += "".join(f" {f'{k} slides/job':>14s}" for k in args.slides_per_job)
    print(header)
    worst = dict.fromkeys(args.slides_per_job, 0.0)
    for tiles in (5000, 10000, 20000):
        work = tiles / gpu
        row = f"  {tiles:11d} {work:11.1f} {100 * fixed_before / (fixed_before + work):11.1f}%"
        for k in args.slides_per_job:
            share = (fixed_after / k) / (fixed_after / k + work)
            worst[k] = max(worst[k], share)
            row += f" {100 * share:13.1f}%"
        print(row)
    print("  goal, start-up <= 5% of the job after (slides of 5,000 tiles or more): " + "; ".join(
        f"{k} slides/job {'met' if share <= 0.05 else 'NOT met'} (worst {100 * share:.1f}%)"
        for k, share in worst.items()))


def main(argv=None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    print(f"load average at start: {load()} ({os.cpu_count()} CPUs: another busy process "
          f"slows the timings)")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = save_random_weights(args.encoder, Path(tmp))
        print(f"encoder {args.encoder}: random weights {path.stat().st_size / 1e9:.2f} GB "
              f"saved as safetensors in {time.perf_counter() - start:.1f} s\n")
        network_per_tile = step_breakdown(args, path) if args.repeats > 0 else None
        before_after(args, path, Path(tmp), network_per_tile)
    print(f"\nload average at end: {load()}")


if __name__ == "__main__":
    main()
