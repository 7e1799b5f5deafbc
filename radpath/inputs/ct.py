"""Per-patient CT and mask handling: read, check geometry, select the ROI label, resample.

`prepare_case` turns a CT and a label mask into the (image, binary mask) pair that
pyradiomics gets. Resampling uses pyradiomics' own `imageoperations.resampleImage` with the
settings pyradiomics would use for `resampledPixelSpacing: ct.resample_spacing`, so our
features equal `RadiomicsFeatureExtractor(...).execute(ct, mask)` with that setting
(see `radpath.radiomics.features.pyradiomics_reference_params`). Doing it here, not inside
pyradiomics, lets us check the ROI size after resampling and name the patient in errors.

Speed-up: the resampling grid comes from the mask's bounding box (plus `padDistance`), but
SimpleITK's B-spline interpolator prefilters the *whole* input image. We give it only the CT
around the ROI (the mask, hence the grid, is untouched). The prefilter's boundary influence
decays by 0.268 per voxel, so with `BSPLINE_DECAY_MARGIN` extra voxels the resampled voxels
are bit-identical for int16/float32 CTs (measured; float64 CTs agree to ~1e-11 HU).

DICOM: a CT folder may hold several series; `_read_dicom_series` reads the one named by the
sheet's `ct_series_uid`, else the folder's only CT series (localizers and non-image objects
such as RTSTRUCT or SEG are never picked), and refuses to guess between several. Masks may be
label maps, DICOM RTSTRUCT (ROI by name, `mask_roi`) or DICOM-SEG (segment by number or
label, `mask_segment`); the DICOM kinds are rasterised onto the CT grid by `radpath.inputs.dicom`,
which (with pydicom) is imported only when a DICOM input is used.

Importing this module routes pyradiomics' log records (WARNING and up) to the
`radpath.pyradiomics` logger and drops its INFO chatter and its own stderr handler.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import logging
import math
import os
import re
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk
from radiomics import imageoperations

from radpath.inputs.images import CaseInputError, SeriesInfo

PYRADIOMICS_LOG = logging.getLogger("radpath.pyradiomics")

ROLE_CT = "CT"
ROLE_MASK = "mask"
SUPPORTED_FORMATS = ".nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd or a DICOM series directory"
LABEL_MAP = "label map"
BSPLINE_SUPPORT = 2  # voxels each side a cubic B-spline reads around a sample point
BSPLINE_DECAY_MARGIN = 40  # extra voxels so the cropped prefilter equals the full one
# The pixel type every CT is cast to before resampling and extraction (see prepare_case).
RADIOMICS_PIXEL_TYPE = sitk.sitkFloat32
ROI_BOUNDS_TOLERANCE = 1e-3  # voxels; same slack as pyradiomics' _checkROI


class _ForwardTo(logging.Handler):
    """Re-log records on another logger (so they carry our name and reach our handlers)."""

    def __init__(self, target: logging.Logger) -> None:
        super().__init__(logging.WARNING)
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.log(record.levelno, "%s", record.getMessage())


def route_pyradiomics_logging() -> None:
    """Drop pyradiomics' INFO/DEBUG chatter and its stderr handler; forward WARNING+ to us."""
    source = logging.getLogger("radiomics")
    for handler in list(source.handlers):
        if not isinstance(handler, _ForwardTo):
            source.removeHandler(handler)
    if not source.handlers:
        source.addHandler(_ForwardTo(PYRADIOMICS_LOG))
    source.setLevel(logging.WARNING)
    source.propagate = False
    logging.getLogger("pykwalify").setLevel(logging.WARNING)  # its 'validation.valid' lines


route_pyradiomics_logging()


