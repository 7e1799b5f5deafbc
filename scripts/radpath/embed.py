"""Tile embedding: encoder building, a per-worker-handle tile Dataset, slide embedding to HDF5
(read back and pooled to patients by radpath.tile_features).

The GPU is kept busy by decoding tiles in DataLoader workers (each with its own OpenSlide
handle), shipping uint8 tiles (4x fewer bytes than float) through pinned memory, and
normalizing on the device under autocast. The same code runs on CPU.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import openslide
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from radpath.io import atomic_path
from radpath.wsi import (
    Slide,
    SlideError,
    check_tile_attrs,
    open_slide,
    read_coords_h5,
    read_tile,
)

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRUNCATED_RESNET = "resnet50_trunc"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PREFETCH_BATCHES = 4  # per worker


# ---------------------------------------------------------------------------- encoder


class EncoderError(ValueError):
    """The configured encoder or its weights cannot be used: a problem of the run's settings,
    so every slide job fails (radpath.jobs.is_bad_input) instead of excluding every slide."""

    excludes_item = False


@dataclass
class Encoder:
    """A feature extractor: model (eval mode), its input normalization and output size."""

    name: str
    model: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dim: int


def build_encoder(
    name: str,
    pretrained: bool | str = False,
    checkpoint: str | os.PathLike | None = "",
    seed: int = 0,
) -> Encoder:
    """`resnet50_trunc` (CLAM: ResNet50 up to layer3, average pooled, 1024-d) or any timm model.

    pretrained: True downloads hub weights (never in tests), False keeps a seeded random
    init, a string is a local checkpoint path (like `checkpoint`). Checkpoints load with
    torch.load(weights_only=True) and may be a plain state_dict or wrap one.
    """
    checkpoint_path = _checkpoint_path(pretrained, checkpoint)
    from_hub = pretrained is True and checkpoint_path is None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, mean, std, dim = _create_model(name, from_hub)
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path, name)
    return Encoder(name=name, model=model.eval(), mean=mean, std=std, dim=dim)


def _checkpoint_path(pretrained, checkpoint) -> Path | None:
    for value in (checkpoint, pretrained):
        if isinstance(value, str | os.PathLike) and str(value).strip():
            if str(value).strip().lower() in ("true", "false"):
                continue
            return Path(value)
    return None


def _create_model(name: str, from_hub: bool) -> tuple[nn.Module, tuple, tuple, int]:
    if name == TRUNCATED_RESNET:
        # torchvision's ImageNet weights, as CLAM uses; layer4 removed -> 1024 channels pooled.
        model = timm.create_model("resnet50.tv_in1k", pretrained=from_hub, num_classes=0)
        model.layer4 = nn.Identity()
        return model, IMAGENET_MEAN, IMAGENET_STD, 1024
    try:
        model = timm.create_model(name, pretrained=from_hub, num_classes=0)
    except RuntimeError as err:
        raise EncoderError(f"encoder {name!r}: not resnet50_trunc nor a timm model ({err})") from err
    data_cfg = timm.data.resolve_model_data_config(model)
    dim = getattr(model, "head_hidden_size", None) or model.num_features
    return model, tuple(data_cfg["mean"]), tuple(data_cfg["std"]), int(dim)


def load_checkpoint(model: nn.Module, path: Path, name: str) -> None:
    """Load a local state_dict into `model`; extra keys (a full ResNet's layer4/fc) are ignored."""
    if not path.is_file():
        raise EncoderError(f"encoder {name}: checkpoint {path} not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise EncoderError(f"encoder {name}: checkpoint {path} holds no state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise EncoderError(
            f"encoder {name}: checkpoint {path} does not fit the model: {err}"
        ) from err
    if result.missing_keys:
        raise EncoderError(
            f"encoder {name}: checkpoint {path} lacks {len(result.missing_keys)} weights "
            f"(e.g. {result.missing_keys[0]}); was it saved from this architecture?"
        )
    if result.unexpected_keys:
        log.info(
            "encoder %s: ignored %d checkpoint weights not in the model",
            name,
            len(result.unexpected_keys),
        )


# ---------------------------------------------------------------------------- dataset


class TileDataset(Dataset):
    """RGB uint8 tiles of one slide at the target mpp, read lazily.

    Each process (every DataLoader worker) opens its own OpenSlide handle on first use; a
    handle is never pickled. An unreadable tile is logged and returned with ok=False, and
    the handle is reopened (OpenSlide errors are sticky).
    """

    def __init__(
        self,
        slide_path: str | os.PathLike,
        slide_id: str,
        coords: np.ndarray,
        tiles_cfg: dict,
        mpp_override: float | None = None,
    ):
        self.slide_path = str(slide_path)
        self.slide_id = slide_id
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self.tiles_cfg = {
            "patch_size": int(tiles_cfg["patch_size"]),
            "mpp": float(tiles_cfg["mpp"]),
        }
        self.mpp_override = mpp_override
        self._slide: Slide | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, bool]:
        x, y = self.coords[index]
        try:
            tile = read_tile(self._handle(), x, y, self.tiles_cfg)
            return torch.from_numpy(tile), index, True
        except (openslide.OpenSlideError, SlideError) as err:  # I/O errors fail the job
            log.warning(
                "slide %s: tile %d at level-0 (%d, %d) unreadable, skipped: %s",
                self.slide_id,
                index,
                x,
                y,
                err,
            )
            self.close()  # OpenSlide errors are sticky: reopen for the next tile
            size = self.tiles_cfg["patch_size"]
            return torch.zeros((size, size, 3), dtype=torch.uint8), index, False

    def _handle(self) -> Slide:
        if self._slide is None or self._pid != os.getpid():
            self._slide = open_slide(self.slide_path, self.slide_id, self.mpp_override, check=False)
            self._pid = os.getpid()
        return self._slide

    def close(self) -> None:
        """Close this process's handle (workers' handles close when the workers exit)."""
        if self._slide is not None and self._pid == os.getpid():
            self._slide.close()
        self._slide = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_slide"] = None
        state["_pid"] = None
        return state


def collate_tiles(batch: list[tuple[torch.Tensor, int, bool]]):
    """Stack readable tiles; returns (tiles uint8 (B, H, W, 3), indices (B,), skipped indices)."""
    kept = [(tile, index) for tile, index, ok in batch if ok]
    skipped = torch.tensor([index for _, index, ok in batch if not ok], dtype=torch.int64)
    if not kept:
        return (
            torch.empty((0, 0, 0, 3), dtype=torch.uint8),
            torch.empty(0, dtype=torch.int64),
            skipped,
        )
    tiles = torch.stack([tile for tile, _ in kept])
    indices = torch.tensor([index for _, index in kept], dtype=torch.int64)
    return tiles, indices, skipped


def tile_loader(
    dataset: TileDataset, batch_size: int, num_workers: int, pin_memory: bool
) -> DataLoader:
    """Batches of (uint8 tiles, indices, skipped indices) from `num_workers` processes.

    No cv2.setNumThreads in a worker_init_fn: on a forked worker it destroys the thread pool
    inherited from the parent and hangs.
    """
    workers = max(0, int(num_workers))
    return DataLoader(
        dataset,
        batch_size=int(batch_size),
        shuffle=False,  # contiguous batches keep each worker's OpenSlide tile cache warm
        num_workers=workers,
        collate_fn=collate_tiles,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=PREFETCH_BATCHES if workers > 0 else None,
    )


# -------------------------------------------------------------------------- embedding


def cpu_budget(threads: int, num_workers: int, slide_id: str = "") -> tuple[int, int]:
    """(DataLoader workers, torch intra-op threads) for a job given `threads` CPUs.

    Each worker is a process that needs a CPU besides the main one, so at most threads - 1
    workers run: more are cut down with a warning rather than failing the job, as Snakemake
    may give a job fewer threads than configured (never more than --cores) and the workers
    do not change the features. The main process's torch gets the CPUs the workers leave
    (at least 1), whatever OMP_NUM_THREADS says.
    """
    threads = max(1, int(threads))
    workers = max(0, int(num_workers))
    if workers > threads - 1:
        log.warning(
            "slide %s: num_workers %d needs %d CPUs but the job has %d "
            "(pathology.threads, capped by --cores): using %d workers",
            slide_id, workers, workers + 1, threads, threads - 1,
        )
        workers = threads - 1
    return workers, max(1, threads - workers)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but CUDA is not available")
    return device


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes bf16 in hardware (AVX512-BF16 or AMX); Linux flags only."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Compute dtype under autocast: bf16 needs hardware support, fp16 is GPU only.

    On a CPU without native bf16, autocast emulates it about 20x slower than fp32
    (measured on an AVX2 machine), so mixed precision falls back to fp32 there.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: fp32 | bf16 | fp16")
    dtype = PRECISIONS[precision]
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return torch.float16
    if device.type != "cuda" and dtype == torch.float16:
        log.info("fp16 autocast is for GPUs; using fp32 on %s", device)
        return torch.float32
    if device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_native_bf16():
        log.info("this CPU has no native bf16; using fp32")
        return torch.float32
    return dtype


def to_model_input(tiles: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalized float (B, 3, H, W); the permute is channels_last already."""
    return (tiles.permute(0, 3, 1, 2).float() - mean) / std


def embed_tiles(
    loader: Iterable,
    n_tiles: int,
    encoder: Encoder,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the encoder over a tile loader: (features (N, D) float16, embedded (N,) bool)."""
    model = encoder.model.to(device).eval().to(memory_format=torch.channels_last)
    mean = torch.tensor(encoder.mean, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(encoder.std, device=device).view(1, 3, 1, 1) * 255.0
    features = torch.zeros((n_tiles, encoder.dim), dtype=torch.float16, device=device)
    embedded = torch.zeros(n_tiles, dtype=torch.bool, device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    with torch.inference_mode(), autocast:
        for tiles, indices, _skipped in loader:
            if len(indices) == 0:
                continue
            x = to_model_input(tiles.to(device, non_blocking=True), mean, std)
            out = model(x)
            if out.ndim != 2 or out.shape[1] != encoder.dim:
                raise ValueError(
                    f"encoder {encoder.name}: output {tuple(out.shape)}, "
                    f"expected (B, {encoder.dim})"
                )
            rows = indices.to(device, non_blocking=True)
            features[rows] = out.to(torch.float16)  # stays on the device: no per-batch sync
            embedded[rows] = True
    return features.cpu().numpy(), embedded.cpu().numpy()


def embed_slide(
    slide_path: str | os.PathLike,
    slide_id: str,
    coords_h5: str | os.PathLike,
    out_h5: str | os.PathLike,
    emb_cfg: dict,
    tiles_cfg: dict,
    device: str | torch.device | None = None,
    mpp_override: float | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> dict:
    """Embed every tile of `coords_h5` and write `features`/`coords` HDF5 atomically.

    `threads`: the CPUs of this job (see `cpu_budget`); None leaves torch's thread count
    and the configured workers alone. Unreadable tiles are skipped, counted and stored as
    `skipped_coords`; all tiles unreadable -> SlideError. Returns n_tiles, n_skipped,
    seconds, tiles_per_s, device, num_workers, torch_threads.
    """
    start = time.perf_counter()
    device = resolve_device(device)
    num_workers = emb_cfg.get("num_workers", 2)
    if threads is not None:
        num_workers, torch_threads = cpu_budget(threads, num_workers, slide_id)
        torch.set_num_threads(torch_threads)
        log.info(
            "slide %s: %d CPUs: %d DataLoader workers, %d torch threads on %s",
            slide_id, threads, num_workers, torch.get_num_threads(), device,
        )
    coords, tile_attrs = read_coords_h5(coords_h5)
    with open_slide(slide_path, slide_id, mpp_override) as slide:
        check_tile_attrs(tile_attrs, tiles_cfg, f"{slide.label()}, {coords_h5}", slide.mpp)
    encoder = build_encoder(
        emb_cfg["model"], emb_cfg.get("pretrained", False), emb_cfg.get("checkpoint", ""), seed
    )
    precision = str(emb_cfg.get("precision", "fp32"))
    dtype = autocast_dtype(precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed tile size: let cuDNN pick the fastest kernels
    dataset = TileDataset(slide_path, slide_id, coords, tiles_cfg, mpp_override)
    loader = tile_loader(
        dataset,
        emb_cfg.get("batch_size", 64),
        num_workers,
        pin_memory=device.type == "cuda",
    )
    log.info(
        "slide %s: embedding %d tiles with %s on %s (%s)",
        slide_id, len(coords), encoder.name, device, _dtype_name(dtype),
    )
    try:
        features, embedded = embed_tiles(loader, len(coords), encoder, device, dtype)
    finally:
        dataset.close()
    n_skipped = int((~embedded).sum())
    if not embedded.any():
        raise SlideError(f"slide {slide_id} ({slide_path}): all {len(coords)} tiles unreadable")
    attrs = {
        "encoder": encoder.name,
        "feature_dim": encoder.dim,
        "precision": _dtype_name(dtype),
        "device": device.type,
        "n_skipped": n_skipped,
    }
    write_features_h5(
        out_h5, features[embedded], coords[embedded], coords[~embedded], tile_attrs, attrs
    )
    seconds = time.perf_counter() - start
    return {
        "slide_id": slide_id,
        "n_tiles": int(embedded.sum()),
        "n_skipped": n_skipped,
        "seconds": seconds,
        "tiles_per_s": len(coords) / seconds if seconds > 0 else float("nan"),
        "device": str(device),
        "num_workers": int(num_workers),
        "torch_threads": torch.get_num_threads(),
    }


def _dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in PRECISIONS.items()}[dtype]


# ---------------------------------------------------------------------------- HDF5


def write_features_h5(
    path: str | os.PathLike,
    features: np.ndarray,
    coords: np.ndarray,
    skipped_coords: np.ndarray,
    tile_attrs: dict,
    attrs: dict,
) -> None:
    """Atomically write `features` (N, D) float16, `coords` (N, 2) and `skipped_coords`."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("features", data=np.asarray(features, dtype=np.float16))
        coords_ds = h5.create_dataset(
            "coords", data=np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        )
        coords_ds.attrs.update(tile_attrs)
        h5.create_dataset(
            "skipped_coords", data=np.asarray(skipped_coords, dtype=np.int64).reshape(-1, 2)
        )
        h5.attrs.update(tile_attrs)
        h5.attrs.update(attrs)
        h5["features"].attrs.update(attrs)
