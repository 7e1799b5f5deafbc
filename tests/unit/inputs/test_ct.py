"""radpath.inputs.ct: reading, geometry checks, label selection and resampling of CT cases."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from radpath.inputs.configuration import default_config
from radpath.inputs.ct import (
    CTSettings,
    as_label,
    check_geometry,
    prepare_case,
    read_image,
    resample_case,
    select_label,
)
from radpath.inputs.images import CaseInputError

SPACING = (0.8, 0.8, 2.5)  # x, y, z mm
ORIGIN = (-20.0, 15.0, -30.0)
SHAPE = (20, 48, 48)  # z, y, x
LARGE_SHAPE = (120, 134, 134)  # big enough for prepare_case to crop the CT before resampling
CT_CFG = default_config()["ct"]


def synthetic_ct(seed: int = 0, radius_mm: float = 8.0, label: int = 1, shape=SHAPE):
    """Int16 CT (lung-like background, soft-tissue ellipsoid lesion) and its label mask."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    centre = np.array(shape) / 2
    dist = np.sqrt(
        ((x - centre[2]) * SPACING[0]) ** 2
        + ((y - centre[1]) * SPACING[1] / 1.2) ** 2
        + ((z - centre[0]) * SPACING[2]) ** 2
    )
    lesion = dist <= radius_mm
    values = rng.normal(-800, 60, shape)
    values[lesion] = rng.normal(30, 40, lesion.sum())
    ct = sitk.GetImageFromArray(np.round(values).astype(np.int16))
    ct.SetSpacing(SPACING)
    ct.SetOrigin(ORIGIN)
    mask = sitk.GetImageFromArray((lesion * label).astype(np.uint8))
    mask.CopyInformation(ct)
    return ct, mask


def write_case(tmp_path, ext: str = ".nii.gz", **kwargs):
    ct, mask = synthetic_ct(**kwargs)
    ct_path, mask_path = tmp_path / f"ct{ext}", tmp_path / f"mask{ext}"
    sitk.WriteImage(ct, str(ct_path))
    sitk.WriteImage(mask, str(mask_path))
    return ct_path, mask_path


def write_dicom_series(
    image: sitk.Image, directory, series_uid: str, image_type: str = "DERIVED\\SECONDARY"
) -> None:
    """One file per slice with the tags a CT series reader needs (SimpleITK's example)."""
    directory.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = image.GetDirection()
    series_tags = {
        "0008|0060": "CT",
        "0008|0008": image_type,
        "0020|000e": series_uid,
        "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
        "0020|0037": "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7]))),
        "0018|0050": str(image.GetSpacing()[2]),
        "0008|103e": "radpath test series",
    }
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        for tag, value in series_tags.items():
            plane.SetMetaData(tag, value)
        plane.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        plane.SetMetaData(
            "0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k))))
        )
        plane.SetMetaData("0020|0013", str(k + 1))
        writer.SetFileName(str(directory / f"{series_uid[-6:]}_{k:03d}.dcm"))
        writer.Execute(plane)


# --- reading -------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"])
def test_read_image_formats(tmp_path, ext):
    ct_path, _ = write_case(tmp_path, ext)
    image = read_image(ct_path, "P1", "CT")
    expected, _ = synthetic_ct()
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(expected))
    assert np.allclose(image.GetSpacing(), SPACING)
    assert np.allclose(image.GetOrigin(), ORIGIN)


def test_read_dicom_series_skips_a_localizer(tmp_path):
    ct, _ = synthetic_ct()
    scout = sitk.Cast(ct[:, :, :3] * 0 + 500, sitk.sitkInt16)
    write_dicom_series(ct, tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.2.111111")
    write_dicom_series(
        scout, tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.2.222222",
        "ORIGINAL\\PRIMARY\\LOCALIZER",
    )
    image = read_image(tmp_path / "dicom", "P1", "CT")
    assert image.GetSize() == ct.GetSize()
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(ct))
    assert np.allclose(image.GetSpacing(), SPACING, atol=1e-6)
    assert np.allclose(image.GetOrigin(), ORIGIN, atol=1e-6)


