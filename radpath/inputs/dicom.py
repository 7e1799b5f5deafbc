"""DICOM inputs read with pydicom: series headers, RTSTRUCT and DICOM-SEG masks on the CT grid.

Imported by `radpath.inputs.ct` only when a DICOM input is used, so label-map jobs never load
pydicom. Every mask comes back as a binary UInt8 image with the CT's exact geometry, and
then goes through the same checks as a label map (`radpath.inputs.ct.prepare_case`).

Conventions:

- RTSTRUCT contours (ContourData, patient mm) are mapped to CT continuous indices with the
  CT's `TransformPhysicalPointToContinuousIndex`. A voxel belongs to the ROI when its centre
  lies inside the contours of its slice under the even-odd rule: all contours of the ROI on
  one slice are combined by XOR, so a contour inside another is a hole (and two overlapping
  contours cancel where they overlap). A centre exactly on an edge follows the half-open
  scanline rule (left and top edges in, right and bottom edges out).
- Each contour must lie on a CT slice plane: the slice index of every point within
  `PLANE_TOLERANCE` (a fraction of the slice spacing) of the same integer. Contours off the
  CT planes (drawn on another reconstruction) or outside the CT volume are errors.
- DICOM-SEG frames are placed by their ImagePositionPatient (per-frame PlanePositionSequence),
  never by frame order; frame positions must fall on CT voxel centres within
  `PLANE_TOLERANCE` voxels, and pixel spacing and orientation must equal the CT's within
  `ct.geometry_tolerance`. FRACTIONAL segments are thresholded: a voxel is in when its value
  is at least half of MaximumFractionalValue.
- The RTSTRUCT ROI's (or the SEG's) FrameOfReferenceUID must be the CT series', and when the
  object names the series it was drawn on, that must be the CT series read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from radpath.inputs.images import CaseInputError, SeriesInfo

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
PLANE_TOLERANCE = 0.1  # voxels: how far a contour or SEG frame may lie from a CT voxel plane
FRACTIONAL_THRESHOLD = 0.5  # of MaximumFractionalValue
HEADER_TAGS = [
    "Modality",
    "SOPClassUID",
    "SeriesInstanceUID",
    "SeriesDescription",
    "ImageType",
    "FrameOfReferenceUID",
    "NumberOfFrames",
]


def _one_line(value: object) -> str:
    return " ".join(str(value).split())[:300]


# --- headers -------------------------------------------------------------------------------


def read_header(path: str | os.PathLike) -> Dataset | None:
    """The identifying tags of a DICOM file (no pixel data), or None if it is not DICOM."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
    except (InvalidDicomError, OSError, EOFError, ValueError):
        return None


def describe_series(uid: str, files: Sequence[str]) -> SeriesInfo:
    """A series' modality, description and size, from the header of its first file."""
    header = read_header(files[0]) if files else None
    header = header if header is not None else Dataset()
    image_type = header.get("ImageType", "")
    if not isinstance(image_type, str):
        image_type = "\\".join(str(value) for value in image_type)
    frames = int(header.get("NumberOfFrames", 1) or 1)
    return SeriesInfo(
        uid=uid,
        modality=str(header.get("Modality", "")),
        description=str(header.get("SeriesDescription", "")),
        image_type=image_type,
        frame_of_reference=str(header.get("FrameOfReferenceUID", "")),
        n_slices=len(files) * frames,
        files=tuple(files),
    )


def mask_kind(path: str | os.PathLike) -> str | None:
    """'RTSTRUCT' or 'SEG' from the file's SOPClassUID / Modality; None for anything else."""
    header = read_header(path)
    if header is None:
        return None
    sop_class = str(header.get("SOPClassUID", ""))
    modality = str(header.get("Modality", ""))
    if sop_class == RTSTRUCT_SOP_CLASS or modality == "RTSTRUCT":
        return "RTSTRUCT"
    if sop_class == SEG_SOP_CLASS or modality == "SEG":
        return "SEG"
    return None


def find_mask_objects(directory: str | os.PathLike) -> list[tuple[str, str]]:
    """(kind, path) of the RTSTRUCT and SEG files directly in `directory`, sorted by name."""
    found = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.is_file():
            kind = mask_kind(entry.path)
            if kind is not None:
                found.append((kind, entry.path))
    return found


def _read_full(path: str | os.PathLike, where: str) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise CaseInputError(f"{where}: cannot be read as DICOM: {_one_line(exc)}") from None


