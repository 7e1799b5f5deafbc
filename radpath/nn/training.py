"""Helpers shared by the torch training loops (radpath.pathology.contrastive's PathoSig clustering,
radpath.deep.training's 3D CNNs) and radpath.pathology.embedding: the device, the optimizer step, checksums
and atomic saves of weights, and per-epoch checkpoint files that a killed run resumes from.

Only the standard library and torch (and radpath.inputs.io): the deep CT rules run in
envs/deep.yaml, which has neither h5py, openslide nor torchvision.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import signal
import threading
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from radpath.inputs.io import atomic_path
from radpath.inputs.runtime import sigterm_to_system_exit

CHECKPOINT_PATTERN = re.compile(r"^epoch_(\d{4,})\.pt$")
CHECKPOINTS_KEPT = 2


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but CUDA is not available")
    return device


def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler) -> None:
    """One optimizer step on `loss` (gradients cleared first), through the (fp16) scaler."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def state_checksum(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for key, value in state.items():
        tensor = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}:{tuple(value.shape)}:{value.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_atomically(payload: object, path: str | os.PathLike) -> Path:
    """torch.save `payload` to `path` through a temporary file (radpath.inputs.io.atomic_path)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def checkpoint_path(checkpoint_dir: str | os.PathLike, epoch: int) -> Path:
    return Path(checkpoint_dir) / f"epoch_{epoch:04d}.pt"


def list_checkpoints(checkpoint_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(epoch, path) of the checkpoint files in a folder, newest first."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := CHECKPOINT_PATTERN.match(p.name)) and p.is_file()]
    return sorted(found, reverse=True)


def find_resumable_checkpoint(
    checkpoint_dir: str | os.PathLike,
    fingerprint: str,
    epochs: int,
    *,
    checkpoint_format: str,
    kind: str,
    other_inputs: str,
    too_many_epochs: str,
    logger: logging.Logger,
    mmap: bool = False,
) -> tuple[Path, dict] | None:
    """The newest checkpoint of this training and its path: format `checkpoint_format`, the
    same fingerprint, at most `epochs` epochs and the epoch its name says. Every newer file
    is logged (to `logger`) as ignored: unreadable; "is not a `kind` checkpoint"; "was made
    with `other_inputs`" (what else the fingerprint covers, and what happens to the file);
    or `too_many_epochs` (a message with one %d, the epochs asked for).

    Loaded on the CPU; `mmap` maps the file instead of reading it, so that looking at a
    foreign checkpoint's fingerprint does not read its weights.
    """
    for epoch, path in list_checkpoints(checkpoint_dir):
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as err:  # truncated or foreign files fail in many ways
            logger.warning("checkpoint %s unreadable, ignored: %s", path,
                           str(err).splitlines()[0] if str(err) else type(err).__name__)
            continue
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != checkpoint_format:
            logger.warning("checkpoint %s is not a %s checkpoint, ignored", path, kind)
        elif checkpoint.get("fingerprint") != fingerprint:
            logger.warning("checkpoint %s was made with %s", path, other_inputs)
        elif epoch > epochs or int(checkpoint["epoch"]) != epoch:
            logger.warning("checkpoint %s " + too_many_epochs, path, epochs)
        else:
            return path, checkpoint
    return None


def write_checkpoint(checkpoint_dir: str | os.PathLike, epoch: int, checkpoint: dict) -> Path:
    """Write epoch `epoch`'s checkpoint atomically and delete all others (foreign ones too)
    but the previous epoch's (CHECKPOINTS_KEPT = 2)."""
    path = save_atomically(checkpoint, checkpoint_path(checkpoint_dir, epoch))
    kept = {checkpoint_path(checkpoint_dir, e)
            for e in range(epoch - CHECKPOINTS_KEPT + 1, epoch + 1)}
    for _, other in list_checkpoints(checkpoint_dir):
        if other not in kept:
            other.unlink(missing_ok=True)
    return path


def remove_partial_checkpoints(checkpoint_dir: str | os.PathLike) -> None:
    """Delete the temporary files (radpath.inputs.io.atomic_path's) of a run killed mid-write."""
    folder = Path(checkpoint_dir)
    if folder.is_dir():
        for path in folder.glob(".tmp-*-epoch_*.pt"):
            path.unlink(missing_ok=True)


def derive_seed(seed: int, *parts: int | str) -> int:
    """A 32-bit seed from `seed` and labels (strings by CRC-32): independent streams."""
    words = [int(seed) % 2**64] + [
        zlib.crc32(p.encode()) if isinstance(p, str) else int(p) % 2**64 for p in parts
    ]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint32)[0])


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Training compute dtype: bf16 / fp16 autocast on CUDA only (bf16 falls back to fp16
    where the GPU lacks it); the CPU always computes in fp32."""
    if device.type != "cuda" or precision == "fp32":
        return torch.float32
    if precision == "bf16" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic algorithms on CPU (restored afterwards). On CUDA the fast cuDNN kernels
    stay: a GPU run is reproducible in protocol, not bit for bit."""
    if device.type != "cpu":
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """While training, SIGTERM raises SystemExit (as radpath.inputs.runtime.setup_logging
    arranges for every job) when no handler is installed, so temporary files are removed and the
    last complete checkpoint stays; only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        yield
        return
    signal.signal(signal.SIGTERM, sigterm_to_system_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's weights on the CPU (for checkpoints)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