def test_read_dicom_series_never_picks_the_largest_of_several_ct_series(tmp_path):
    ct, _ = synthetic_ct()
    thick = sitk.Cast(ct[:, :, ::4], sitk.sitkInt16)
    write_dicom_series(ct, tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.2.111111")
    write_dicom_series(thick, tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.2.222222")
    with pytest.raises(CaseInputError, match=r"2 CT series in this folder; set ct_series_uid"):
        read_image(tmp_path / "dicom", "P1", "CT")


def test_read_directory_without_dicom_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        CaseInputError, match=r"patient P7: CT .*empty: directory holds no DICOM series"
    ):
        read_image(tmp_path / "empty", "P7", "CT")


def test_missing_file_names_patient_role_and_path(tmp_path):
    missing = tmp_path / "nope_mask.nii.gz"
    with pytest.raises(CaseInputError) as info:
        read_image(missing, "P3", "mask")
    assert str(info.value) == f"patient P3: mask {missing}: file not found"


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_truncated_file_is_a_clear_error(tmp_path, ext):
    ct_path, _ = write_case(tmp_path, ext)
    data = ct_path.read_bytes()
    ct_path.write_bytes(data[: int(len(data) * 0.7)])
    with pytest.raises(CaseInputError) as info:
        read_image(ct_path, "P2", "CT")
    message = str(info.value)
    assert message.startswith(f"patient P2: CT {ct_path}: ")
    assert "truncated" in message or "cannot be read" in message
    assert "\n" not in message


def test_garbage_file_is_a_clear_error(tmp_path):
    path = tmp_path / "ct.nrrd"
    path.write_text("this is not an image\n")
    with pytest.raises(
        CaseInputError, match=r"^patient P2: CT .*ct\.nrrd: cannot be read as an image"
    ):
        read_image(path, "P2", "CT")


def test_2d_image_is_rejected(tmp_path):
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(path))
    with pytest.raises(CaseInputError, match="expected a 3D image, got 2D"):
        read_image(path, "P1", "CT")


# --- geometry ------------------------------------------------------------------------------


def test_identical_geometry_keeps_the_mask():
    ct, mask = synthetic_ct()
    checked = check_geometry(ct, mask, 1e-3, "P1", "ct.nii", "mask.nii")
    assert checked.mask is mask
    assert checked.note == "identical to CT"


def test_geometry_within_tolerance_takes_the_ct_geometry():
    ct, mask = synthetic_ct()
    mask.SetOrigin(tuple(o + 2e-4 for o in ORIGIN))
    checked = check_geometry(ct, mask, 1e-3, "P1", "ct.nii", "mask.nii")
    assert checked.mask.GetOrigin() == ct.GetOrigin()
    assert "within tolerance" in checked.note
    assert np.array_equal(sitk.GetArrayFromImage(checked.mask), sitk.GetArrayFromImage(mask))


def test_misaligned_geometry_names_what_differs():
    ct, mask = synthetic_ct()
    mask.SetOrigin((-20.0, 15.0, -27.5))
    mask.SetSpacing((0.8, 0.8, 2.0))
    with pytest.raises(CaseInputError) as info:
        check_geometry(ct, mask, 1e-3, "P4", "a/ct.nii.gz", "a/mask.nii.gz")
    message = str(info.value)
    assert message.startswith(
        "patient P4: CT a/ct.nii.gz and mask a/mask.nii.gz differ in geometry"
    )
    assert "spacing CT (0.8, 0.8, 2.5) vs mask (0.8, 0.8, 2)" in message
    assert "origin CT (-20, 15, -30) vs mask (-20, 15, -27.5)" in message
    assert "size" not in message and "direction" not in message
    assert "resample_mask_to_ct" in message


def test_size_mismatch_is_reported():
    ct, mask = synthetic_ct()
    with pytest.raises(CaseInputError, match=r"size CT \(48, 48, 20\) vs mask \(48, 48, 10\)"):
        check_geometry(ct, mask[:, :, :10], 1e-3, "P4", "ct", "mask")


def test_mask_on_a_finer_grid_is_resampled_onto_the_ct_when_allowed():
    ct, mask = synthetic_ct()
    fine = sitk.Resample(
        mask,
        [s * 2 for s in mask.GetSize()],
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        ct.TransformContinuousIndexToPhysicalPoint((-0.25, -0.25, -0.25)),
        [s / 2 for s in SPACING],
        ct.GetDirection(),
    )
    checked = check_geometry(ct, fine, 1e-3, "P1", "ct", "mask", resample_mask_to_ct=True)
    assert checked.mask.GetSize() == ct.GetSize() and checked.mask.GetSpacing() == ct.GetSpacing()
    assert np.array_equal(sitk.GetArrayFromImage(checked.mask), sitk.GetArrayFromImage(mask))
    assert checked.note.startswith("resampled onto CT grid")


def test_mask_entirely_outside_the_ct_is_a_clear_error():
    ct, mask = synthetic_ct()
    mask.SetOrigin((500.0, 15.0, -30.0))
    with pytest.raises(
        CaseInputError, match="patient P5: .*the ROI lies entirely outside the CT volume"
    ):
        check_geometry(ct, mask, 1e-3, "P5", "ct", "mask", resample_mask_to_ct=True)