def _check_reference(
    where: str, what: str, frames_of_reference: Sequence[str], series_uids: Sequence[str],
    ct: SeriesInfo,
) -> None:
    """Raise unless the object's frame of reference (and named series, if any) are the CT's."""
    if not ct.frame_of_reference:
        raise CaseInputError(
            f"{where}: the CT series {ct.uid} has no FrameOfReferenceUID to check the {what} "
            "against"
        )
    if ct.frame_of_reference not in frames_of_reference:
        raise CaseInputError(
            f"{where}: {what} frame of reference {', '.join(frames_of_reference) or '(none)'} is "
            f"not the CT series' {ct.frame_of_reference} (drawn on another scan?)"
        )
    if series_uids and ct.uid not in series_uids:
        raise CaseInputError(
            f"{where}: {what} references series {', '.join(series_uids)}, not the CT series "
            f"{ct.uid} (set ct_series_uid to the series it was drawn on)"
        )


# --- RTSTRUCT ------------------------------------------------------------------------------


def choose_roi(rois: Sequence[tuple[int, str]], wanted: str, where: str) -> tuple[int, str]:
    """The (ROINumber, ROIName) named `wanted`; with one ROI, `wanted` may be ''."""
    names = ", ".join(repr(name) for _, name in rois)
    if not rois:
        raise CaseInputError(f"{where}: RTSTRUCT has no ROI (empty StructureSetROISequence)")
    if not wanted:
        if len(rois) == 1:
            return rois[0]
        raise CaseInputError(
            f"{where}: RTSTRUCT has {len(rois)} ROIs, set mask_roi to one of: {names}"
        )
    match = [roi for roi in rois if roi[1] == wanted]
    if not match:
        raise CaseInputError(f"{where}: no ROI named {wanted!r}; ROIs present: {names}")
    if len(match) > 1:
        numbers = ", ".join(str(number) for number, _ in match)
        raise CaseInputError(f"{where}: ROI name {wanted!r} is used by ROIs {numbers}")
    return match[0]


def rtstruct_mask(
    path: str | os.PathLike, ct: sitk.Image, series: SeriesInfo, roi: str, where: str
) -> tuple[sitk.Image, str]:
    """The ROI `roi` of an RTSTRUCT rasterised onto the CT grid, and a note for the QC table."""
    ds = _read_full(path, where)
    rois = [
        (int(item.ROINumber), str(item.get("ROIName", "")))
        for item in ds.get("StructureSetROISequence", [])
    ]
    number, name = choose_roi(rois, roi, where)
    roi_item = next(i for i in ds.StructureSetROISequence if int(i.ROINumber) == number)
    frames = [str(roi_item.get("ReferencedFrameOfReferenceUID", ""))]
    referenced = ds.get("ReferencedFrameOfReferenceSequence", [])
    if not frames[0]:
        frames = [str(item.get("FrameOfReferenceUID", "")) for item in referenced]
    series_uids = [
        str(s.SeriesInstanceUID)
        for frame in referenced
        for study in frame.get("RTReferencedStudySequence", [])
        for s in study.get("RTReferencedSeriesSequence", [])
        if "SeriesInstanceUID" in s
    ]
    _check_reference(where, f"ROI {name!r}", frames, series_uids, series)
    contours = next(
        (
            item.get("ContourSequence", [])
            for item in ds.get("ROIContourSequence", [])
            if int(item.ReferencedROINumber) == number
        ),
        [],
    )
    if not contours:
        raise CaseInputError(f"{where}: ROI {name!r} has no contours")
    polygons: dict[int, list[np.ndarray]] = {}
    for n, contour in enumerate(contours, start=1):
        kind = str(contour.get("ContourGeometricType", ""))
        if kind != "CLOSED_PLANAR":
            raise CaseInputError(
                f"{where}: ROI {name!r} contour {n} is {kind or 'untyped'}; only CLOSED_PLANAR "
                "contours make a mask"
            )
        points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
        index = np.array([ct.TransformPhysicalPointToContinuousIndex(p) for p in points.tolist()])
        k = _contour_slice(index, ct, where, f"ROI {name!r} contour {n}")
        polygons.setdefault(k, []).append(index[:, :2])
    values = np.zeros(ct.GetSize()[::-1], dtype=np.uint8)
    for k, slice_polygons in polygons.items():
        values[k] = fill_even_odd(slice_polygons, values.shape[1:])
    if not values.any():
        raise CaseInputError(f"{where}: ROI {name!r} covers no CT voxel centre")
    mask = sitk.GetImageFromArray(values)
    mask.CopyInformation(ct)
    note = (
        f"RTSTRUCT {os.fspath(path)} ROI {name!r} (number {number}, {len(contours)} contours "
        f"on {len(polygons)} slices)"
    )
    return mask, note


