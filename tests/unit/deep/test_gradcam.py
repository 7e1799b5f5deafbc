"""radpath.deep.gradcam and the Grad-CAM job: per-scale attention maps that sit where the
decisive signal is, on every cube's grid and on the patient's CT grid, and a ratio to the
tumour's share of the cube that reads 1 for a network that ignores the lesion."""

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from deep_ct_data import (
    NO_AUGMENTATION,
    as_member,
    attention_network,
    corner_blob_cohort,
    top_two_threshold,
)

from radpath.deep import gradcam, networks
from radpath.deep import training as dc
from radpath.deep.cube_files import (
    Cubes,
    channel_indices,
    ct_grid_image,
    cube_image,
    read_cubes,
)
from radpath.deep.cubes import cube_grid, cube_settings_defaults, extract_cubes
from radpath.deep.gpu_jobs import gradcam_job
from radpath.inputs.configuration import default_config
from radpath.survival.metrics import harrell_c

EDGES = [50.0, 37.5, 25.0]
GRID = 16
ROTATED = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z


def test_gradcam_points_at_the_region_that_drives_the_outcome(tmp_path):
    cubes, time_, event, region = corner_blob_cohort(300, grid=16, seed=2, noise=0.1)
    trained = dc.train_member(
        cubes, time_, event, np.arange(200), np.arange(200, 250),
        {"width": 4, "epochs": 6, "learning_rate": 1e-2, "augmentation": NO_AUGMENTATION}, 2,
        network="resnet10", channels=["ct@16mm"], device="cpu",
    )
    test = cubes[250:]
    raw = dc.score(trained, test, device="cpu")
    assert harrell_c(time_[250:], event[250:], raw) > 0.75
    high_risk = np.argsort(raw)[-25:]  # Grad-CAM shows what raises the risk
    cam = gradcam.gradcam([trained], test[high_risk], device="cpu")
    assert cam.shape == (25, 16, 16, 16) and np.nanmin(cam) >= 0
    usable = np.isfinite(cam).all(axis=(1, 2, 3))
    np.testing.assert_allclose(cam[usable].mean(axis=(1, 2, 3)), 1.0, rtol=1e-5)  # densities
    inside = np.nansum(cam[:, region]) / np.nansum(cam)
    assert inside > 2 * region.mean(), inside  # the octant is 1/8 of the cube
    mean_map = np.nanmean(cam, axis=0)
    assert region[np.unravel_index(np.argmax(mean_map), mean_map.shape)]
    assert mean_map[region].mean() > 3 * mean_map[~region].mean()
    # the ensemble is the mean of the members' maps
    twice = gradcam.gradcam([trained, trained.model("cpu")], test[high_risk[:3]],
                            network="resnet10", device="cpu")
    np.testing.assert_allclose(twice, cam[:3], atol=1e-5)
    png = gradcam.attention_montage(
        [gradcam.ScalePanel("16 mm", test[high_risk[-1], 0], cam[-1])], tmp_path / "cam.png",
        "P1")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- Grad-CAM cells on the cube ---------------------------------------------------------------


def top_centroid(array: np.ndarray) -> np.ndarray:
    """The centre of the voxels that hold the maximum (z, y, x): a plateau's middle."""
    return np.argwhere(array >= array.max() * (1 - 1e-6)).mean(axis=0)


@pytest.mark.parametrize("grid", [networks.FeatureGrid(4, 0.0), networks.FeatureGrid(4, 1.5)],
                         ids=["resnet", "densenet"])
def test_a_cell_lands_on_its_centre_and_falls_off_linearly(grid):
    cells = torch.zeros(1, 4, 4, 4)
    cells[0, 1, 2, 1] = 1.0
    voxels = gradcam.cells_to_voxels(cells, grid, (16, 16, 16))[0].numpy()
    centre = grid.stride * np.array([1, 2, 1]) + grid.offset
    np.testing.assert_allclose(top_centroid(voxels), centre, atol=1e-9)
    tents = [np.clip(1 - np.abs(np.arange(16) - c) / grid.stride, 0, None) for c in centre]
    np.testing.assert_allclose(voxels, np.einsum("i,j,k->ijk", *tents), atol=1e-9)
    # the last cell's value is carried to the cube's border
    edge = torch.zeros(1, 4, 4, 4)
    edge[0, 3] = 1.0
    border = gradcam.cells_to_voxels(edge, grid, (16, 16, 16))[0].numpy()[:, 0, 0]
    assert (border[int(np.ceil(3 * grid.stride + grid.offset)):] == 1).all()


