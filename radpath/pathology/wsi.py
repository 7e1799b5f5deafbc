"""Whole-slide images: open with microns per pixel, pyramid level choice, tissue mask,
tile coordinates at a true physical size, HDF5 coordinate files and QC thumbnails.

Tiles are defined in microns, never by pyramid level: a tile is `patch_size` px at
`tiles.mpp` um/px, so a 0.25 um/px slide and a 0.5 um/px slide give tiles of the same
physical area. Coordinates are level-0 pixels (CLAM/TRIDENT convention).

The `coords` attributes serve radpath, TRIDENT and CLAM (see `coords_attrs`). TRIDENT's
`patch_size` is px at the target magnification, as radpath's is; CLAM's is px read at
`patch_level`. The two agree only when a pyramid level sits at the target mpp, so
`patch_level` is written only then; elsewhere CLAM's reader fails on the missing attribute
instead of silently reading tiles of the wrong scale (`radpath.pathology.export` writes CLAM's own file).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np
import openslide
import pandas as pd
import tifffile
from scipy import ndimage

from radpath.inputs.io import atomic_path, atomic_write
from radpath.pathology.feature_files import attrs_dict

log = logging.getLogger(__name__)

MPP_TOLERANCE = 0.03  # a level within 3% of the target mpp counts as that resolution
# Level-0 resolutions a brightfield slide scan can have: 0.1 um/px (100x) to a few um/px (a
# 2.5x overview scan). Outside this range the metadata is wrong or in the wrong unit (e.g.
# TIFF resolution tags of 352.8 um/px), and tiles would cover a fraction of a pixel.
PLAUSIBLE_MPP = (0.05, 5.0)
# A tile may be read from fewer level-0 pixels than it has (upsampled) by this factor at most:
# beyond it the slide is much coarser than the tiles the encoder needs.
MAX_UPSAMPLING = 4.0
MIN_OTSU_SATURATION = 15  # floor on Otsu's threshold so clean glass never becomes "tissue"
MASK_STRIP_PIXELS = 1 << 24  # pixels read per strip when building the low-resolution image
QC_MAX_SIDE = 1024
# TRIDENT's magnification convention: 1x is 10 um/px, so 20x is 0.5 um/px
# (trident/wsi_objects/WSIPatcher.py, WSIPatcher.__init__: pixel size = 10 / magnification).
MICRONS_PER_PIXEL_AT_1X = 10.0
TILE_OVERLAP = 0  # radpath's tiles never overlap (TRIDENT's `overlap`, px at the target mpp)


class SlideError(ValueError):
    """A slide that cannot be used; the message names the slide and its file."""


@dataclass(frozen=True)
class TileGeometry:
    """How a tile of `patch_size` px at `target_mpp` is read from the pyramid."""

    patch_size: int  # px at target_mpp (what the encoder sees)
    target_mpp: float
    slide_mpp: float  # level 0
    level: int  # pyramid level read
    downsample: float  # that level's downsample from level 0
    read_size: int  # px read at `level`, resized to patch_size
    patch_size_level0: float  # tile side in level-0 px (exact, may be fractional)


@dataclass(frozen=True)
class TissueMask:
    """Boolean tissue mask; one mask pixel is `downsample` level-0 pixels wide."""

    mask: np.ndarray
    downsample: float
    mpp: float

    @property
    def area_mm2(self) -> float:
        return float(self.mask.sum()) * (self.mpp / 1000.0) ** 2


class Slide:
    """An open OpenSlide handle with its slide id, path and level-0 microns per pixel.

    Handles are per process: pickling one raises, so DataLoader workers open their own.
    """

    def __init__(self, osr: openslide.OpenSlide, path: Path, slide_id: str, mpp: float):
        self.osr = osr
        self.path = path
        self.slide_id = slide_id
        self.mpp = mpp
        self._geometry: dict[tuple[int, float], TileGeometry] = {}

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.osr.dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self.osr.level_downsamples

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self.osr.level_dimensions

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.osr.level_downsamples[level]

    def label(self) -> str:
        return f"slide {self.slide_id} ({self.path})"

    def read_rgb(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 region; pixels outside the scanned area come back white."""
        rgba = np.asarray(self.osr.read_region(location, level, size))
        return rgba_to_rgb_on_white(rgba)

    def tile_geometry(self, tiles_cfg: dict) -> TileGeometry:
        key = (int(tiles_cfg["patch_size"]), float(tiles_cfg["mpp"]))
        if key not in self._geometry:
            self._geometry[key] = best_level_for_mpp(self, key[1], key[0])
        return self._geometry[key]

    def close(self) -> None:
        self.osr.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):
        raise TypeError(f"{self.label()}: slide handles are per process; open one in each worker")