def _contour_slice(index: np.ndarray, ct: sitk.Image, where: str, what: str) -> int:
    """The CT slice a contour (points as CT continuous indices) lies on; raise if none."""
    z = index[:, 2]
    k = int(np.round(np.median(z)))
    deviation = float(np.max(np.abs(z - k)))
    if deviation > PLANE_TOLERANCE:
        span = f"{z.min():.3g}" if np.ptp(z) < 1e-6 else f"{z.min():.3g} to {z.max():.3g}"
        raise CaseInputError(
            f"{where}: {what} does not lie on a CT slice plane (at slice index {span}; "
            f"tolerance {PLANE_TOLERANCE:g} slice)"
        )
    size = ct.GetSize()
    low = index[:, :2].min(axis=0)
    high = index[:, :2].max(axis=0)
    limit = np.array(size[:2]) - 0.5 + PLANE_TOLERANCE
    if not 0 <= k < size[2] or np.any(low < -0.5 - PLANE_TOLERANCE) or np.any(high > limit):
        raise CaseInputError(
            f"{where}: {what} lies outside the CT volume (CT voxel indices x {low[0]:.4g} to "
            f"{high[0]:.4g}, y {low[1]:.4g} to {high[1]:.4g}, slice {k}; CT size {size})"
        )
    return k


