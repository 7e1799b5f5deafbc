"""radpath.radiomics.features: our extraction equals plain pyradiomics; outputs, errors and logging."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml
from ct_cases import CT_CFG, FAST_PARAMS, LARGE, ORIGIN, SMALL, synthetic_case, write
from radiomics.featureextractor import RadiomicsFeatureExtractor

from radpath.radiomics.features import (
    RadiomicsError,
    extract_patient,
    load_params,
    pyradiomics_reference_params,
    split_result,
)

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def fast_params(tmp_path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(FAST_PARAMS))
    return path


def run_ours(tmp_path, ct, mask, params_path, label=1, ct_cfg=CT_CFG, patient_id="P1"):
    out = tmp_path / "out"
    features, qc = extract_patient(
        patient_id, ct, mask, label, ct_cfg, params_path, out / "features.tsv", out / "qc.tsv"
    )
    return features, qc, out


def run_pyradiomics(ct, mask, params_path, label=1, spacing=(1.0, 1.0, 1.0)) -> dict[str, float]:
    """Plain pyradiomics on the CT cast to radpath's pixel type (32-bit float)."""
    params = pyradiomics_reference_params(load_params(params_path), spacing, label)
    image = sitk.ReadImage(str(ct)) if isinstance(ct, Path) else ct
    mask = str(mask) if isinstance(mask, Path) else mask
    result = RadiomicsFeatureExtractor(params).execute(sitk.Cast(image, sitk.sitkFloat32), mask)
    return {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}


def assert_identical(ours: dict[str, float], reference: dict[str, float]) -> None:
    assert list(ours) == list(reference)
    differing = [
        k
        for k, v in reference.items()
        if not (ours[k] == v or (math.isnan(ours[k]) and math.isnan(v)))
    ]
    assert differing == []


def read_row(path: Path) -> pd.Series:
    table = pd.read_csv(path, sep="\t", float_precision="round_trip", dtype={"patient_id": str})
    assert len(table) == 1
    return table.iloc[0]


# --- equality with pyradiomics -------------------------------------------------------------


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_extract_patient_equals_pyradiomics_execute(tmp_path, fast_params, ext):
    ct, mask = synthetic_case(LARGE)
    ct_path, mask_path = write(ct, tmp_path / f"ct{ext}"), write(mask, tmp_path / f"mask{ext}")
    features, qc, out = run_ours(tmp_path, ct_path, mask_path, fast_params)
    assert qc["radpath_ct_region_read"] != "start (0, 0, 0) size (134, 134, 120)"  # crop happened
    reference = run_pyradiomics(ct_path, mask_path, fast_params)
    assert_identical(features, reference)
    row = read_row(out / "features.tsv")
    assert list(row.index) == ["patient_id", *reference]
    assert row["patient_id"] == "P1"
    assert_identical({k: float(row[k]) for k in reference}, reference)


def test_selected_label_of_a_multi_label_mask_equals_pyradiomics(tmp_path, fast_params):
    ct, mask = synthetic_case(label=2)
    labels = sitk.GetArrayFromImage(mask)
    labels[2:6, 2:8, 2:8] = 1  # another structure that must be ignored
    multi = sitk.GetImageFromArray(labels)
    multi.CopyInformation(mask)
    ct_path, mask_path = write(ct, tmp_path / "ct.nii.gz"), write(multi, tmp_path / "mask.nii.gz")
    features, qc, _ = run_ours(tmp_path, ct_path, mask_path, fast_params, label=2)
    assert_identical(features, run_pyradiomics(ct_path, mask_path, fast_params, label=2))
    assert qc["radpath_mask_label"] == "2"