def rgba_to_rgb_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite OpenSlide's (non-premultiplied) RGBA onto white."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.float32) / 255.0
    return (rgb * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- opening


def open_slide(
    path: str | os.PathLike,
    slide_id: str,
    mpp_override: float | None = None,
    check: bool = True,
) -> Slide:
    """Open a slide and resolve its level-0 microns per pixel (override > metadata).

    `check` also verifies that a TIFF-based file is complete and that its pixels decode;
    DataLoader workers reopen with check=False. Raises SlideError naming slide and file.
    """
    path = Path(path)
    label = f"slide {slide_id} ({path})"
    if not path.is_file():
        raise SlideError(f"{label}: file not found")
    try:
        osr = openslide.OpenSlide(str(path))
    except openslide.OpenSlideError as err:  # an OSError (I/O) is not bad input: it propagates
        raise SlideError(f"{label}: not readable by OpenSlide: {_why_unreadable(path, err)}") from err
    try:
        mpp = slide_mpp(osr, label, mpp_override)
        slide = Slide(osr, path, slide_id, mpp)
        if check:
            _check_complete(slide)
    except BaseException:
        osr.close()
        raise
    return slide


def slide_mpp(osr: openslide.OpenSlide, label: str, mpp_override: float | None = None) -> float:
    """Level-0 um/px: a valid override wins, else OpenSlide's mpp-x property. Either must be
    a plausible brightfield resolution (PLAUSIBLE_MPP), else a SlideError says where the value
    came from and how to override it."""
    if not _is_missing(mpp_override):
        mpp = _as_positive_float(mpp_override)
        if mpp is None:
            raise SlideError(f"{label}: mpp override {mpp_override!r} is not a positive number")
        return _plausible(mpp, label, "the `mpp` column of slides.tsv")
    mpp = _as_positive_float(osr.properties.get(openslide.PROPERTY_NAME_MPP_X))
    if mpp is None:
        raise SlideError(
            f"{label}: no microns-per-pixel in metadata (OpenSlide reports no "
            f"{openslide.PROPERTY_NAME_MPP_X}); set the `mpp` column in slides.tsv"
        )
    mpp = _plausible(mpp, label, _mpp_source(osr))
    mpp_y = _as_positive_float(osr.properties.get(openslide.PROPERTY_NAME_MPP_Y))
    if mpp_y is not None and abs(mpp_y - mpp) > 0.01 * mpp:
        log.warning(
            "%s: non-square pixels (mpp-x %.4g, mpp-y %.4g); using mpp-x", label, mpp, mpp_y
        )
    return mpp


def _plausible(mpp: float, label: str, source: str) -> float:
    low, high = PLAUSIBLE_MPP
    if not low <= mpp <= high:
        override = ("correct that value" if source.startswith("the `mpp` column")
                    else "set the right value in the `mpp` column of slides.tsv")
        raise SlideError(
            f"{label}: level-0 resolution {mpp:.4g} um/px (from {source}) is outside the "
            f"plausible range of brightfield scans ({low:g}-{high:g} um/px); {override}"
        )
    return mpp


def _mpp_source(osr: openslide.OpenSlide) -> str:
    """Where OpenSlide took mpp-x from, in the words of the file's own metadata."""
    props = osr.properties
    vendor = props.get(openslide.PROPERTY_NAME_VENDOR, "")
    if "tiff.XResolution" in props and vendor in ("generic-tiff", ""):
        unit = props.get("tiff.ResolutionUnit", "?")
        return (f"the TIFF resolution tags: XResolution {props['tiff.XResolution']} per "
                f"{unit}")
    if vendor:
        return f"the {vendor} metadata ({openslide.PROPERTY_NAME_MPP_X})"
    return f"OpenSlide's {openslide.PROPERTY_NAME_MPP_X}"


def _is_missing(value) -> bool:
    """None, NaN, pd.NA or a blank string: an empty `mpp` cell of the sheet."""
    if isinstance(value, str):
        return value.strip() == ""
    return value is None or (np.ndim(value) == 0 and bool(pd.isna(value)))


def _as_positive_float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _why_unreadable(path: Path, error: openslide.OpenSlideError) -> str:
    """What we can tell (empty, truncated), else OpenSlide's own reason."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    truncation = _tiff_truncation(path)
    if truncation:
        return truncation
    reason = str(error).strip()
    if reason:
        return f"OpenSlide says {reason!r}"
    return "unsupported format, or a corrupt or truncated file"


def _tiff_truncation(path: Path) -> str | None:
    """A message if a TIFF-based file references image data beyond its end, else None."""
    size = path.stat().st_size
    tifffile_log = logging.getLogger("tifffile")
    level = tifffile_log.level
    tifffile_log.setLevel(logging.CRITICAL)  # a broken IFD chain is what we report below
    try:
        with tifffile.TiffFile(path) as tif:
            end = max(
                (
                    int(np.max(np.asarray(p.dataoffsets) + np.asarray(p.databytecounts)))
                    for p in tif.pages
                    if len(p.dataoffsets)
                ),
                default=0,
            )
    except Exception:  # not a TIFF, or unparseable: nothing more specific to say
        return None
    finally:
        tifffile_log.setLevel(level)
    if end > size:
        return f"the file is truncated ({size} bytes, image data referenced up to byte {end})"
    return None


def _check_complete(slide: Slide) -> None:
    truncation = _tiff_truncation(slide.path)
    if truncation:
        raise SlideError(f"{slide.label()}: {truncation}")
    last = slide.osr.level_count - 1
    try:
        slide.osr.read_region((0, 0), last, (1, 1))
    except openslide.OpenSlideError as err:
        raise SlideError(f"{slide.label()}: image data cannot be decoded: {err}") from err


# ----------------------------------------------------------------------- level choice


def best_level_for_mpp(slide: Slide, target_mpp: float, patch_size: int) -> TileGeometry:
    """The pyramid level to read tiles of `patch_size` px at `target_mpp` from.

    Picks the coarsest level that is still at least as fine as the target (within
    MPP_TOLERANCE), so reads are only ever downsampled; if even level 0 is coarser than the
    target, level 0 is used and upsampled (logged). `read_size` level px resize to exactly
    `patch_size` px at `target_mpp`.
    """
    level_mpps = slide.mpp * np.asarray(slide.level_downsamples, dtype=float)
    finer = np.flatnonzero(level_mpps <= target_mpp * (1 + MPP_TOLERANCE))
    if finer.size:
        level = int(finer[np.argmax(level_mpps[finer])])
    else:
        level = 0
        log.warning(
            "%s: slide mpp %.4g is coarser than the tile mpp %.4g; tiles are upsampled",
            slide.label(),
            slide.mpp,
            target_mpp,
        )
    downsample = float(slide.level_downsamples[level])
    size0 = patch_size * target_mpp / slide.mpp
    if size0 * MAX_UPSAMPLING < patch_size:
        raise SlideError(
            f"{slide.label()}: a {patch_size}-px tile at {target_mpp:g} um/px would be read "
            f"from {size0:.3g} px of level 0 ({slide.mpp:.4g} um/px), upsampled more than "
            f"{MAX_UPSAMPLING:g}x; check the slide's resolution (the `mpp` column of "
            "slides.tsv overrides it) or lower tiles.mpp"
        )
    return TileGeometry(
        patch_size=int(patch_size),
        target_mpp=float(target_mpp),
        slide_mpp=slide.mpp,
        level=level,
        downsample=downsample,
        read_size=max(1, int(round(size0 / downsample))),
        patch_size_level0=size0,
    )


def read_tile(slide: Slide, x: int, y: int, tiles_cfg: dict) -> np.ndarray:
    """RGB uint8 (patch_size, patch_size, 3) tile at the target mpp, top-left at level-0 (x, y)."""
    geom = slide.tile_geometry(tiles_cfg)
    region = slide.read_rgb((int(x), int(y)), geom.level, (geom.read_size, geom.read_size))
    return resize_rgb(region, geom.patch_size)


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """Square resize: area averaging when shrinking (no aliasing), bilinear when enlarging."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    shrink = image.shape[0] > size
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


# ------------------------------------------------------------------------ tissue mask


def read_slide_at_mpp(slide: Slide, mpp: float) -> tuple[np.ndarray, float]:
    """Whole slide as RGB at about `mpp` um/px, and the level-0 px per output px.

    Reads the best pyramid level in strips (bounded memory even for single-level files)
    and area-averages each strip to the output scale.
    """
    mpp = max(mpp, slide.mpp)
    downsample = mpp / slide.mpp
    width0, height0 = slide.dimensions
    out_w, out_h = max(1, round(width0 / downsample)), max(1, round(height0 / downsample))
    geom = best_level_for_mpp(slide, mpp, 1)
    level_w, level_h = slide.level_dimensions[geom.level]
    rows_per_out = level_h / out_h
    out_rows_per_strip = max(1, int(MASK_STRIP_PIXELS / level_w / rows_per_out))
    strips = []
    for out_top in range(0, out_h, out_rows_per_strip):
        out_bottom = min(out_h, out_top + out_rows_per_strip)
        top, bottom = round(out_top * rows_per_out), round(out_bottom * rows_per_out)
        bottom = max(bottom, top + 1)
        y0 = round(top * geom.downsample)  # read_region takes level-0 coordinates
        strip = slide.read_rgb((0, y0), geom.level, (level_w, bottom - top))
        strips.append(
            cv2.resize(strip, (out_w, out_bottom - out_top), interpolation=cv2.INTER_AREA)
        )
    return np.concatenate(strips, axis=0), width0 / out_w


def segment_tissue(rgb: np.ndarray, tissue_cfg: dict, mpp: float) -> np.ndarray:
    """Boolean tissue mask of a low-resolution RGB slide image at `mpp` um/px.

    HSV saturation, median blur, Otsu (floored at MIN_OTSU_SATURATION) or a fixed
    threshold, closing, hole filling, then components below min_tissue_area_um2 dropped.
    """
    saturation = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    blur = _odd(tissue_cfg.get("median_blur", 7))
    if blur > 1:
        saturation = cv2.medianBlur(saturation, blur)
    method = tissue_cfg.get("method", "otsu_saturation")
    if method == "otsu_saturation":
        otsu, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        threshold = max(float(otsu), MIN_OTSU_SATURATION)
    elif method == "fixed_saturation":
        threshold = float(tissue_cfg["saturation_threshold"])
    else:
        raise ValueError(f"unknown tissue method {method!r}: otsu_saturation | fixed_saturation")
    mask = (saturation > threshold).astype(np.uint8)
    close = int(tissue_cfg.get("close_kernel", 5))
    if close > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close, close))
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    mask = ndimage.binary_fill_holes(mask)
    min_px = float(tissue_cfg.get("min_tissue_area_um2", 0)) / mpp**2
    return drop_small_components(mask, min_px)


