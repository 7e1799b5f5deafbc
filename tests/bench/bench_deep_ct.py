"""Deep CT training throughput (run by hand, not by pytest).

    .venv/bin/python tests/bench/bench_deep_ct.py                       # CPU, demo-sized
    .venv/bin/python tests/bench/bench_deep_ct.py --device cuda --grid 48 --width 64 \
        --network resnet18 --batch-size 16 --n-patients 512

Prints volumes/s of (a) the network alone: a training step (forward, Cox loss, backward,
AdamW) on random tensors of the cubes' shape already on the device, and (b) training end
to end (radpath.deep.training.train_member on float16 cubes in host memory: batch copy to the
device, MONAI augmentation on the device, the step, and the evaluation of 8 inner patients per epoch),
and their ratio (1.0 = the data path never makes the accelerator wait).
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

from radpath.deep import networks
from radpath.deep import training as deep_training  # noqa: E402
from radpath.nn import training as nn_training


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--network", default="resnet10", choices=sorted(networks.NETWORKS))
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--channels", type=int, default=6, help="3 scales x (CT, mask)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-patients", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def network_alone(args, device: torch.device) -> float:
    """Volumes/s of training steps on tensors already on the device."""
    model = networks.build_network(args.network, args.channels, args.width, seed=0).to(device)
    settings = deep_training.training_settings({"learning_rate": 1e-3, "epochs": args.epochs})
    optimizer, _ = deep_training.make_optimizer(model, settings)
    x = torch.randn(args.batch_size, args.channels, *(args.grid,) * 3, device=device)
    time_ = torch.rand(args.batch_size, device=device)
    event = torch.ones(args.batch_size, device=device)
    dtype = nn_training.autocast_dtype(args.precision, device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            risk = model(x).float().squeeze(1)
        loss = deep_training.cox_partial_likelihood_loss(risk, time_, event)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    synchronize(device)
    steps = max(5, args.n_patients // args.batch_size)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return steps * args.batch_size / (time.perf_counter() - start)


def end_to_end(args, device: torch.device) -> float:
    """Volumes/s of train_member's epochs (the mean training seconds per epoch it logs)."""
    rng = np.random.default_rng(0)
    n = args.n_patients
    cubes = rng.random((n, args.channels, *(args.grid,) * 3), dtype=np.float32).astype(np.float16)
    channels = [f"{kind}@{edge}mm" for edge in (50, 37.5, 25) for kind in ("ct", "mask")]
    channels = channels[:args.channels]
    time_, event = rng.uniform(1, 60, n), (rng.random(n) < 0.6).astype(int)
    fit, inner = np.arange(0, n - 8), np.arange(n - 8, n)
    settings = deep_training.training_settings({
        "epochs": args.epochs, "batch_size": args.batch_size, "precision": args.precision,
        "width": args.width, "networks": [args.network],
    })
    trained = deep_training.train_member(cubes, time_, event, fit, inner, settings, seed=0,
                                   network=args.network, channels=channels, device=device)
    seconds = trained.history["seconds"].iloc[1:].mean()  # the first epoch warms up
    return len(fit) / seconds


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = nn_training.resolve_device(args.device)
    alone = network_alone(args, device)
    whole = end_to_end(args, device)
    print(f"device: {device_name(device)}; {args.network} width {args.width}, "
          f"{args.channels} x {args.grid}^3, batch {args.batch_size}, {args.precision}")
    print(f"network alone: {alone:.1f} volumes/s")
    print(f"end to end:    {whole:.1f} volumes/s ({whole / alone:.0%} of the network alone)")


if __name__ == "__main__":
    main()
