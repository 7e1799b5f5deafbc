"""pyradiomics features for one patient, written as one-row feature and QC tables.

Our result equals plain pyradiomics run on the raw files with
`pyradiomics_reference_params(params, ct.resample_spacing, mask_label)` and the CT cast to
32-bit float: `radpath.inputs.ct` casts every CT to that one type (so a scan gives the same
features whether its file stores int16 or float) and resamples with pyradiomics' own
function and settings, then pyradiomics runs without resampling. `diagnostics_*` entries never enter the features; they go to the QC table.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence

import SimpleITK as sitk
import yaml
from pykwalify.errors import PyKwalifyException
from radiomics.featureextractor import RadiomicsFeatureExtractor

from radpath.inputs.ct import CTSettings, prepare_case
from radpath.inputs.io import atomic_write

logger = logging.getLogger(__name__)

DIAGNOSTICS_PREFIX = "diagnostics_"
PYRADIOMICS_WARNINGS = "radpath_pyradiomics_warnings"  # QC column
PYRADIOMICS_DEFAULTS = RadiomicsFeatureExtractor._getDefaultSettings()


class RadiomicsError(ValueError):
    """A failed extraction (bad input data); the message names the patient."""


class ParameterFileError(RadiomicsError):
    """The pyradiomics parameter file is unusable: a problem of the run, not of a patient, so
    it fails every job instead of excluding patients (see radpath.inputs.runtime.is_bad_input)."""

    excludes_item = False


def _one_line(value: object, limit: int | None = 300) -> str:
    return " ".join(str(value).split())[:limit]


# --- parameters ----------------------------------------------------------------------------


def load_params(path: str | os.PathLike) -> dict:
    """A pyradiomics parameter file, validated by pyradiomics and for use with radpath.

    Raises ParameterFileError for unreadable YAML, anything pyradiomics' schema rejects, and
    settings that radpath owns elsewhere (see `unsupported_settings`).
    """
    return load_extractor(path)[0]


def load_extractor(path: str | os.PathLike) -> tuple[dict, RadiomicsFeatureExtractor]:
    """:func:`load_params` and the extractor it was validated with.

    pyradiomics validates a parameter file when it builds an extractor from it, so a job
    builds one only and runs it (after :func:`run_settings`).
    """
    where = f"pyradiomics parameter file {os.fspath(path)}"
    try:
        with open(path, encoding="utf-8") as handle:
            params = yaml.safe_load(handle)
    except OSError as exc:
        raise ParameterFileError(f"{where}: cannot be read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ParameterFileError(f"{where}: not valid YAML: {_one_line(exc)}") from exc
    if not isinstance(params, dict):
        raise ParameterFileError(f"{where}: expected a mapping with imageType/featureClass/setting")
    try:
        extractor = RadiomicsFeatureExtractor(copy.deepcopy(params))
    except PyKwalifyException as exc:
        raise ParameterFileError(f"{where}: rejected by pyradiomics: {_one_line(exc.msg)}") from exc
    problems = unsupported_settings(params.get("setting") or {})
    if problems:
        raise ParameterFileError(f"{where}: {'; '.join(problems)}")
    return params, extractor


def unsupported_settings(setting: Mapping) -> list[str]:
    """Reasons the pyradiomics `setting` block cannot be used as is by radpath."""
    problems = []
    if setting.get("resampledPixelSpacing") is not None:
        problems.append(
            "remove setting.resampledPixelSpacing: resampling is set by config ct.resample_spacing"
        )
    if setting.get("normalize"):
        problems.append(
            "setting.normalize must be false (CT values are absolute HU; pyradiomics would "
            "normalize before resampling, which radpath does outside pyradiomics)"
        )
    if setting.get("label", 1) != 1:
        problems.append(
            "setting.label must be 1 or absent: the ROI label is the sheet's mask_label"
        )
    return problems


def run_settings(resampled: bool) -> dict:
    """Settings for pyradiomics on `prepare_case` output (binary mask, maybe resampled), over
    the parameter file's: ``extractor.settings.update(...)``, as
    ``RadiomicsFeatureExtractor(params, **settings)`` would do."""
    settings: dict = {"label": 1}
    if resampled:
        # pyradiomics skips preCrop when it resamples itself; cropping our resampled image
        # again could trim a voxel and change the filtered images at the border.
        settings["preCrop"] = False
    return settings


def pyradiomics_reference_params(
    params: Mapping, resample_spacing: Sequence[float] | None, mask_label: int
) -> dict:
    """Parameters with which plain pyradiomics on the raw files reproduces our features."""
    out = copy.deepcopy(dict(params))
    setting = dict(out.get("setting") or {})
    setting["label"] = int(mask_label)
    if resample_spacing is not None:
        setting["resampledPixelSpacing"] = [float(s) for s in resample_spacing]
    out["setting"] = setting
    return out


# --- extraction ----------------------------------------------------------------------------


def split_result(result: Mapping, patient_id: str) -> tuple[dict[str, float], dict[str, str]]:
    """pyradiomics' output as (features, diagnostics); non-finite features become NaN."""
    features: dict[str, float] = {}
    diagnostics: dict[str, str] = {}
    for name, value in result.items():
        if name.startswith(DIAGNOSTICS_PREFIX):
            diagnostics[name] = _one_line(value, limit=None)
        else:
            features[name] = float(value)
    nonfinite = [name for name, value in features.items() if not math.isfinite(value)]
    if nonfinite:
        logger.warning(
            "patient %s: %d non-finite feature values set to NaN: %s",
            patient_id,
            len(nonfinite),
            ", ".join(nonfinite),
        )
        features.update(dict.fromkeys(nonfinite, math.nan))
    return features, diagnostics


