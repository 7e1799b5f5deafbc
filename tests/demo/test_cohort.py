"""Synthetic demo cohort: determinism, sheet validity, image realism, batch effect, signal."""

import math
import re

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from lifelines.utils import concordance_index
from scipy import ndimage

from radpath_demo import cohort as demo_cohort
from radpath_demo.__main__ import main as make_demo_cohort

PATIENT_COLUMNS = ["patient_id", "ct", "mask", "mask_label", "lung_label", "scanner", "kernel",
                   "slice_thickness"]
CLINICAL_COLUMNS = [
    "patient_id",
    "age",
    "sex",
    "stage",
    "chemoradiotherapy",
    "os_time",
    "os_event",
    "pfs_time",
    "pfs_event",
]
N_SCANNERS = 3


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    demo_cohort.generate_cohort(out, n_patients=6, n_scanners=N_SCANNERS, seed=3)
    return out


def read_sheet(path):
    return pd.read_csv(path, sep="\t", dtype={"patient_id": str})


def read_image(path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin()


def harrell_c(time, risk, event):
    return concordance_index(time, -np.asarray(risk), event)


def in_plane_erosion(mask, iterations):
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_erosion(mask, structure, iterations=iterations)


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    first, second = (demo_cohort.generate_cohort(tmp_path / name, 2, 2, seed=9) for name in ("a", "b"))
    for name in ("patients", "clinical", "truth"):
        assert first[name].read_bytes() == second[name].read_bytes()
    for rel in read_sheet(first["patients"])[["ct", "mask"]].to_numpy().ravel():
        a, b = read_image(tmp_path / "a" / rel), read_image(tmp_path / "b" / rel)
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:] == b[1:]
    other = demo_cohort.sample_cohort(2, 2, seed=10).clinical
    assert not other.equals(read_sheet(first["clinical"]))


def test_sheets_have_expected_columns_and_valid_values(cohort_dir):
    patients = read_sheet(cohort_dir / "patients.tsv")
    clinical = read_sheet(cohort_dir / "clinical.tsv")
    truth = read_sheet(cohort_dir / "truth.tsv")
    assert list(patients.columns) == PATIENT_COLUMNS
    assert list(clinical.columns) == CLINICAL_COLUMNS
    assert list(patients.patient_id) == ["P001", "P002", "P003", "P004", "P005", "P006"]
    assert list(clinical.patient_id) == list(patients.patient_id) == list(truth.patient_id)
    assert patients.patient_id.is_unique
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", pid) for pid in patients.patient_id)
    assert (patients.mask_label == demo_cohort.LESION_LABEL).all()
    assert patients.lung_label.isna().tolist() == [False, True] * 3  # both lung paths
    assert (patients.lung_label.dropna() == demo_cohort.LUNG_LABEL).all()
    assert all(
        (cohort_dir / rel).is_file() and not rel.startswith("/")
        for rel in patients.ct.tolist() + patients["mask"].tolist()
    )
    assert patients.scanner.value_counts().tolist() == [2, 2, 2]
    for column in ("os_event", "pfs_event"):
        assert set(clinical[column]) <= {0, 1}
    assert (clinical.os_time > 0).all() and (clinical.pfs_time > 0).all()
    assert (clinical.pfs_time <= clinical.os_time).all()
    assert (clinical.pfs_event >= clinical.os_event).all()  # a death ends PFS too
    assert set(clinical.stage) <= set(demo_cohort.STAGES) and set(clinical.sex) <= {"F", "M"}
    assert clinical.age.between(30, 90).all()
    assert "log_hazard" in truth.columns