def test_native_spacing_equals_pyradiomics_without_resampling(tmp_path, fast_params):
    ct, mask = synthetic_case()
    ct_path, mask_path = write(ct, tmp_path / "ct.nrrd"), write(mask, tmp_path / "mask.nrrd")
    native = {**CT_CFG, "resample_spacing": None}
    features, qc, _ = run_ours(tmp_path, ct_path, mask_path, fast_params, ct_cfg=native)
    assert_identical(features, run_pyradiomics(ct_path, mask_path, fast_params, spacing=None))
    assert qc["diagnostics_Image-original_Spacing"] == str(
        sitk.ReadImage(str(ct_path)).GetSpacing()
    )


def test_real_parameter_file_equals_pyradiomics(tmp_path):
    params_path = REPO / "config" / "pyradiomics_ct.yaml"
    ct, mask = synthetic_case()
    ct_path, mask_path = write(ct, tmp_path / "ct.nii.gz"), write(mask, tmp_path / "mask.nii.gz")
    features, qc, out = run_ours(tmp_path, ct_path, mask_path, params_path)
    assert len(features) == 14 + 12 * 92  # shape once; 92 intensity/texture features x 12 images
    assert not any("SumAverage" in name for name in features)
    assert_identical(features, run_pyradiomics(ct_path, mask_path, params_path))
    assert qc["radpath_n_features"] == str(len(features))


def test_dicom_series_ct_equals_pyradiomics_on_the_same_images(tmp_path, fast_params):
    ct, mask = synthetic_case()
    dicom_dir = tmp_path / "dicom"
    write_dicom_series(ct, dicom_dir, "1.2.826.0.1.3680043.2.1125.7.1")
    mask_path = write(mask, tmp_path / "mask.nrrd")  # NRRD keeps double-precision geometry
    features, qc, _ = run_ours(tmp_path, dicom_dir, mask_path, fast_params)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(dicom_dir)))
    assert_identical(features, run_pyradiomics(reader.Execute(), mask_path, fast_params))
    assert qc["radpath_mask_geometry"] == "identical to CT"


def test_mask_resampled_onto_the_ct_equals_pyradiomics_on_that_mask(tmp_path, fast_params):
    ct, mask = synthetic_case()
    fine = sitk.Resample(
        mask,
        (96, 96, 40),
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        (ORIGIN[0] - 0.2, ORIGIN[1] - 0.2, ORIGIN[2] - 0.6),
        (0.4, 0.4, 1.25),
        mask.GetDirection(),
    )
    ct_path, mask_path = write(ct, tmp_path / "ct.mha"), write(fine, tmp_path / "mask.mha")
    allow = {**CT_CFG, "resample_mask_to_ct": True}
    features, qc, _ = run_ours(tmp_path, ct_path, mask_path, fast_params, ct_cfg=allow)
    on_ct = sitk.Resample(
        sitk.ReadImage(str(mask_path)),
        sitk.ReadImage(str(ct_path)),
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
    )
    assert_identical(features, run_pyradiomics(ct_path, on_ct, fast_params))
    assert qc["radpath_mask_geometry"].startswith("resampled onto CT grid")


# --- outputs -------------------------------------------------------------------------------


@pytest.mark.parametrize("resample", [True, False])
def test_the_job_builds_one_extractor_with_the_settings_of_the_run_parameters(
    tmp_path, fast_params, monkeypatch, resample
):
    """pyradiomics validates the parameter file when it builds an extractor: the job builds one
    and runs it with the settings an extractor built from the run's parameters (label 1,
    preCrop off after our resampling) would have, in the same order (the QC table prints them).
    """
    from radpath.radiomics import features as radiomics_features

    built = []

    class CountingExtractor(RadiomicsFeatureExtractor):
        def __init__(self, *args, **kwargs):
            built.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(radiomics_features, "RadiomicsFeatureExtractor", CountingExtractor)
    ct, mask = synthetic_case(label=2)
    ct_path, mask_path = write(ct, tmp_path / "ct.nii.gz"), write(mask, tmp_path / "mask.nii.gz")
    ct_cfg = CT_CFG if resample else {**CT_CFG, "resample_spacing": None}
    run_ours(tmp_path, ct_path, mask_path, fast_params, label=2, ct_cfg=ct_cfg)
    assert len(built) == 1
    setting = {**FAST_PARAMS["setting"], "label": 1, **({"preCrop": False} if resample else {})}
    expected = RadiomicsFeatureExtractor({**FAST_PARAMS, "setting": setting}).settings
    assert list(built[0].settings.items()) == list(expected.items())