def ct_geometry() -> sitk.Image:
    """An (empty) CT grid: anisotropic voxels, rotated axes."""
    ct = sitk.Image([96, 90, 60], sitk.sitkInt16)
    ct.SetSpacing((0.7, 0.75, 1.0))
    ct.SetOrigin((-40.2, 13.1, -88.0))
    ct.SetDirection(ROTATED)
    return ct


def cubes_on(ct: sitk.Image, centre_mm, cube: np.ndarray) -> Cubes:
    grids = [cube_grid(ct, centre_mm, edge, GRID) for edge in EDGES]
    return Cubes(
        cube=cube, channels=np.array([f"{image}@{edge:g}mm" for edge in EDGES
                                      for image in ("ct", "mask")]),
        edges_mm=np.array(EDGES), centre_mm=np.asarray(centre_mm, float),
        direction=np.array(ct.GetDirection()),
        origin_mm=np.array([g.origin_mm for g in grids]),
        spacing_mm=np.array([[g.spacing_mm] * 3 for g in grids]),
        ct_size=np.array(ct.GetSize()), ct_origin_mm=np.array(ct.GetOrigin()),
        ct_spacing_mm=np.array(ct.GetSpacing()),
    )


def physical_peak(image: sitk.Image) -> np.ndarray:
    """Physical (x, y, z) of the middle of the voxels holding the image's maximum."""
    index = top_centroid(sitk.GetArrayFromImage(image))[::-1]
    return np.array(image.TransformContinuousIndexToPhysicalPoint(index.tolist()))


CELLS = [(2, 1, 2), (1, 2, 1), (2, 2, 1)]  # the decisive cell (z, y, x) per scale: inside


@pytest.mark.parametrize("name", sorted(networks.NETWORKS))
def test_gradcam_peaks_on_the_decisive_voxel_of_every_scale_in_ct_space(name):
    """A network built to respond only to one bright voxel (or 2^3 block, centred on a cell
    of its Grad-CAM layer) in each scale's cube: the map peaks on it, on the cube's grid and
    on the CT's grid; the map of a network whose features are flat is flat (ratio 1)."""
    grid = networks.NETWORKS[name].target_grid
    ct = ct_geometry()
    rng = np.random.default_rng(0)
    cube = np.zeros((2 * len(EDGES), GRID, GRID, GRID), np.float16)
    spots = []
    voxel = np.stack(np.indices((GRID,) * 3), axis=-1)
    for k, cell in enumerate(CELLS):
        spot = grid.stride * np.array(cell) + grid.offset  # (z, y, x) voxel, maybe half-way
        distance = np.linalg.norm(voxel - spot, axis=-1)
        cube[2 * k] = np.where(distance < 0.9, 1.0, 0.3 + rng.normal(0, 0.02, distance.shape))
        cube[2 * k + 1] = distance <= 3.0  # the "tumour" around it
        spots.append(spot)
    cubes = cubes_on(ct, np.array(ct.TransformContinuousIndexToPhysicalPoint((48, 45, 30))), cube)
    attentive = attention_network(name, 2, [0], [-0.8])  # only the spot counts
    flat = attention_network(name, 2, [None], [1.0])  # the same everywhere
    for k, spot in enumerate(spots):
        x = cube[2 * k : 2 * k + 2][None]
        density = gradcam.gradcam([attentive], x, network=name)[0]
        peak = np.unravel_index(int(np.argmax(density)), density.shape)
        assert np.linalg.norm(np.array(peak) - spot) <= 1.0, (k, peak, spot)
        np.testing.assert_allclose(top_centroid(density), spot, atol=1e-6)
        # on the CT grid: the peak is the CT voxel nearest the spot's physical position
        on_ct = ct_grid_image(cubes, k, density)
        assert on_ct.GetSize() == ct.GetSize() and on_ct.GetDirection() == ct.GetDirection()
        expected = cube_image(cubes, k, density).TransformContinuousIndexToPhysicalPoint(
            spot[::-1].tolist())
        half_diagonal = np.linalg.norm(ct.GetSpacing()) / 2
        assert np.linalg.norm(physical_peak(on_ct) - expected) <= half_diagonal + 1e-6
        assert gradcam.mask_statistics(density, cube[2 * k + 1])["ratio"] > 3
        uniform = gradcam.gradcam([flat], x, network=name)[0]
        np.testing.assert_allclose(uniform, 1.0, rtol=1e-6)
        assert gradcam.mask_statistics(uniform, cube[2 * k + 1])["ratio"] == pytest.approx(1.0)


# --- the job: a CT with a decisive spot in its lesion ----------------------------------------

LESION_MM = 7.0
SPOT_OFFSET_MM = np.array([2.5, -3.0, 2.0])  # from the lesion centre, inside the lesion


