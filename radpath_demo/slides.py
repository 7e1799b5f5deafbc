"""Synthetic H&E whole-slide images (pyramidal Aperio SVS or generic tiled TIFF) for demos/tests.

Two planted histology signals, both tied to patient risk by the demo cohort: the nuclear
density and size of uniform tissue, or a mosaic of distinct tissue patterns (tumour, stroma,
lymphocytes, necrosis; TISSUE_PATTERNS) whose proportions vary between patients, for the
phenotype clusters of PathoSig to find.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile

from radpath.inputs.io import atomic_path

TILE_SIZE = 256
GLASS_RGB = (242, 241, 239)
EOSIN_RGB = (230, 150, 190)
HEMATOXYLIN_RGB = (85, 55, 135)
MIN_LEVEL_SIDE = 64  # reduced levels smaller than this are not written
PATTERN_REGION_UM = 200.0  # side of the square regions of one pattern in a patterned slide


@dataclass(frozen=True)
class TissuePattern:
    """How one tissue pattern is drawn: its nuclei and the colour of its background."""

    density_per_mm2: float
    diameter_um: float
    aspect: tuple[float, float]  # minor/major axis ratio range (low = spindle)
    shade: tuple[float, float]  # hematoxylin intensity factor range (low = darker)
    background_rgb: tuple[int, int, int] = EOSIN_RGB


TISSUE_PATTERNS_STYLE = {
    "tumour": TissuePattern(5000.0, 11.0, (0.65, 1.0), (0.95, 1.15), (215, 150, 200)),
    "stroma": TissuePattern(400.0, 7.0, (0.2, 0.4), (0.9, 1.1)),
    "lymphocytes": TissuePattern(14000.0, 6.0, (0.85, 1.0), (0.6, 0.75)),
    "necrosis": TissuePattern(2500.0, 2.5, (0.5, 1.0), (0.8, 1.0), (226, 196, 206)),
}
TISSUE_PATTERNS = tuple(TISSUE_PATTERNS_STYLE)


@dataclass(frozen=True)
class SyntheticSlide:
    """What was written, for checks: path, mpp, planted nuclei and the true tissue mask."""

    path: Path
    width: int
    height: int
    mpp: float
    n_nuclei: int
    tissue_fraction: float
    tissue_mask_16: np.ndarray  # true tissue mask at 1/16 of level 0 (bool)


def synthetic_he_image(
    width: int,
    height: int,
    mpp: float,
    seed: int,
    nuclear_density: float = 2000.0,
    nuclear_diameter_um: float = 8.0,
    n_tissue_blobs: int = 3,
    pattern_proportions: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """RGB uint8 H&E-like image, its tissue mask and the number of nuclei drawn.

    Tissue is pink eosin stroma in smooth blobs on grey-white glass; nuclei are purple
    hematoxylin ellipses, `nuclear_density` per mm^2 of tissue, `nuclear_diameter_um` wide
    (physical sizes: nuclei span diameter/mpp px). With `pattern_proportions` (pattern name
    -> weight) the tissue is instead a mosaic of square regions, PATTERN_REGION_UM wide, each
    drawn in one of TISSUE_PATTERNS, regions shared out in those proportions.
    """
    rng = np.random.default_rng(seed)
    tissue = _tissue_blobs(width, height, n_tissue_blobs, rng)
    image = _stain_background_and_stroma(tissue, rng)
    if pattern_proportions is not None:
        regions = pattern_regions(width, height, mpp, pattern_proportions, rng)
        n_nuclei = 0
        for index, name in enumerate(TISSUE_PATTERNS):
            n_nuclei += _draw_pattern(image, tissue & (regions == index), name, mpp, rng)
    else:
        tissue_area_mm2 = tissue.sum() * (mpp / 1000.0) ** 2
        n_nuclei = int(round(nuclear_density * tissue_area_mm2))
        _draw_nuclei(image, tissue, n_nuclei, nuclear_diameter_um / mpp, rng)
    image = cv2.GaussianBlur(image, (3, 3), 0.6)
    return image, tissue, n_nuclei


def pattern_regions(
    width: int, height: int, mpp: float, proportions: dict[str, float], rng: np.random.Generator
) -> np.ndarray:
    """Per pixel, the index in TISSUE_PATTERNS of its region's pattern (int8 (height, width)).

    Square regions are shared out by largest remainder, then shuffled, so a slide's pattern
    proportions follow `proportions` as closely as its number of regions allows.
    """
    unknown = set(proportions) - set(TISSUE_PATTERNS)
    if unknown:
        raise ValueError(f"unknown tissue patterns {sorted(unknown)}: use {TISSUE_PATTERNS}")
    weights = np.array([max(float(proportions.get(p, 0.0)), 0.0) for p in TISSUE_PATTERNS])
    if weights.sum() <= 0:
        raise ValueError("pattern proportions must have a positive total")
    side = max(int(round(PATTERN_REGION_UM / mpp)), 1)
    across, down = -(-width // side), -(-height // side)
    n_regions = across * down
    quota = weights / weights.sum() * n_regions
    counts = np.floor(quota).astype(int)
    counts[np.argsort(counts - quota)[: n_regions - counts.sum()]] += 1
    labels = rng.permutation(np.repeat(np.arange(len(TISSUE_PATTERNS)), counts)).astype(np.int8)
    grid = labels.reshape(down, across)
    return np.repeat(np.repeat(grid, side, axis=0), side, axis=1)[:height, :width]


def _draw_pattern(
    image: np.ndarray, region: np.ndarray, name: str, mpp: float, rng: np.random.Generator
) -> int:
    """Paint one pattern's background and nuclei inside `region`; returns the nuclei drawn."""
    style = TISSUE_PATTERNS_STYLE[name]
    if not region.any():
        return 0
    if style.background_rgb != EOSIN_RGB:
        shift = np.asarray(style.background_rgb, np.int16) - np.asarray(EOSIN_RGB, np.int16)
        image[region] = np.clip(image[region].astype(np.int16) + shift, 0, 255).astype(np.uint8)
    n_nuclei = int(round(style.density_per_mm2 * region.sum() * (mpp / 1000.0) ** 2))
    _draw_nuclei(image, region, n_nuclei, style.diameter_um / mpp, rng, style.aspect, style.shade)
    return n_nuclei