def test_masks_match_ct_geometry_and_hold_a_visible_lesion(cohort_dir):
    patients = read_sheet(cohort_dir / "patients.tsv")
    for row in patients.itertuples():
        ct, ct_spacing, ct_origin = read_image(cohort_dir / row.ct)
        labels, mask_spacing, mask_origin = read_image(cohort_dir / row.mask)
        assert ct.dtype == np.int16 and ct.shape == labels.shape
        assert ct_spacing == mask_spacing and ct_origin == mask_origin
        assert ct_spacing[2] == row.slice_thickness
        assert {0, demo_cohort.LESION_LABEL, demo_cohort.MUSCLE_LABEL} <= set(np.unique(labels)) <= {
            0, demo_cohort.LESION_LABEL, demo_cohort.MUSCLE_LABEL, demo_cohort.LUNG_LABEL}
        lesion = labels == row.mask_label
        assert lesion.sum() >= 64, row.patient_id
        faces = [
            lesion[0],
            lesion[-1],
            lesion[:, 0],
            lesion[:, -1],
            lesion[:, :, 0],
            lesion[:, :, -1],
        ]
        assert not any(face.any() for face in faces), f"{row.patient_id}: lesion touches the border"
        shell = ndimage.binary_dilation(lesion, iterations=4) & ~ndimage.binary_dilation(
            lesion, iterations=1
        )
        soft_tissue_shell = shell & (labels == 0) & (ct > -300)
        brightest = np.percentile(ct[lesion], 90) - np.percentile(ct[soft_tissue_shell], 90)
        assert brightest > 10, (
            f"{row.patient_id}: lesion rim not brighter than the organ ({brightest})"
        )
        assert -1024 <= ct.min() and ct.max() < 1000
        assert (ct < -900).any(), f"{row.patient_id}: no air in the field of view"


def test_written_scanners_differ_in_noise_and_slice_thickness(cohort_dir):
    patients = read_sheet(cohort_dir / "patients.tsv")
    noise = {}
    for row in patients.itertuples():
        ct, _, _ = read_image(cohort_dir / row.ct)
        labels, _, _ = read_image(cohort_dir / row.mask)
        muscle = in_plane_erosion(labels == demo_cohort.MUSCLE_LABEL, 3) & ~ndimage.binary_dilation(
            labels == 1, iterations=3
        )
        noise.setdefault(row.scanner, []).append(ct[muscle].std())
    measured = {name: np.mean(sds) for name, sds in noise.items()}
    expected = {s.name: s.noise_hu for s in demo_cohort.SCANNERS[:N_SCANNERS]}
    assert sorted(measured, key=measured.get) == sorted(expected, key=expected.get)
    assert max(measured.values()) / min(measured.values()) > 1.5
    assert patients.groupby("scanner").slice_thickness.nunique().eq(1).all()
    assert patients.slice_thickness.nunique() == N_SCANNERS


def test_render_ct_noise_follows_the_scanner():
    rng = np.random.default_rng(0)
    lesion = demo_cohort.sample_lesion(8.0, 0.0, rng)
    soft, sharp = demo_cohort.SCANNERS[0], demo_cohort.SCANNERS[1]
    grid = demo_cohort.scan_grid(lesion, soft, rng)
    anatomy = demo_cohort.sample_anatomy(lesion, grid, rng)
    labels = demo_cohort.make_label_map(lesion, anatomy, grid)
    muscle = in_plane_erosion(labels == demo_cohort.MUSCLE_LABEL, 3) & ~ndimage.binary_dilation(
        labels == 1, iterations=3
    )
    sds = []
    for scanner in (soft, sharp):
        ct = demo_cohort.render_ct(lesion, anatomy, scanner, grid, np.random.default_rng(1))
        sds.append(ct[muscle].std())
        # texture adds a little to the scanner noise in muscle
        assert scanner.noise_hu * 0.9 < sds[-1] < scanner.noise_hu * 1.3
    assert sds[1] > 1.5 * sds[0]


def test_lesion_mask_volume_matches_the_analytic_volume_and_extent():
    rng = np.random.default_rng(5)
    lesion = demo_cohort.sample_lesion(12.0, 1.0, rng)
    half = np.ceil(np.asarray(lesion.extent_mm)) + 3
    grid = demo_cohort.Grid(tuple(int(n) for n in 2 * half / 0.5 + 1), (0.5, 0.5, 0.5), tuple(-half))
    mask = demo_cohort.make_lesion_mask(lesion, grid)
    assert mask.sum() * 0.125 / 1000 == pytest.approx(lesion.volume_ml, rel=0.03)
    z, y, x = np.nonzero(mask)
    coords = np.stack([x, y, z], axis=1) * 0.5 - half
    assert (np.abs(coords).max(axis=0) <= np.asarray(lesion.extent_mm) + 0.5).all()
    components, n = ndimage.label(mask)
    assert np.bincount(components.ravel())[1:].max() > 0.95 * mask.sum()