def _odd(k) -> int:
    k = int(k)
    return k if k % 2 == 1 else k + 1


def drop_small_components(mask: np.ndarray, min_px: float) -> np.ndarray:
    if min_px <= 1 or not mask.any():
        return mask.astype(bool)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_px
    keep[0] = False  # background
    return keep[labels]


def tissue_mask(slide: Slide, tissue_cfg: dict) -> TissueMask:
    """Tissue mask at `level_mpp` um/px (read from the closest level); no tissue -> SlideError."""
    mask_mpp = max(float(tissue_cfg["level_mpp"]), slide.mpp)
    rgb, downsample = read_slide_at_mpp(slide, mask_mpp)
    mask = segment_tissue(rgb, tissue_cfg, mask_mpp)
    if not mask.any():
        raise SlideError(
            f"{slide.label()}: no tissue found (saturation method "
            f"{tissue_cfg.get('method', 'otsu_saturation')}); check the slide or tissue settings"
        )
    return TissueMask(mask=mask, downsample=downsample, mpp=slide.mpp * downsample)


# ------------------------------------------------------------------- tile coordinates


def tile_grid(dimensions: tuple[int, int], size0: float) -> np.ndarray:
    """Level-0 top-left corners of non-overlapping tiles of side `size0` inside the slide."""
    width0, height0 = dimensions
    nx, ny = int(width0 // size0), int(height0 // size0)
    xs = np.round(np.arange(nx) * size0).astype(np.int64)
    ys = np.round(np.arange(ny) * size0).astype(np.int64)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def tissue_fractions(mask: TissueMask, coords: np.ndarray, size0: float) -> np.ndarray:
    """Fraction of each tile (level-0 corner, side `size0`) covered by tissue. Vectorized.

    Integrates the mask exactly over fractional boxes: the summed-area table of a
    piecewise-constant image is bilinear inside each cell, so bilinear lookups are exact.
    """
    coords = np.asarray(coords, dtype=float).reshape(-1, 2)
    x0, y0 = coords[:, 0] / mask.downsample, coords[:, 1] / mask.downsample
    side = size0 / mask.downsample
    table = _summed_area_table(mask.mask)
    inside = (
        _lookup(table, x0 + side, y0 + side)
        - _lookup(table, x0, y0 + side)
        - _lookup(table, x0 + side, y0)
        + _lookup(table, x0, y0)
    )
    return np.clip(inside / side**2, 0.0, 1.0)


def _summed_area_table(mask: np.ndarray) -> np.ndarray:
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.float64)
    table[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.float64), axis=1)
    return table