def pattern_tile(pattern: str, size_px: int, mpp: float, seed: int) -> np.ndarray:
    """An RGB uint8 tile (size_px square at `mpp`) filled with one tissue pattern."""
    if pattern not in TISSUE_PATTERNS_STYLE:
        raise ValueError(f"unknown tissue pattern {pattern!r}: use {TISSUE_PATTERNS}")
    rng = np.random.default_rng(seed)
    tissue = np.ones((size_px, size_px), bool)
    image = _stain_background_and_stroma(tissue, rng)
    _draw_pattern(image, tissue, pattern, mpp, rng)
    return cv2.GaussianBlur(image, (3, 3), 0.6)


def _tissue_blobs(width: int, height: int, n_blobs: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random blobs drawn on a coarse grid, upsampled and thresholded (bool mask)."""
    grid = 16
    gw, gh = max(width // grid, 8), max(height // grid, 8)
    field = np.zeros((gh, gw), np.float32)
    cell = gw / n_blobs  # one blob per vertical band keeps the fragments apart
    for i in range(n_blobs):
        center = (int((i + rng.uniform(0.4, 0.6)) * cell), int(rng.uniform(0.4, 0.6) * gh))
        axes = (int(rng.uniform(0.28, 0.36) * cell), int(rng.uniform(0.22, 0.32) * gh))
        cv2.ellipse(field, center, axes, float(rng.uniform(-20, 20)), 0, 360, 1.0, -1)
    field = cv2.GaussianBlur(field, (0, 0), max(gw, gh) / 60)
    lumps = rng.normal(0, 0.3, (max(gh // 6, 2), max(gw // 6, 2))).astype(np.float32)
    field += cv2.resize(lumps, (gw, gh), interpolation=cv2.INTER_CUBIC)  # ragged edges
    return cv2.resize(field, (width, height), interpolation=cv2.INTER_LINEAR) > 0.5


def _stain_background_and_stroma(tissue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = tissue.shape
    image = np.empty((height, width, 3), np.uint8)
    image[:] = GLASS_RGB
    # Fibrous stroma: low-frequency intensity texture scales the eosin colour's density.
    coarse = rng.uniform(0.75, 1.15, (max(height // 8, 2), max(width // 8, 2))).astype(np.float32)
    texture = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)[tissue]
    glass = np.asarray(GLASS_RGB, np.float32)
    eosin = np.asarray(EOSIN_RGB, np.float32)
    image[tissue] = np.clip(glass - (glass - eosin) * texture[:, None], 0, 255).astype(np.uint8)
    noise = rng.integers(-4, 5, size=(height, width, 1), dtype=np.int16)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def _draw_nuclei(
    image: np.ndarray,
    tissue: np.ndarray,
    n_nuclei: int,
    diameter_px: float,
    rng: np.random.Generator,
    aspect_range: tuple[float, float] = (0.55, 1.0),
    shade_range: tuple[float, float] = (0.85, 1.15),
) -> None:
    if n_nuclei == 0:
        return
    ys, xs = _sample_tissue_points(tissue, n_nuclei, rng)
    radii = diameter_px / 2 * rng.uniform(0.75, 1.25, n_nuclei)
    aspect = rng.uniform(*aspect_range, n_nuclei)
    angles = rng.uniform(0, 180, n_nuclei)
    shade = rng.uniform(*shade_range, n_nuclei)
    base = np.asarray(HEMATOXYLIN_RGB, np.float64)
    for x, y, r, a, angle, s in zip(xs, ys, radii, aspect, angles, shade, strict=True):
        color = tuple(float(c) for c in np.clip(base * s, 0, 255))
        axes = (max(int(round(r)), 1), max(int(round(r * a)), 1))
        cv2.ellipse(image, (int(x), int(y)), axes, float(angle), 0, 360, color, -1, cv2.LINE_AA)


def _sample_tissue_points(
    tissue: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`n` uniform random pixel positions inside the tissue mask."""
    flat = np.flatnonzero(tissue)
    if flat.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    picks = flat[rng.integers(0, flat.size, n)]
    return np.unravel_index(picks, tissue.shape)


def aperio_description(width: int, height: int, mpp: float | None, quality: int) -> str:
    """Aperio ImageDescription; without `mpp` it carries no MPP and no AppMag."""
    text = (
        f"Aperio Image Library v12.0.15 \n{width}x{height} [0,0 {width}x{height}] "
        f"({TILE_SIZE}x{TILE_SIZE}) JPEG/RGB Q={quality}"
    )
    if mpp is not None:
        text += f"|AppMag = {10.0 / mpp:g}|MPP = {mpp:g}"
    return text


def pyramid(image: np.ndarray, downsamples: tuple[int, ...]) -> list[tuple[int, np.ndarray]]:
    """Level images (downsample, array), level 0 first, area-averaged."""
    height, width = image.shape[:2]
    levels = [(1, image)]
    for factor in downsamples:
        w, h = -(-width // factor), -(-height // factor)
        if min(w, h) < MIN_LEVEL_SIDE:
            break
        levels.append((factor, cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)))
    return levels


def write_pyramidal_tiff(
    path: str | os.PathLike,
    image: np.ndarray,
    mpp: float | None,
    kind: str = "aperio",
    downsamples: tuple[int, ...] = (4, 16),
    quality: int = 70,
) -> Path:
    """Write `image` as a tiled JPEG pyramid OpenSlide reads, atomically.

    kind "aperio": SVS with an Aperio description (MPP in it unless `mpp` is None);
    kind "generic": generic tiled TIFF (MPP as TIFF resolution in cm unless `mpp` is None).
    """
    if kind not in ("aperio", "generic"):
        raise ValueError(f"unknown slide kind {kind!r}: use 'aperio' or 'generic'")
    path = Path(path)
    height, width = image.shape[:2]
    common = {
        "tile": (TILE_SIZE, TILE_SIZE),
        "compression": "jpeg",
        "compressionargs": {"level": quality},
        "photometric": "rgb",
        "metadata": None,
    }
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=False) as tif:
        for factor, level in pyramid(image, downsamples):
            extra = {} if factor == 1 else {"subfiletype": 1}
            if factor == 1 and kind == "aperio":
                extra["description"] = aperio_description(width, height, mpp, quality)
            if kind == "generic" and mpp is not None:
                pixels_per_cm = 1e4 / (mpp * factor)
                extra["resolution"] = (pixels_per_cm, pixels_per_cm)
                extra["resolutionunit"] = "CENTIMETER"
            tif.write(level, **common, **extra)
    return path