def test_mask_partly_outside_the_ct_is_a_clear_error():
    ct, mask = synthetic_ct()
    mask.SetOrigin((-20.0 + 15.0, 15.0, -30.0))  # lesion (x 11-27 mm of 38) moves 15 mm
    with pytest.raises(CaseInputError, match="the ROI extends outside the CT volume"):
        check_geometry(ct, mask, 1e-3, "P5", "ct", "mask", resample_mask_to_ct=True)


def test_roi_between_ct_voxels_touches_nothing():
    ct, _ = synthetic_ct()
    thin = sitk.Image(8, 8, 8, sitk.sitkUInt8)
    thin.SetSpacing((0.1, 0.1, 0.1))
    thin.SetOrigin(ct.TransformContinuousIndexToPhysicalPoint((10.1, 10.1, 5.1)))
    thin[2:5, 2:5, 2:5] = 1
    with pytest.raises(CaseInputError, match="the ROI covers no voxel of the CT grid"):
        check_geometry(ct, thin, 1e-3, "P5", "ct", "mask", resample_mask_to_ct=True)


# --- labels --------------------------------------------------------------------------------


def test_select_label_keeps_only_that_label():
    _, mask = synthetic_ct(label=2)
    labels = sitk.GetArrayFromImage(mask)
    labels[0, 0, :5] = 3
    multi = sitk.GetImageFromArray(labels)
    multi.CopyInformation(mask)
    binary = select_label(multi, 2, "P1", "mask.nii")
    assert np.array_equal(sitk.GetArrayFromImage(binary), (labels == 2).astype(np.uint8))
    assert binary.GetOrigin() == mask.GetOrigin()


def test_absent_label_lists_the_labels_present():
    _, mask = synthetic_ct(label=3)
    with pytest.raises(CaseInputError) as info:
        select_label(mask, 1, "P6", "m.nii.gz")
    assert str(info.value) == "patient P6: mask m.nii.gz: label 1 not present; labels present: 3"


def test_empty_mask_is_a_clear_error():
    _, mask = synthetic_ct()
    with pytest.raises(CaseInputError, match=r"^patient P6: mask m\.nii: mask is empty"):
        select_label(mask * 0, 1, "P6", "m.nii")


def test_probability_map_is_rejected():
    _, mask = synthetic_ct()
    with pytest.raises(CaseInputError, match="non-integer values"):
        select_label(sitk.Cast(mask, sitk.sitkFloat32) * 0.7, 1, "P6", "m.nii")


@pytest.mark.parametrize(
    ("value", "label"), [(None, 1), (float("nan"), 1), ("", 1), (2, 2), (2.0, 2), ("3", 3)]
)
def test_as_label(value, label):
    assert as_label(value, "P1") == label


@pytest.mark.parametrize("value", [1.5, 0, -1, "one"])
def test_as_label_rejects_non_positive_integers(value):
    with pytest.raises(CaseInputError, match="patient P1: mask_label must be a positive integer"):
        as_label(value, "P1")


# --- prepare_case --------------------------------------------------------------------------


def test_prepare_case_resamples_like_pyradiomics_on_the_full_ct(tmp_path):
    ct_path, mask_path = write_case(tmp_path, label=2, shape=LARGE_SHAPE)
    case = prepare_case(ct_path, mask_path, 2, CT_CFG, "P1")
    assert case.image.GetSpacing() == (1.0, 1.0, 1.0)
    assert case.mask.GetSpacing() == (1.0, 1.0, 1.0)
    assert case.notes["radpath_ct_region_read"] == "start (6, 5, 8) size (123, 125, 105)"
    # the CT crop before resampling changes nothing: same as resampling the whole CT (as
    # 32-bit float, the type every CT is cast to)
    ct = sitk.Cast(sitk.ReadImage(str(ct_path)), sitk.sitkFloat32)
    mask = sitk.ReadImage(str(mask_path))
    full_image, full_mask = resample_case(ct, sitk.Cast(mask == 2, sitk.sitkUInt8), [1.0, 1.0, 1.0])
    assert case.image.GetOrigin() == full_image.GetOrigin()
    assert np.array_equal(sitk.GetArrayFromImage(case.image), sitk.GetArrayFromImage(full_image))
    assert np.array_equal(sitk.GetArrayFromImage(case.mask), sitk.GetArrayFromImage(full_mask))
    assert case.notes["radpath_mask_label"] == "2"
    assert int(case.notes["radpath_roi_voxels"]) == int(sitk.GetArrayFromImage(full_mask).sum())


