"""radpath.deep.cubes: concentric CT cubes around the lesion for the deep 3D CNNs."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from radpath.deep.cube_files import channel_indices, ct_grid_image, cube_image, read_cubes
from radpath.deep.cubes import (
    CubeSettingsError,
    antialias_sigma_mm,
    crop_region,
    cube_grid,
    cube_settings_defaults,
    extract_cubes,
    sample_cube,
)
from radpath.inputs.configuration import default_config
from radpath.inputs.images import CaseInputError
from radpath.inputs.runtime import EXCLUSION_PREFIX

REPO = Path(__file__).resolve().parents[3]
CT_CFG = default_config()["ct"]
SHAPE = (36, 72, 64)  # z, y, x
SPACING = (0.7, 0.6, 1.5)  # x, y, z mm: anisotropic
ORIGIN = (-31.3, 12.7, -85.0)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
ROTATED = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z
EDGES = [30.0, 22.5, 15.0]
GRID = 16
# The lesion centre as a continuous voxel index (x, y, z): off-centre. On a slice and with a
# radius of 3.5 slices, the native voxels of the sphere span its diameter along z too.
LESION_INDEX = (25.3, 40.6, 16.0)
RADIUS_MM = 5.25


def cube_cfg(**changes) -> dict:
    return {**cube_settings_defaults, "edges_mm": EDGES, "grid": GRID, **changes}


def physical_points(shape, spacing, origin, direction) -> np.ndarray:
    """(z, y, x, 3) physical (x, y, z) mm of every voxel centre."""
    index = np.stack(np.indices(shape)[::-1], axis=-1).astype(float)  # (x, y, z) per voxel
    return np.asarray(origin) + (index * spacing) @ np.reshape(direction, (3, 3)).T


def make_case(
    tmp_path: Path,
    *,
    shape=SHAPE,
    spacing=SPACING,
    origin=ORIGIN,
    direction=IDENTITY,
    lesion_index=LESION_INDEX,
    radius_mm=RADIUS_MM,
    ct_values=None,
    seed=0,
) -> tuple[Path, Path, np.ndarray]:
    """CT (.mha: keeps any direction) and label mask of a spherical lesion; returns their
    paths and the mask voxels' centroid (mm). `ct_values`: a constant, or a function of the
    (z, y, x, 3) physical points; default: noisy lung with a soft-tissue lesion."""
    points = physical_points(shape, spacing, origin, direction)
    reference = sitk.Image([int(n) for n in shape[::-1]], sitk.sitkUInt8)
    reference.SetSpacing(spacing)
    reference.SetOrigin(origin)
    reference.SetDirection(direction)
    centre = np.array(reference.TransformContinuousIndexToPhysicalPoint(lesion_index))
    lesion = np.linalg.norm(points - centre, axis=-1) <= radius_mm
    if ct_values is None:
        rng = np.random.default_rng(seed)
        values = np.where(lesion, rng.normal(40, 20, shape), rng.normal(-800, 50, shape))
    elif callable(ct_values):
        values = ct_values(points)
    else:
        values = np.full(shape, float(ct_values))
    ct = sitk.GetImageFromArray(np.round(values).astype(np.int16))
    mask = sitk.GetImageFromArray(lesion.astype(np.uint8))
    for image in (ct, mask):
        image.CopyInformation(reference)
    ct_path, mask_path = tmp_path / "ct.mha", tmp_path / "mask.mha"
    sitk.WriteImage(ct, str(ct_path))
    sitk.WriteImage(mask, str(mask_path))
    return ct_path, mask_path, points[lesion].mean(axis=0)


def run(tmp_path, ct_path, mask_path, cfg=None, patient="P003", **kwargs):
    out = tmp_path / "out" / f"{patient}.npz"
    extract_cubes(patient, ct_path, mask_path, 1, CT_CFG, cfg or cube_cfg(), out, **kwargs)
    return read_cubes(out)


def centre_of_mass(array: np.ndarray) -> np.ndarray:
    """(z, y, x) index of the centre of mass of a nonnegative array."""
    weights = array.astype(np.float64)
    return np.array([(np.indices(array.shape)[a] * weights).sum() / weights.sum() for a in range(3)])


# --- geometry ------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", [IDENTITY, ROTATED], ids=["identity", "rotated"])
def test_cubes_are_centred_on_the_mask_centroid(tmp_path, direction):
    ct_path, mask_path, centroid = make_case(tmp_path, direction=direction)
    cubes = run(tmp_path, ct_path, mask_path)
    np.testing.assert_allclose(cubes.centre_mm, centroid, atol=1e-6)
    np.testing.assert_allclose(cubes.direction, direction)
    middle = (GRID - 1) / 2
    for k, edge in enumerate(EDGES):
        mask = cubes.cube[channel_indices(cubes.channels, edge)[-1]].astype(np.float64)
        np.testing.assert_allclose(centre_of_mass(mask), middle, atol=0.5, err_msg=f"{edge} mm")
        image = cube_image(cubes, k, mask)
        np.testing.assert_allclose(
            image.TransformContinuousIndexToPhysicalPoint([middle] * 3), centroid, atol=1e-6
        )


def test_a_sphere_has_its_physical_diameter_in_every_scale(tmp_path):
    ct_path, mask_path, _ = make_case(tmp_path)
    cubes = run(tmp_path, ct_path, mask_path)
    native_volume = (
        np.count_nonzero(sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path))))
        * math.prod(SPACING)
    )
    expected = 2 * RADIUS_MM
    for k, edge in enumerate(EDGES):
        spacing = cubes.spacing_mm[k]
        np.testing.assert_allclose(spacing, edge / GRID)
        mask = cubes.cube[channel_indices(cubes.channels, edge)[-1]].astype(np.float64)
        # volume: the tumour fractions add up to the native ROI volume
        assert mask.sum() * spacing.prod() == pytest.approx(native_volume, rel=0.03)
        # diameter along each axis: where the largest tumour fraction per plane crosses 0.5
        for axis in range(3):
            profile = mask.max(axis=tuple(a for a in range(3) if a != axis))
            diameter = half_max_width(profile)
            assert diameter == pytest.approx(expected / spacing[0], abs=0.5), (edge, axis)


def half_max_width(profile: np.ndarray) -> float:
    """Length (voxels) of the run above 0.5, its ends interpolated between voxels."""
    above = np.flatnonzero(profile >= 0.5)
    lo, hi = above[0], above[-1]
    start = lo - (profile[lo] - 0.5) / (profile[lo] - profile[lo - 1])
    stop = hi + (profile[hi] - 0.5) / (profile[hi] - profile[hi + 1])
    return float(stop - start)


def test_cropping_the_ct_changes_nothing(tmp_path):
    ct_path, mask_path, centroid = make_case(tmp_path)
    ct = sitk.Cast(sitk.ReadImage(str(ct_path)), sitk.sitkFloat32)
    grids = [cube_grid(ct, centroid, edge, GRID) for edge in EDGES]
    sigmas = [antialias_sigma_mm(ct.GetSpacing(), g.spacing_mm) for g in grids]
    start, size = crop_region(ct, grids, sigmas)
    assert np.all(np.array(size) < SHAPE[::-1])  # a real crop along every axis
    cropped = sitk.RegionOfInterest(ct, size, start)
    assert np.all(sigmas[0] > 0) and sigmas[-1][2] == 0  # smoothed where downsampled only
    for grid, sigma in zip(grids, sigmas, strict=True):
        np.testing.assert_allclose(
            sample_cube(cropped, grid, sigma), sample_cube(ct, grid, sigma), atol=1e-4
        )


LINEAR_WINDOW = [-2000.0, 2000.0]


def linear_hu(points):
    """A CT linear in x, y, z (mm): smoothing and linear interpolation keep it exact."""
    return 4.0 * points[..., 0] - 3.0 * points[..., 1] + 2.0 * points[..., 2]


def linear_case(tmp_path):
    """(CT path, cubes) of a rotated CT whose values are `linear_hu`."""
    ct_path, mask_path, _ = make_case(
        tmp_path, direction=ROTATED, lesion_index=(32, 36, 18), ct_values=linear_hu
    )
    return ct_path, run(tmp_path, ct_path, mask_path, cube_cfg(window=LINEAR_WINDOW))


def test_cube_image_places_the_cube_in_patient_space(tmp_path):
    """A CT linear in x, y, z stays linear under smoothing and linear interpolation, so each
    cube voxel holds the CT's value at the physical point cube_image gives it."""
    hu, window = linear_hu, LINEAR_WINDOW
    _, cubes = linear_case(tmp_path)
    for k, edge in enumerate(EDGES):
        ct = cubes.cube[channel_indices(cubes.channels, edge)[0]].astype(np.float64)
        image = cube_image(cubes, k, ct)
        assert image.GetSize() == (GRID,) * 3
        np.testing.assert_allclose(image.GetSpacing(), [edge / GRID] * 3)
        np.testing.assert_allclose(image.GetDirection(), ROTATED)
        points = physical_points((GRID,) * 3, image.GetSpacing(), image.GetOrigin(), ROTATED)
        expected = (hu(points) - window[0]) / (window[1] - window[0])
        np.testing.assert_allclose(ct, expected, atol=2e-3, err_msg=f"{edge} mm")


