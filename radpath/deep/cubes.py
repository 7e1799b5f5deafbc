"""Per-patient concentric cubes around the lesion, the input of the deep 3D CNNs (rule ct_cubes).

Each cube is centred on the centroid (in mm) of the mask's voxels and aligned with the CT's
axes (its direction matrix); every scale has the same number of voxels per side (`grid`), so
a larger cube has coarser voxels (the EMV-3D-CNN study's 80/60/40 voxel cubes at 0.625 mm are
50/37.5/25 mm). Per scale the channels are the CT (HU window -> [0, 1], or z-scored), each
extra image registered to the CT (e.g. MRI T1/T2 as in the PCNSL study; always z-scored) and,
optionally, the mask as the fraction of tumour per cube voxel.

Resampling: linear interpolation; when a cube's voxels are coarser than the CT's along an axis,
the image is first smoothed along that axis with a Gaussian (anti-aliasing, see
`antialias_sigma_mm`). Only the part of the CT the cubes need (the largest cube plus the
smoothing kernel's reach) is smoothed and resampled, never the whole scan.

Output: one `.npz` per patient (`np.savez_compressed`), read with `read_cubes`:
    cube        float16 (C, G, G, G), SimpleITK array order (z, y, x)
    channels    str (C,), scale-major: "ct@50mm", "t1@50mm", "mask@50mm", "ct@37.5mm", ...
    edges_mm    float64 (S,), the cube edges in the order of deep_ct.cubes.edges_mm
    centre_mm   float64 (3,), physical (x, y, z) centre of every cube (the mask centroid)
    direction   float64 (9,), the cubes' direction matrix (the CT's), row-major
    origin_mm   float64 (S, 3), physical (x, y, z) of voxel (0, 0, 0) of each cube
    spacing_mm  float64 (S, 3), voxel size of each cube (edge / grid along every axis)
    ct_size, ct_origin_mm, ct_spacing_mm  int64 / float64 (3,), the CT's grid (x, y, z; its
                direction is `direction`)
radpath.deep.cube_files' `cube_image` places a (G, G, G) map (e.g. an attention map) on a
cube's grid as a SimpleITK image and `ct_grid_image` resamples it onto the CT's grid, so it
can be written as NIfTI in the patient's space. A patient excluded by `run_item` has an
exclusion record instead (`read_cubes` refuses it with the reason).

Only numpy and SimpleITK (the radiomics conda environment) are imported.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk

from radpath.deep.cube_files import (
    edge_label,
)  # noqa: F401
from radpath.inputs.ct import (
    CTSettings,
    check_roi_size,
    geometry_differences,
    load_checked_case,
    read_image,
)
from radpath.inputs.images import CaseInputError
from radpath.inputs.io import atomic_path

log = logging.getLogger("radpath")

cube_settings_defaults = {
    "edges_mm": [50.0, 37.5, 25.0],
    "grid": 48,
    "window": [-1000.0, 400.0],
    "normalisation": "window",
    "pad": True,
    "pad_value": -1000.0,
    "mask_channel": True,
    "channels": [],
}
NORMALISATIONS = ("window", "zscore")
RESERVED_CHANNELS = ("ct", "mask")
SMOOTHING_REACH = 4.0  # kernel sigmas the crop keeps around a cube (Gaussian tail < 1e-4)
GAUSSIAN_MAX_ERROR = 1e-3  # DiscreteGaussian's truncation error
FLOAT16_MAX = float(np.finfo(np.float16).max)


class CubeSettingsError(ValueError):
    """Unusable deep_ct.cubes settings or job arguments: a problem of the run, not of a
    patient, so the job fails instead of excluding the patient (radpath.inputs.runtime.is_bad_input)."""

    excludes_item = False


@dataclass(frozen=True)
class CubeSettings:
    """The `deep_ct.cubes` section of config.yaml (missing keys: `cube_settings_defaults`)."""

    edges_mm: tuple[float, ...]
    grid: int
    window: tuple[float, float]
    normalisation: str
    pad: bool
    pad_value: float
    mask_channel: bool
    channels: tuple[str, ...]

    @classmethod
    def from_config(cls, cube_cfg: Mapping) -> CubeSettings:
        unknown = sorted(set(cube_cfg) - set(cube_settings_defaults))
        if unknown:
            raise CubeSettingsError(f"deep_ct.cubes: unknown settings {', '.join(unknown)}")
        cfg = {**cube_settings_defaults, **cube_cfg}
        edges = tuple(float(e) for e in cfg["edges_mm"])
        if not edges or min(edges) <= 0:
            raise CubeSettingsError(
                f"deep_ct.cubes.edges_mm must be one or more positive lengths, got {edges}"
            )
        labels = [edge_label(e) for e in edges]
        if len(set(labels)) != len(labels):
            raise CubeSettingsError(f"deep_ct.cubes.edges_mm has repeated edges: {labels}")
        grid = cfg["grid"]
        if isinstance(grid, bool) or int(grid) != grid or grid < 2:
            raise CubeSettingsError(f"deep_ct.cubes.grid must be an integer >= 2, got {grid}")
        window = tuple(float(v) for v in cfg["window"])
        if len(window) != 2 or not window[0] < window[1]:
            raise CubeSettingsError(f"deep_ct.cubes.window must be [low, high], got {window}")
        if cfg["normalisation"] not in NORMALISATIONS:
            raise CubeSettingsError(
                f"deep_ct.cubes.normalisation must be one of {', '.join(NORMALISATIONS)}, "
                f"got {cfg['normalisation']!r}"
            )
        channels = tuple(str(c) for c in cfg["channels"])
        bad = [c for c in channels if not c or "@" in c or c in RESERVED_CHANNELS]
        if bad or len(set(channels)) != len(channels):
            raise CubeSettingsError(
                "deep_ct.cubes.channels must be distinct names without '@', other than "
                f"{' and '.join(RESERVED_CHANNELS)}, got {list(channels)}"
            )
        return cls(
            edges_mm=edges,
            grid=int(grid),
            window=window,
            normalisation=cfg["normalisation"],
            pad=bool(cfg["pad"]),
            pad_value=float(cfg["pad_value"]),
            mask_channel=bool(cfg["mask_channel"]),
            channels=channels,
        )

    def channel_names(self) -> list[str]:
        names = []
        for edge in self.edges_mm:
            names.append(channel_name("ct", edge))
            names.extend(channel_name(extra, edge) for extra in self.channels)
            if self.mask_channel:
                names.append(channel_name("mask", edge))
        return names


class CubeGrid(NamedTuple):
    """One cube's sampling grid in the patient's physical space."""

    edge_mm: float
    size: int  # voxels per side
    spacing_mm: float
    origin_mm: np.ndarray  # (x, y, z) of voxel (0, 0, 0)
    direction: tuple[float, ...]  # 9 values, the CT's


def channel_name(image: str, edge: float) -> str:
    return f"{image}@{edge_label(edge)}"


# --- geometry ------------------------------------------------------------------------------


def lesion_centre(mask: sitk.Image) -> np.ndarray:
    """Centroid (x, y, z mm) of the voxels of a binary (0/1) integer mask."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    return np.array(stats.GetCentroid(1))