@dataclass(frozen=True)
class CTSettings:
    """The `ct` section of config.yaml."""

    geometry_tolerance: float
    resample_mask_to_ct: bool
    resample_spacing: tuple[float, float, float] | None
    min_roi_voxels: int

    @classmethod
    def from_config(cls, ct_cfg: Mapping) -> CTSettings:
        missing = [k for k in cls.__dataclass_fields__ if k not in ct_cfg]
        if missing:
            raise ValueError(f"config section 'ct' lacks {', '.join(missing)}")
        spacing = ct_cfg["resample_spacing"]
        if spacing is not None and (len(spacing) != 3 or min(spacing) < 0):
            raise ValueError(
                f"config ct.resample_spacing must be null or 3 numbers >= 0, got {spacing}"
            )
        return cls(
            geometry_tolerance=float(ct_cfg["geometry_tolerance"]),
            resample_mask_to_ct=bool(ct_cfg["resample_mask_to_ct"]),
            resample_spacing=None if spacing is None else tuple(float(s) for s in spacing),
            min_roi_voxels=int(ct_cfg["min_roi_voxels"]),
        )


class GeometryCheck(NamedTuple):
    mask: sitk.Image  # the mask on the CT grid
    note: str  # what was done, for the QC table


class CTVolume(NamedTuple):
    image: sitk.Image
    series: SeriesInfo | None  # the DICOM series read; None for an image file


class MaskSource(NamedTuple):
    mask: sitk.Image  # binary (0/1, UInt8)
    kind: str  # LABEL_MAP, "RTSTRUCT" or "SEG"
    note: str  # what was read (file, ROI or segment), for the QC table


class CheckedCase(NamedTuple):
    image: sitk.Image  # the CT as read
    mask: sitk.Image  # binary (0/1, UInt8), on the CT grid
    notes: dict[str, str]  # reading and geometry notes for the QC table


class PreparedCase(NamedTuple):
    image: sitk.Image
    mask: sitk.Image  # binary (0/1, UInt8), same grid as `image`
    notes: dict[str, str]  # geometry and ROI notes for the QC table


def _where(patient_id: str, role: str, path: str | os.PathLike) -> str:
    return f"patient {patient_id}: {role} {os.fspath(path)}"


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


# --- reading -------------------------------------------------------------------------------


def read_image(path: str | os.PathLike, patient_id: str, role: str) -> sitk.Image:
    """Read a 3D scalar image from a file or a DICOM series directory.

    Raises CaseInputError for a missing, unreadable, truncated or non-3D-scalar image, and
    for a DICOM folder whose series is ambiguous (see `choose_series`).
    """
    return _read_volume(path, patient_id, role).image


def read_ct(path: str | os.PathLike, patient_id: str, series_uid: str = "") -> CTVolume:
    """The CT image and, for a DICOM folder, the series read (`series_uid` or the one CT)."""
    if series_uid and not os.path.isdir(path):
        where = _where(patient_id, ROLE_CT, path)
        if not os.path.exists(path):
            raise CaseInputError(f"{where}: file not found")
        raise CaseInputError(
            f"{where}: ct_series_uid {series_uid} is set but the CT is a file, not a DICOM folder"
        )
    return _read_volume(path, patient_id, ROLE_CT, series_uid)


def _read_volume(
    path: str | os.PathLike, patient_id: str, role: str, series_uid: str = ""
) -> CTVolume:
    """The image at `path`, read once per process while the file is unchanged: the per-
    patient CT job (radiomics, cubes, layout) reads its CT and mask once. Each caller gets
    its own copy (SimpleITK copies the voxels only when one is changed)."""
    try:
        stat = os.stat(path)
    except OSError:
        return _read_uncached(path, patient_id, role, series_uid)  # it says what is wrong
    identity = (os.fspath(path), stat.st_size, stat.st_mtime_ns)
    volume = _read_cached(identity, patient_id, role, series_uid)
    return CTVolume(sitk.Image(volume.image), volume.series)


@functools.lru_cache(maxsize=4)
def _read_cached(identity: tuple, patient_id: str, role: str, series_uid: str) -> CTVolume:
    return _read_uncached(identity[0], patient_id, role, series_uid)


