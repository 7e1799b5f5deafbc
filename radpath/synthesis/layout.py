"""Semantic layouts for synthetic CT: lungs and nodule on the CT's grid and on the model's.

A layout is a label map: 0 background, 1 lung, 2 nodule (the tumour mask wins over lung).
The lungs come from a label of the mask file when the patients sheet names one
(`lung_label`), else from `segment_lungs` (threshold, connected components, closing and
hole filling). The model sees the CT and layout resampled to a `size`^3 grid (`model_grid`:
the whole scan, as Lung-DDPM, or a cube around the nodule); the synthetic volume is
written on the CT's own grid (`compose`): real voxels outside the sampled region, the
model's inside.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

BACKGROUND, LUNG, NODULE = 0, 1, 2


class LayoutError(ValueError):
    """A patient's layout cannot be made or moved (bad input: the patient is excluded)."""


def window_to_unit(hu: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """HU -> [-1, 1] over the window (clipped)."""
    low, high = float(window[0]), float(window[1])
    return (2 * (np.clip(hu, low, high) - low) / (high - low) - 1).astype(np.float32)


def unit_to_window(values: np.ndarray, window: Sequence[float]) -> np.ndarray:
    low, high = float(window[0]), float(window[1])
    return ((np.asarray(values, np.float64) + 1) / 2 * (high - low) + low).astype(np.float32)


def lesion_centre(mask: sitk.Image) -> np.ndarray:
    """Centroid (x, y, z mm) of the voxels of a binary (0/1) mask."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(mask, sitk.sitkUInt8))
    return np.array(stats.GetCentroid(1))


def write_image(image: sitk.Image, path: str) -> None:
    from radpath.inputs.io import atomic_path

    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


class Grid(NamedTuple):
    """A voxel grid in physical space, SimpleITK (x, y, z) order."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Grid:
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                   tuple(image.GetDirection()))

    def as_dict(self) -> dict:
        return {key: list(value) for key, value in self._asdict().items()}

    @classmethod
    def from_dict(cls, values: Mapping) -> Grid:
        return cls(tuple(int(v) for v in values["size"]),
                   *(tuple(float(v) for v in values[k]) for k in ("spacing", "origin",
                                                                  "direction")))

    def image(self, array: np.ndarray) -> sitk.Image:
        """`array` (z, y, x) as an image on this grid."""
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


# ------------------------------------------------------------------------------ lungs