def test_ct_grid_image_puts_a_cube_map_back_on_the_ct_voxels(tmp_path):
    """The cube file records the CT's grid; a cube's map resampled onto it has the CT's
    geometry and, for the linear CT of the test above, the CT's value at every CT voxel
    inside the cube (linear interpolation is exact there), 0 outside the cube."""
    hu, window = linear_hu, LINEAR_WINDOW
    ct_path, cubes = linear_case(tmp_path)
    ct = sitk.ReadImage(str(ct_path))
    np.testing.assert_array_equal(cubes.ct_size, ct.GetSize())
    np.testing.assert_allclose(cubes.ct_origin_mm, ct.GetOrigin())
    np.testing.assert_allclose(cubes.ct_spacing_mm, ct.GetSpacing())
    points = physical_points(SHAPE, SPACING, ORIGIN, ROTATED)
    for k, edge in enumerate(EDGES):
        cube = cubes.cube[channel_indices(cubes.channels, edge)[0]].astype(np.float64)
        image = ct_grid_image(cubes, k, cube)
        for get in ("GetSize", "GetOrigin", "GetSpacing", "GetDirection"):
            np.testing.assert_allclose(getattr(image, get)(), getattr(ct, get)(), atol=1e-9)
        on_ct = sitk.GetArrayFromImage(image).astype(np.float64)
        # where each CT voxel falls in the cube (continuous cube index along each axis)
        local = (points - cubes.origin_mm[k]) @ np.reshape(cubes.direction, (3, 3))
        index = local / cubes.spacing_mm[k]
        inside = np.all((index >= 0) & (index <= GRID - 1), axis=-1)
        outside = np.any((index < -0.5) | (index > GRID - 0.5), axis=-1)
        assert inside.sum() > 1000, edge
        expected = (hu(points) - window[0]) / (window[1] - window[0])
        np.testing.assert_allclose(on_ct[inside], expected[inside], atol=2e-3, err_msg=edge)
        np.testing.assert_array_equal(on_ct[outside], 0.0)


