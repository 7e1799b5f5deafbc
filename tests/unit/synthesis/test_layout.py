"""radpath.synthesis.layout and .prepare: lungs segmented on full chests and on crops whose field of
view cuts through the lung (every demo patient against its known lungs), the mask's lung
label, fresh layouts, composition on the source grid and the model grid."""


from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from synthesis_data import sphere_volumes

from radpath.synthesis import layout as layouts
from radpath.synthesis import quality as quality

LUNG_SETTINGS = {"threshold_hu": -400.0, "air_hu": -950.0, "outside_air_fraction": 0.25,
                 "min_volume_ml": 0.1, "max_components": 2, "closing_mm": 3.0}


def chest_phantom(lungs: bool = True, seed: int = 0):
    """A full-field chest CT (4 mm voxels, 384 x 384 x 160 mm) in HU and what is where:
    an elliptical body (fat rim, soft tissue), two lungs (-850 HU) that run out of the scan
    at both ends, the trachea entering from the top slice and splitting into the main
    bronchi that reach the lungs, air around the body, and below it a table whose foam core
    (-900 HU) is enclosed by its shell. Without `lungs`: an abdomen with bowel gas."""
    rng = np.random.default_rng(seed)
    shape = (40, 96, 96)  # z, y, x
    z, y, x = (np.mgrid[: shape[0], : shape[1], : shape[2]] + 0.5) * 4.0
    x, y, z = x - 192.0, y - 192.0, z
    body = (x / 150) ** 2 + (y / 100) ** 2 <= 1
    inner = (x / 140) ** 2 + (y / 90) ** 2 <= 1
    hu = np.full(shape, -1000.0)
    hu[body] = -100.0
    hu[inner] = 40.0
    truth = {"body": body}
    lung = np.zeros(shape, bool)
    if lungs:
        for side in (-1, 1):
            lung |= ((x - side * 70) / 50) ** 2 + (y / 70) ** 2 <= 1
        trachea = (x**2 + (y + 30) ** 2 <= 9**2) & (z >= 100)
        for side in (-1, 1):  # main bronchi from the carina (z 100) into each lung
            t = np.clip((100 - z) / 40, 0, 1)
            centre_x, centre_y = side * 55 * t, -30 + 20 * t
            trachea |= ((x - centre_x) ** 2 + (y - centre_y) ** 2 <= 6**2) & (z < 100) & (z > 60)
        hu[lung] = -850.0
        hu[trachea] = -1000.0
        truth["airways"] = trachea & ~lung
    else:
        gas = ((x - 30) ** 2 + (y - 10) ** 2 + (z - 80) ** 2) <= 15**2
        hu[gas] = -1000.0
    table = (np.abs(x) <= 150) & (y >= 112) & (y <= 132)
    core = (np.abs(x) <= 142) & (y >= 116) & (y <= 128)
    hu[table] = 200.0
    hu[core] = -900.0
    truth.update(lungs=lung, table_core=core, air=~body & ~table)
    hu += rng.normal(0, 20, shape)
    ct = sitk.GetImageFromArray(np.clip(np.rint(hu), -1024, 3071).astype(np.int16))
    ct.SetSpacing((4.0, 4.0, 4.0))
    return ct, truth


