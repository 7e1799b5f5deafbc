"""Fixed cost of one slide-embedding job against its per-tile cost (run by hand, not by pytest).

    .venv/bin/python tests/bench/bench_embedding_startup.py                 # ViT-L (UNI shape)
    .venv/bin/python tests/bench/bench_embedding_startup.py --encoder resnet50_trunc --tiles 64

A job is a new process: it imports torch and radpath, builds the encoder, reads and checks
its weights (SHA-256 for the provenance, strict key check), starts CUDA, then embeds tiles.
This times each of those steps in a fresh process, with the encoder's architecture and random
weights saved as safetensors (as `stage_encoder_weights` writes them), then the network alone
per tile. It prints the fixed seconds per job, the seconds per tile, and the share of a job
that is start-up for slides of 5,000, 10,000 and 20,000 tiles at the measured per-tile speed
and, with --gpu-tiles-per-s, at a given accelerator's speed (e.g. what bench_embedding.py
measured on a GPU).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
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
x = torch.rand(batch, 3, spec.input_size, spec.input_size, device=dev)
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
    parser.add_argument("--batch", type=int, default=8, help="tiles per timed forward pass")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes timed")
    parser.add_argument("--gpu-tiles-per-s", type=float, default=0.0,
                        help="an accelerator's end-to-end tiles/s, for the projected share")
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


def main(argv=None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory() as tmp:
        path = save_random_weights(args.encoder, Path(tmp))
        size_gb = path.stat().st_size / 1e9
        runs = []
        for _ in range(args.repeats):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, args.encoder, str(path), str(args.batch),
                 args.device], cwd=REPO, capture_output=True, text=True, check=True,
                env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = {key: min(run[key] for run in runs) for key in runs[0]}
    fixed = sum(best[k] for k in ("imports", "read_weights", "build_and_load", "sha256",
                                  "to_device"))
    fixed += best["first_batch"] - best["steady_batch"]  # warm-up beyond a steady batch
    per_tile = best["steady_batch"] / args.batch
    print(f"encoder {args.encoder}, weights {size_gb:.2f} GB, device {args.device}, "
          f"best of {args.repeats} fresh processes")
    for key in ("imports", "read_weights", "build_and_load", "sha256", "to_device",
                "first_batch", "steady_batch"):
        print(f"  {key:15s} {best[key]:7.2f} s")
    print(f"fixed cost per job: {fixed:.2f} s; per tile: {per_tile * 1e3:.1f} ms "
          f"({1 / per_tile:.1f} tiles/s on {args.device})")
    for tiles in (5000, 10000, 20000):
        share = fixed / (fixed + tiles * per_tile)
        line = f"  slide of {tiles:6d} tiles: start-up {100 * share:5.1f}% of the job"
        if args.gpu_tiles_per_s:
            gpu_share = fixed / (fixed + tiles / args.gpu_tiles_per_s)
            line += f"; at {args.gpu_tiles_per_s:g} tiles/s: {100 * gpu_share:5.1f}%"
        print(line)


if __name__ == "__main__":
    main()