def extract_features(
    image: sitk.Image, mask: sitk.Image, extractor: RadiomicsFeatureExtractor, patient_id: str
) -> tuple[dict[str, float], dict[str, str]]:
    """Run a pyradiomics extractor on an image and mask; (features, diagnostics), in
    pyradiomics' order."""
    with pyradiomics_warnings() as warnings:
        try:
            result = extractor.execute(image, mask)
        except (ValueError, RuntimeError) as exc:
            raise RadiomicsError(
                f"patient {patient_id}: pyradiomics failed: {_one_line(exc)}"
            ) from exc
    features, diagnostics = split_result(result, patient_id)
    if warnings:
        diagnostics[PYRADIOMICS_WARNINGS] = "; ".join(dict.fromkeys(warnings))
    return features, diagnostics


@contextlib.contextmanager
def pyradiomics_warnings() -> Iterator[list[str]]:
    """The messages of pyradiomics' warnings while the block runs (they are also logged).

    pyradiomics skips what it cannot compute (e.g. a LoG filter on a CT only a few slices
    thick) with a warning and leaves those features out; the QC table keeps its reason."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(_one_line(record.getMessage(), limit=None))

    source = logging.getLogger("radiomics")
    handler = Collect(logging.WARNING)
    source.addHandler(handler)
    try:
        yield messages
    finally:
        source.removeHandler(handler)


def extract_patient(
    patient_id: str,
    ct_path: str | os.PathLike,
    mask_path: str | os.PathLike,
    mask_label,
    ct_cfg: Mapping,
    params_path: str | os.PathLike,
    features_out: str | os.PathLike,
    qc_out: str | os.PathLike,
    *,
    ct_series_uid: str | None = "",
    mask_roi: str | None = "",
    mask_segment: str | int | None = "",
) -> tuple[dict[str, float], dict[str, str]]:
    """Prepare one patient's CT, extract features, write the features and QC TSVs atomically.

    `ct_series_uid`, `mask_roi` and `mask_segment` are the patients sheet's optional DICOM
    columns ('' when not given; see `radpath.inputs.ct.prepare_case`).
    Returns (features, qc) as written (without `patient_id`).
    """
    params, extractor = load_extractor(params_path)
    setting = {**PYRADIOMICS_DEFAULTS, **(params.get("setting") or {})}
    ct_settings = CTSettings.from_config(ct_cfg)
    case = prepare_case(
        ct_path,
        mask_path,
        mask_label,
        ct_settings,
        patient_id,
        interpolator=setting["interpolator"],
        pad_distance=setting["padDistance"],
        ct_series_uid=ct_series_uid,
        mask_roi=mask_roi,
        mask_segment=mask_segment,
    )
    if case.notes["radpath_roi_slices_native"] == "1" and not setting.get("force2D"):
        raise RadiomicsError(
            f"patient {patient_id}: mask {os.fspath(mask_path)}: the ROI lies on one slice of "
            "the CT, so 3D shape and texture features would describe the slice thickness, not "
            "the lesion; draw it on every slice it spans, or, for a cohort of such thin "
            "lesions, extract 2D features (force2D: true in the pyradiomics parameter file, "
            "and ct.resample_spacing with 0 along z to keep the slices)"
        )
    extractor.settings.update(run_settings(resampled=ct_settings.resample_spacing is not None))
    features, diagnostics = extract_features(case.image, case.mask, extractor, patient_id)
    nan_features = [name for name, value in features.items() if math.isnan(value)]
    warnings = diagnostics.pop(PYRADIOMICS_WARNINGS, "")
    if warnings:
        logger.warning(
            "patient %s: pyradiomics computed %d features and warned: %s",
            patient_id, len(features), warnings,
        )
    qc = {
        **case.notes,
        "radpath_n_features": str(len(features)),
        "radpath_nan_features": " ".join(nan_features),
        PYRADIOMICS_WARNINGS: warnings,
        **diagnostics,
    }
    write_row_tsv(features_out, {"patient_id": patient_id, **features})
    write_row_tsv(qc_out, {"patient_id": patient_id, **qc})
    return features, qc


def write_row_tsv(path: str | os.PathLike, row: Mapping[str, object]) -> None:
    """A header line and one row, atomically; floats at full (round-trip) precision."""
    with atomic_write(path) as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(row.keys())
        writer.writerow(_cell(value) for value in row.values())


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else repr(value)
    return _one_line(value, limit=None)