def spot_case(tmp_path):
    """A CT (.mha, rotated axes, anisotropic voxels) of noisy lung with a soft-tissue lesion
    and, inside it, a small bright spot (+300 HU) off the lesion's centre; its mask. Returns
    the paths and the spot's physical position."""
    ct = ct_geometry()
    shape = ct.GetSize()[::-1]
    index = np.stack(np.indices(shape)[::-1], axis=-1).astype(float)  # (x, y, z) per voxel
    points = np.asarray(ct.GetOrigin()) + (index * ct.GetSpacing()) @ np.reshape(
        ct.GetDirection(), (3, 3)).T
    centre = np.array(ct.TransformContinuousIndexToPhysicalPoint((47.3, 44.6, 30.2)))
    spot = centre + SPOT_OFFSET_MM
    lesion = np.linalg.norm(points - centre, axis=-1) <= LESION_MM
    rng = np.random.default_rng(3)
    values = np.where(lesion, rng.normal(30, 15, shape), rng.normal(-820, 40, shape))
    values += 300 * np.exp(-np.sum((points - spot) ** 2, axis=-1) / (2 * 1.2**2))
    image = sitk.GetImageFromArray(np.round(values).astype(np.int16))
    mask = sitk.GetImageFromArray(lesion.astype(np.uint8))
    for item in (image, mask):
        item.CopyInformation(ct)
    sitk.WriteImage(image, str(tmp_path / "ct.mha"))
    sitk.WriteImage(mask, str(tmp_path / "mask.mha"))
    return tmp_path / "ct.mha", tmp_path / "mask.mha", spot


def run_job(tmp_path, cube_path, members, out_name):
    folds = tmp_path / "folds.tsv"
    pd.DataFrame({"patient_id": ["P1", "P2"], "split": ["validation", "train"],
                  "fold": [0, 1], "excluded": ["", ""]}).to_csv(folds, sep="\t", index=False)
    paths = []
    for i, member in enumerate(members):
        path = tmp_path / out_name / "models" / f"{i}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        dc.save_member(path, member, {"member": member.network, "fold": 1})
        paths.append(str(path))
    out = tmp_path / out_name / "gradcam"
    gradcam_job(endpoint="os", folds_path=str(folds), cube_paths=[str(cube_path)],
                model_paths=paths, n_patients=8, out_dir=str(out), threads=1)
    return out, pd.read_csv(out / "gradcam.tsv", sep="\t", keep_default_na=False)


