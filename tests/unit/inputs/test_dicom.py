"""DICOM inputs: choosing the CT series, RTSTRUCT and DICOM-SEG masks on the CT grid.

Small synthetic objects written with pydicom: a CT series (one file per slice, realistic
tags), a second CT series, a localizer, an RTSTRUCT and a SEG in the same folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
import yaml
from ct_cases import CT_CFG, FAST_PARAMS, synthetic_case
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pack_bits
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from radpath_cli import radpath_cli
from skimage.draw import polygon as skimage_polygon

from radpath.inputs.ct import prepare_case, read_ct
from radpath.inputs.dicom import RTSTRUCT_SOP_CLASS, SEG_SOP_CLASS, fill_even_odd
from radpath.inputs.images import CaseInputError
from radpath.radiomics.features import extract_patient

ROOT = "1.2.826.0.1.3680043.8.498.77"
STUDY = f"{ROOT}.1"
FRAME = f"{ROOT}.2"
CT_SERIES = f"{ROOT}.3"
THICK_SERIES = f"{ROOT}.4"
NATIVE = {**CT_CFG, "resample_spacing": None, "min_roi_voxels": 1}


# --- writing synthetic DICOM ---------------------------------------------------------------


def _ds(s: float) -> str:
    return f"{s:.6f}".rstrip("0").rstrip(".")


def _file(sop_class: str, sop_instance: str, modality: str, series_uid: str, **tags) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_instance
    ds.Modality = modality
    ds.PatientID, ds.PatientName = "P1", "Test^Patient"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, series_uid
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def write_ct_series(
    image: sitk.Image,
    directory: Path,
    series_uid: str = CT_SERIES,
    description: str = "Chest 2.5 mm",
    image_type: str = "ORIGINAL\\PRIMARY\\AXIAL",
    frame_uid: str = FRAME,
) -> None:
    """One CT Image Storage file per slice (int16 stored values, intercept -1024)."""
    directory.mkdir(parents=True, exist_ok=True)
    values = sitk.GetArrayFromImage(image).astype(np.int32)
    d = np.array(image.GetDirection()).reshape(3, 3)
    for k in range(image.GetDepth()):
        ds = _file(
            CTImageStorage, f"{series_uid}.{k + 1}", "CT", series_uid,
            SeriesDescription=description, ImageType=image_type.split("\\"),
            FrameOfReferenceUID=frame_uid, InstanceNumber=k + 1,
            ImagePositionPatient=[_ds(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))],
            ImageOrientationPatient=[_ds(v) for v in (*d[:, 0], *d[:, 1])],
            PixelSpacing=[_ds(image.GetSpacing()[1]), _ds(image.GetSpacing()[0])],
            SliceThickness=_ds(image.GetSpacing()[2]),
            Rows=image.GetHeight(), Columns=image.GetWidth(), SamplesPerPixel=1,
            PhotometricInterpretation="MONOCHROME2", BitsAllocated=16, BitsStored=16,
            HighBit=15, PixelRepresentation=1, RescaleIntercept="-1024", RescaleSlope="1",
        )
        ds.PixelData = (values[k] + 1024).astype(np.int16).tobytes()
        ds.save_as(directory / f"{series_uid[-1]}_{k:03d}.dcm", enforce_file_format=True)


def circle(ct: sitk.Image, centre_index, radius_mm: float, k: int, n: int = 90) -> np.ndarray:
    """(n, 3) physical points of a circle on CT slice k around centre (x, y) index."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False) + 0.1
    sx, sy = ct.GetSpacing()[:2]
    return np.array([
        ct.TransformContinuousIndexToPhysicalPoint(
            (centre_index[0] + radius_mm * np.cos(t) / sx,
             centre_index[1] + radius_mm * np.sin(t) / sy, float(k))
        )
        for t in theta
    ])


def rectangle(ct: sitk.Image, x0, x1, y0, y1, k) -> np.ndarray:
    """(4, 3) physical corners of an index-space rectangle on slice k."""
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return np.array([ct.TransformContinuousIndexToPhysicalPoint((x, y, float(k))) for x, y in corners])


