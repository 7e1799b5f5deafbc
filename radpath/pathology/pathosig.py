"""PathoSig (the SCLC study's histomorphological phenotype clusters, HPCs), cohort steps.

- `sample_training_tiles`: the tiles the clustering network trains on, sampled (seeded)
  from the slides of TRAINING patients only, into one HDF5 file.
- `hpc_tables`: each slide's tile clusters -> per-slide and per-patient (tile-weighted)
  cluster proportions that sum to 1: the feature block `pathomics_hpc`.
- `write_mosaics`: for each cluster, a grid of its most typical tiles (highest cluster
  probability), read from the slides at their coordinates, for pathologists to name it.

The network, its training and the per-slide assignment are in radpath.pathology.contrastive.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections import defaultdict
from pathlib import Path

import cv2
import h5py
import numpy as np
import openslide
import pandas as pd

from radpath.inputs.io import atomic_path, atomic_write
from radpath.inputs.runtime import exclusion_reason
from radpath.pathology.wsi import (
    SlideError,
    open_slide,
    read_coords_h5,
    read_tile,
    resize_rgb,
)

log = logging.getLogger(__name__)

MOSAIC_TILE_PX = 96  # side of one tile in a cluster mosaic


def hpc_column(cluster: int) -> str:
    """The block's column of cluster index `cluster` (0-based): hpc_01, hpc_02, ..."""
    return f"hpc_{cluster + 1:02d}"


def slide_seed(seed: int, slide_id: str) -> np.random.Generator:
    """A slide's own random stream: its sample does not change when other slides come or go."""
    return np.random.default_rng([seed, zlib.crc32(slide_id.encode("utf-8"))])


# ------------------------------------------------------------------------ training tiles


def sample_training_tiles(
    slides: dict[str, dict],
    tiles_cfg: dict,
    tiles_per_slide: int,
    seed: int,
    out_h5: str | Path,
) -> dict:
    """Read a seeded sample of tiles of each slide into `out_h5` (written atomically).

    `slides`: slide_id -> {"path", "coords" (its coords.h5), "mpp" (override or None)}; the
    caller passes the training patients' slides only. Slides a tiling job excluded are
    skipped (logged); an unreadable tile is skipped and counted. Datasets: `tiles` uint8
    (n, patch, patch, 3), `slide_id` (n,), `coords` (n, 2) level 0; attributes patch_size,
    mpp, tiles_per_slide, seed, n_slides, n_skipped.
    """
    plan, skipped_slides = {}, []
    for slide_id in sorted(slides):
        info = slides[slide_id]
        reason = exclusion_reason(info["coords"])
        if reason is not None:
            log.warning("slide %s excluded upstream, no training tiles: %s", slide_id, reason)
            skipped_slides.append(slide_id)
            continue
        coords, _ = read_coords_h5(info["coords"])
        n = min(len(coords), int(tiles_per_slide))
        if n == 0:
            continue
        picks = np.sort(slide_seed(seed, slide_id).choice(len(coords), n, replace=False))
        plan[slide_id] = coords[picks]
    total = sum(len(c) for c in plan.values())
    if total == 0:
        raise ValueError(
            "pathosig: no tiles to train on: none of the "
            f"{len(slides)} training slides has usable tiles"
        )
    size = int(tiles_cfg["patch_size"])
    n_written, n_skipped = 0, 0
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as h5:
        tiles = h5.create_dataset(
            "tiles", (total, size, size, 3), np.uint8, chunks=(1, size, size, 3),
            maxshape=(None, size, size, 3),
        )
        ids, coords_out = [], []
        for slide_id, coords in plan.items():
            info = slides[slide_id]
            slide = open_slide(info["path"], slide_id, info.get("mpp"))
            try:
                for x, y in coords:
                    try:
                        tiles[n_written] = read_tile(slide, x, y, tiles_cfg)
                    except (openslide.OpenSlideError, SlideError) as err:
                        log.warning("slide %s: tile at (%d, %d) unreadable, skipped: %s",
                                    slide_id, x, y, err)
                        n_skipped += 1
                        slide.close()  # OpenSlide errors are sticky: reopen for the next tile
                        slide = open_slide(info["path"], slide_id, info.get("mpp"), check=False)
                        continue
                    ids.append(slide_id)
                    coords_out.append((x, y))
                    n_written += 1
            finally:
                slide.close()
        if n_written < total:
            tiles.resize(n_written, axis=0)
        h5.create_dataset("slide_id", data=np.array(ids, dtype=object),
                          dtype=h5py.string_dtype())
        h5.create_dataset("coords", data=np.asarray(coords_out, np.int64).reshape(-1, 2))
        h5.attrs.update({
            "patch_size": size, "mpp": float(tiles_cfg["mpp"]),
            "tiles_per_slide": int(tiles_per_slide), "seed": int(seed),
            "n_slides": len(plan), "n_skipped": n_skipped,
        })
    summary = {"n_tiles": n_written, "n_slides": len(plan), "n_skipped": n_skipped,
               "excluded_slides": skipped_slides}
    log.info("training tiles: %s", summary)
    return summary


def read_training_tiles(path: str | Path) -> tuple[h5py.File, h5py.Dataset, np.ndarray]:
    """(open file, its `tiles` dataset, slide ids): the caller closes the file."""
    h5 = h5py.File(path, "r")
    return h5, h5["tiles"], h5["slide_id"].asstr()[:]


# -------------------------------------------------------------------------- proportions