def cube_grid(ct: sitk.Image, centre_mm: Sequence[float], edge_mm: float, size: int) -> CubeGrid:
    """`size`^3 voxels of edge_mm/size mm, axes along the CT's, centred on `centre_mm`."""
    spacing = edge_mm / size
    direction = np.array(ct.GetDirection()).reshape(3, 3)
    origin = np.asarray(centre_mm, float) - direction @ np.full(3, (size - 1) / 2 * spacing)
    return CubeGrid(float(edge_mm), int(size), spacing, origin, tuple(ct.GetDirection()))


def antialias_sigma_mm(native_mm: Sequence[float], target_mm: float) -> np.ndarray:
    """Per-axis Gaussian sigma (mm) smoothing the CT before sampling it at `target_mm`.

    A grid of spacing d is taken to resolve detail down to a Gaussian of sigma d/2; the blur
    that turns the native resolution into the target's is sigma = 0.5 * sqrt(target^2 -
    native^2) (Gaussians add in quadrature). Axes that are not downsampled get 0 (no
    smoothing, linear interpolation only).
    """
    native = np.asarray(native_mm, float)
    return 0.5 * np.sqrt(np.maximum(target_mm**2 - native**2, 0.0))


def _ct_index_span(ct: sitk.Image, grid: CubeGrid, half_mm: float) -> tuple[np.ndarray, ...]:
    """Lowest and highest CT continuous index (x, y, z) of the cube's centre +- half_mm."""
    centre = grid.origin_mm + np.reshape(grid.direction, (3, 3)) @ np.full(
        3, (grid.size - 1) / 2 * grid.spacing_mm
    )
    c = np.array(ct.TransformPhysicalPointToContinuousIndex(centre.tolist()))
    half = half_mm / np.array(ct.GetSpacing())
    return c - half, c + half