@pytest.fixture(scope="module")
def spot_cubes(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("spot")
    ct_path, mask_path, spot = spot_case(tmp_path)
    cube_path = tmp_path / "cubes" / "P1.npz"
    extract_cubes("P1", ct_path, mask_path, 1, default_config()["ct"],
                  {**cube_settings_defaults, "edges_mm": EDGES, "grid": GRID}, cube_path)
    return tmp_path, cube_path, read_cubes(cube_path), sitk.ReadImage(str(ct_path)), spot


def test_stacked_scales_get_a_saliency_map_each_that_peaks_on_the_spot_in_ct_space(spot_cubes):
    """view channels: one ResNet sees the three cubes stacked, built so that in each cube only
    the voxel nearest the spot counts. Each scale's map peaks within a voxel of the spot (on
    the cube's grid and on the CT's), its NIfTI has the CT's geometry, and the ratio is far
    above 1; the same network without the threshold (equally sensitive to every voxel) gives
    1 in every scale."""
    tmp_path, cube_path, cubes, ct, spot = spot_cubes
    names = [str(c) for c in cubes.channels]
    ct_channels = [names.index(f"ct@{edge:g}mm") for edge in EDGES]
    thresholds = [top_two_threshold(cubes.cube[i]) for i in ct_channels]
    attentive = attention_network("resnet10", len(names), ct_channels, [-t for t in thresholds])
    even = attention_network("resnet10", len(names), ct_channels, [1.0] * len(EDGES))
    out, table = run_job(tmp_path, cube_path, [as_member(attentive, "resnet10", names)],
                         "attentive")
    assert list(table["scale"]) == [f"{edge:g}mm" for edge in EDGES]
    assert set(table["method"]) == {gradcam.SALIENCY} and set(table["members"]) == {1}
    for k, row in table.iterrows():
        on_cube = sitk.ReadImage(str(out / row["nifti"]))
        on_ct = sitk.ReadImage(str(out / row["nifti_ct"]))
        for get in ("GetSize", "GetOrigin", "GetSpacing", "GetDirection"):
            np.testing.assert_allclose(getattr(on_ct, get)(), getattr(ct, get)(), atol=1e-4)
        density = sitk.GetArrayFromImage(on_cube)
        peak = np.unravel_index(int(np.argmax(density)), density.shape)[::-1]  # (x, y, z)
        spot_index = np.array(on_cube.TransformPhysicalPointToContinuousIndex(spot.tolist()))
        assert np.linalg.norm(np.array(peak) - spot_index) <= 1.0, (row["scale"], peak)
        assert np.linalg.norm(physical_peak(on_ct) - spot) <= cubes.spacing_mm[k][0]
        mask = cubes.cube[channel_indices(cubes.channels, EDGES[k])[-1]].astype(np.float64)
        assert row["mask_share"] == pytest.approx(mask.mean(), rel=1e-6)
        assert row["ratio"] == pytest.approx(row["mass_in_mask"] / row["mask_share"])
        assert row["ratio"] > 5
    assert (out / "P1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _, ignoring = run_job(tmp_path, cube_path, [as_member(even, "resnet10", names)], "even")
    np.testing.assert_allclose(ignoring["ratio"], 1.0, atol=1e-6)


def test_per_scale_networks_get_gradcam_maps_and_a_flat_network_reads_1(spot_cubes):
    """view per_scale: a network per cube. Grad-CAM of networks built to respond to the spot
    concentrates on the lesion (less than saliency: its cells are 4 voxels apart, its map
    spreads over 8, e.g. 25 mm in the 50 mm cube, more than the 14 mm lesion); networks
    whose features are flat give ratio 1."""
    tmp_path, cube_path, cubes, _, _ = spot_cubes
    names = [str(c) for c in cubes.channels]
    attentive, flat = [], []
    for edge in EDGES:
        channels = [names[i] for i in channel_indices(names, edge)]
        threshold = top_two_threshold(cubes.cube[names.index(f"ct@{edge:g}mm")])
        attentive.append(as_member(attention_network("resnet10", 2, [0], [-threshold]),
                                   "resnet10", channels))
        flat.append(as_member(attention_network("resnet10", 2, [None], [1.0]), "resnet10",
                              channels))
    out, table = run_job(tmp_path, cube_path, attentive, "per_scale")
    assert list(table["scale"]) == [f"{edge:g}mm" for edge in EDGES]
    assert set(table["method"]) == {gradcam.GRADCAM} and set(table["members"]) == {1}
    assert (table["ratio"] > 1.3).all(), table
    assert all((out / name).is_file() for name in [*table["nifti"], *table["nifti_ct"]])
    _, ignoring = run_job(tmp_path, cube_path, flat, "flat")
    np.testing.assert_allclose(ignoring["ratio"], 1.0, atol=1e-6)


def test_maps_of_an_old_cube_file_stay_on_the_cube_grid(tmp_path, spot_cubes):
    """A cube file written before the CT's grid was recorded: maps on the cube grids only."""
    _, _, cubes, _, _ = spot_cubes
    old = tmp_path / "cubes" / "P1.npz"
    old.parent.mkdir()
    fields = ("cube", "channels", "edges_mm", "centre_mm", "direction", "origin_mm",
              "spacing_mm")
    np.savez(old, **{field: getattr(cubes, field) for field in fields})
    names = [str(c) for c in cubes.channels]
    reads = [names.index(f"ct@{edge:g}mm") for edge in EDGES]
    member = as_member(attention_network("resnet10", len(names), reads, [1.0] * len(EDGES)),
                       "resnet10", names)
    out, table = run_job(tmp_path, old, [member], "old")
    assert list(table["nifti_ct"]) == [""] * len(EDGES)
    assert all((out / name).is_file() for name in table["nifti"])
    with pytest.raises(ValueError, match="re-run its ct_cubes job"):
        ct_grid_image(read_cubes(old), 0, np.zeros((GRID,) * 3))


def test_a_job_without_validation_patients_writes_an_empty_table(tmp_path, spot_cubes):
    _, cube_path, cubes, _, _ = spot_cubes
    folds = tmp_path / "folds.tsv"
    pd.DataFrame({"patient_id": ["P1"], "split": ["train"], "fold": [1],
                  "excluded": [""]}).to_csv(folds, sep="\t", index=False)
    names = [str(c) for c in cubes.channels]
    path = tmp_path / "m.pt"
    dc.save_member(path, as_member(attention_network("resnet10", len(names), [0], [1.0]),
                                   "resnet10", names))
    gradcam_job(endpoint="os", folds_path=str(folds), cube_paths=[str(cube_path)],
                model_paths=[str(path)], n_patients=8, out_dir=str(tmp_path / "out"),
                threads=1)
    table = pd.read_csv(tmp_path / "out" / "gradcam.tsv", sep="\t")
    assert table.empty and "ratio" in table.columns