def runs_as_contours(ct: sitk.Image, labels: np.ndarray) -> list[np.ndarray]:
    """Contours whose rasterisation is exactly `labels`: a rectangle around each row run."""
    contours = []
    for k, j in zip(*np.nonzero(labels.any(axis=2)), strict=True):
        row = np.concatenate([[0], labels[k, j].astype(np.int8), [0]])
        starts, stops = np.flatnonzero(np.diff(row) == 1), np.flatnonzero(np.diff(row) == -1)
        for start, stop in zip(starts, stops, strict=True):
            contours.append(rectangle(ct, start - 0.5, stop - 0.5, j - 0.5, j + 0.5, k))
    return contours


def write_rtstruct(
    path: Path,
    rois: dict[str, list[np.ndarray]],
    series_uid: str = CT_SERIES,
    frame_uid: str = FRAME,
    geometric_type: str = "CLOSED_PLANAR",
) -> Path:
    """An RTSTRUCT with one ROI per entry (ROI numbers 1, 2, ...), contours in patient mm."""
    ds = _file(
        RTSTRUCT_SOP_CLASS, f"{ROOT}.9.{len(path.name)}", "RTSTRUCT", f"{ROOT}.9",
        StructureSetLabel="test", SeriesDescription="RTSTRUCT",
    )
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    study = Dataset()
    study.ReferencedSOPInstanceUID = STUDY
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        roi.ReferencedFrameOfReferenceUID = frame_uid
        ds.StructureSetROISequence.append(roi)
        items = []
        for points in contours:
            item = Dataset()
            item.ContourGeometricType = geometric_type
            item.NumberOfContourPoints = len(points)
            item.ContourData = [_ds(v) for v in points.ravel()]
            items.append(item)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ContourSequence = items
        ds.ROIContourSequence.append(roi_contour)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_seg(
    path: Path,
    ct: sitk.Image,
    segments: dict[str, np.ndarray],
    series_uid: str = CT_SERIES,
    frame_uid: str = FRAME,
    fractional: bool = False,
    seed: int = 0,
) -> Path:
    """A DICOM-SEG with one segment per entry (z, y, x arrays on the CT grid; fractional:
    values 0-1), one frame per non-empty slice, frames in shuffled order."""
    ds = _file(
        SEG_SOP_CLASS, f"{ROOT}.8.{len(path.name)}", "SEG", f"{ROOT}.8",
        SeriesDescription="SEG", FrameOfReferenceUID=frame_uid,
        SegmentationType="FRACTIONAL" if fractional else "BINARY",
        Rows=ct.GetHeight(), Columns=ct.GetWidth(), SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2", PixelRepresentation=0,
    )
    referenced = Dataset()
    referenced.SeriesInstanceUID = series_uid
    ds.ReferencedSeriesSequence = [referenced]
    d = np.array(ct.GetDirection()).reshape(3, 3)
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = [_ds(v) for v in (*d[:, 0], *d[:, 1])]
    measures.PixelSpacing = [_ds(ct.GetSpacing()[1]), _ds(ct.GetSpacing()[0])]
    measures.SliceThickness = _ds(ct.GetSpacing()[2])
    shared = Dataset()
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [orientation], [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames, groups, ds.SegmentSequence = [], [], []
    for number, (label, values) in enumerate(segments.items(), start=1):
        segment = Dataset()
        segment.SegmentNumber, segment.SegmentLabel = number, label
        segment.SegmentAlgorithmType = "MANUAL"
        ds.SegmentSequence.append(segment)
        for k in np.flatnonzero(values.any(axis=(1, 2))):
            position, identification, group = Dataset(), Dataset(), Dataset()
            position.ImagePositionPatient = [
                _ds(v) for v in ct.TransformIndexToPhysicalPoint((0, 0, int(k)))
            ]
            identification.ReferencedSegmentNumber = number
            group.PlanePositionSequence = [position]
            group.SegmentIdentificationSequence = [identification]
            groups.append(group)
            frames.append(values[k])
    order = np.random.default_rng(seed).permutation(len(frames))
    ds.PerFrameFunctionalGroupsSequence = [groups[i] for i in order]
    stack = np.stack([frames[i] for i in order])
    ds.NumberOfFrames = len(frames)
    if fractional:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.MaximumFractionalValue, ds.SegmentationFractionalType = 255, "PROBABILITY"
        ds.PixelData = np.round(stack * 255).astype(np.uint8).tobytes()
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
        ds.PixelData = pack_bits(stack.astype(np.uint8))
    ds.save_as(path, enforce_file_format=True)
    return path


def small_ct(shape=(12, 24, 28)) -> sitk.Image:
    """A small int16 CT with a gradient, spacing (0.8, 0.7, 2.5) mm."""
    z, y, x = np.indices(shape)
    ct = sitk.GetImageFromArray((x * 3 + y * 5 + z * 7 - 900).astype(np.int16))
    ct.SetSpacing((0.8, 0.7, 2.5))
    ct.SetOrigin((-20.0, 15.0, -30.0))
    return ct


@pytest.fixture
def ct_folder(tmp_path) -> tuple[sitk.Image, Path]:
    ct = small_ct()
    write_ct_series(ct, tmp_path / "dicom")
    return ct, tmp_path / "dicom"


def box(ct: sitk.Image, x=(8, 17), y=(6, 15), z=(3, 8)) -> np.ndarray:
    labels = np.zeros(ct.GetSize()[::-1], dtype=np.uint8)
    labels[z[0] : z[1], y[0] : y[1], x[0] : x[1]] = 1
    return labels


def prepare(ct_dir, mask, **kwargs):
    return prepare_case(ct_dir, mask, None, NATIVE, "P1", **kwargs)


def array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


# --- choosing the CT series ----------------------------------------------------------------


def test_the_one_ct_series_is_read_and_other_objects_are_not_picked(tmp_path, ct_folder):
    ct, folder = ct_folder
    write_ct_series(small_ct((3, 24, 28)) * 0, folder, f"{ROOT}.5", "Scout",
                    "ORIGINAL\\PRIMARY\\LOCALIZER")
    write_rtstruct(folder / "rs.dcm", {"GTV": runs_as_contours(ct, box(ct))})
    write_seg(folder / "seg.dcm", ct, {"Tumour": box(ct)})
    volume = read_ct(folder, "P1")
    assert volume.series.uid == CT_SERIES and volume.series.n_slices == 12
    assert np.array_equal(array(volume.image), array(ct))
    assert np.allclose(volume.image.GetSpacing(), ct.GetSpacing())
    assert np.allclose(volume.image.GetOrigin(), ct.GetOrigin())


def test_an_explicit_series_uid_reads_that_series(ct_folder):
    ct, folder = ct_folder
    thick = sitk.Cast(ct[:, :, ::2] + 5, sitk.sitkInt16)
    write_ct_series(thick, folder, THICK_SERIES, "Chest 5 mm")
    volume = read_ct(folder, "P1", THICK_SERIES)
    assert volume.series.description == "Chest 5 mm"
    assert np.array_equal(array(volume.image), array(thick))
    assert read_ct(folder, "P1", CT_SERIES).image.GetSize() == ct.GetSize()


def test_several_ct_series_are_an_error_listing_them(ct_folder):
    ct, folder = ct_folder
    write_ct_series(sitk.Cast(ct[:, :, ::2], sitk.sitkInt16), folder, THICK_SERIES, "Chest 5 mm")
    write_rtstruct(folder / "rs.dcm", {"GTV": runs_as_contours(ct, box(ct))})
    with pytest.raises(CaseInputError) as info:
        read_ct(folder, "P4")
    message = str(info.value)
    assert message.startswith(f"patient P4: CT {folder}: 2 CT series in this folder; set "
                              "ct_series_uid in the patients sheet to one of: ")
    assert f"{CT_SERIES} 'Chest 2.5 mm' (CT, 12 slices)" in message
    assert f"{THICK_SERIES} 'Chest 5 mm' (CT, 6 slices)" in message
    assert "RTSTRUCT" not in message and "\n" not in message


def test_an_absent_series_uid_is_an_error_listing_the_series_present(ct_folder):
    _, folder = ct_folder
    with pytest.raises(CaseInputError) as info:
        read_ct(folder, "P4", "1.2.3.4")
    assert str(info.value) == (
        f"patient P4: CT {folder}: series 1.2.3.4 (ct_series_uid) is not in this folder; "
        f"series present: {CT_SERIES} 'Chest 2.5 mm' (CT, 12 slices)"
    )


def test_a_folder_without_ct_series_is_an_error(tmp_path):
    ct = small_ct()
    write_ct_series(ct[:, :, :2], tmp_path, f"{ROOT}.5", "Scout", "ORIGINAL\\PRIMARY\\LOCALIZER")
    write_rtstruct(tmp_path / "rs.dcm", {"GTV": [rectangle(ct, 2, 5, 2, 5, 1)]})
    with pytest.raises(CaseInputError, match=r"patient P4: CT .*: no CT image series in this "
                       r"folder .*'Scout' \(CT, 2 slices\)"):
        read_ct(tmp_path, "P4")


def test_a_series_uid_for_a_ct_file_is_an_error(tmp_path):
    sitk.WriteImage(small_ct(), str(tmp_path / "ct.nrrd"))
    with pytest.raises(CaseInputError, match="ct_series_uid 1.2.3 is set but the CT is a file"):
        read_ct(tmp_path / "ct.nrrd", "P4", "1.2.3")


# --- rasterising contours ------------------------------------------------------------------


def test_even_odd_fill_equals_skimage_and_follows_the_half_open_rule():
    rng = np.random.default_rng(1)
    star = np.array([(12 + r * np.cos(t), 10 + r * np.sin(t)) for t, r in zip(
        np.linspace(0, 2 * np.pi, 23, endpoint=False), rng.uniform(3, 9, 23), strict=True)])
    ours = fill_even_odd([star], (20, 25))
    expected = np.zeros((20, 25), dtype=bool)
    expected[skimage_polygon(star[:, 1], star[:, 0], (20, 25))] = True
    assert ours.sum() > 50 and np.array_equal(ours, expected)
    square = np.array([(2, 2), (5, 2), (5, 5), (2, 5)], dtype=float)
    filled = fill_even_odd([square], (8, 8))
    assert np.array_equal(np.argwhere(filled), [(r, c) for r in (2, 3, 4) for c in (2, 3, 4)])


def test_rtstruct_sphere_matches_the_label_map_within_a_voxel_on_the_boundary(
    tmp_path, ct_folder
):
    ct, folder = ct_folder
    centre, radius = np.array([13.3, 11.6, 5.4]), 6.0  # index (x, y, z), mm
    spacing = np.array(ct.GetSpacing())
    contours, expected = [], np.zeros(ct.GetSize()[::-1], dtype=bool)
    for k in range(ct.GetDepth()):
        dz = (k - centre[2]) * spacing[2]
        if abs(dz) < radius:
            points = circle(ct, centre, np.sqrt(radius**2 - dz**2), k)
            contours.append(points)
            index = np.array([ct.TransformPhysicalPointToContinuousIndex(p) for p in points])
            expected[k][skimage_polygon(index[:, 1], index[:, 0], expected.shape[1:])] = True
    rs = write_rtstruct(tmp_path / "rs.dcm", {"GTV": contours})
    case = prepare(folder, rs)
    mask = array(case.mask).astype(bool)
    assert np.array_equal(mask, expected)
    z, y, x = np.indices(mask.shape)
    distance = np.sqrt(((np.stack([x, y, z], -1) - centre) * spacing) ** 2 @ np.ones(3))
    analytic = distance <= radius
    assert abs(int(mask.sum()) - int(analytic.sum())) <= 0.05 * analytic.sum()
    assert np.all(np.abs(distance[mask != analytic] - radius) < np.linalg.norm(spacing[:2]))
    assert case.notes["radpath_mask_source"].startswith(f"RTSTRUCT {rs} ROI 'GTV' (number 1")
    assert case.notes["radpath_ct_series"] == f"{CT_SERIES} 'Chest 2.5 mm' (CT, 12 slices)"
    assert case.notes["radpath_mask_label"] == ""


def test_a_contour_inside_another_is_a_hole(tmp_path, ct_folder):
    ct, folder = ct_folder
    contours = [rectangle(ct, 3.5, 13.5, 4.5, 14.5, k) for k in (4, 5)]
    contours.append(rectangle(ct, 6.5, 9.5, 7.5, 10.5, 5))  # hole on slice 5 only
    case = prepare(folder, write_rtstruct(tmp_path / "rs.dcm", {"GTV": contours}))
    mask = array(case.mask)
    assert mask[4].sum() == 100 and mask[5].sum() == 100 - 9
    assert not mask[5, 8:11, 7:10].any() and mask[4, 8:11, 7:10].all()


def test_roi_is_chosen_by_name(tmp_path, ct_folder):
    ct, folder = ct_folder
    rs = write_rtstruct(tmp_path / "rs.dcm", {
        "GTV": runs_as_contours(ct, box(ct)),
        "Lung": runs_as_contours(ct, box(ct, x=(2, 6), y=(2, 6), z=(1, 3))),
    })
    assert array(prepare(folder, rs, mask_roi="Lung").mask).sum() == 32
    assert array(prepare(folder, rs, mask_roi="GTV").mask).sum() == 9 * 9 * 5
    with pytest.raises(CaseInputError) as info:
        prepare(folder, rs)
    assert str(info.value) == (
        f"patient P1: mask {rs}: RTSTRUCT has 2 ROIs, set mask_roi to one of: 'GTV', 'Lung'"
    )
    with pytest.raises(CaseInputError, match=r"no ROI named 'gtv'; ROIs present: 'GTV', 'Lung'"):
        prepare(folder, rs, mask_roi="gtv")
    with pytest.raises(CaseInputError, match="mask_segment '1' is set but the mask is an RTSTRUCT"):
        prepare(folder, rs, mask_roi="GTV", mask_segment="1")


def test_rtstruct_in_a_folder_is_found_by_its_header(tmp_path, ct_folder):
    ct, folder = ct_folder
    (tmp_path / "rt").mkdir()
    write_rtstruct(tmp_path / "rt" / "structures", {"GTV": runs_as_contours(ct, box(ct))})
    (tmp_path / "rt" / "notes.txt").write_text("not DICOM\n", encoding="utf-8")
    assert array(prepare(folder, tmp_path / "rt").mask).sum() == 9 * 9 * 5
    write_seg(tmp_path / "rt" / "seg.dcm", ct, {"Tumour": box(ct)})
    with pytest.raises(CaseInputError, match=r"folder holds 2 RTSTRUCT/SEG objects, point mask "
                       r"at one of them: seg.dcm \(SEG\); structures \(RTSTRUCT\)"):
        prepare(folder, tmp_path / "rt")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"frame_uid": f"{ROOT}.66"}, f"ROI 'GTV' frame of reference {ROOT}.66 is not the CT "
                                      f"series' {FRAME} \\(drawn on another scan\\?\\)"),
        ({"series_uid": THICK_SERIES}, f"ROI 'GTV' references series {THICK_SERIES}, not the "
                                       f"CT series {CT_SERIES}"),
        ({"geometric_type": "POINT"}, "ROI 'GTV' contour 1 is POINT; only CLOSED_PLANAR"),
    ],
)
def test_rtstruct_of_another_scan_or_without_areas_is_an_error(tmp_path, ct_folder, change, message):
    ct, folder = ct_folder
    rs = write_rtstruct(tmp_path / "rs.dcm", {"GTV": runs_as_contours(ct, box(ct))}, **change)
    with pytest.raises(CaseInputError, match=f"^patient P1: mask {rs}: {message}"):
        prepare(folder, rs)