def crop(ct: sitk.Image, truth: dict, x_mm: tuple[float, float], y_mm: tuple[float, float]):
    """The phantom cropped in-plane to [x0, x1) x [y0, y1) mm around the body's centre."""
    xs = slice(int((x_mm[0] + 192) // 4), int((x_mm[1] + 192) // 4))
    ys = slice(int((y_mm[0] + 192) // 4), int((y_mm[1] + 192) // 4))
    array = sitk.GetArrayFromImage(ct)[:, ys, xs]
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(ct.GetSpacing())
    return image, {key: value[:, ys, xs] for key, value in truth.items()}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_lungs_of_a_full_chest_scan_without_airways_table_or_outside_air():
    ct, truth = chest_phantom()
    search = layouts.segment_lungs(ct, LUNG_SETTINGS)
    assert dice(search.lungs, truth["lungs"]) > 0.97
    assert not (search.lungs & truth["table_core"]).any()
    assert not (search.lungs & truth["air"]).any()
    # The trachea and main bronchi are removed (a ring of partial volume may stay where a
    # bronchus enters the lung).
    assert (search.lungs & truth["airways"]).sum() < 0.05 * truth["airways"].sum()
    assert search.airway_ml > 0.5 * truth["airways"].sum() * 64 / 1000
    assert search.outside_air >= 1 and search.outside_body >= 1  # around the body; table core


def test_lungs_of_a_crop_whose_field_of_view_cuts_through_the_lung():
    """Radiotherapy-style crop: the field of view cuts both lungs at its sides and keeps a
    strip of air in front of the chest; lung that touches the edge is lung, the air is not."""
    ct, truth = crop(*chest_phantom(seed=1), x_mm=(-100, 100), y_mm=(-112, 60))
    assert truth["lungs"][:, :, [0, -1]].any() and truth["air"][:, 0].all()
    search = layouts.segment_lungs(ct, LUNG_SETTINGS)
    assert dice(search.lungs, truth["lungs"]) > 0.97
    assert not (search.lungs & truth["air"]).any()
    assert search.outside_air == 1


def test_a_ct_without_lungs_is_refused_naming_the_patient_and_what_was_searched(tmp_path):
    from radpath.inputs.configuration import default_config
    from radpath.synthesis.prepare import layout_job

    ct, truth = chest_phantom(lungs=False)
    search = layouts.segment_lungs(ct, LUNG_SETTINGS)
    assert not search.lungs.any() and search.enclosed_air == 1  # the bowel gas
    nodule = np.zeros(truth["body"].shape, np.uint8)
    nodule[18:22, 44:50, 60:66] = 1
    mask = sitk.GetImageFromArray(nodule)
    mask.CopyInformation(ct)
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(mask, str(tmp_path / "mask.nii.gz"))
    config = default_config()
    settings = {**config["synthesis"], "lungs": LUNG_SETTINGS}
    images = {"patient_id": "ABD7", "ct_path": str(tmp_path / "ct.nii.gz"),
              "mask_path": str(tmp_path / "mask.nii.gz"), "mask_label": 1,
              "ct_cfg": config["ct"]}
    with pytest.raises(layouts.LayoutError) as error:
        layout_job(images=images, lung_label="", settings=settings,
                   npz_out=str(tmp_path / "l.npz"), layout_out=str(tmp_path / "l.nii.gz"),
                   ct_out=str(tmp_path / "c.nii.gz"))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"patient ABD7: CT {tmp_path / 'ct.nii.gz'}: no lung found")
    assert "below -400.0 HU" in message and "1 all air inside it" in message
    assert "lung_label" in message
    assert not list(tmp_path.glob("l.*"))


def test_lung_segmentation_finds_the_lungs_of_every_demo_patient(repo):
    """The shipped demo cohort (config/config.yaml's demo settings), every patient, without
    its lung label: Dice against the known lungs >= 0.90."""
    import yaml

    from radpath_demo.cohort import LESION_LABEL, LUNG_LABEL, patient_images, sample_cohort

    config = yaml.safe_load((repo / "config/config.yaml").read_text(encoding="utf-8"))
    settings = config["synthesis"]["lungs"]
    cohort = sample_cohort(config["demo"]["n_patients"], config["demo"]["n_scanners"],
                           config["seed"])
    scores = {}
    for patient in cohort.patients:
        hu, labels = patient_images(patient)
        ct = sitk.GetImageFromArray(hu)
        ct.SetSpacing(patient.grid.spacing)
        found = layouts.segment_lungs(ct, settings).lungs
        scores[patient.patient_id] = dice(found, labels == LUNG_LABEL)
        assert not (found & (labels == LESION_LABEL)).all()
    values = np.array(list(scores.values()))
    print(f"demo lung Dice: min {values.min():.3f}, median {np.median(values):.3f}")
    assert len(scores) == config["demo"]["n_patients"]
    assert values.min() >= 0.90, scores


def test_the_lung_label_of_the_mask_file_is_used_when_given(tmp_path):
    labels = np.zeros((6, 8, 8), np.uint8)
    labels[:, 4:, :] = 3
    image = sitk.GetImageFromArray(labels)
    sitk.WriteImage(image, str(tmp_path / "mask.nii.gz"))
    lungs = layouts.lungs_from_label(str(tmp_path / "mask.nii.gz"), 3, image, "P1")
    assert lungs.sum() == 6 * 4 * 8
    with pytest.raises(ValueError, match="P1.*no voxel of lung label 5"):
        layouts.lungs_from_label(str(tmp_path / "mask.nii.gz"), 5, image, "P1")


def test_a_fresh_layout_moves_and_scales_the_nodule():
    _, labels = sphere_volumes(1, size=32, seed=4)
    layout = labels[0]
    spacing = (0.5, 1.0, 2.0)  # x, y, z mm
    before = np.array(np.nonzero(layout == 2)).mean(axis=1)  # z, y, x
    fresh, old = layouts.move_nodule(layout, spacing, (2.0, 3.0, 4.0), 1.0, "P1")
    after = np.array(np.nonzero(fresh == 2)).mean(axis=1)
    np.testing.assert_allclose(after - before, [4.0 / 2.0, 3.0 / 1.0, 2.0 / 0.5], atol=0.3)
    assert old.sum() == (layout == 2).sum()
    assert set(np.unique(fresh[old & (fresh != 2)])) <= {0, 1}  # old voxels: neighbours' class
    bigger, _ = layouts.move_nodule(layout, spacing, (0, 0, 0), 1.5, "P1")
    assert abs((bigger == 2).sum() / (layout == 2).sum() - 1.5**3) < 0.5
    with pytest.raises(ValueError, match="P1: the nodule moved .* leaves the field of view"):
        layouts.move_nodule(layout, spacing, (0.0, 0.0, 200.0), 1.0, "P1")


def test_composition_keeps_the_source_voxels_and_grid():
    ct = sitk.GetImageFromArray(np.arange(6 * 8 * 10, dtype=np.int16).reshape(6, 8, 10))
    ct.SetSpacing((0.7, 0.7, 2.5))
    ct.SetOrigin((-3.0, 4.0, 10.0))
    model = layouts.Grid((4, 4, 4), (1.75, 1.4, 3.75), (-2.475, 4.35, 10.625),
                         tuple(np.eye(3).ravel()))
    synthetic = model.image(np.full((4, 4, 4), -500.0, np.float32))
    region = np.zeros((6, 8, 10), bool)
    region[2:4, 3:6, 4:8] = True
    out = layouts.compose(ct, synthetic, region)
    assert layouts.Grid.of(out) == layouts.Grid.of(ct)
    assert out.GetPixelID() == ct.GetPixelID()
    array, real = sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(ct)
    np.testing.assert_array_equal(array[~region], real[~region])
    assert (array[region] == -500).all()


def test_the_model_grid_covers_the_scan():
    ct = sitk.Image([92, 92, 30], sitk.sitkInt16)
    ct.SetSpacing((0.7, 0.7, 2.0))
    ct.SetOrigin((10.0, -5.0, 3.0))
    nodule = sitk.Image([92, 92, 30], sitk.sitkUInt8)
    nodule.CopyInformation(ct)
    nodule[40:50, 40:50, 10:14] = 1
    grid = layouts.model_grid(ct, nodule, {"size": 16, "field_of_view": "scan"})
    np.testing.assert_allclose(np.array(grid.spacing) * 16, [92 * 0.7, 92 * 0.7, 60.0])
    first_corner = np.array(ct.GetOrigin()) - np.array(ct.GetSpacing()) / 2
    np.testing.assert_allclose(np.array(grid.origin) - np.array(grid.spacing) / 2, first_corner)
    cube = layouts.model_grid(ct, nodule, {"size": 16, "field_of_view": "nodule",
                                           "edge_mm": 32.0})
    centre = np.array(cube.origin) + np.array(cube.spacing) * 7.5
    np.testing.assert_allclose(centre, ct.TransformContinuousIndexToPhysicalPoint(
        (44.5, 44.5, 11.5)), atol=1e-6)


def _layout_files(tmp_path, patient: str, ct: sitk.Image, lungs_z: slice | None = None):
    """layout_job on a phantom, its lungs kept only on the slices `lungs_z` (soft tissue
    elsewhere), with a nodule in the left lung; returns the .npz path."""
    from radpath.inputs.configuration import default_config
    from radpath.synthesis.prepare import layout_job

    array = sitk.GetArrayFromImage(ct)
    if lungs_z is not None:
        outside = np.ones(array.shape[0], bool)
        outside[lungs_z] = False
        lung_voxels = array < -700
        lung_voxels[~outside] = False
        array[lung_voxels] = 40
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(ct)
    lungs = layouts.segment_lungs(image, LUNG_SETTINGS).lungs
    nodule = np.zeros(array.shape, np.uint8)
    z, y, x = (int(np.mean(a)) for a in np.nonzero(lungs))
    ys, xs = np.nonzero(lungs[z])
    left = xs < array.shape[2] // 2
    y, x = int(np.median(ys[left])), int(np.median(xs[left]))
    nodule[z - 2:z + 3, y - 2:y + 3, x - 2:x + 3] = 1
    mask = sitk.GetImageFromArray(nodule)
    mask.CopyInformation(image)
    folder = tmp_path / patient
    folder.mkdir()
    sitk.WriteImage(image, str(folder / "ct.nii.gz"))
    sitk.WriteImage(mask, str(folder / "mask.nii.gz"))
    config = default_config()
    images = {"patient_id": patient, "ct_path": str(folder / "ct.nii.gz"),
              "mask_path": str(folder / "mask.nii.gz"), "mask_label": 1,
              "ct_cfg": config["ct"]}
    layout_job(images=images, lung_label="", settings={**config["synthesis"], "size": 48,
                                                       "lungs": LUNG_SETTINGS},
               npz_out=str(folder / "layout.npz"), layout_out=str(folder / "layout.nii.gz"),
               ct_out=str(folder / "ct_out.nii.gz"))
    return str(folder / "layout.npz")


def test_layout_qc_reports_lung_volumes_and_flags_them_knowing_the_field_of_view(tmp_path):
    """Whole lungs (inside the scan) are checked against an adult's range; lungs that the
    field of view cuts (an in-plane crop) only against its upper bound."""
    from radpath.inputs.runtime import EXCLUSION_PREFIX

    ct, _ = chest_phantom(seed=2)
    paths = {
        "WHOLE": _layout_files(tmp_path, "WHOLE", ct, lungs_z=slice(6, 34)),
        "SMALL": _layout_files(tmp_path, "SMALL", ct, lungs_z=slice(16, 24)),
        "CROP": _layout_files(tmp_path, "CROP", crop(ct, {}, x_mm=(-100, 100),
                                                     y_mm=(-112, 60))[0], slice(16, 24)),
    }
    (tmp_path / "failed.npz").write_text(f"{EXCLUSION_PREFIX}mask is empty\n")
    paths["FAILED"] = str(tmp_path / "failed.npz")
    qc = layouts.layouts_qc(paths, [1500.0, 10000.0]).set_index("patient_id")
    assert qc.loc["WHOLE", "lungs_cut_by"] == "" and qc.loc["WHOLE", "flag"] == ""
    assert 1500 < qc.loc["WHOLE", "lungs_ml"] < 3500  # two 100 x 140 mm ellipses, 112 mm
    assert qc.loc["WHOLE", "nodule_to_lung_mm"] == 0.0  # no nodule in the phantom's lung
    assert qc.loc["WHOLE", "lungs_source"] == "segmented from the CT"
    assert qc.loc["SMALL", "flag"].startswith(
        f"{qc.loc['SMALL', 'lungs_ml']:.0f} ml of lung in a scan that holds the whole lungs "
        "is less than an adult's 1500 ml")
    assert qc.loc["CROP", "lungs_ml"] < 1500 and qc.loc["CROP", "flag"] == ""
    assert qc.loc["CROP", "lungs_cut_by"] == "anterior or posterior edge; left or right edge"
    assert qc.loc["FAILED", "flag"] == "no layout: mask is empty"
    too_much = layouts.layouts_qc({"WHOLE": paths["WHOLE"]}, [100.0, 500.0])
    assert "more than an adult's 500 ml" in too_much.loc[0, "flag"]


def test_the_gap_from_the_nodule_to_the_nearest_lung():
    """Five empty 1-mm voxels between lung and nodule read 5 mm; touching reads 0; no lung
    within 30 mm reads NaN (a lung nodule that far from any lung: a missed lung?)."""
    lungs = np.zeros((10, 20, 80), bool)
    lungs[:, :, :10] = True
    nodule = np.zeros_like(lungs)
    nodule[4:6, 8:12, 15:18] = True
    spacing_xyz = (1.0, 1.0, 2.0)
    assert layouts.nodule_to_lung_mm(lungs, nodule, spacing_xyz) == pytest.approx(5.0)
    touching = np.zeros_like(lungs)
    touching[4:6, 8:12, 10:13] = True
    assert layouts.nodule_to_lung_mm(lungs, touching, spacing_xyz) == 0.0
    far = np.zeros_like(lungs)
    far[4:6, 8:12, 60:63] = True
    assert np.isnan(layouts.nodule_to_lung_mm(lungs, far, spacing_xyz))