def write_synthetic_svs(
    path: str | os.PathLike,
    width: int,
    height: int,
    mpp: float,
    seed: int,
    nuclear_density: float = 2000.0,
    nuclear_diameter_um: float = 8.0,
    n_tissue_blobs: int = 3,
    pattern_proportions: dict[str, float] | None = None,
    write_mpp: bool = True,
    kind: str = "aperio",
    downsamples: tuple[int, ...] = (4, 16),
    quality: int = 70,
) -> SyntheticSlide:
    """Draw a synthetic H&E slide and write it as a pyramidal SVS (or generic TIFF).

    `mpp` sets the drawing scale; `write_mpp=False` leaves it out of the file's metadata.
    """
    image, tissue, n_nuclei = synthetic_he_image(
        width, height, mpp, seed, nuclear_density, nuclear_diameter_um, n_tissue_blobs,
        pattern_proportions,
    )
    written = write_pyramidal_tiff(
        path, image, mpp if write_mpp else None, kind, downsamples, quality
    )
    mask_16 = cv2.resize(
        tissue.astype(np.float32), (-(-width // 16), -(-height // 16)), interpolation=cv2.INTER_AREA
    )
    return SyntheticSlide(
        path=written,
        width=width,
        height=height,
        mpp=mpp,
        n_nuclei=n_nuclei,
        tissue_fraction=float(tissue.mean()),
        tissue_mask_16=mask_16 > 0.5,
    )


def corrupt_level0_tile(path: str | os.PathLike, x: int, y: int) -> tuple[int, int, int, int]:
    """Zero, in place, the level-0 JPEG tile holding pixel (x, y) (to test unreadable tiles).

    Returns the tile's level-0 box (x, y, width, height).
    """
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tiles_across = -(-page.imagewidth // page.tilewidth)
        index = (y // page.tilelength) * tiles_across + x // page.tilewidth
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
        box = (x - x % page.tilewidth, y - y % page.tilelength, page.tilewidth, page.tilelength)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\0" * count)
    return box