def test_a_contour_between_ct_slices_is_an_error(tmp_path, ct_folder):
    ct, folder = ct_folder
    off = rectangle(ct, 3.5, 9.5, 3.5, 9.5, 4) + np.array([0, 0, 1.25])  # half a slice
    rs = write_rtstruct(tmp_path / "rs.dcm", {"GTV": [rectangle(ct, 3.5, 9.5, 3.5, 9.5, 3), off]})
    with pytest.raises(CaseInputError, match=r"contour 2 does not lie on a CT slice plane "
                       r"\(at slice index 4.5; tolerance 0.1 slice\)"):
        prepare(folder, rs)
    outside = write_rtstruct(tmp_path / "out.dcm", {"GTV": [rectangle(ct, 20, 35, 3, 9, 3)]})
    with pytest.raises(CaseInputError, match="contour 1 lies outside the CT volume"):
        prepare(folder, outside)


def test_dicom_masks_need_a_dicom_ct_and_label_maps_refuse_roi_names(tmp_path, ct_folder):
    ct, folder = ct_folder
    rs = write_rtstruct(tmp_path / "rs.dcm", {"GTV": runs_as_contours(ct, box(ct))})
    sitk.WriteImage(ct, str(tmp_path / "ct.nrrd"))
    with pytest.raises(CaseInputError, match="an RTSTRUCT mask needs the CT as a DICOM series"):
        prepare(tmp_path / "ct.nrrd", rs)
    labels = sitk.GetImageFromArray(box(ct))
    labels.CopyInformation(ct)
    sitk.WriteImage(labels, str(tmp_path / "mask.nrrd"))
    with pytest.raises(CaseInputError, match="mask_roi 'GTV' is set but the mask is a label-map"):
        prepare(tmp_path / "ct.nrrd", tmp_path / "mask.nrrd", mask_roi="GTV")