def _ellipsoid(radius_mm: float, spacing_zyx: Sequence[float]) -> np.ndarray:
    half = [max(0, int(radius_mm // s)) for s in spacing_zyx]
    axes = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    distance = sum((a * s / max(radius_mm, 1e-9)) ** 2 for a, s in zip(axes, spacing_zyx,
                                                                          strict=True))
    return distance <= 1.0


class LungSearch(NamedTuple):
    """What `segment_lungs` found: the lungs and an account of the low-density regions it
    looked at (the error message when no lung is found)."""

    lungs: np.ndarray
    candidates: int
    outside_air: int
    outside_body: int
    enclosed_air: int
    airway_ml: float
    too_small: int

    def describe(self, settings: Mapping) -> str:
        return (f"searched {self.candidates} regions below {settings['threshold_hu']} HU: "
                f"{self.outside_air} air around the body, {self.outside_body} outside the body "
                f"(table, clothing), {self.enclosed_air} all air inside it (below "
                f"{settings['air_hu']} HU), {self.too_small} smaller than "
                f"{settings['min_volume_ml']} ml; {self.airway_ml:.1f} ml of airways removed")


def _slicewise_fill(mask: np.ndarray) -> np.ndarray:
    filled = np.empty_like(mask)
    for z in range(mask.shape[0]):
        filled[z] = ndimage.binary_fill_holes(mask[z])
    return filled


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def _in_plane_border(shape: Sequence[int]) -> np.ndarray:
    border = np.zeros(shape, bool)
    border[:, [0, -1], :] = True
    border[:, :, [0, -1]] = True
    return border


def _airways(candidates: np.ndarray, hu: np.ndarray, body: np.ndarray, air_hu: float
             ) -> np.ndarray:
    """Trachea and main bronchi: air (below air_hu) inside the body that enters the scan
    through its first or last axial slice, grown through the candidates. Not removed when it
    spreads through most of the candidates (air-filled lung, not an airway tree)."""
    air = candidates & (hu < air_hu)
    labels, count = ndimage.label(air)
    if count == 0:
        return np.zeros_like(air)
    ends = np.zeros_like(air)
    ends[[0, -1]] = True
    entering = np.unique(labels[ends & air & body])
    airways = np.isin(labels, entering[entering > 0])
    return airways if airways.sum() < 0.5 * candidates.sum() else np.zeros_like(air)


def segment_lungs(ct: sitk.Image, settings: Mapping) -> LungSearch:
    """Lungs of a CT in HU as a boolean (z, y, x) mask, for full chest scans and for crops
    whose field of view cuts through the lung.

    The body is the largest connected region at or above threshold_hu, filled in every axial
    slice, so that in a full chest scan it encloses the lungs and airways but not the air
    around the patient or the table. Regions below threshold_hu are lung candidates when
    most of their voxels lie inside the body, or when they reach the in-plane border of the
    field of view (a crop through the lung) and are not air (at most outside_air_fraction
    of their voxels below air_hu; lung parenchyma has a few percent). Regions of neither kind
    (air around the patient, the table's foam core) are dropped, as are the trachea and main
    bronchi (`_airways`) and enclosed regions that are all air (median below air_hu: bowel
    gas, a separate trachea). The largest max_components regions of at least min_volume_ml
    are closed with a ball of closing_mm (vessels at the lung border) and their holes filled
    (vessels, nodules), in 3D and per axial slice."""
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    spacing_zyx = ct.GetSpacing()[::-1]
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    air_hu = float(settings["air_hu"])
    low = hu < float(settings["threshold_hu"])
    body = _slicewise_fill(_largest_component(~low))
    labels, count = ndimage.label(low)
    index = np.arange(1, count + 1)
    sizes = ndimage.sum_labels(low, labels, index)
    inside = ndimage.sum_labels(body & low, labels, index)
    air_share = ndimage.sum_labels(hu < air_hu, labels, index) / np.maximum(sizes, 1)
    medians = ndimage.median(hu, labels, index) if count else np.zeros(0)
    at_border = np.zeros(count + 1, bool)
    at_border[np.unique(labels[_in_plane_border(hu.shape)])] = True
    outside_air = outside_body = enclosed_air = 0
    keep = []
    for label, size, enclosed, share, median in zip(index, sizes, inside, air_share, medians,
                                                     strict=True):
        if enclosed >= 0.5 * size:
            if median >= air_hu:
                keep.append(label)
            else:
                enclosed_air += 1
        elif at_border[label] and share <= float(settings["outside_air_fraction"]):
            keep.append(label)
        elif at_border[label]:
            outside_air += 1
        else:
            outside_body += 1
    candidates = np.isin(labels, keep)
    airways = _airways(candidates, hu, body, air_hu)
    candidates &= ~airways
    parts, n_parts = ndimage.label(candidates)
    volumes = np.bincount(parts.ravel(), minlength=n_parts + 1)[1:] * voxel_ml
    big = [(volume, part) for part, volume in enumerate(volumes, start=1)
           if volume >= float(settings["min_volume_ml"])]
    chosen = [part for _, part in sorted(big, reverse=True)[: int(settings["max_components"])]]
    lungs = np.isin(parts, chosen)
    search = dict(candidates=int(count), outside_air=outside_air, outside_body=outside_body,
                  enclosed_air=enclosed_air,
                  airway_ml=float(airways.sum() * voxel_ml), too_small=n_parts - len(big))
    if not lungs.any():
        return LungSearch(lungs, **search)
    radius = float(settings["closing_mm"])
    if radius > 0:
        ball = _ellipsoid(radius, spacing_zyx)
        pad = [(h, h) for h in (np.array(ball.shape) // 2)]
        lungs = ndimage.binary_closing(np.pad(lungs, pad, mode="edge"), ball)[
            tuple(slice(p, -p if p else None) for p, _ in pad)]
    lungs = _slicewise_fill(ndimage.binary_fill_holes(lungs))
    return LungSearch(lungs, **search)


FACES = {"first slice": (0, 0), "last slice": (0, -1), "anterior or posterior edge": (1, None),
         "left or right edge": (2, None)}


def faces_touched(mask: np.ndarray) -> list[str]:
    """The sides of the field of view a (z, y, x) mask reaches: where it does, the scan cuts
    the organ and its volume is only a lower bound of the organ's."""
    touched = []
    for name, (axis, end) in FACES.items():
        ends = (0, -1) if end is None else (end,)
        if any(np.take(mask, e, axis=axis).any() for e in ends):
            touched.append(name)
    return touched


NODULE_SEARCH_MM = 30.0  # how far from the nodule `lung_facts` looks for lung


def nodule_to_lung_mm(lungs: np.ndarray, nodule: np.ndarray, spacing_xyz: Sequence[float],
                      search_mm: float = NODULE_SEARCH_MM) -> float:
    """The distance (mm) from the nodule to the nearest lung voxel: 0 when they touch or
    overlap, NaN when no lung lies within `search_mm` (a lung nodule that far from every lung
    voxel suggests a missed lung). Computed in the nodule's box grown by `search_mm`."""
    spacing_zyx = np.asarray(spacing_xyz, float)[::-1]
    if not nodule.any():
        return float("nan")
    lo, hi = (np.argwhere(nodule).min(axis=0), np.argwhere(nodule).max(axis=0) + 1)
    reach = np.ceil(search_mm / spacing_zyx).astype(int)
    box = tuple(slice(max(a - r, 0), b + r) for a, b, r in zip(lo, hi, reach, strict=True))
    near_lungs, near_nodule = lungs[box], nodule[box]
    if not near_lungs.any():
        return float("nan")
    if (near_lungs & near_nodule).any():
        return 0.0
    distance = ndimage.distance_transform_edt(~near_lungs, sampling=spacing_zyx)
    # voxel centres: touching neighbours are one spacing apart, which reads as 0 mm of gap
    gap = float(distance[near_nodule].min()) - float(spacing_zyx.min())
    return max(gap, 0.0) if gap <= search_mm else float("nan")


def lung_facts(lungs: np.ndarray, nodule: np.ndarray, spacing_xyz: Sequence[float]) -> dict:
    """What the layout QC reports per patient: lung volume (ml), the sides of the field of
    view the lungs reach, and the gap between the nodule and the nearest lung (mm)."""
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    nodule = nodule.astype(bool)
    return {"lungs_ml": float(lungs.sum() * voxel_ml),
            "lungs_cut_by": "; ".join(faces_touched(lungs)),
            "nodule_to_lung_mm": nodule_to_lung_mm(lungs, nodule, spacing_xyz)}


def lung_flag(facts: Mapping, plausible_ml: Sequence[float]) -> str:
    """'' when the lung volume is plausible for an adult, else why not. Lungs cut by the
    field of view (a crop) are only checked against the upper bound: their volume is part of
    the lungs'."""
    low, high = float(plausible_ml[0]), float(plausible_ml[1])
    volume = float(facts["lungs_ml"])
    if volume > high:
        return f"{volume:.0f} ml of lung is more than an adult's {high:.0f} ml: air or bowel taken for lung?"
    if not facts["lungs_cut_by"] and volume < low:
        return (f"{volume:.0f} ml of lung in a scan that holds the whole lungs is less than an "
                f"adult's {low:.0f} ml: a lung missed or cut off?")
    return ""


def layouts_qc(paths: Mapping[str, str], plausible_ml: Sequence[float]):
    """One row per synthesis patient from its layout file (patient -> .npz): lung source,
    volume, the sides of the field of view that cut the lungs, the gap from the nodule to
    the nearest lung, and `flag` (why the lungs look wrong, see `lung_flag`) or the job's exclusion."""
    import pandas as pd

    from radpath.inputs.runtime import exclusion_reason

    rows = []
    for patient, path in paths.items():
        reason = exclusion_reason(path)
        if reason is not None:
            rows.append({"patient_id": patient, "flag": f"no layout: {reason}"})
            continue
        with np.load(path, allow_pickle=False) as data:
            facts = json.loads(str(data["lungs"]))
            source = str(data["lungs_source"])
        rows.append({"patient_id": patient, "lungs_source": source, **facts,
                     "flag": lung_flag(facts, plausible_ml)})
    columns = ["patient_id", "lungs_source", "lungs_ml", "lungs_cut_by", "nodule_to_lung_mm",
               "flag"]
    return pd.DataFrame(rows, columns=columns)


def make_layout(nodule: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """uint8 label map: LUNG where lungs, NODULE where the nodule (over lung)."""
    layout = np.where(lungs, LUNG, BACKGROUND).astype(np.uint8)
    layout[nodule.astype(bool)] = NODULE
    return layout


def lungs_from_label(mask_path: str, label: int, ct: sitk.Image, patient_id: str
                     ) -> np.ndarray:
    """The lungs as label `label` of the mask file (on the CT's grid)."""
    image = sitk.ReadImage(str(mask_path))
    if image.GetSize() != ct.GetSize() or not np.allclose(
            image.GetSpacing(), ct.GetSpacing(), atol=1e-3) or not np.allclose(
            image.GetOrigin(), ct.GetOrigin(), atol=1e-3):
        raise LayoutError(f"patient {patient_id}: mask {mask_path}: the lung label's grid "
                             "differs from the CT's")
    lungs = sitk.GetArrayFromImage(image) == int(label)
    if not lungs.any():
        raise LayoutError(f"patient {patient_id}: mask {mask_path} has no voxel of lung "
                             f"label {label} (patients sheet lung_label)")
    return lungs


# ------------------------------------------------------------------------------ grids


def model_grid(ct: sitk.Image, nodule: sitk.Image, settings: Mapping) -> Grid:
    """The model's `size`^3 grid along the CT's axes: the whole scan (field_of_view scan) or
    a cube of edge_mm centred on the nodule (field_of_view nodule)."""
    size = int(settings["size"])
    direction = np.reshape(ct.GetDirection(), (3, 3))
    if settings["field_of_view"] == "scan":
        extent = np.array(ct.GetSize()) * np.array(ct.GetSpacing())
        spacing = extent / size
        corner = np.array(ct.GetOrigin()) - direction @ (np.array(ct.GetSpacing()) / 2)
        origin = corner + direction @ (spacing / 2)
    elif settings["field_of_view"] == "nodule":
        spacing = np.full(3, float(settings["edge_mm"]) / size)
        centre = lesion_centre(nodule)
        origin = centre - direction @ (spacing * (size - 1) / 2)
    else:
        raise ValueError(f"unknown synthesis.field_of_view {settings['field_of_view']!r}")
    return Grid((size,) * 3, tuple(float(s) for s in spacing), tuple(float(o) for o in origin),
                tuple(ct.GetDirection()))


def resample(image: sitk.Image, grid: Grid, *, labels: bool, default: float = 0.0
             ) -> np.ndarray:
    """`image` on `grid` as a (z, y, x) array: nearest neighbour for labels; else linear
    after an anti-aliasing Gaussian where the grid is coarser than the image."""
    if not labels:
        image = sitk.Cast(image, sitk.sitkFloat32)
        sigma = 0.5 * np.sqrt(np.maximum(np.square(grid.spacing)
                                         - np.square(image.GetSpacing()), 0.0))
        if np.any(sigma > 0):
            image = sitk.SmoothingRecursiveGaussian(image, [max(float(s), 1e-6)
                                                            for s in sigma])
    out = sitk.Resample(image, list(grid.size), sitk.Transform(),
                        sitk.sitkNearestNeighbor if labels else sitk.sitkLinear,
                        list(grid.origin), list(grid.spacing), list(grid.direction),
                        float(default), image.GetPixelID())
    return sitk.GetArrayFromImage(out)


# ------------------------------------------------------------------------------ regions


def region_mask(layout: np.ndarray, spacing_xyz: Sequence[float], region: str,
                margin_mm: float, extra: np.ndarray | None = None) -> np.ndarray:
    """Voxels the model draws: lungs and nodule (region lungs) or the nodule (region nodule),
    with `extra` (e.g. where a moved nodule was), grown by margin_mm."""
    if region == "lungs":
        inside = layout != BACKGROUND
    elif region == "nodule":
        inside = layout == NODULE
    else:
        raise ValueError(f"unknown synthesis.region {region!r}: lungs | nodule")
    if extra is not None:
        inside = inside | extra
    if margin_mm > 0 and inside.any():
        distance = ndimage.distance_transform_edt(~inside, sampling=tuple(spacing_xyz)[::-1])
        inside = distance <= margin_mm
    return inside


# ------------------------------------------------------------------------------ fresh layouts


def move_nodule(layout: np.ndarray, spacing_xyz: Sequence[float], shift_mm: Sequence[float],
                scale: float, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A fresh layout: the nodule scaled by `scale` about its centroid and moved by
    shift_mm (x, y, z; along the grid's axes). Its old voxels take the class of the
    nearest non-nodule voxel. Returns the layout and the old nodule's voxels. A nodule
    moved off the grid is an error naming `where`."""
    nodule = layout == NODULE
    if not nodule.any():
        raise LayoutError(f"{where}: the layout has no nodule to move")
    if scale <= 0:
        raise ValueError(f"synthesis.fresh.scale must be > 0, got {scale}")
    spacing = np.asarray(spacing_xyz, float)[::-1]
    shift = np.asarray(shift_mm, float)[::-1] / spacing
    centre = np.array(ndimage.center_of_mass(nodule))
    # output voxel p comes from input voxel centre + (p - centre - shift) / scale
    matrix = np.eye(3) / scale
    offset = centre - matrix @ (centre + shift)
    moved = ndimage.affine_transform(nodule.astype(np.float32), matrix, offset, order=1,
                                     mode="constant", cval=0.0) >= 0.5
    expected = nodule.sum() * scale**3
    if moved.sum() < 0.5 * expected:
        raise LayoutError(f"{where}: the nodule moved by {list(shift_mm)} mm and scaled "
                             f"by {scale} leaves the field of view")
    _, nearest = ndimage.distance_transform_edt(nodule, return_indices=True)
    fresh = layout[tuple(nearest)].astype(np.uint8)
    fresh[moved] = NODULE
    return fresh, nodule


def transform_layout(layout: np.ndarray, spacing_xyz: Sequence[float], variant: str,
                     fresh: Mapping, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The layout of a sampling variant: the patient's own (real, heldout) or a fresh one."""
    if variant != "fresh":
        return layout, None
    return move_nodule(layout, spacing_xyz, fresh["shift_mm"], float(fresh["scale"]), where)


# ------------------------------------------------------------------------------ composition


def compose(ct: sitk.Image, synthetic: sitk.Image, region: np.ndarray) -> sitk.Image:
    """The CT's own voxels outside `region` ((z, y, x) on the CT grid), the synthetic
    volume (any grid, resampled linearly) inside, rounded to the CT's pixel type."""
    drawn = sitk.GetArrayFromImage(sitk.Resample(
        sitk.Cast(synthetic, sitk.sitkFloat32), ct, sitk.Transform(), sitk.sitkLinear,
        -1000.0, sitk.sitkFloat32))
    real = sitk.GetArrayFromImage(ct)
    if np.issubdtype(real.dtype, np.integer):
        info = np.iinfo(real.dtype)
        drawn = np.clip(np.rint(drawn), info.min, info.max)
    out = np.where(region, drawn.astype(real.dtype), real)
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(ct)
    return image
