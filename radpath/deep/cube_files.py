"""Cube files of rule `ct_cubes` (written by radpath.deep.cubes): reading them, choosing a
scale's channels and placing a map on a cube's grid or on the patient's CT grid. Light
(numpy, SimpleITK), so the training and Grad-CAM jobs read cubes without the CT-reading code
(pyradiomics)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk

from radpath.inputs.runtime import exclusion_reason


class Cubes(NamedTuple):
    """One patient's cube file (see radpath.deep.cubes for the arrays). The CT's grid
    (ct_size, ct_origin_mm, ct_spacing_mm; its direction is `direction`) is None in files
    written before radpath recorded it."""

    cube: np.ndarray
    channels: np.ndarray
    edges_mm: np.ndarray
    centre_mm: np.ndarray
    direction: np.ndarray
    origin_mm: np.ndarray
    spacing_mm: np.ndarray
    ct_size: np.ndarray | None = None
    ct_origin_mm: np.ndarray | None = None
    ct_spacing_mm: np.ndarray | None = None

    @property
    def has_ct_grid(self) -> bool:
        return self.ct_size is not None


def edge_label(edge: float) -> str:
    return f"{float(edge):g}mm"


def read_cubes(path: str | os.PathLike) -> Cubes:
    """A cube file written by `extract_cubes`; ValueError for an exclusion record."""
    reason = exclusion_reason(path)
    if reason is not None:
        raise ValueError(f"{os.fspath(path)}: no cubes, the patient was excluded: {reason}")
    with np.load(path, allow_pickle=False) as data:
        required = [field for field in Cubes._fields if field not in Cubes._field_defaults]
        missing = [field for field in required if field not in data.files]
        if missing:
            raise ValueError(f"{os.fspath(path)}: not a cube file (lacks {', '.join(missing)})")
        return Cubes(**{field: data[field] for field in Cubes._fields if field in data.files})


def scale_channels(channels: Iterable[str]) -> dict[str, list[int]]:
    """{scale label ("50mm"): indices of its channels}, scales in the order they come."""
    scales: dict[str, list[int]] = {}
    for i, name in enumerate(channels):
        scales.setdefault(str(name).rpartition("@")[2], []).append(i)
    return scales


def channel_indices(
    channels: Iterable[str], edges_mm: float | Iterable[float] | None = None
) -> list[int]:
    """Indices, in file order, of the channels of the given scale(s) (all channels when
    None), e.g. the inputs of a network that sees only the 25 mm cube. ValueError when a
    scale has no channel."""
    channels = [str(c) for c in channels]
    if edges_mm is None:
        return list(range(len(channels)))
    if isinstance(edges_mm, (int, float, np.number)):
        edges_mm = [edges_mm]
    wanted = {edge_label(edge): edge for edge in edges_mm}
    scales = [c.rpartition("@")[2] for c in channels]
    for label, edge in wanted.items():
        if label not in scales:
            raise ValueError(
                f"no channels of the {edge:g} mm cube; scales present: "
                + ", ".join(dict.fromkeys(scales))
            )
    return [i for i, scale in enumerate(scales) if scale in wanted]


def cube_image(cubes: Cubes, scale_index: int, array) -> sitk.Image:
    """A (G, G, G) array (z, y, x) placed on the grid of cube `scale_index` (for NIfTI)."""
    n_scales = len(cubes.edges_mm)
    if not -n_scales <= scale_index < n_scales:
        raise IndexError(f"scale_index {scale_index} out of range for {n_scales} cubes")
    array = np.asarray(array)
    shape = tuple(cubes.cube.shape[1:])
    if array.shape != shape:
        raise ValueError(f"array of shape {array.shape} does not fit cubes of shape {shape}")
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    elif array.dtype == bool:
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(cubes.origin_mm[scale_index].tolist())
    image.SetSpacing(cubes.spacing_mm[scale_index].tolist())
    image.SetDirection(cubes.direction.tolist())
    return image


def ct_grid_image(cubes: Cubes, scale_index: int, array) -> sitk.Image:
    """A (G, G, G) map on cube `scale_index`'s grid resampled onto the patient's CT grid
    (its size, origin, spacing and direction): linear interpolation, 0 outside the cube,
    float32, so that it overlays the CT voxel for voxel. ValueError for a cube file that
    does not record the CT's grid."""
    if not cubes.has_ct_grid:
        raise ValueError("the cube file does not record the CT's grid (written by an older "
                         "radpath); re-run its ct_cubes job")
    cube = cube_image(cubes, scale_index, np.asarray(array, dtype=np.float32))
    return sitk.Resample(
        cube,
        [int(n) for n in cubes.ct_size],
        sitk.Transform(),
        sitk.sitkLinear,
        [float(v) for v in cubes.ct_origin_mm],
        [float(v) for v in cubes.ct_spacing_mm],
        [float(v) for v in cubes.direction],
        0.0,
        sitk.sitkFloat32,
    )