def outside_scan_mm(ct: sitk.Image, grid: CubeGrid) -> float:
    """How far (mm, largest over the axes) the cube sticks out of the scan; <= 0 inside.

    Both extents are measured to the outer voxel faces (the scan spans indices -0.5 to
    size - 0.5, as ITK's interpolators see it).
    """
    lo, hi = _ct_index_span(ct, grid, grid.edge_mm / 2)
    spacing = np.array(ct.GetSpacing())
    beyond = np.maximum(-0.5 - lo, hi - (np.array(ct.GetSize()) - 0.5)) * spacing
    return float(beyond.max())


def _samples_outside_scan(ct: sitk.Image, grid: CubeGrid) -> bool:
    """Whether any cube voxel centre lies outside the scan (it would be padded)."""
    lo, hi = _ct_index_span(ct, grid, grid.edge_mm / 2 - grid.spacing_mm / 2)
    tolerance = 1e-6  # voxels
    high = np.array(ct.GetSize()) - 0.5 + tolerance
    return bool(np.any(lo < -0.5 - tolerance) or np.any(hi > high))


def crop_region(
    ct: sitk.Image, grids: Sequence[CubeGrid], sigmas: Sequence[np.ndarray]
) -> tuple[list[int], list[int]]:
    """(start, size) of the CT index region the cubes read: every cube's voxel centres, one
    voxel for linear interpolation and the Gaussian's reach, within the scan."""
    spacing = np.array(ct.GetSpacing())
    start = np.array(ct.GetSize())
    stop = np.zeros(3, int)
    for grid, sigma in zip(grids, sigmas, strict=True):
        lo, hi = _ct_index_span(ct, grid, grid.edge_mm / 2 - grid.spacing_mm / 2)
        reach = 1 + np.ceil(SMOOTHING_REACH * sigma / spacing).astype(int)
        start = np.minimum(start, np.floor(lo).astype(int) - reach)
        stop = np.maximum(stop, np.ceil(hi).astype(int) + reach + 1)
    start = np.clip(start, 0, np.array(ct.GetSize()) - 1)
    stop = np.clip(stop, start + 1, np.array(ct.GetSize()))
    return start.tolist(), (stop - start).tolist()