# --- DICOM-SEG -----------------------------------------------------------------------------


def test_seg_segment_by_number_and_by_label_with_shuffled_frames(tmp_path, ct_folder):
    ct, folder = ct_folder
    tumour, node = box(ct), box(ct, x=(20, 24), y=(18, 22), z=(6, 11))
    node[8, 18, 20] = 0  # asymmetric, so a frame on the wrong slice would show
    seg = write_seg(tmp_path / "seg.dcm", ct, {"Tumour": tumour, "Node": node}, seed=3)
    order = [
        int(g.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        for g in pydicom.dcmread(seg).PerFrameFunctionalGroupsSequence
    ]
    assert order != sorted(order)  # frames really are shuffled
    for wanted, expected in (("1", tumour), ("Node", node), ("2", node), ("Tumour", tumour)):
        case = prepare(folder, seg, mask_segment=wanted)
        assert np.array_equal(array(case.mask), expected), wanted
    assert case.notes["radpath_mask_source"] == f"SEG {seg} segment 1 'Tumour' (BINARY, 5 frames)"
    with pytest.raises(CaseInputError, match=r"SEG has 2 segments, set mask_segment to a number "
                       r"or label: 1 'Tumour', 2 'Node'"):
        prepare(folder, seg)
    with pytest.raises(CaseInputError, match=r"no segment '3'; segments present: 1 'Tumour'"):
        prepare(folder, seg, mask_segment=3)


def test_fractional_seg_is_thresholded_at_half_the_maximum(tmp_path, ct_folder):
    ct, folder = ct_folder
    probability = box(ct) * 0.9
    probability[4, 6:15, 8:17] = 0.45  # below half: out
    probability[5, 6:15, 8:17] = 0.55  # above: in
    seg = write_seg(tmp_path / "seg.dcm", ct, {"Tumour": probability}, fractional=True)
    case = prepare(folder, seg)
    assert np.array_equal(array(case.mask), (probability >= 0.5).astype(np.uint8))
    assert "FRACTIONAL >= 0.5 of max" in case.notes["radpath_mask_source"]


def test_seg_of_another_frame_of_reference_is_an_error(tmp_path, ct_folder):
    ct, folder = ct_folder
    seg = write_seg(tmp_path / "seg.dcm", ct, {"Tumour": box(ct)}, frame_uid=f"{ROOT}.66")
    with pytest.raises(CaseInputError, match=f"^patient P1: mask {seg}: SEG frame of reference "
                       f"{ROOT}.66 is not the CT series' {FRAME}"):
        prepare(folder, seg)


def test_seg_on_another_grid_is_an_error(tmp_path, ct_folder):
    ct, folder = ct_folder
    shifted = sitk.Image(ct)
    shifted.SetOrigin((-20.0, 15.0, -31.25))  # frames half a slice off the CT planes
    seg = write_seg(tmp_path / "seg.dcm", shifted, {"Tumour": box(ct)})
    with pytest.raises(CaseInputError, match=r"SEG frame \d+ is not on the CT grid \(its first "
                       r"pixel is at CT index \(0, 0, [\d.]+\); tolerance 0.1 voxel\)"):
        prepare(folder, seg)


# --- through extract_patient (the real pyradiomics path) ---------------------------------


@pytest.mark.parametrize("kind", ["RTSTRUCT", "SEG"])
def test_dicom_mask_gives_the_features_of_the_label_map(tmp_path, kind):
    ct, mask = synthetic_case()
    write_ct_series(ct, tmp_path / "dicom")
    labels = array(mask)
    if kind == "RTSTRUCT":
        dicom_mask = write_rtstruct(tmp_path / "rs.dcm", {"GTV": runs_as_contours(ct, labels)})
    else:
        dicom_mask = write_seg(tmp_path / "seg.dcm", ct, {"GTV": labels})
    sitk.WriteImage(mask, str(tmp_path / "mask.nii.gz"))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(FAST_PARAMS), encoding="utf-8")

    def run(mask_path, name, **kwargs):
        out = tmp_path / name
        return extract_patient("P1", tmp_path / "dicom", mask_path, 1, CT_CFG, params,
                               out / "features.tsv", out / "qc.tsv", **kwargs)

    expected, _ = run(tmp_path / "mask.nii.gz", "label_map")
    features, qc = run(dicom_mask, "dicom", mask_roi="GTV" if kind == "RTSTRUCT" else "",
                       mask_segment="GTV" if kind == "SEG" else "", ct_series_uid=CT_SERIES)
    assert features == expected
    assert qc["radpath_mask_source"].startswith(f"{kind} {dicom_mask}")
    assert qc["radpath_mask_geometry"] == "identical to CT"
    assert int(qc["radpath_roi_voxels_native"]) == int(labels.sum())