def test_diagnostics_go_to_qc_never_to_features(tmp_path, fast_params):
    ct, mask = synthetic_case()
    ct_path, mask_path = write(ct, tmp_path / "ct.nii.gz"), write(mask, tmp_path / "mask.nii.gz")
    features, qc, out = run_ours(tmp_path, ct_path, mask_path, fast_params, patient_id="007")
    assert features and not any(k.startswith("diagnostics") for k in features)
    feature_row, qc_row = read_row(out / "features.tsv"), read_row(out / "qc.tsv")
    assert not any(k.startswith("diagnostics") for k in feature_row.index)
    assert feature_row["patient_id"] == qc_row["patient_id"] == "007"
    assert qc_row["diagnostics_Versions_PyRadiomics"] == qc["diagnostics_Versions_PyRadiomics"]
    assert qc_row["radpath_roi_voxels"] == int(qc["radpath_roi_voxels"]) > 64
    assert sorted(p.name for p in out.iterdir()) == ["features.tsv", "qc.tsv"]  # no temp files


def test_failed_extraction_writes_nothing(tmp_path, fast_params):
    ct, mask = synthetic_case()
    ct_path, mask_path = (
        write(ct, tmp_path / "ct.nii.gz"),
        write(mask * 0, tmp_path / "mask.nii.gz"),
    )
    with pytest.raises(ValueError, match="patient P1: mask .*mask is empty"):
        run_ours(tmp_path, ct_path, mask_path, fast_params)
    assert not (tmp_path / "out").exists()


def test_split_result_sets_non_finite_features_to_nan_with_a_warning(caplog):
    result = {
        "diagnostics_Versions_PyRadiomics": "v3.0.1",
        "original_firstorder_Mean": np.array(1.5),
        "original_glcm_Imc1": np.array(np.inf),
        "original_glcm_Imc2": np.float64(np.nan),
    }
    with caplog.at_level(logging.WARNING, logger="radpath.radiomics.features"):
        features, diagnostics = split_result(result, "P9")
    assert diagnostics == {"diagnostics_Versions_PyRadiomics": "v3.0.1"}
    assert features["original_firstorder_Mean"] == 1.5
    assert math.isnan(features["original_glcm_Imc1"]) and math.isnan(features["original_glcm_Imc2"])
    assert (
        "patient P9: 2 non-finite feature values set to NaN: original_glcm_Imc1, original_glcm_Imc2"
        in caplog.text
    )


def test_nan_features_are_written_as_nan(tmp_path):
    from radpath.radiomics.features import write_row_tsv

    write_row_tsv(tmp_path / "f.tsv", {"patient_id": "P1", "a": math.nan, "b": 0.1 + 0.2})
    assert (tmp_path / "f.tsv").read_text(encoding="utf-8") == "patient_id\ta\tb\nP1\tNaN\t0.30000000000000004\n"


# --- errors --------------------------------------------------------------------------------


def test_pyradiomics_failure_names_the_patient(tmp_path, fast_params):
    ct, mask = synthetic_case()
    flat = sitk.GetArrayFromImage(mask)  # z, y, x
    flat[:, : SMALL[1] // 2] = 0
    flat[:, SMALL[1] // 2 + 1 :] = 0  # one row of every slice: fails minimumROIDimensions 3
    single = sitk.GetImageFromArray(flat)
    single.CopyInformation(mask)
    ct_path, mask_path = write(ct, tmp_path / "ct.nii.gz"), write(single, tmp_path / "mask.nii.gz")
    with pytest.raises(
        RadiomicsError, match=r"^patient P3: pyradiomics failed: mask has too few dimensions"
    ):
        run_ours(tmp_path, ct_path, mask_path, fast_params, patient_id="P3")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"resampledPixelSpacing": [1.0, 1.0, 1.0]}, "remove setting.resampledPixelSpacing"),
        ({"normalize": True}, "setting.normalize must be false"),
        ({"label": 2}, "setting.label must be 1 or absent"),
        ({"binWidht": 25}, "rejected by pyradiomics: .*binWidht"),
    ],
)
def test_load_params_rejects_settings_we_cannot_honour(tmp_path, setting, message):
    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump({**FAST_PARAMS, "setting": {**FAST_PARAMS["setting"], **setting}})
    )
    with pytest.raises(RadiomicsError, match=f"^pyradiomics parameter file {path}: {message}"):
        load_params(path)