# --- intensities ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hu", "expected"), [(-3000, 0.0), (-1000, 0.0), (40, 1040 / 1400), (400, 1.0), (2000, 1.0)]
)
def test_window_maps_a_constant_region_to_its_value(tmp_path, hu, expected):
    ct_path, mask_path, _ = make_case(tmp_path, ct_values=hu)
    cubes = run(tmp_path, ct_path, mask_path, cube_cfg(edges_mm=[20.0]))
    ct = cubes.cube[channel_indices(cubes.channels, 20.0)[0]].astype(np.float64)
    np.testing.assert_allclose(ct, expected, atol=1e-3)


def test_zscore_has_mean_zero_and_unit_sd_in_the_largest_cube(tmp_path):
    ct_path, mask_path, _ = make_case(tmp_path)
    cubes = run(tmp_path, ct_path, mask_path, cube_cfg(normalisation="zscore"))
    largest = cubes.cube[0].astype(np.float64)
    assert largest.mean() == pytest.approx(0, abs=1e-3)
    assert largest.std() == pytest.approx(1, abs=1e-3)
    smallest = cubes.cube[channel_indices(cubes.channels, EDGES[-1])[0]].astype(np.float64)
    assert smallest.mean() > largest.mean()  # more lesion, same scale


# --- padding -------------------------------------------------------------------------------