def _read_uncached(
    path: str | os.PathLike, patient_id: str, role: str, series_uid: str = ""
) -> CTVolume:
    where = _where(patient_id, role, path)
    if not os.path.exists(path):
        raise CaseInputError(f"{where}: file not found")
    series = None
    try:
        if os.path.isdir(path):
            image, series = _read_dicom_series(path, series_uid, ct_only=role == ROLE_CT)
        else:
            problem = _nifti_problem(path)
            if problem:
                raise CaseInputError(f"{where}: {problem}")
            image = sitk.ReadImage(os.fspath(path))
    except RuntimeError as exc:
        raise CaseInputError(
            f"{where}: cannot be read as an image ({SUPPORTED_FORMATS}; corrupt or truncated?): "
            f"{_itk_reason(exc)}"
        ) from None
    except _DicomFolderProblem as exc:
        raise CaseInputError(f"{where}: {exc}") from None
    if image.GetDimension() != 3:
        raise CaseInputError(f"{where}: expected a 3D image, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CaseInputError(
            f"{where}: expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} "
            "components per voxel"
        )
    return CTVolume(image, series)


class _DicomFolderProblem(Exception):
    """Why a DICOM folder cannot be read (read_image adds the patient and path)."""


def _read_dicom_series(
    directory: str | os.PathLike, series_uid: str = "", ct_only: bool = True
) -> tuple[sitk.Image, SeriesInfo]:
    """The chosen series of `directory` (not recursive) and its description.

    See `choose_series` for which one; one pydicom header read per series says its modality.
    """
    directory = os.fspath(directory)
    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(directory)
    if not uids:
        raise _DicomFolderProblem("directory holds no DICOM series")
    from radpath.inputs import dicom  # pydicom is needed only for DICOM inputs

    series = [
        dicom.describe_series(uid, sitk.ImageSeriesReader.GetGDCMSeriesFileNames(directory, uid))
        for uid in uids
    ]
    chosen = choose_series(series, series_uid, ct_only)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(chosen.files)
    return reader.Execute(), chosen


def choose_series(series: Sequence[SeriesInfo], wanted_uid: str, ct_only: bool) -> SeriesInfo:
    """`wanted_uid` if given, else the only candidate (the only CT series when `ct_only`).

    Raises _DicomFolderProblem when the wanted series is absent or not CT, when there is no
    candidate, and when there are several (listing UID, description, modality and size, so
    the user can set ct_series_uid).
    """
    if wanted_uid:
        match = [s for s in series if s.uid == wanted_uid]
        if not match:
            raise _DicomFolderProblem(
                f"series {wanted_uid} (ct_series_uid) is not in this folder; series present: "
                + _listing(series)
            )
        if ct_only and match[0].modality != "CT":
            raise _DicomFolderProblem(
                f"series {wanted_uid} (ct_series_uid) is {match[0].modality or 'not'} an image "
                "series, not CT"
            )
        return match[0]
    candidates = [s for s in series if s.is_ct] if ct_only else list(series)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise _DicomFolderProblem(
            "no CT image series in this folder (localizers are not used); series present: "
            + _listing(series)
        )
    if ct_only:
        raise _DicomFolderProblem(
            f"{len(candidates)} CT series in this folder; set ct_series_uid in the patients "
            "sheet to one of: " + _listing(candidates)
        )
    raise _DicomFolderProblem(
        f"{len(candidates)} DICOM series in this folder; use a folder holding only the mask "
        "series: " + _listing(candidates)
    )


def _listing(series: Sequence[SeriesInfo]) -> str:
    return "; ".join(s.describe() for s in series)


def _itk_reason(exc: RuntimeError) -> str:
    """One line from a multi-line SimpleITK exception: the ITK error text, if any."""
    text = str(exc)
    match = re.search(r"ITK ERROR: [^:]*\): (.*)", text)
    line = match.group(1) if match else text.strip().splitlines()[-1]
    return line.strip()[:300]


