"""Hand-crafted H&E morphology: nuclei segmented on the hematoxylin channel of a seeded
sample of tiles, summarized per slide with tissue-level stain measures.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import openslide
import pandas as pd
from scipy import ndimage
from skimage.color import rgb2hed
from skimage.feature import graycomatrix, graycoprops, peak_local_max
from skimage.filters import threshold_otsu
from skimage.measure import label, regionprops_table
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed

from radpath.inputs.io import write_tsv
from radpath.pathology.wsi import (
    SlideError,
    check_tile_attrs,
    level0_tile_size,
    open_slide,
    read_coords_h5,
    read_tile,
    read_tissue_mask_h5,
    tissue_fractions,
)

log = logging.getLogger(__name__)

DEFAULTS = {
    "n_tiles": 64,
    "min_nucleus_area_um2": 10.0,  # smaller hematoxylin specks are not nuclei
    "peak_distance_um": 3.0,  # minimum distance between the centres of touching nuclei
    "texture": True,
}
HEMATOXYLIN_MAX = 0.2  # fixed OD-like range for texture quantization, comparable across slides
GLCM_LEVELS = 32
NUCLEUS_FEATURES = (
    "area_um2",
    "perimeter_um",
    "eccentricity",
    "solidity",
    "hematoxylin_mean",
    "hematoxylin_sd",
)
SUMMARY_STATS = ("mean", "sd", "q10", "q50", "q90")


def stain_channels(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin and eosin channels (Ruifrok colour deconvolution, skimage rgb2hed)."""
    hed = rgb2hed(rgb)
    return hed[..., 0].astype(np.float32), hed[..., 1].astype(np.float32)


def nuclei_threshold(hematoxylin: list[np.ndarray]) -> float:
    """One Otsu threshold for the slide, over the hematoxylin of all sampled tiles.

    A per-tile Otsu would split stroma into "nuclei" on tiles without nuclei.
    """
    values = np.concatenate([h.ravel() for h in hematoxylin])
    if np.ptp(values) == 0:
        return float(values[0]) + 1.0  # uniform: nothing above threshold
    return float(threshold_otsu(values))


def segment_nuclei(
    hematoxylin: np.ndarray, threshold: float, mpp: float, morph_cfg: dict
) -> np.ndarray:
    """Labelled nuclei: threshold, small objects removed, touching nuclei split by watershed."""
    cfg = DEFAULTS | morph_cfg
    min_px = max(1, int(round(float(cfg["min_nucleus_area_um2"]) / mpp**2)))
    mask = ndimage.binary_fill_holes(hematoxylin > threshold)
    mask = remove_small_objects(mask, max_size=min_px - 1) if min_px > 1 else mask
    if not mask.any():
        return np.zeros(hematoxylin.shape, dtype=np.int32)
    distance = ndimage.distance_transform_edt(mask)
    min_distance = max(1, int(round(float(cfg["peak_distance_um"]) / mpp)))
    components = label(mask)
    peaks = peak_local_max(
        distance, min_distance=min_distance, labels=components, exclude_border=False
    )
    markers = np.zeros(hematoxylin.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    nuclei = watershed(-distance, markers, mask=mask)
    # A component whose peak was suppressed keeps its own label rather than vanishing.
    orphan = (nuclei == 0) & mask
    if orphan.any():
        nuclei[orphan] = label(orphan)[orphan] + nuclei.max()
    return nuclei.astype(np.int32)


def nucleus_table(nuclei: np.ndarray, hematoxylin: np.ndarray, mpp: float) -> pd.DataFrame:
    """Per-nucleus physical measures (um, um^2) and hematoxylin intensity."""
    if nuclei.max() == 0:
        return pd.DataFrame(columns=list(NUCLEUS_FEATURES), dtype=float)
    props = regionprops_table(
        nuclei,
        intensity_image=hematoxylin,
        properties=(
            "area",
            "perimeter",
            "eccentricity",
            "solidity",
            "intensity_mean",
            "intensity_std",
        ),
    )
    return pd.DataFrame(
        {
            "area_um2": props["area"] * mpp**2,
            "perimeter_um": props["perimeter"] * mpp,
            "eccentricity": props["eccentricity"],
            "solidity": props["solidity"],
            "hematoxylin_mean": props["intensity_mean"],
            "hematoxylin_sd": props["intensity_std"],
        }
    )


def glcm_texture(hematoxylin: np.ndarray) -> dict[str, float]:
    """Grey-level co-occurrence texture of the hematoxylin channel (distance 1, 4 angles)."""
    levels = np.clip(hematoxylin / HEMATOXYLIN_MAX, 0, 1) * (GLCM_LEVELS - 1)
    matrix = graycomatrix(
        np.round(levels).astype(np.uint8),
        distances=[1],
        angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4],
        levels=GLCM_LEVELS,
        symmetric=True,
        normed=True,
    )
    props = ("contrast", "homogeneity", "energy", "correlation")
    return {f"glcm_{p}": float(np.nanmean(graycoprops(matrix, p))) for p in props}