def sample_cube(image: sitk.Image, grid: CubeGrid, sigma_mm: np.ndarray) -> np.ndarray:
    """float32 (G, G, G) array of `image` on the cube grid; NaN outside the image.

    `image` is smoothed first with `sigma_mm` per axis (anti-aliasing; 0 = not smoothed).
    """
    image = sitk.Cast(image, sitk.sitkFloat32)
    if np.any(sigma_mm > 0):
        width = 2 * int(np.ceil(SMOOTHING_REACH * np.max(sigma_mm / image.GetSpacing()))) + 3
        image = sitk.DiscreteGaussian(
            image, (sigma_mm**2).tolist(), max(width, 32), GAUSSIAN_MAX_ERROR, True
        )
    cube = sitk.Resample(
        image,
        [grid.size] * 3,
        sitk.Transform(),
        sitk.sitkLinear,
        grid.origin_mm.tolist(),
        [grid.spacing_mm] * 3,
        list(grid.direction),
        math.nan,
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(cube)


# --- intensities ---------------------------------------------------------------------------


def _zscore(
    arrays: list[np.ndarray], reference: np.ndarray, where: str, image: str, edge: float
) -> list[np.ndarray]:
    """(x - mean) / sd with mean and sd over the finite voxels of `reference`."""
    values = reference[np.isfinite(reference)].astype(np.float64)
    mean, sd = float(values.mean()), float(values.std())
    if not sd > 0:
        raise CaseInputError(
            f"{where}: the {image} is constant ({mean:g}) within the {edge:g} mm cube around the "
            "lesion; it cannot be z-scored"
        )
    return [((a - mean) / sd).astype(np.float32) for a in arrays]


def _window(array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    return ((np.clip(array, lo, hi) - lo) / (hi - lo)).astype(np.float32)


# --- the job -------------------------------------------------------------------------------


def extract_cubes(
    patient_id: str,
    ct_path: str | os.PathLike,
    mask_path: str | os.PathLike,
    mask_label,
    ct_cfg: Mapping | CTSettings,
    cube_cfg: Mapping,
    out_path: str | os.PathLike,
    *,
    ct_series_uid: str | None = "",
    mask_roi: str | None = "",
    mask_segment: str | int | None = "",
    extra_images: Mapping[str, str | os.PathLike] = {},
) -> None:
    """Write one patient's cube file (module doc) to `out_path`.

    CT and mask are read and checked as for radiomics (`radpath.inputs.ct.load_checked_case`; ROI
    size on the native grid). `extra_images` ({name: path}) must name exactly the images of
    `cube_cfg["channels"]` and share the CT's geometry within ct.geometry_tolerance.
    Raises CaseInputError (patient, file, reason) for unusable inputs, including a cube that
    sticks out of the scan when padding is off, and CubeSettingsError for unusable settings.
    """
    settings = CubeSettings.from_config(cube_cfg)
    ct_settings = ct_cfg if isinstance(ct_cfg, CTSettings) else CTSettings.from_config(ct_cfg)
    if set(extra_images) != set(settings.channels):
        raise CubeSettingsError(
            f"patient {patient_id}: extra images {sorted(extra_images)} do not match "
            f"deep_ct.cubes.channels {list(settings.channels)}"
        )
    ct, mask, _ = load_checked_case(
        ct_path,
        mask_path,
        mask_label,
        ct_settings,
        patient_id,
        ct_series_uid=ct_series_uid,
        mask_roi=mask_roi,
        mask_segment=mask_segment,
    )
    check_roi_size(mask, ct_settings.min_roi_voxels, patient_id, mask_path, "on the native grid")
    where = f"patient {patient_id}: CT {os.fspath(ct_path)}"
    centre = lesion_centre(mask)
    grids = [cube_grid(ct, centre, edge, settings.grid) for edge in settings.edges_mm]
    largest = int(np.argmax(settings.edges_mm))
    if not settings.pad:
        for grid in grids:
            if _samples_outside_scan(ct, grid):
                raise CaseInputError(
                    f"{where}: the {grid.edge_mm:g} mm cube around the lesion extends "
                    f"{outside_scan_mm(ct, grid):.1f} mm beyond the scan; set "
                    "deep_ct.cubes.pad: true to pad with air"
                )
    extras = {
        name: _read_extra(ct, extra_images[name], name, patient_id, ct_settings)
        for name in settings.channels
    }

    sigmas = [antialias_sigma_mm(ct.GetSpacing(), grid.spacing_mm) for grid in grids]
    start, size = crop_region(ct, grids, sigmas)

    def sampled(image: sitk.Image) -> list[np.ndarray]:
        region = sitk.RegionOfInterest(image, size, start)
        return [sample_cube(region, grid, sigma) for grid, sigma in zip(grids, sigmas, strict=True)]

    ct_cubes = sampled(ct)
    inside = [np.isfinite(a) for a in ct_cubes]
    pad = np.float32(settings.pad_value)
    ct_cubes = [np.where(ok, a, pad) for ok, a in zip(inside, ct_cubes, strict=True)]
    if settings.normalisation == "window":
        ct_cubes = [_window(a, settings.window) for a in ct_cubes]
    else:
        reference = np.where(inside[largest], ct_cubes[largest], np.nan)
        ct_cubes = _zscore(ct_cubes, reference, where, "CT", settings.edges_mm[largest])
    extra_cubes = {}
    for name, (path, image) in extras.items():
        arrays = sampled(image)
        fill = np.nanmin(arrays[largest])  # outside the scan: the image's darkest value
        arrays = [np.where(np.isfinite(a), a, fill) for a in arrays]
        reference = np.where(inside[largest], arrays[largest], np.nan)
        extra_where = f"patient {patient_id}: {name} {os.fspath(path)}"
        extra_cubes[name] = _zscore(arrays, reference, extra_where, name, grids[largest].edge_mm)
    mask_cubes = (
        [np.clip(np.nan_to_num(a, nan=0.0), 0, 1) for a in sampled(mask)]
        if settings.mask_channel
        else None
    )

    channels = []
    for k in range(len(grids)):
        channels.append(ct_cubes[k])
        channels.extend(extra_cubes[name][k] for name in settings.channels)
        if mask_cubes is not None:
            channels.append(mask_cubes[k])
    cube = np.clip(np.stack(channels), -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
    arrays = {
        "cube": cube,
        "channels": np.array(settings.channel_names()),
        "edges_mm": np.array(settings.edges_mm, np.float64),
        "centre_mm": centre.astype(np.float64),
        "direction": np.array(ct.GetDirection(), np.float64),
        "origin_mm": np.array([g.origin_mm for g in grids], np.float64),
        "spacing_mm": np.array([[g.spacing_mm] * 3 for g in grids], np.float64),
        "ct_size": np.array(ct.GetSize(), np.int64),
        "ct_origin_mm": np.array(ct.GetOrigin(), np.float64),
        "ct_spacing_mm": np.array(ct.GetSpacing(), np.float64),
    }
    with atomic_path(out_path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)  # a handle: numpy appends no '.npz' to it
    padded = [1 - float(ok.mean()) for ok in inside]
    log.info(
        "patient %s: cubes %s around (%s) mm, grid %d, %d channels, CT region read start %s "
        "size %s, padded voxels %s",
        patient_id,
        "/".join(edge_label(e) for e in settings.edges_mm),
        ", ".join(f"{v:.1f}" for v in centre),
        settings.grid,
        len(channels),
        start,
        size,
        "/".join(f"{p:.1%}" for p in padded),
    )


def _read_extra(
    ct: sitk.Image,
    path: str | os.PathLike,
    name: str,
    patient_id: str,
    ct_settings: CTSettings,
) -> tuple[str | os.PathLike, sitk.Image]:
    """An extra image on the CT grid (its geometry copied from the CT within tolerance)."""
    image = read_image(path, patient_id, name)
    tolerance = ct_settings.geometry_tolerance
    differences = geometry_differences(ct, image, tolerance, other=name)
    if differences:
        raise CaseInputError(
            f"patient {patient_id}: {name} {os.fspath(path)} differs from the CT in geometry "
            f"beyond tolerance {tolerance:g}: {'; '.join(differences)} (extra images must be "
            "registered and resampled to the CT grid)"
        )
    image = sitk.Image(image)
    image.CopyInformation(ct)
    return path, image