def _nifti_problem(path: str | os.PathLike) -> str | None:
    """Why a single-file NIfTI is incomplete, or None.

    ITK reads a truncated .nii/.nii.gz without complaint and zero-fills the missing voxels,
    so we compare the bytes present with what the header promises.
    """
    name = os.fspath(path).lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return None
    with open(path, "rb") as handle:
        is_gzip = handle.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(path, "rb") if is_gzip else open(path, "rb") as handle:
            header = handle.read(540)
            expected = _nifti_expected_bytes(header)
            if expected is None:
                return None  # not a NIfTI header we know; let ITK judge
            actual = len(header) + _count_bytes(handle) if is_gzip else os.path.getsize(path)
    except (EOFError, OSError, zlib.error) as exc:
        return f"truncated or corrupt gzip stream ({exc})"
    if actual < expected:
        return f"truncated NIfTI: header promises {expected} bytes, file has {actual}"
    return None


def _nifti_expected_bytes(header: bytes) -> int | None:
    """vox_offset + voxel data size from a NIfTI-1 or NIfTI-2 header."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dim = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dim = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    n_dims = dim[0]
    if not 1 <= n_dims <= 7:
        return None
    return offset + math.prod(dim[1 : n_dims + 1]) * bitpix // 8


def _count_bytes(handle, chunk: int = 1 << 22) -> int:
    total = 0
    while block := handle.read(chunk):
        total += len(block)
    return total


# --- geometry ------------------------------------------------------------------------------


def geometry_differences(
    ct: sitk.Image, mask: sitk.Image, tolerance: float, other: str = "mask"
) -> list[str]:
    """'what CT (values) vs mask (values)' for each of size/spacing/origin/direction that differ.

    `other` names the second image in the text (e.g. an extra channel's name).
    """
    differences = []
    if ct.GetSize() != mask.GetSize():
        differences.append(f"size CT {_fmt(ct.GetSize())} vs {other} {_fmt(mask.GetSize())}")
    for name in ("Spacing", "Origin", "Direction"):
        a, b = getattr(ct, "Get" + name)(), getattr(mask, "Get" + name)()
        if np.max(np.abs(np.subtract(a, b))) > tolerance:
            differences.append(f"{name.lower()} CT {_fmt(a)} vs {other} {_fmt(b)}")
    return differences


def _max_geometry_deviation(ct: sitk.Image, mask: sitk.Image) -> float:
    return max(
        float(np.max(np.abs(np.subtract(getattr(ct, g)(), getattr(mask, g)()))))
        for g in ("GetSpacing", "GetOrigin", "GetDirection")
    )


def check_geometry(
    ct: sitk.Image,
    mask: sitk.Image,
    tolerance: float,
    patient_id: str,
    ct_path: str | os.PathLike,
    mask_path: str | os.PathLike,
    resample_mask_to_ct: bool = False,
) -> GeometryCheck:
    """The mask on the CT grid.

    Within `tolerance` the mask takes the CT's exact geometry (so SimpleITK's much tighter
    internal tolerance never trips later). Otherwise raise, naming what differs, or with
    `resample_mask_to_ct` resample it (nearest neighbour) after checking the ROI lies inside
    the CT. `mask` is expected binary (see `select_label`).
    """
    differences = geometry_differences(ct, mask, tolerance)
    if not differences:
        deviation = _max_geometry_deviation(ct, mask)
        if deviation == 0:
            return GeometryCheck(mask, "identical to CT")
        snapped = sitk.Image(mask)
        snapped.CopyInformation(ct)
        return GeometryCheck(
            snapped, f"within tolerance (max abs deviation {deviation:.3g}), CT geometry copied"
        )
    where = f"patient {patient_id}: CT {os.fspath(ct_path)} and mask {os.fspath(mask_path)}"
    if not resample_mask_to_ct:
        raise CaseInputError(
            f"{where} differ in geometry beyond tolerance {tolerance:g}: {'; '.join(differences)}"
            " (set ct.resample_mask_to_ct: true to resample the mask onto the CT grid)"
        )
    _require_roi_inside(ct, mask, where)
    resampled = sitk.Resample(
        mask, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID()
    )
    if not np.any(sitk.GetArrayViewFromImage(resampled)):
        raise CaseInputError(f"{where}: the ROI covers no voxel of the CT grid after resampling")
    return GeometryCheck(
        resampled, "resampled onto CT grid (nearest neighbour): " + "; ".join(differences)
    )


def _require_roi_inside(ct: sitk.Image, mask: sitk.Image, where: str) -> None:
    """Raise unless the ROI's physical bounding box (all 8 corners) lies inside the CT volume."""
    lo, hi = roi_bounding_box(mask)
    corners = [np.where(upper, hi + 0.5, lo - 0.5) for upper in itertools.product((0, 1), repeat=3)]
    in_ct = np.array([_continuous_index(ct, mask, corner) for corner in corners])
    low, high = in_ct.min(axis=0), in_ct.max(axis=0)
    edge_low = -0.5 - ROI_BOUNDS_TOLERANCE
    edge_high = np.array(ct.GetSize()) - 0.5 + ROI_BOUNDS_TOLERANCE
    if np.any(high <= edge_low) or np.any(low >= edge_high):
        raise CaseInputError(f"{where}: the ROI lies entirely outside the CT volume")
    if np.any(low < edge_low) or np.any(high > edge_high):
        raise CaseInputError(
            f"{where}: the ROI extends outside the CT volume (ROI spans CT voxel indices "
            f"{_fmt(low)} to {_fmt(high)}, CT size {_fmt(ct.GetSize())})"
        )