def summarize_nuclei(table: pd.DataFrame) -> dict[str, float]:
    """mean, sd, q10, q50, q90 of each nucleus feature (NaN when no nuclei)."""
    out = {}
    for feature in NUCLEUS_FEATURES:
        values = table[feature].to_numpy(dtype=float) if len(table) else np.empty(0)
        stats = _stats(values)
        out.update({f"nucleus_{feature}_{name}": stats[name] for name in SUMMARY_STATS})
    return out


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return dict.fromkeys(SUMMARY_STATS, float("nan"))
    q10, q50, q90 = np.quantile(values, [0.1, 0.5, 0.9])
    sd = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return {"mean": float(values.mean()), "sd": sd, "q10": q10, "q50": q50, "q90": q90}


def sample_tiles(coords: np.ndarray, n_tiles: int, seed: int) -> np.ndarray:
    """Seeded subset of tile indices (all when n_tiles <= 0 or >= available), sorted."""
    if n_tiles <= 0 or n_tiles >= len(coords):
        return np.arange(len(coords))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(len(coords), n_tiles, replace=False))


def morphology_features(
    slide_path: str | os.PathLike,
    slide_id: str,
    coords_h5: str | os.PathLike,
    morph_cfg: dict,
    tiles_cfg: dict,
    seed: int,
    out_tsv: str | os.PathLike | None = None,
    mpp_override: float | None = None,
) -> pd.DataFrame:
    """One-row table (index slide_id) of nuclear and tissue morphology; written atomically.

    Nuclei and stain means come from `n_tiles` seeded tiles; density is nuclei per mm^2 of
    tissue in those tiles; tissue area and fraction come from the stored tissue mask.
    """
    cfg = DEFAULTS | dict(morph_cfg)
    coords, attrs = read_coords_h5(coords_h5)
    check_tile_attrs(attrs, tiles_cfg, f"slide {slide_id} ({slide_path}), {coords_h5}")
    mask = read_tissue_mask_h5(coords_h5)
    mpp = float(tiles_cfg["mpp"])
    chosen = sample_tiles(coords, int(cfg["n_tiles"]), seed)
    tiles, read_ok = _read_tiles(slide_path, slide_id, coords[chosen], tiles_cfg, mpp_override)
    if not tiles:
        raise SlideError(
            f"slide {slide_id} ({slide_path}): none of {len(chosen)} sampled tiles readable"
        )
    kept = chosen[read_ok]
    stains = [stain_channels(tile) for tile in tiles]
    threshold = nuclei_threshold([h for h, _ in stains])
    nuclei = [nucleus_table(segment_nuclei(h, threshold, mpp, cfg), h, mpp) for h, _ in stains]
    table = pd.concat(nuclei, ignore_index=True)
    tile_mm2 = (tiles[0].shape[0] * mpp / 1000) ** 2
    tile_tissue_mm2 = tissue_fractions(mask, coords[kept], level0_tile_size(attrs)) * tile_mm2
    row = {
        "n_tiles_sampled": len(tiles),
        "n_tiles_unreadable": int(len(chosen) - len(tiles)),
        "n_nuclei": len(table),
        "nuclei_density_per_mm2": len(table) / tile_tissue_mm2.sum(),
        **summarize_nuclei(table),
        "tissue_area_mm2": mask.area_mm2,
        "tissue_fraction": float(mask.mask.mean()),
        "mean_hematoxylin": float(np.mean([h.mean() for h, _ in stains])),
        "mean_eosin": float(np.mean([e.mean() for _, e in stains])),
    }
    if cfg["texture"]:
        textures = pd.DataFrame([glcm_texture(h) for h, _ in stains])
        row.update(textures.mean().to_dict())
    frame = pd.DataFrame([row], index=pd.Index([slide_id], name="slide_id"))
    if out_tsv is not None:
        write_tsv(frame, out_tsv)
    return frame


def _read_tiles(slide_path, slide_id, coords, tiles_cfg, mpp_override):
    """Tiles that read cleanly and a mask of which did; a failed read reopens the handle."""
    tiles, ok = [], np.zeros(len(coords), dtype=bool)
    slide = open_slide(slide_path, slide_id, mpp_override)
    try:
        for i, (x, y) in enumerate(coords):
            try:
                tiles.append(read_tile(slide, x, y, tiles_cfg))
                ok[i] = True
            except openslide.OpenSlideError as err:  # a corrupt tile; I/O errors fail the job
                log.warning(
                    "slide %s: tile at level-0 (%d, %d) unreadable, skipped: %s",
                    slide_id,
                    x,
                    y,
                    err,
                )
                slide.close()  # OpenSlide errors are sticky
                slide = open_slide(slide_path, slide_id, mpp_override, check=False)
    finally:
        slide.close()
    return tiles, ok