def test_radiomics_command_takes_the_dicom_options(tmp_path):
    ct, mask = synthetic_case()
    write_ct_series(ct, tmp_path / "dicom")
    write_ct_series(sitk.Cast(ct[:, :, ::2], sitk.sitkInt16), tmp_path / "dicom", THICK_SERIES)
    labels = array(mask)
    rs = write_rtstruct(tmp_path / "rs.dcm", {
        "GTV 1": runs_as_contours(ct, labels), "-Lung": [rectangle(ct, 2, 5, 2, 5, 3)]
    })
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(FAST_PARAMS), encoding="utf-8")
    out = tmp_path / "out"
    result = radpath_cli(
        "ct_patient", "--patient", "P7", "--ct", str(tmp_path / "dicom"), "--mask", str(rs),
        "--mask-label", "1", f"--ct-series-uid={CT_SERIES}", "--mask-roi=GTV 1",
        "--mask-segment=", "--params", str(params),
        "--settings", json.dumps({"ct": CT_CFG, "on_error": "stop"}),
        "--features", str(out / "features.tsv"), "--qc", str(out / "qc.tsv"),
        "--log", str(tmp_path / "job.log"),
    )
    assert result.returncode == 0, result.stderr
    qc = pd.read_csv(out / "qc.tsv", sep="\t", dtype=str, keep_default_na=False).iloc[0]
    assert qc["radpath_ct_series"] == f"{CT_SERIES} 'Chest 2.5 mm' (CT, 20 slices)"
    assert qc["radpath_mask_source"].startswith(f"RTSTRUCT {rs} ROI 'GTV 1' (number 1")
    assert int(qc["radpath_roi_voxels_native"]) == int(labels.sum())
    result = radpath_cli(
        "ct_patient", "--patient", "P7", "--ct", str(tmp_path / "dicom"), "--mask", str(rs),
        "--mask-label", "1", "--mask-roi=-Lung", "--params", str(params),
        "--settings", json.dumps({"ct": CT_CFG, "on_error": "stop"}),
        "--features", str(out / "f2.tsv"), "--qc", str(out / "q2.tsv"),
        "--log", str(tmp_path / "job2.log"),
    )
    assert result.returncode != 0
    assert "2 CT series in this folder; set ct_series_uid" in (tmp_path / "job2.log").read_text(
        encoding="utf-8")


def test_label_map_jobs_do_not_import_pydicom(tmp_path):
    ct, mask = synthetic_case()
    sitk.WriteImage(ct, str(tmp_path / "ct.nrrd"))
    sitk.WriteImage(mask, str(tmp_path / "mask.nrrd"))
    code = (
        "import sys; from radpath.inputs.ct import prepare_case; import radpath.cli, radpath.radiomics.features; "
        f"prepare_case({str(tmp_path / 'ct.nrrd')!r}, {str(tmp_path / 'mask.nrrd')!r}, 1, "
        f"{CT_CFG!r}, 'P1'); print('pydicom' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            encoding="utf-8", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