def test_a_lesion_at_the_scan_edge_is_padded_with_air(tmp_path):
    ct_path, mask_path, centroid = make_case(tmp_path, lesion_index=(6.0, 36, 18), ct_values=0)
    cubes = run(tmp_path, ct_path, mask_path)
    for k, edge in enumerate(EDGES):
        ct, mask = cubes.cube[channel_indices(cubes.channels, edge)].astype(np.float64)
        # CT continuous x index of each cube column (identity direction)
        x = (cubes.origin_mm[k][0] + np.arange(GRID) * cubes.spacing_mm[k][0] - ORIGIN[0]) / SPACING[0]
        outside, inside = x < -0.5, x > -0.5 + 1e-3
        assert outside.any(), edge
        np.testing.assert_array_equal(ct[:, :, outside], 0.0)  # -1000 HU in the window
        np.testing.assert_array_equal(mask[:, :, outside], 0.0)
        np.testing.assert_allclose(ct[:, :, inside], 1000 / 1400, atol=1e-3)


def test_without_padding_a_cube_outside_the_scan_is_a_one_line_error(tmp_path):
    ct_path, mask_path, centroid = make_case(tmp_path, lesion_index=(6.0, 36, 18))
    out = tmp_path / "P003.npz"
    with pytest.raises(CaseInputError) as error:
        extract_cubes("P003", ct_path, mask_path, 1, CT_CFG, cube_cfg(pad=False), out)
    message = str(error.value)
    beyond = (ORIGIN[0] - SPACING[0] / 2) - (centroid[0] - EDGES[0] / 2)
    assert "\n" not in message
    assert message.startswith(f"patient P003: CT {ct_path}: the 30 mm cube around the lesion")
    match = re.search(r"extends ([\d.]+) mm beyond the scan; set deep_ct.cubes.pad: true", message)
    assert match and float(match.group(1)) == pytest.approx(beyond, abs=0.05)
    assert not out.exists()


def test_without_padding_a_cube_inside_the_scan_is_fine(tmp_path):
    ct_path, mask_path, _ = make_case(tmp_path)
    cubes = run(tmp_path, ct_path, mask_path, cube_cfg(pad=False, edges_mm=[20.0]))
    assert cubes.cube.shape == (2, GRID, GRID, GRID)


# --- file format ---------------------------------------------------------------------------


def test_file_format_and_channel_order(tmp_path):
    ct_path, mask_path, centroid = make_case(tmp_path)
    t1_path = tmp_path / "t1.mha"
    t1 = sitk.ReadImage(str(ct_path)) * 2 + 3000
    sitk.WriteImage(sitk.Cast(t1, sitk.sitkFloat32), str(t1_path))
    edges = [30.0, 22.5]
    cfg = cube_cfg(edges_mm=edges, channels=["t1"])
    cubes = run(tmp_path, ct_path, mask_path, cfg, extra_images={"t1": str(t1_path)})
    assert cubes.cube.dtype == np.float16 and cubes.cube.shape == (6, GRID, GRID, GRID)
    assert list(cubes.channels) == [
        "ct@30mm", "t1@30mm", "mask@30mm", "ct@22.5mm", "t1@22.5mm", "mask@22.5mm",
    ]
    np.testing.assert_array_equal(cubes.edges_mm, edges)
    np.testing.assert_allclose(cubes.centre_mm, centroid, atol=1e-6)
    assert cubes.direction.shape == (9,)
    assert cubes.origin_mm.shape == cubes.spacing_mm.shape == (2, 3)
    assert channel_indices(cubes.channels) == list(range(6))
    assert channel_indices(cubes.channels, 22.5) == [3, 4, 5]
    assert channel_indices(cubes.channels, [22.5, 30]) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="no channels of the 25 mm cube; scales present: 30mm"):
        channel_indices(cubes.channels, 25)
    # the extra image is z-scored over the largest cube
    assert cubes.cube[1].astype(np.float64).mean() == pytest.approx(0, abs=1e-3)
    assert cubes.cube[1].astype(np.float64).std() == pytest.approx(1, abs=1e-3)
    image = cube_image(cubes, 1, cubes.cube[5])
    assert image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(
        image.TransformContinuousIndexToPhysicalPoint([(GRID - 1) / 2] * 3), centroid, atol=1e-6
    )
    with pytest.raises(ValueError, match="does not fit"):
        cube_image(cubes, 0, np.zeros((GRID, GRID, GRID + 1)))


def test_without_mask_channel_only_ct(tmp_path):
    ct_path, mask_path, _ = make_case(tmp_path)
    cubes = run(tmp_path, ct_path, mask_path, cube_cfg(mask_channel=False))
    assert list(cubes.channels) == ["ct@30mm", "ct@22.5mm", "ct@15mm"]


