"""Cube files of rule `ct_cubes` (written by radpath.deep.cubes): reading them, choosing a
scale's channels and placing a map on a cube's grid. Light (numpy, SimpleITK), so the
training and Grad-CAM jobs read cubes without the CT-reading code (pyradiomics)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk

from radpath.inputs.runtime import exclusion_reason


class Cubes(NamedTuple):
    """One patient's cube file (see the module doc for the arrays)."""

    cube: np.ndarray
    channels: np.ndarray
    edges_mm: np.ndarray
    centre_mm: np.ndarray
    direction: np.ndarray
    origin_mm: np.ndarray
    spacing_mm: np.ndarray


def edge_label(edge: float) -> str:
    return f"{float(edge):g}mm"


def read_cubes(path: str | os.PathLike) -> Cubes:
    """A cube file written by `extract_cubes`; ValueError for an exclusion record."""
    reason = exclusion_reason(path)
    if reason is not None:
        raise ValueError(f"{os.fspath(path)}: no cubes, the patient was excluded: {reason}")
    with np.load(path, allow_pickle=False) as data:
        missing = [field for field in Cubes._fields if field not in data.files]
        if missing:
            raise ValueError(f"{os.fspath(path)}: not a cube file (lacks {', '.join(missing)})")
        return Cubes(**{field: data[field] for field in Cubes._fields})


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
