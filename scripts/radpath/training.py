"""Helpers shared by the torch training loops (radpath.contrastive's PathoSig clustering,
radpath.deep_ct's 3D CNNs) and radpath.embed: the device, the optimizer step, checksums
and atomic saves of weights, and per-epoch checkpoint files that a killed run resumes from.

Only the standard library and torch (and radpath.io): the deep CT rules run in
envs/deep.yaml, which has neither h5py, openslide nor torchvision.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from radpath.io import atomic_path

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
    """torch.save `payload` to `path` through a temporary file (radpath.io.atomic_path)."""
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
    """Delete the temporary files (radpath.io.atomic_path's) of a run killed mid-write."""
    folder = Path(checkpoint_dir)
    if folder.is_dir():
        for path in folder.glob(".tmp-*-epoch_*.pt"):
            path.unlink(missing_ok=True)
