"""Tile embedding: a per-worker-handle tile Dataset and slide embedding to HDF5 (read back and
pooled to patients by radpath.pathology.feature_files); encoders and their weights: radpath.pathology.encoders.

The GPU is kept busy by decoding tiles in DataLoader workers (each with its own OpenSlide
handle), shipping uint8 tiles (4x fewer bytes than float) through pinned memory, and
normalizing on the device under autocast. The same code runs on CPU.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

# A job never downloads: weights are local files (radpath.pathology.encoders). Set before timm (via
# radpath.pathology.encoders) imports huggingface_hub, which reads it once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import h5py
import numpy as np
import openslide
import torch
from torch.utils.data import DataLoader, Dataset

from radpath.inputs.io import atomic_path
from radpath.nn.training import resolve_device
from radpath.pathology.encoders import (
    Encoder,
    EncoderError,
    EncoderSpec,
    build_encoder,
    encoder_spec,
)
from radpath.pathology.wsi import (
    Slide,
    SlideError,
    check_tile_attrs,
    open_slide,
    read_coords_h5,
    read_tile,
)

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PREFETCH_BATCHES = 4  # per worker


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
    encoder: Encoder | None = None,
) -> dict:
    """Embed every tile of `coords_h5` and write `features`/`coords` HDF5 atomically.

    emb_cfg: `encoder` (radpath.pathology.encoders.REGISTRY or a timm name), `weights` ("random" or a
    local file), `timm_kwargs`, `ignore_keys`, `batch_size`, `num_workers`, `precision`.
    The features carry the encoder's provenance (weights file and its sha256) as attributes.
    `threads`: the CPUs of this job (see `cpu_budget`); None leaves torch's thread count
    and the configured workers alone. Unreadable tiles are skipped, counted and stored as
    `skipped_coords`; all tiles unreadable -> SlideError. `encoder`: one already built
    from emb_cfg (a batch of slides, `embed_slides`). Returns n_tiles, n_skipped,
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
    spec = encoder_spec(emb_cfg["encoder"], emb_cfg.get("timm_kwargs") or {})
    check_tile_size(spec, tiles_cfg)
    coords, tile_attrs = read_coords_h5(coords_h5)
    with open_slide(slide_path, slide_id, mpp_override) as slide:
        check_tile_attrs(tile_attrs, tiles_cfg, f"{slide.label()}, {coords_h5}", slide.mpp)
    if encoder is None:
        encoder = build_configured_encoder(emb_cfg, seed)
    precision = str(emb_cfg.get("precision", "fp32"))
    dtype = autocast_dtype(precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed tile size: let cuDNN pick the fastest kernels
    log.info(
        "slide %s: embedding %d tiles with %s on %s (%s)",
        slide_id, len(coords), encoder.name, device, _dtype_name(dtype),
    )
    with slide_tile_batches(slide_path, slide_id, coords, tiles_cfg, mpp_override,
                            emb_cfg.get("batch_size", 64), num_workers, device) as loader:
        features, embedded = embed_tiles(loader, len(coords), encoder, device, dtype)
    check_any_read(embedded, slide_id, slide_path, coords_h5)
    n_skipped = int((~embedded).sum())
    attrs = {
        **encoder.provenance,
        "precision": _dtype_name(dtype),
        "device": device.type,
        "n_skipped": n_skipped,
    }
    write_features_h5(
        out_h5, features[embedded], coords[embedded], coords[~embedded], tile_attrs, attrs
    )
    return slide_job_summary(slide_id, embedded, start, device, num_workers)


def build_configured_encoder(emb_cfg: dict, seed: int) -> Encoder:
    """The encoder of `emb_cfg` with its weights (random weights drawn from `seed`)."""
    return build_encoder(
        emb_cfg["encoder"],
        emb_cfg["weights"],
        emb_cfg.get("timm_kwargs") or {},
        emb_cfg.get("ignore_keys") or (),
        seed,
    )


def embed_slides(
    slides: list[dict],
    emb_cfg: dict,
    tiles_cfg: dict,
    on_error: str,
    seed: int = 0,
    threads: int | None = None,
    store: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> None:
    """Embed a shard of slides in one process, the encoder built once (at the first slide
    that is not re-used), each slide as `embed_slide` in a job of its own.

    slides: [{slide_id, slide, mpp (None = from the slide), coords, out}]. Each slide's
    failure is handled by radpath.inputs.runtime.run_batch (on_error as for one slide).
    `store`: the re-use store (radpath.inputs.reuse) of finished slides, or None.
    """
    device = resolve_device(device)
    emb_cfg = dict(emb_cfg)
    if threads is not None:
        emb_cfg["num_workers"], torch_threads = cpu_budget(
            threads, emb_cfg.get("num_workers", 2), f"shard of {len(slides)}"
        )
        torch.set_num_threads(torch_threads)
        log.info("%d slides, %d CPUs: %d DataLoader workers, %d torch threads on %s",
                 len(slides), threads, emb_cfg["num_workers"], torch.get_num_threads(), device)
    result_settings = {
        "embedding": {k: v for k, v in emb_cfg.items() if k not in ("batch_size", "num_workers")},
        "tiles": tiles_cfg,
        "seed": seed,
        "device": device.type,
    }
    encoder = functools.cache(lambda: build_configured_encoder(emb_cfg, seed))

    def embed(item: dict) -> None:
        summary = embed_slide(
            item["slide"], item["slide_id"], item["coords"], item["out"], emb_cfg, tiles_cfg,
            device=device, mpp_override=item["mpp"], seed=seed, encoder=encoder(),
        )
        log.info("embedding summary: %s", summary)

    run_shard(slides, embed, on_error, store, result_settings)


def run_shard(
    slides: list[dict],
    process: Callable[[dict], None],
    on_error: str,
    store: str | os.PathLike | None,
    result_settings: dict,
    extra_inputs: Iterable[str | os.PathLike] = (),
) -> None:
    """`process` each slide of a shard ({slide_id, slide, mpp, coords, out}) as in a job of
    its own (radpath.inputs.runtime.run_batch), or link its `out` back from `store` while
    its slide, coords, `extra_inputs` and `result_settings` are unchanged
    (radpath.inputs.reuse)."""
    from radpath.inputs.reuse import reuse_key, reuse_or_make
    from radpath.inputs.runtime import run_batch

    def one(item: dict) -> None:
        key = reuse_key(result_settings, [item["slide"], item["coords"], *extra_inputs])
        reuse_or_make(store, item["slide_id"], key, [item["out"]], lambda: process(item))

    run_batch(
        [(item["slide_id"], lambda item=item: one(item), [item["out"]], [item["coords"]])
         for item in slides],
        "slide_id",
        on_error,
    )


@contextmanager
def slide_tile_batches(
    slide_path: str | os.PathLike,
    slide_id: str,
    coords: np.ndarray,
    tiles_cfg: dict,
    mpp_override: float | None,
    batch_size: int,
    num_workers: int,
    device: torch.device,
) -> Iterator[DataLoader]:
    """The slide's tiles in batches (TileDataset + tile_loader) for a GPU job's slide;
    this process's slide handle is closed afterwards."""
    dataset = TileDataset(slide_path, slide_id, coords, tiles_cfg, mpp_override)
    try:
        yield tile_loader(dataset, batch_size, num_workers, pin_memory=device.type == "cuda")
    finally:
        dataset.close()


def check_any_read(done: np.ndarray, slide_id: str, slide_path, coords_h5) -> None:
    """SlideError when not one tile of the slide could be read."""
    if not done.any():
        raise SlideError(
            f"slide {slide_id} ({slide_path}): all {len(done)} tiles of {coords_h5} unreadable"
        )


def slide_job_summary(
    slide_id: str, done: np.ndarray, start: float, device: torch.device, num_workers: int
) -> dict:
    """What a GPU job logs per slide: tiles done and skipped, seconds, tiles/s, device."""
    seconds = time.perf_counter() - start
    return {
        "slide_id": slide_id,
        "n_tiles": int(done.sum()),
        "n_skipped": int((~done).sum()),
        "seconds": seconds,
        "tiles_per_s": len(done) / seconds if seconds > 0 else float("nan"),
        "device": str(device),
        "num_workers": int(num_workers),
        "torch_threads": torch.get_num_threads(),
    }


def check_tile_size(spec: EncoderSpec, tiles_cfg: dict) -> None:
    """EncoderError when the encoder takes one tile size and the tiles have another."""
    patch_size = int(tiles_cfg["patch_size"])
    if spec.input_size and spec.input_size != patch_size:
        raise EncoderError(
            f"encoder {spec.name} takes {spec.input_size} px tiles but "
            f"pathology.tiles.patch_size is {patch_size}: set it to {spec.input_size}"
        )


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