def test_crop_is_exact_for_float_cts(tmp_path):
    ct, mask = synthetic_ct(shape=LARGE_SHAPE)
    ct = sitk.SmoothingRecursiveGaussian(sitk.Cast(ct, sitk.sitkFloat32), 1.0)
    sitk.WriteImage(ct, str(tmp_path / "ct.nrrd"))
    sitk.WriteImage(mask, str(tmp_path / "mask.nrrd"))
    args = (tmp_path / "ct.nrrd", tmp_path / "mask.nrrd", 1, CT_CFG, "P1")
    cropped, full = prepare_case(*args), prepare_case(*args, crop=False)
    assert cropped.notes["radpath_ct_region_read"] != f"start (0, 0, 0) size {LARGE_SHAPE[::-1]}"
    assert np.array_equal(sitk.GetArrayFromImage(cropped.image), sitk.GetArrayFromImage(full.image))


def test_prepare_case_without_resampling_keeps_the_native_grid(tmp_path):
    ct_path, mask_path = write_case(tmp_path)
    case = prepare_case(ct_path, mask_path, 1, {**CT_CFG, "resample_spacing": None}, "P1")
    ct, mask = synthetic_ct()
    assert case.image.GetSpacing() == pytest.approx(SPACING)
    assert np.array_equal(sitk.GetArrayFromImage(case.image), sitk.GetArrayFromImage(ct))
    assert np.array_equal(sitk.GetArrayFromImage(case.mask), sitk.GetArrayFromImage(mask))
    assert case.notes["radpath_resample_spacing"] == "native"


def test_tiny_roi_after_resampling_is_a_clear_error(tmp_path):
    ct_path, mask_path = write_case(tmp_path, radius_mm=2.0)
    with pytest.raises(CaseInputError) as info:
        prepare_case(ct_path, mask_path, 1, {**CT_CFG, "min_roi_voxels": 100}, "P8")
    message = str(info.value)
    assert message.startswith(f"patient P8: mask {mask_path}: ROI has ")
    assert "voxels after resampling to (1, 1, 1) mm, fewer than ct.min_roi_voxels=100" in message


def test_prepare_case_resamples_a_misaligned_mask_only_when_configured(tmp_path):
    ct, mask = synthetic_ct()
    shifted = sitk.Resample(
        mask,
        (48, 48, 40),
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        (ORIGIN[0] - 0.4, ORIGIN[1] - 0.4, ORIGIN[2]),
        (0.8, 0.8, 1.25),
        mask.GetDirection(),
    )
    sitk.WriteImage(ct, str(tmp_path / "ct.mha"))
    sitk.WriteImage(shifted, str(tmp_path / "mask.mha"))
    args = (tmp_path / "ct.mha", tmp_path / "mask.mha", 1)
    with pytest.raises(CaseInputError, match="differ in geometry"):
        prepare_case(*args, CT_CFG, "P9")
    case = prepare_case(*args, {**CT_CFG, "resample_mask_to_ct": True}, "P9")
    assert case.notes["radpath_mask_geometry"].startswith("resampled onto CT grid")
    assert int(case.notes["radpath_roi_voxels"]) > 64


def test_ct_settings_require_every_key():
    with pytest.raises(ValueError, match="config section 'ct' lacks min_roi_voxels"):
        CTSettings.from_config({k: v for k, v in CT_CFG.items() if k != "min_roi_voxels"})


def test_an_image_is_read_once_per_process_while_unchanged_and_each_caller_gets_a_copy(
        tmp_path, monkeypatch):
    """The per-patient CT job's three parts read the CT once; a changed file is read again,
    and one caller's change to its image is not another's."""
    import os

    from radpath.inputs import ct as ct_module

    path = str(tmp_path / "ct.nrrd")
    image = sitk.GetImageFromArray(np.arange(27, dtype=np.int16).reshape(3, 3, 3))
    sitk.WriteImage(image, path)
    reads = []
    real = sitk.ReadImage
    monkeypatch.setattr(ct_module.sitk, "ReadImage", lambda *a: reads.append(a) or real(*a))
    first = read_image(path, "P1", "CT")
    first.SetOrigin((5.0, 5.0, 5.0))
    first[0, 0, 0] = 99
    second = read_image(path, "P1", "CT")
    assert len(reads) == 1
    assert second.GetOrigin() == (0.0, 0.0, 0.0) and second[0, 0, 0] == 0
    sitk.WriteImage(image * 2, path)
    os.utime(path, ns=(1, 1))  # another size or time: read again
    assert read_image(path, "P1", "CT")[1, 0, 0] == 2 and len(reads) == 2