def _continuous_index(ct: sitk.Image, mask: sitk.Image, mask_index: np.ndarray) -> tuple:
    """CT continuous index of a mask continuous index."""
    point = mask.TransformContinuousIndexToPhysicalPoint(mask_index.tolist())
    return ct.TransformPhysicalPointToContinuousIndex(point)


def roi_bounding_box(mask: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest (x, y, z) voxel index of the nonzero voxels of a binary mask."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    box = np.array(stats.GetBoundingBox(1))
    return box[:3], box[:3] + box[3:] - 1


# --- ROI -----------------------------------------------------------------------------------


def as_label(value, patient_id: str) -> int:
    """The sheet's mask_label as a positive int; missing (None/NaN/'') means 1."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return 1
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not number.is_integer() or number < 1:
        raise CaseInputError(
            f"patient {patient_id}: mask_label must be a positive integer, got {value!r}"
        )
    return int(number)


def select_label(
    mask: sitk.Image, label: int, patient_id: str = "?", mask_path: str | os.PathLike = "?"
) -> sitk.Image:
    """Binary UInt8 mask (1 where mask == label).

    Raises CaseInputError for non-integer mask values, an empty mask, or a label that is
    not present (naming the labels that are).
    """
    where = _where(patient_id, ROLE_MASK, mask_path)
    values = sitk.GetArrayViewFromImage(mask)
    if values.dtype.kind == "f" and not np.all(np.mod(values, 1) == 0):
        raise CaseInputError(
            f"{where}: mask has non-integer values (a probability map?); expected integer labels"
        )
    selected = values == label
    if not selected.any():
        labels = np.unique(values)
        labels = labels[labels != 0]
        if labels.size == 0:
            raise CaseInputError(f"{where}: mask is empty (no nonzero voxel)")
        shown = ", ".join(f"{v:g}" for v in labels[:20]) + (", ..." if labels.size > 20 else "")
        raise CaseInputError(f"{where}: label {label} not present; labels present: {shown}")
    binary = sitk.GetImageFromArray(selected.astype(np.uint8))
    binary.CopyInformation(mask)
    return binary


def optional_text(value) -> str:
    """A sheet cell that may be empty (None/NaN/'') as stripped text; '' when empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def read_mask(
    mask_path: str | os.PathLike,
    ct: CTVolume,
    patient_id: str,
    label: int,
    roi: str = "",
    segment: str = "",
    tolerance: float = 1e-3,
) -> MaskSource:
    """The binary mask of a label map (`label`), an RTSTRUCT ROI or a DICOM-SEG segment.

    The kind comes from the DICOM header (Modality / SOPClassUID), not the file name. DICOM
    masks need a DICOM CT: their frame of reference and referenced series are checked
    against it, and they are rasterised onto its grid (see `radpath.inputs.dicom`).
    """
    where = _where(patient_id, ROLE_MASK, mask_path)
    if not os.path.exists(mask_path):
        raise CaseInputError(f"{where}: file not found")
    found = _dicom_mask_object(mask_path, where)
    if found is None:
        for column, value in (("mask_roi", roi), ("mask_segment", segment)):
            if value:
                raise CaseInputError(
                    f"{where}: {column} {value!r} is set but the mask is a label-map image, not "
                    "an RTSTRUCT or DICOM-SEG (use mask_label)"
                )
        image = read_image(mask_path, patient_id, ROLE_MASK)
        mask = select_label(image, label, patient_id, mask_path)
        return MaskSource(mask, LABEL_MAP, f"{LABEL_MAP}, label {label}")
    kind, path = found
    where = _where(patient_id, ROLE_MASK, path)
    a_kind = ("an " if kind == "RTSTRUCT" else "a ") + kind
    wrong = ("mask_segment", segment) if kind == "RTSTRUCT" else ("mask_roi", roi)
    if wrong[1]:
        right = "mask_roi" if kind == "RTSTRUCT" else "mask_segment"
        raise CaseInputError(
            f"{where}: {wrong[0]} {wrong[1]!r} is set but the mask is {a_kind}; use {right}"
        )
    if ct.series is None:
        raise CaseInputError(
            f"{where}: {a_kind} mask needs the CT as a DICOM series folder (its frame of "
            "reference and series are checked against the CT's)"
        )
    from radpath.inputs import dicom

    if kind == "RTSTRUCT":
        mask, note = dicom.rtstruct_mask(path, ct.image, ct.series, roi, where)
    else:
        mask, note = dicom.seg_mask(path, ct.image, ct.series, segment, where, tolerance)
    return MaskSource(mask, kind, note)


def _dicom_mask_object(path: str | os.PathLike, where: str) -> tuple[str, str] | None:
    """(kind, file) when `path` is, or is a folder holding, one RTSTRUCT or DICOM-SEG object.

    A file is looked at only when it starts like DICOM (or is named *.dcm), so label maps
    cost no pydicom import. A folder holding several such objects is an error.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        if not (_has_dicom_preamble(path) or path.lower().endswith(".dcm")):
            return None
        from radpath.inputs import dicom

        kind = dicom.mask_kind(path)
        return None if kind is None else (kind, path)
    from radpath.inputs import dicom

    objects = dicom.find_mask_objects(path)
    if len(objects) > 1:
        shown = "; ".join(f"{os.path.basename(file)} ({kind})" for kind, file in objects)
        raise CaseInputError(
            f"{where}: folder holds {len(objects)} RTSTRUCT/SEG objects, point mask at one of "
            f"them: {shown}"
        )
    return objects[0] if objects else None


def _has_dicom_preamble(path: str) -> bool:
    """Part 10 files: 128-byte preamble, then 'DICM'."""
    with open(path, "rb") as handle:
        return handle.read(132)[128:] == b"DICM"


def count_roi_voxels(mask: sitk.Image) -> int:
    return int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))


def check_roi_size(
    mask: sitk.Image, min_voxels: int, patient_id: str, mask_path: str | os.PathLike, stage: str
) -> int:
    """Number of ROI voxels; raise CaseInputError if fewer than `min_voxels`."""
    n_voxels = count_roi_voxels(mask)
    if n_voxels < min_voxels:
        raise CaseInputError(
            f"{_where(patient_id, ROLE_MASK, mask_path)}: ROI has {n_voxels} voxels {stage}, "
            f"fewer than ct.min_roi_voxels={min_voxels}"
        )
    return n_voxels


# --- resampling ----------------------------------------------------------------------------


def crop_ct_for_resampling(
    ct: sitk.Image, mask: sitk.Image, spacing: Sequence[float], pad_distance: int
) -> sitk.Image:
    """The part of `ct` that resampling the ROI to `spacing` depends on (see module doc).

    `mask` must be binary and on the CT grid.
    """
    native = np.array(ct.GetSpacing())
    widest = np.maximum(np.where(np.array(spacing) == 0, native, spacing), native)
    reach = np.ceil((pad_distance + 1) * widest / native).astype(int)
    margin = reach + BSPLINE_SUPPORT + 1 + BSPLINE_DECAY_MARGIN
    lo, hi = roi_bounding_box(mask)
    start = np.maximum(lo - margin, 0)
    stop = np.minimum(hi + margin + 1, ct.GetSize())
    return sitk.RegionOfInterest(ct, (stop - start).tolist(), start.tolist())


def resample_case(
    ct: sitk.Image,
    mask: sitk.Image,
    spacing: Sequence[float],
    interpolator: str | int = "sitkBSpline",
    pad_distance: int = 5,
) -> tuple[sitk.Image, sitk.Image]:
    """pyradiomics' resampling: grid from the mask's ROI box + pad, image interpolated, mask NN."""
    return imageoperations.resampleImage(
        ct,
        mask,
        resampledPixelSpacing=list(spacing),
        interpolator=interpolator,
        padDistance=pad_distance,
        label=1,
    )


def load_checked_case(
    ct_path: str | os.PathLike,
    mask_path: str | os.PathLike,
    mask_label,
    ct_cfg: Mapping | CTSettings,
    patient_id: str,
    *,
    ct_series_uid: str | None = "",
    mask_roi: str | None = "",
    mask_segment: str | int | None = "",
) -> CheckedCase:
    """Read one patient's CT and mask and put the binary mask on the CT grid.

    The shared first half of `prepare_case` (radiomics) and `radpath.deep.cubes`: reading
    (files or DICOM, see `read_ct` and `read_mask`) and the geometry check (`check_geometry`
    with ct.geometry_tolerance and ct.resample_mask_to_ct). The ROI size is not checked here
    (callers check it on the grid they use, see `check_roi_size`).
    """
    settings = ct_cfg if isinstance(ct_cfg, CTSettings) else CTSettings.from_config(ct_cfg)
    label = as_label(mask_label, patient_id)
    ct_volume = read_ct(ct_path, patient_id, optional_text(ct_series_uid))
    ct = ct_volume.image
    source = read_mask(
        mask_path,
        ct_volume,
        patient_id,
        label,
        optional_text(mask_roi),
        optional_text(mask_segment),
        settings.geometry_tolerance,
    )
    geometry = check_geometry(
        ct,
        source.mask,
        settings.geometry_tolerance,
        patient_id,
        ct_path,
        mask_path,
        settings.resample_mask_to_ct,
    )
    mask = geometry.mask
    native_voxels = count_roi_voxels(mask)
    lo, hi = roi_bounding_box(mask) if native_voxels else (np.zeros(3, int), -np.ones(3, int))
    notes = {
        "radpath_ct_path": os.fspath(ct_path),
        "radpath_mask_path": os.fspath(mask_path),
        "radpath_mask_label": str(label) if source.kind == LABEL_MAP else "",
        "radpath_ct_series": "" if ct_volume.series is None else ct_volume.series.describe(),
        "radpath_mask_source": source.note,
        "radpath_ct_size": _fmt(ct.GetSize()),
        "radpath_ct_spacing": _fmt(ct.GetSpacing()),
        "radpath_ct_pixel_type": ct.GetPixelIDTypeAsString(),
        "radpath_mask_geometry": geometry.note,
        "radpath_roi_voxels_native": str(native_voxels),
        "radpath_roi_slices_native": str(int(hi[2] - lo[2] + 1)),
        "radpath_roi_volume_mm3": f"{native_voxels * math.prod(ct.GetSpacing()):.6g}",
    }
    return CheckedCase(ct, mask, notes)


def prepare_case(
    ct_path: str | os.PathLike,
    mask_path: str | os.PathLike,
    mask_label,
    ct_cfg: Mapping | CTSettings,
    patient_id: str,
    *,
    interpolator: str | int = "sitkBSpline",
    pad_distance: int = 5,
    crop: bool = True,
    ct_series_uid: str | None = "",
    mask_roi: str | None = "",
    mask_segment: str | int | None = "",
) -> PreparedCase:
    """Read, check and resample one patient's CT and mask for pyradiomics.

    `interpolator` and `pad_distance` must be the pyradiomics settings of the same names
    (`radpath.radiomics.features.extract_patient` passes them). `crop=False` skips the CT crop
    before resampling (slower, for checking that the crop changes nothing).
    `ct_series_uid`, `mask_roi` and `mask_segment` are the sheet's optional columns ('' or
    None when not given): the DICOM series of a CT folder, the RTSTRUCT ROI name and the
    DICOM-SEG segment (number or label).
    """
    settings = ct_cfg if isinstance(ct_cfg, CTSettings) else CTSettings.from_config(ct_cfg)
    ct, mask, notes = load_checked_case(
        ct_path,
        mask_path,
        mask_label,
        settings,
        patient_id,
        ct_series_uid=ct_series_uid,
        mask_roi=mask_roi,
        mask_segment=mask_segment,
    )
    notes["radpath_resample_spacing"] = (
        "native" if settings.resample_spacing is None else _fmt(settings.resample_spacing)
    )
    # pyradiomics resamples and filters in the image's own pixel type: the same scan stored
    # as int16 or as float32 would give different features (interpolated values rounded to
    # integers), so every CT is cast to one type first (after the crop: less to convert).
    notes["radpath_ct_cast_to"] = sitk.GetPixelIDValueAsString(RADIOMICS_PIXEL_TYPE)
    if settings.resample_spacing is not None:
        source = (
            crop_ct_for_resampling(ct, mask, settings.resample_spacing, pad_distance)
            if crop
            else ct
        )
        start = ct.TransformPhysicalPointToIndex(source.GetOrigin())
        notes["radpath_ct_region_read"] = f"start {_fmt(start)} size {_fmt(source.GetSize())}"
        try:
            image, mask = resample_case(
                sitk.Cast(source, RADIOMICS_PIXEL_TYPE), mask, settings.resample_spacing,
                interpolator, pad_distance,
            )
        except (ValueError, RuntimeError) as exc:
            where = _where(patient_id, ROLE_CT, ct_path)
            raise CaseInputError(f"{where}: resampling failed: {_one_line(exc)}") from None
        stage = f"after resampling to {_fmt(settings.resample_spacing)} mm"
    else:
        image = sitk.Cast(ct, RADIOMICS_PIXEL_TYPE)
        stage = "on the native grid"
    n_voxels = check_roi_size(mask, settings.min_roi_voxels, patient_id, mask_path, stage)
    notes["radpath_roi_voxels"] = str(n_voxels)
    return PreparedCase(image, mask, notes)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