def fill_even_odd(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Boolean (rows, cols) image: pixels whose centre is inside `polygons`, even-odd rule.

    Polygons are (n, 2) arrays of (x, y) = (column, row) continuous indices; pixel centres
    are at integers. A horizontal ray from each centre crosses edges; an odd count is
    inside, so overlapping polygons combine by XOR. Edges cover rows y0 <= row < y1 and
    a crossing at x counts for the columns col < x (half-open scanline rule).
    """
    rows, cols = shape
    counts = np.zeros((rows, cols + 1), dtype=np.int32)
    for polygon in polygons:
        x0, y0 = polygon[:, 0], polygon[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        first = np.clip(np.ceil(np.minimum(y0, y1)), 0, rows).astype(int)
        stop = np.clip(np.ceil(np.maximum(y0, y1)), 0, rows).astype(int)
        n_rows = np.maximum(stop - first, 0)  # 0 for horizontal edges
        edge = np.repeat(np.arange(len(n_rows)), n_rows)
        row = np.arange(n_rows.sum()) - np.repeat(np.cumsum(n_rows) - n_rows, n_rows) + first[edge]
        t = (row - y0[edge]) / (y1[edge] - y0[edge])
        crossing = x0[edge] + t * (x1[edge] - x0[edge])
        col = np.clip(np.ceil(crossing), 0, cols).astype(int)
        np.add.at(counts, (row, 0), 1)
        np.add.at(counts, (row, col), -1)
    return (np.cumsum(counts, axis=1)[:, :cols] % 2).astype(bool)


# --- DICOM-SEG -----------------------------------------------------------------------------


def choose_segment(
    segments: Sequence[tuple[int, str]], wanted: str, where: str
) -> tuple[int, str]:
    """The (SegmentNumber, SegmentLabel) for `wanted`: a number first, else a label.

    With one segment, `wanted` may be ''.
    """
    shown = ", ".join(f"{number} {label!r}" for number, label in segments)
    if not segments:
        raise CaseInputError(f"{where}: SEG has no segment (empty SegmentSequence)")
    if not wanted:
        if len(segments) == 1:
            return segments[0]
        raise CaseInputError(
            f"{where}: SEG has {len(segments)} segments, set mask_segment to a number or label: "
            f"{shown}"
        )
    by_number = [s for s in segments if wanted.isdigit() and s[0] == int(wanted)]
    match = by_number or [s for s in segments if s[1] == wanted]
    if not match:
        raise CaseInputError(f"{where}: no segment {wanted!r}; segments present: {shown}")
    if len(match) > 1:
        numbers = ", ".join(str(number) for number, _ in match)
        raise CaseInputError(f"{where}: segment label {wanted!r} is used by segments {numbers}")
    return match[0]


def _functional_group(frame: Dataset, shared: Dataset, sequence: str) -> Dataset | None:
    """A functional group's item for a frame: the per-frame one, else the shared one."""
    for groups in (frame, shared):
        if sequence in groups and len(groups[sequence].value):
            return groups[sequence].value[0]
    return None


def seg_mask(
    path: str | os.PathLike,
    ct: sitk.Image,
    series: SeriesInfo,
    segment: str,
    where: str,
    tolerance: float,
) -> tuple[sitk.Image, str]:
    """Segment `segment` of a DICOM-SEG on the CT grid, and a note for the QC table."""
    ds = _read_full(path, where)
    segments = [
        (int(item.SegmentNumber), str(item.get("SegmentLabel", "")))
        for item in ds.get("SegmentSequence", [])
    ]
    number, label = choose_segment(segments, segment, where)
    series_uids = [
        str(item.SeriesInstanceUID)
        for item in ds.get("ReferencedSeriesSequence", [])
        if "SeriesInstanceUID" in item
    ]
    frame_of_reference = str(ds.get("FrameOfReferenceUID", ""))
    _check_reference(where, "SEG", [frame_of_reference], series_uids, series)
    fractional = str(ds.get("SegmentationType", "BINARY")) == "FRACTIONAL"
    frames = _segment_frames(ds, number)
    if not frames:
        raise CaseInputError(f"{where}: segment {number} {label!r} has no frame")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for unsupported/corrupt pixel data
        raise CaseInputError(
            f"{where}: cannot decode the SEG pixel data (transfer syntax "
            f"{ds.file_meta.get('TransferSyntaxUID', '?')}): {_one_line(exc)}"
        ) from None
    pixels = pixels.reshape(-1, int(ds.Rows), int(ds.Columns))
    threshold = FRACTIONAL_THRESHOLD * float(ds.get("MaximumFractionalValue", 255) or 255)
    values = np.zeros(ct.GetSize()[::-1], dtype=np.uint8)
    shared = ds.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    for frame_number in frames:
        group = ds.PerFrameFunctionalGroupsSequence[frame_number]
        k, j, i = _frame_origin(group, shared, ct, pixels.shape[1:], where, frame_number, tolerance)
        frame = pixels[frame_number]
        inside = frame >= threshold if fractional else frame != 0
        values[k, j : j + frame.shape[0], i : i + frame.shape[1]] |= inside
    if not values.any():
        raise CaseInputError(f"{where}: segment {number} {label!r} is empty (no voxel set)")
    mask = sitk.GetImageFromArray(values)
    mask.CopyInformation(ct)
    kind = f"FRACTIONAL >= {FRACTIONAL_THRESHOLD:g} of max" if fractional else "BINARY"
    note = (
        f"SEG {os.fspath(path)} segment {number} {label!r} ({kind}, {len(frames)} frames)"
    )
    return mask, note


def _segment_frames(ds: Dataset, number: int) -> list[int]:
    """0-based indices of the frames of segment `number`."""
    shared = ds.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    frames = []
    for n, group in enumerate(ds.get("PerFrameFunctionalGroupsSequence", [])):
        item = _functional_group(group, shared, "SegmentIdentificationSequence")
        if item is not None and int(item.ReferencedSegmentNumber) == number:
            frames.append(n)
    return frames


def _frame_origin(
    group: Dataset,
    shared: Dataset,
    ct: sitk.Image,
    frame_shape: tuple[int, int],
    where: str,
    frame_number: int,
    tolerance: float,
) -> tuple[int, int, int]:
    """CT voxel index (k, j, i) of a SEG frame's first pixel; raise unless it is on the grid."""
    what = f"SEG frame {frame_number + 1}"
    position = _functional_group(group, shared, "PlanePositionSequence")
    orientation = _functional_group(group, shared, "PlaneOrientationSequence")
    measures = _functional_group(group, shared, "PixelMeasuresSequence")
    if position is None or orientation is None or measures is None:
        raise CaseInputError(
            f"{where}: {what} lacks its plane position, orientation or pixel spacing"
        )
    direction = np.array(ct.GetDirection()).reshape(3, 3)
    iop = np.asarray(orientation.ImageOrientationPatient, dtype=float)
    ct_iop = np.concatenate([direction[:, 0], direction[:, 1]])
    spacing = np.asarray(measures.PixelSpacing, dtype=float)[::-1]  # (row, col) -> (x, y)
    ct_spacing = np.array(ct.GetSpacing()[:2])
    if np.max(np.abs(iop - ct_iop)) > tolerance or np.max(np.abs(spacing - ct_spacing)) > tolerance:
        raise CaseInputError(
            f"{where}: {what} is not on the CT grid (orientation {_fmt(iop)}, pixel spacing "
            f"{_fmt(spacing)} vs CT {_fmt(ct_iop)}, {_fmt(ct_spacing)})"
        )
    point = [float(v) for v in position.ImagePositionPatient]
    index = np.array(ct.TransformPhysicalPointToContinuousIndex(point))
    rounded = np.round(index).astype(int)
    if np.max(np.abs(index - rounded)) > PLANE_TOLERANCE:
        raise CaseInputError(
            f"{where}: {what} is not on the CT grid (its first pixel is at CT index "
            f"{_fmt(index)}; tolerance {PLANE_TOLERANCE:g} voxel)"
        )
    i, j, k = (int(v) for v in rounded)
    size = ct.GetSize()
    rows, cols = frame_shape
    if not (0 <= k < size[2] and 0 <= i and i + cols <= size[0] and 0 <= j and j + rows <= size[1]):
        raise CaseInputError(
            f"{where}: {what} lies outside the CT volume (first pixel at CT index ({i}, {j}, "
            f"{k}), {cols} x {rows} pixels; CT size {size})"
        )
    return k, j, i


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"