def test_load_params_missing_or_broken_file(tmp_path):
    with pytest.raises(RadiomicsError, match="cannot be read: No such file"):
        load_params(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("setting: [unclosed\n")
    with pytest.raises(RadiomicsError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")


def test_shipped_parameter_file_loads():
    params = load_params(REPO / "config" / "pyradiomics_ct.yaml")
    assert params["setting"]["binWidth"] == 25
    assert set(params["imageType"]) == {"Original", "LoG", "Wavelet"}


# --- logging -------------------------------------------------------------------------------


def test_pyradiomics_warnings_reach_our_logger_not_stderr(caplog, capfd):
    params = {**FAST_PARAMS, "setting": {"binCount": 16}}
    with caplog.at_level(logging.DEBUG):
        RadiomicsFeatureExtractor(params)  # warns about fixed bin counts, logs INFO lines
    ours = [r for r in caplog.records if r.name == "radpath.pyradiomics"]
    assert len(ours) == 1 and "Fixed bin Count enabled" in ours[0].getMessage()
    # pytest also hooks its capture onto non-propagating loggers; INFO must still be dropped
    assert all(r.levelno >= logging.WARNING for r in caplog.records)
    assert capfd.readouterr().err == ""


# --- helpers -------------------------------------------------------------------------------


def write_dicom_series(image: sitk.Image, directory: Path, series_uid: str) -> None:
    """One file per slice with the tags a CT series reader needs (SimpleITK's example)."""
    directory.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = image.GetDirection()
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        tags = {
            "0008|0060": "CT",
            "0020|000e": series_uid,
            "0020|0037": "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7]))),
            "0020|0032": "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))),
            "0020|0013": str(k + 1),
            "0008|0018": f"{series_uid}.{k + 1}",
        }
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(directory / f"slice_{k:03d}.dcm"))
        writer.Execute(plane)


def test_a_lesion_drawn_on_one_slice_is_refused_in_the_users_words(tmp_path, fast_params):
    """A contour on one slice gives 3D features of the slice thickness: refused, naming the
    patient and mask and the way out; with force2D (and z kept native) it is extracted."""
    ct, mask = synthetic_case()
    array = sitk.GetArrayFromImage(mask)  # z, y, x
    single = np.zeros_like(array)
    single[SMALL[0] // 2] = array[SMALL[0] // 2]
    flat = sitk.GetImageFromArray(single)
    flat.CopyInformation(mask)
    ct_path, mask_path = write(ct, tmp_path / "ct.nii.gz"), write(flat, tmp_path / "flat.nii.gz")
    with pytest.raises(RadiomicsError, match=(
            r"^patient P7: mask .*flat\.nii\.gz: the ROI lies on one slice of the CT, .*"
            r"force2D: true in the pyradiomics parameter file, and ct\.resample_spacing with 0 "
            r"along z")):
        run_ours(tmp_path, ct_path, mask_path, fast_params, patient_id="P7")
    params_2d = tmp_path / "params_2d.yaml"
    params_2d.write_text(yaml.safe_dump({**FAST_PARAMS, "setting": {
        **FAST_PARAMS["setting"], "force2D": True, "force2Ddimension": 0,
        "minimumROIDimensions": 2}}))
    features, qc, _ = run_ours(tmp_path, ct_path, mask_path, params_2d, patient_id="P7",
                               ct_cfg={**CT_CFG, "resample_spacing": [1.0, 1.0, 0.0]})
    assert qc["radpath_roi_slices_native"] == "1"
    assert features["original_glcm_Contrast"] > 0
    _, qc_3d, _ = run_ours(tmp_path, ct_path, write(mask, tmp_path / "m.nii.gz"), fast_params)
    assert int(qc_3d["radpath_roi_slices_native"]) > 1


@pytest.mark.parametrize("spacing", [[1.0, 1.0, 1.0], None], ids=["resampled", "native"])
def test_the_same_scan_gives_the_same_features_whatever_pixel_type_its_file_stores(
        tmp_path, spacing):
    """pyradiomics resamples in the image's own type (an int16 CT's interpolated values are
    rounded): radpath casts every CT to 32-bit float first, so int16, int32, float32 and
    float64 files of one scan give identical features."""
    params_path = REPO / "config" / "pyradiomics_ct.yaml"
    ct, mask = synthetic_case()
    mask_path = write(mask, tmp_path / "mask.nii.gz")
    ct_cfg = {**CT_CFG, "resample_spacing": spacing}
    results = {}
    for name, pixel_type in (("int16", sitk.sitkInt16), ("int32", sitk.sitkInt32),
                             ("float32", sitk.sitkFloat32), ("float64", sitk.sitkFloat64)):
        ct_path = write(sitk.Cast(ct, pixel_type), tmp_path / f"ct_{name}.nii.gz")
        results[name], qc, _ = run_ours(tmp_path / name, ct_path, mask_path, params_path,
                                        ct_cfg=ct_cfg)
        assert qc["radpath_ct_cast_to"] == "32-bit float"
    assert qc["radpath_ct_pixel_type"] == "64-bit float"
    for name in ("int32", "float32", "float64"):
        assert_identical(results[name], results["int16"])
    if spacing is not None:  # plain pyradiomics on the int16 file differs: the cast matters
        params = pyradiomics_reference_params(load_params(params_path), spacing, 1)
        plain = RadiomicsFeatureExtractor(params).execute(
            str(tmp_path / "ct_int16.nii.gz"), str(mask_path))
        differing = [k for k, v in results["float32"].items()
                     if not math.isclose(float(plain[k]), v, rel_tol=0.01, abs_tol=1e-9)]
        assert len(differing) > 10


def test_features_pyradiomics_cannot_compute_are_left_out_with_its_reason_in_the_qc(
        tmp_path, caplog):
    """A CT three slices thick: pyradiomics skips its LoG images (too small for the filter)
    and says so; the row lacks those features and the QC keeps pyradiomics' reason."""
    params_path = REPO / "config" / "pyradiomics_ct.yaml"
    ct, mask = synthetic_case()
    middle = SMALL[0] // 2
    thin_ct, thin_mask = ct[:, :, middle - 1:middle + 2], mask[:, :, middle - 1:middle + 2]
    for image in (thin_ct, thin_mask):
        image.SetSpacing((0.8, 0.8, 1.0))
    ct_path = write(thin_ct, tmp_path / "ct.nii.gz")
    mask_path = write(thin_mask, tmp_path / "mask.nii.gz")
    with caplog.at_level(logging.WARNING):
        features, qc, out = run_ours(tmp_path, ct_path, mask_path, params_path, patient_id="P9")
    assert not any(name.startswith("log-sigma") for name in features)
    assert len(features) == 14 + 9 * 92  # original and 8 wavelet images; no LoG
    assert "Image too small to apply LoG filter" in qc["radpath_pyradiomics_warnings"]
    assert "Image too small to apply LoG filter" in read_row(out / "qc.tsv")[
        "radpath_pyradiomics_warnings"]
    assert any(r.name == "radpath.radiomics.features" and "patient P9" in r.getMessage()
               and "LoG" in r.getMessage() for r in caplog.records)