def _lookup(table: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of a summed-area table at fractional (x, y), clamped."""
    h, w = table.shape[0] - 1, table.shape[1] - 1
    x, y = np.clip(x, 0, w), np.clip(y, 0, h)
    ix, iy = (
        np.minimum(np.floor(x).astype(np.int64), w - 1),
        np.minimum(np.floor(y).astype(np.int64), h - 1),
    )
    fx, fy = x - ix, y - iy
    top = table[iy, ix] * (1 - fx) + table[iy, ix + 1] * fx
    bottom = table[iy + 1, ix] * (1 - fx) + table[iy + 1, ix + 1] * fx
    return top * (1 - fy) + bottom * fy


def tile_coordinates(slide: Slide, mask: TissueMask, tiles_cfg: dict, seed: int) -> np.ndarray:
    """(N, 2) int64 level-0 corners of tiles with tissue fraction >= min_tissue_fraction.

    Tiles are `patch_size` px at `tiles.mpp`; `max_tiles` > 0 keeps a seeded random subset
    (in raster order). No tile kept -> SlideError.
    """
    geom = slide.tile_geometry(tiles_cfg)
    grid = tile_grid(slide.dimensions, geom.patch_size_level0)
    fraction = tissue_fractions(mask, grid, geom.patch_size_level0)
    min_fraction = float(tiles_cfg["min_tissue_fraction"])
    coords = grid[fraction >= min_fraction]
    if len(coords) == 0:
        raise SlideError(
            f"{slide.label()}: no {geom.patch_size} px tile at {geom.target_mpp} um/px has "
            f">= {min_fraction:.0%} tissue; lower tiles.min_tissue_fraction or check the mask"
        )
    max_tiles = int(tiles_cfg.get("max_tiles", 0) or 0)
    if 0 < max_tiles < len(coords):
        rng = np.random.default_rng(seed)
        coords = coords[np.sort(rng.choice(len(coords), max_tiles, replace=False))]
    return coords


def magnification(mpp: float) -> float:
    """Magnification in TRIDENT's convention, 10 / (um/px): 0.25 um/px is 40x, 0.5 is 20x.

    Exact, not rounded to 40 or 20 as TRIDENT's own slide reader does: TRIDENT turns the
    stored magnifications back into um/px, so it then derives radpath's level-0 tile size.
    """
    return MICRONS_PER_PIXEL_AT_1X / float(mpp)


def clam_patch_level(geom: TileGeometry) -> int | None:
    """CLAM's `patch_level` for coords whose `patch_size` is px at the target mpp, or None.

    CLAM reads `patch_size` px at `patch_level`. That is radpath's read only when radpath
    read `patch_size` px (no resize), i.e. a level sits at the target mpp; then the level.
    """
    return geom.level if geom.read_size == geom.patch_size else None


def geometry_from_attrs(attrs: dict) -> TileGeometry:
    """The TileGeometry a coords dataset's radpath attributes describe."""
    return TileGeometry(
        patch_size=int(attrs["patch_size"]),
        target_mpp=float(attrs["target_mpp"]),
        slide_mpp=float(attrs["slide_mpp"]),
        level=int(attrs["level"]),
        downsample=float(attrs["downsample"]),
        read_size=int(attrs["read_size"]),
        patch_size_level0=level0_tile_size(attrs),
    )


def coords_attrs(geom: TileGeometry, slide_id: str, level_dim, level0_dim) -> dict:
    """HDF5 attributes of a coords dataset: radpath's, TRIDENT's and (when exact) CLAM's.

    radpath: patch_size (px at target_mpp, what the encoder sees), patch_size_level0 (tile
    side in level-0 px, rounded), target_mpp, slide_mpp, level and downsample (the pyramid
    level read), read_size (px read there, resized to patch_size), slide_id, level_dim,
    level0_dim.
    TRIDENT (trident/IO.py coords_to_h5; read by trident/wsi_objects/WSI.py
    extract_patch_features): patch_size, level0_magnification and target_magnification
    (10 / mpp, exact), patch_size_level0, overlap (0), name (slide id), level0_width and
    level0_height.
    CLAM (dataset_modules/dataset_h5.py Whole_Slide_Bag_FP): patch_level, only when
    `patch_size` px at that level is what radpath read (see `clam_patch_level`).
    """
    width0, height0 = (int(v) for v in level0_dim)
    attrs = {
        "patch_size": geom.patch_size,
        "patch_size_level0": int(round(geom.patch_size_level0)),
        "target_mpp": geom.target_mpp,
        "level": geom.level,
        "downsample": geom.downsample,
        "read_size": geom.read_size,
        "slide_mpp": geom.slide_mpp,
        "slide_id": slide_id,
        "level_dim": np.asarray(level_dim, dtype=np.int64),
        "level0_dim": np.asarray(level0_dim, dtype=np.int64),
        "level0_magnification": magnification(geom.slide_mpp),
        "target_magnification": magnification(geom.target_mpp),
        "overlap": TILE_OVERLAP,
        "name": slide_id,
        "level0_width": width0,
        "level0_height": height0,
    }
    patch_level = clam_patch_level(geom)
    if patch_level is not None:
        attrs["patch_level"] = patch_level
    return attrs


def clam_attrs(geom: TileGeometry, slide_id: str, level_dim) -> dict:
    """CLAM's coords attributes for exactly radpath's read, whatever the resize.

    CLAM reads `patch_size` px at `patch_level` (dataset_modules/dataset_h5.py
    Whole_Slide_Bag_FP) and resizes them to extract_features_fp.py's --target_patch_size:
    here radpath's level and read_size, and target_patch_size = radpath's patch_size. The
    other names are those of CLAM's wsi_core/WholeSlideImage.py process_contour. Never
    combine these with TRIDENT's magnifications: TRIDENT would read this `patch_size` as
    px at the target magnification.
    """
    return {
        "patch_size": geom.read_size,
        "patch_level": geom.level,
        "downsample": np.array([geom.downsample, geom.downsample]),
        "downsampled_level_dim": np.asarray(level_dim, dtype=np.int64),
        "level_dim": np.asarray(level_dim, dtype=np.int64),
        "name": slide_id,
        "target_patch_size": geom.patch_size,
        "patch_size_level0": int(round(geom.patch_size_level0)),
        "target_mpp": geom.target_mpp,
        "slide_mpp": geom.slide_mpp,
    }


def tile_attrs(slide: Slide, geom: TileGeometry) -> dict:
    """HDF5 attributes of a slide's coords dataset (see `coords_attrs`)."""
    return coords_attrs(
        geom, slide.slide_id, slide.level_dimensions[geom.level], slide.dimensions
    )


def check_tile_attrs(attrs: dict, tiles_cfg: dict, label: str, slide_mpp: float | None = None):
    """Raise SlideError unless coordinates were made with these tile settings (and slide mpp)."""
    expected = {"patch_size": int(tiles_cfg["patch_size"]), "target_mpp": float(tiles_cfg["mpp"])}
    if slide_mpp is not None:
        expected["slide_mpp"] = slide_mpp
    for key, value in expected.items():
        stored = attrs.get(key)
        if stored is None or not np.isclose(float(stored), value, rtol=1e-6):
            raise SlideError(
                f"{label}: coordinates were made with {key}={stored}, now {value}; re-run tiling"
            )


def level0_tile_size(attrs: dict) -> float:
    """Exact tile side in level-0 px from coords attributes (the stored one is rounded)."""
    return float(attrs["patch_size"]) * float(attrs["target_mpp"]) / float(attrs["slide_mpp"])


# ------------------------------------------------------------------------------- HDF5


def write_coords_h5(
    path: str | os.PathLike,
    coords: np.ndarray,
    attrs: dict,
    mask: TissueMask | None = None,
) -> None:
    """Atomically write dataset `coords` (N, 2) int64 with `attrs`, and the tissue mask."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        dataset = h5.create_dataset(
            "coords", data=np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        )
        dataset.attrs.update(attrs)
        if mask is not None:
            stored = h5.create_dataset("tissue_mask", data=mask.mask, compression="gzip")
            stored.attrs.update({"downsample": mask.downsample, "mpp": mask.mpp})


def read_coords_h5(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """(coords (N, 2) int64, attrs dict) from a coords file."""
    with h5py.File(path, "r") as h5:
        dataset = h5["coords"]
        return dataset[:].astype(np.int64), attrs_dict(dataset.attrs)


def read_tissue_mask_h5(path: str | os.PathLike) -> TissueMask:
    with h5py.File(path, "r") as h5:
        stored = h5["tissue_mask"]
        return TissueMask(
            mask=stored[:].astype(bool),
            downsample=float(stored.attrs["downsample"]),
            mpp=float(stored.attrs["mpp"]),
        )


# -------------------------------------------------------------------------------- QC


def save_qc_thumbnail(
    slide: Slide,
    mask: TissueMask,
    coords: np.ndarray,
    path: str | os.PathLike,
    tile_size_level0: float,
    max_side: int = QC_MAX_SIDE,
) -> None:
    """PNG of the slide with the tissue contour (green) and kept tiles (blue), atomically."""
    width0, height0 = slide.dimensions
    scale = min(1.0, max_side / max(width0, height0))
    size = (max(1, round(width0 * scale)), max(1, round(height0 * scale)))
    thumb = np.array(slide.osr.get_thumbnail(size).convert("RGB"))
    size = (thumb.shape[1], thumb.shape[0])  # OpenSlide keeps the aspect ratio
    scale = size[0] / width0
    mask_img = cv2.resize(mask.mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(mask_img, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(thumb, contours, -1, (0, 160, 0), 2)
    corners = np.asarray(coords, dtype=float).reshape(-1, 1, 2) * scale
    side = tile_size_level0 * scale
    square = np.array([[0, 0], [side, 0], [side, side], [0, side]])
    boxes = np.round(corners + square[None]).astype(np.int32)
    cv2.polylines(thumb, list(boxes), True, (30, 60, 220), 1)
    ok, png = cv2.imencode(".png", cv2.cvtColor(thumb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise SlideError(f"{slide.label()}: could not encode the QC thumbnail")
    with atomic_write(path, "wb") as handle:
        handle.write(png.tobytes())


# ------------------------------------------------------------------------ entry point


def tile_slide(
    slide_path: str | os.PathLike,
    slide_id: str,
    tissue_cfg: dict,
    tiles_cfg: dict,
    seed: int,
    coords_h5: str | os.PathLike,
    qc_png: str | os.PathLike | None = None,
    mpp_override: float | None = None,
) -> dict:
    """Tissue mask + tile coordinates (+ QC thumbnail) for one slide; returns a summary."""
    with open_slide(slide_path, slide_id, mpp_override) as slide:
        mask = tissue_mask(slide, tissue_cfg)
        coords = tile_coordinates(slide, mask, tiles_cfg, seed)
        geom = slide.tile_geometry(tiles_cfg)
        attrs = tile_attrs(slide, geom) | {"tissue_area_mm2": mask.area_mm2}
        write_coords_h5(coords_h5, coords, attrs, mask)
        if qc_png is not None:
            save_qc_thumbnail(slide, mask, coords, qc_png, geom.patch_size_level0)
    return {
        "slide_id": slide_id,
        "n_tiles": len(coords),
        "slide_mpp": geom.slide_mpp,
        "level": geom.level,
        "read_size": geom.read_size,
        "tissue_area_mm2": mask.area_mm2,
    }