def hpc_tables(
    cluster_counts: dict[str, np.ndarray], slide_patients: dict[str, str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-slide table, per-patient block) of cluster proportions that sum to 1.

    A patient's proportions pool the tiles of all its slides (tile-weighted: a slide with
    more tissue counts more). The per-slide table also has n_tiles.
    """
    if not cluster_counts:
        raise ValueError("pathomics_hpc: no slide has cluster assignments")
    lengths = {len(c) for c in cluster_counts.values()}
    if len(lengths) != 1:
        raise ValueError(f"pathomics_hpc: slides were assigned with different K: {sorted(lengths)}")
    k = lengths.pop()
    columns = [hpc_column(i) for i in range(k)]
    counts = pd.DataFrame(
        np.stack([np.asarray(c, float) for c in cluster_counts.values()]),
        index=pd.Index(list(cluster_counts), name="slide_id"), columns=columns,
    )
    empty = counts.index[counts.sum(axis=1) == 0]
    if len(empty):
        raise ValueError(f"pathomics_hpc: slide {empty[0]} has no assigned tiles")
    slides = counts.div(counts.sum(axis=1), axis=0)
    slides.insert(0, "n_tiles", counts.sum(axis=1).astype(int))
    slides.insert(0, "patient_id", [slide_patients[s] for s in counts.index])
    by_patient = counts.groupby([slide_patients[s] for s in counts.index]).sum()
    patients = by_patient.div(by_patient.sum(axis=1), axis=0).sort_index()
    patients.index.name = "patient_id"
    return slides, patients


# ------------------------------------------------------------------------------ mosaics


def typical_tiles(
    assignments: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    n_clusters: int,
    n_tiles: int,
) -> dict[int, list[tuple[str, int, int, float]]]:
    """Per cluster, its `n_tiles` most typical tiles as (slide, x, y, probability).

    Most typical = highest cluster probability; at most ceil(n_tiles / 4) from one slide, so
    a mosaic shows a cluster across patients rather than one slide's corner.
    """
    per_slide_cap = max(1, math.ceil(n_tiles / 4))
    candidates: dict[int, list] = defaultdict(list)
    for slide_id in sorted(assignments):
        coords, cluster, probability = assignments[slide_id]
        for k in np.unique(cluster):
            rows = np.flatnonzero(cluster == k)
            rows = rows[np.argsort(-probability[rows], kind="stable")][:per_slide_cap]
            candidates[int(k)] += [
                (slide_id, int(coords[r, 0]), int(coords[r, 1]), float(probability[r]))
                for r in rows
            ]
    return {
        k: sorted(candidates.get(k, []), key=lambda t: (-t[3], t[0], t[1], t[2]))[:n_tiles]
        for k in range(n_clusters)
    }


def mosaic_image(tiles: list[np.ndarray], columns: int) -> np.ndarray:
    """Tiles in a grid (`columns` wide) with a 2-px white gutter; blank cells stay white."""
    columns = max(1, columns)
    rows = max(1, math.ceil(len(tiles) / columns))
    step = MOSAIC_TILE_PX + 2
    image = np.full((rows * step + 2, columns * step + 2, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        y, x = 2 + r * step, 2 + c * step
        image[y : y + MOSAIC_TILE_PX, x : x + MOSAIC_TILE_PX] = resize_rgb(tile, MOSAIC_TILE_PX)
    return image


def write_mosaics(
    assignments: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    slides: dict[str, dict],
    tiles_cfg: dict,
    n_clusters: int,
    n_tiles: int,
    out_dir: str | Path,
    table_path: str | Path,
) -> pd.DataFrame:
    """One PNG per cluster in `out_dir` (cluster_01.png, ...) and a table of them.

    Table columns: cluster (hpc_01 ...), n_tiles (all assigned tiles of the cluster),
    n_slides (slides with any), shown (tiles in the mosaic), file (name in out_dir).
    """
    chosen = typical_tiles(assignments, n_clusters, n_tiles)
    by_slide: dict[str, list[tuple[int, int, int, int]]] = defaultdict(list)
    for k, picks in chosen.items():
        for position, (slide_id, x, y, _) in enumerate(picks):
            by_slide[slide_id].append((k, position, x, y))
    images: dict[int, list] = {k: [None] * len(p) for k, p in chosen.items()}
    for slide_id, wanted in sorted(by_slide.items()):
        info = slides[slide_id]
        with open_slide(info["path"], slide_id, info.get("mpp")) as slide:
            for k, position, x, y in wanted:
                images[k][position] = read_tile(slide, x, y, tiles_cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = max(1, math.ceil(math.sqrt(n_tiles)))
    totals = np.zeros(n_clusters, int)
    n_slides = np.zeros(n_clusters, int)
    for _, cluster, _ in assignments.values():
        counts = np.bincount(cluster.astype(int), minlength=n_clusters)
        totals += counts
        n_slides += counts > 0
    rows = []
    for k in range(n_clusters):
        name = f"cluster_{k + 1:02d}.png"
        ok, png = cv2.imencode(".png", cv2.cvtColor(mosaic_image(images[k], columns),
                                                    cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"cluster mosaic {name}: PNG encoding failed")
        with atomic_write(out_dir / name, "wb") as handle:
            handle.write(png.tobytes())
        rows.append({"cluster": hpc_column(k), "n_tiles": int(totals[k]),
                     "n_slides": int(n_slides[k]), "shown": len(images[k]), "file": name})
    table = pd.DataFrame(rows)
    with atomic_write(table_path) as handle:
        table.to_csv(handle, sep="\t", index=False)
    return table
