"""Synthesis (Lung-DDPM) throughput (run by hand, not by pytest).

    .venv/bin/python tests/bench/bench_synthesis.py                    # CPU, demo-sized
    .venv/bin/python tests/bench/bench_synthesis.py --device cuda --size 128 \
        --channels 64 128 256 256 --attention 0 0 1 1 --norm-groups 32 --head-channels 32 \
        --batch-size 1 --steps 50 --sampling-steps 250

Prints training steps/s (radpath.synthesis.diffusion.train_ddpm on random volumes and layouts held
in host memory, the real loop: batch copy, noising, UNet forward/backward, AdamW, EMA),
seconds per sampled volume (radpath.synthesis.diffusion.sample_volume, RePaint on half the volume),
and on CUDA the peak GPU memory of each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_embedding import device_name, synchronize  # noqa: E402

from radpath.synthesis import diffusion  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--attention", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--norm-groups", type=int, default=8)
    parser.add_argument("--head-channels", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--sampling-steps", type=int, default=50)
    parser.add_argument("--n-volumes", type=int, default=8)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    settings = {
        "network": "monai_ddpm_unet", "size": args.size, "channels": args.channels,
        "attention_levels": [bool(a) for a in args.attention], "num_res_blocks": 1,
        "norm_groups": args.norm_groups, "head_channels": args.head_channels,
        "timesteps": 250, "schedule": "cosine", "steps": args.steps,
        "batch_size": args.batch_size, "learning_rate": 1e-4, "ema_decay": 0.9999,
        "precision": args.precision, "log_every": max(1, args.steps // 5),
    }
    rng = np.random.default_rng(0)
    shape = (args.n_volumes, args.size, args.size, args.size)
    volumes = rng.uniform(-1, 1, shape).astype(np.float32)
    layouts = rng.integers(0, 3, shape).astype(np.uint8)
    print(f"device: {device_name(device)}; {args.size}^3, channels {args.channels}, "
          f"batch {args.batch_size}, {args.precision}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # one warm-up step (CUDA kernels, MONAI imports), then the timed run
    diffusion.train_ddpm(volumes, layouts, settings | {"steps": 1, "log_every": 1}, 0,
                         patient_ids=[str(i) for i in range(len(volumes))], device=device)
    synchronize(device)
    start = time.perf_counter()
    trained = diffusion.train_ddpm(volumes, layouts, settings, 0,
                                   patient_ids=[str(i) for i in range(len(volumes))],
                                   device=device)
    synchronize(device)
    seconds = time.perf_counter() - start
    print(f"training: {args.steps / seconds:.2f} steps/s ({seconds / args.steps:.3f} s/step)")
    if device.type == "cuda":
        print(f"training peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
        torch.cuda.reset_peak_memory_stats(device)
    region = np.zeros(shape[1:], bool)
    region[:, args.size // 2:] = True
    start = time.perf_counter()
    diffusion.sample_volume(trained, layouts[0], volumes[0], region,
                            steps=args.sampling_steps, seed=1, device=device)
    synchronize(device)
    seconds = time.perf_counter() - start
    print(f"sampling: {seconds:.2f} s per volume ({args.sampling_steps} steps, "
          f"{seconds / args.sampling_steps * 1000:.1f} ms/step)")
    if device.type == "cuda":
        print(f"sampling peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