def test_heterogeneity_grows_necrosis_and_texture():
    calm, mixed = (demo_cohort.sample_lesion(10.0, h, np.random.default_rng(2)) for h in (-1.0, 2.0))
    assert calm.core_fraction < mixed.core_fraction
    assert calm.enhancing_hu - calm.necrotic_hu < mixed.enhancing_hu - mixed.necrotic_hu
    assert calm.texture_hu < mixed.texture_hu


def test_simulate_survival_censoring_ordering_and_risk_direction():
    rng = np.random.default_rng(0)
    log_hazard = np.repeat([0.0, 1.0], 2000)
    survival = demo_cohort.simulate_survival(log_hazard, rng)
    assert list(survival.columns) == ["os_time", "os_event", "pfs_time", "pfs_event"]
    assert (survival.pfs_time <= survival.os_time).all() and (survival.os_time > 0).all()
    assert 0.2 < 1 - survival.os_event.mean() < 0.5
    low, high = survival.iloc[:2000], survival.iloc[2000:]
    assert high.os_time.median() < 0.8 * low.os_time.median()
    assert high.pfs_time.median() < 0.8 * low.pfs_time.median()
    again = demo_cohort.simulate_survival(log_hazard, np.random.default_rng(0))
    pd.testing.assert_frame_equal(survival, again)


def test_planted_signal_in_truth_and_mask_volume():
    cohort = demo_cohort.sample_cohort(200, N_SCANNERS, seed=1)
    clinical, truth = cohort.clinical, cohort.truth
    assert harrell_c(clinical.os_time, truth.log_hazard, clinical.os_event) > 0.7
    assert harrell_c(clinical.pfs_time, truth.log_hazard, clinical.pfs_event) > 0.7
    volume = [
        demo_cohort.make_lesion_mask(p.lesion, p.grid).sum() * math.prod(p.grid.spacing)
        for p in cohort.patients
    ]
    assert harrell_c(clinical.os_time, volume, clinical.os_event) > 0.6
    assert harrell_c(clinical.os_time, truth.heterogeneity, clinical.os_event) > 0.6
    assert 0.25 < 1 - clinical.os_event.mean() < 0.45
    # scanners are balanced and carry no risk
    assert (
        cohort.patients_sheet.scanner.value_counts().max()
        - cohort.patients_sheet.scanner.value_counts().min()
        <= 1
    )
    by_scanner = truth.groupby("scanner").log_hazard.mean()
    assert by_scanner.max() - by_scanner.min() < 0.5 * truth.log_hazard.std()


def test_patient_ids_and_bad_sizes():
    assert demo_cohort.patient_ids(3) == ["P001", "P002", "P003"]
    assert demo_cohort.patient_ids(1200)[-1] == "P1200"
    with pytest.raises(ValueError, match="n_scanners"):
        demo_cohort.sample_cohort(10, len(demo_cohort.SCANNERS) + 1, seed=0)
    with pytest.raises(ValueError, match="n_patients"):
        demo_cohort.sample_cohort(0, 3, seed=0)


def test_entry_script_reads_config_and_overrides(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("seed: 4\ndemo:\n  out_dir: unused\n  n_patients: 40\n  n_scanners: 2\n")
    out = tmp_path / "cohort"
    make_demo_cohort(["--config", str(config), "--out-dir", str(out), "--n-patients", "2"])
    patients = read_sheet(out / "patients.tsv")
    assert list(patients.patient_id) == ["P001", "P002"]
    assert patients.scanner.nunique() == 2
    expected = demo_cohort.sample_cohort(2, 2, seed=4).clinical
    pd.testing.assert_frame_equal(read_sheet(out / "clinical.tsv"), expected, check_dtype=False)