def test_extra_image_on_another_grid_is_an_error_naming_the_file(tmp_path):
    ct_path, mask_path, _ = make_case(tmp_path)
    t2 = sitk.ReadImage(str(ct_path))
    t2.SetSpacing((0.7, 0.6, 3.0))
    t2_path = tmp_path / "t2.mha"
    sitk.WriteImage(t2, str(t2_path))
    with pytest.raises(CaseInputError, match=re.escape(f"patient P003: t2 {t2_path} differs")) as error:
        run(tmp_path, ct_path, mask_path, cube_cfg(channels=["t2"]), extra_images={"t2": t2_path})
    assert "spacing CT (0.7, 0.6, 1.5) vs t2 (0.7, 0.6, 3)" in str(error.value)


def test_extra_images_must_match_the_configured_channels(tmp_path):
    ct_path, mask_path, _ = make_case(tmp_path)
    with pytest.raises(CubeSettingsError, match="do not match deep_ct.cubes.channels"):
        run(tmp_path, ct_path, mask_path, cube_cfg(channels=["t1"]))
    assert CubeSettingsError("x").excludes_item is False  # fails the job, excludes no patient


@pytest.mark.parametrize(
    "changes",
    [{"normalisation": "minmax"}, {"window": [400, -1000]}, {"edges_mm": []}, {"grid": 1},
     {"channels": ["ct"]}, {"edge": 3}],
)
def test_unusable_settings_are_refused(tmp_path, changes):
    ct_path, mask_path, _ = make_case(tmp_path)
    with pytest.raises(CubeSettingsError):
        run(tmp_path, ct_path, mask_path, cube_cfg(**changes))


def test_read_cubes_refuses_an_exclusion_record(tmp_path):
    path = tmp_path / "P9.npz"
    path.write_text(f"{EXCLUSION_PREFIX}patient P9: mask m.mha: mask is empty\n", encoding="utf-8")
    with pytest.raises(ValueError, match="excluded: patient P9: mask m.mha: mask is empty"):
        read_cubes(path)


# --- command line --------------------------------------------------------------------------


def radpath_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "radpath.cli", *args], capture_output=True,
                          text=True, encoding="utf-8", env=env)


def cli_args(tmp_path, ct_path, mask_path, on_error, *extra) -> list[str]:
    settings = {"ct": CT_CFG, "cubes": cube_cfg(channels=["t1"]), "on_error": on_error}
    return [
        "ct_cubes", "--patient", "P7", "--ct", str(ct_path), "--mask", str(mask_path),
        "--mask-label=1", *extra, "--settings", json.dumps(settings),
        "--cubes", str(tmp_path / "out" / "P7.npz"), "--log", str(tmp_path / "job.log"),
    ]


def test_cli_writes_the_cubes_and_excludes_a_bad_mask(tmp_path):
    ct_path, mask_path, centroid = make_case(tmp_path)
    t1_path = tmp_path / "t1.mha"
    sitk.WriteImage(sitk.ReadImage(str(ct_path)), str(t1_path))
    result = radpath_cli(*cli_args(tmp_path, ct_path, mask_path, "stop", f"--extra=t1={t1_path}"))
    assert result.returncode == 0, result.stderr
    cubes = read_cubes(tmp_path / "out" / "P7.npz")
    assert cubes.cube.shape == (9, GRID, GRID, GRID)
    assert list(cubes.channels[:3]) == ["ct@30mm", "t1@30mm", "mask@30mm"]
    np.testing.assert_allclose(cubes.centre_mm, centroid, atol=1e-6)

    empty = sitk.ReadImage(str(mask_path)) * 0
    bad_mask = tmp_path / "empty.mha"
    sitk.WriteImage(empty, str(bad_mask))
    result = radpath_cli(*cli_args(tmp_path, ct_path, bad_mask, "exclude", "--extra", f"t1={t1_path}"))
    assert result.returncode == 0, result.stderr
    with pytest.raises(ValueError, match=rf"excluded: patient P7: mask {re.escape(str(bad_mask))}"):
        read_cubes(tmp_path / "out" / "P7.npz")
    assert "mask is empty" in (tmp_path / "job.log").read_text(encoding="utf-8")
