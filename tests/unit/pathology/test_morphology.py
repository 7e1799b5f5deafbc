import shutil

import cv2
import numpy as np
import pytest

from radpath.inputs.configuration import default_config
from radpath.inputs.io import read_tsv
from radpath.pathology import morphology, wsi
from radpath_demo.slides import corrupt_level0_tile, write_synthetic_svs

TISSUE = default_config()["pathology"]["tissue"]
TILES = {"patch_size": 224, "mpp": 0.5, "min_tissue_fraction": 0.6, "max_tiles": 0}
MORPH = {"n_tiles": 12}


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Same tissue layout (seed), planted nuclear densities 1500 and 4500 per mm^2."""
    folder = tmp_path_factory.mktemp("morph")
    out = {}
    for density in (1500, 4500):
        info = write_synthetic_svs(
            folder / f"d{density}.svs", 2000, 1500, 0.5, seed=5, nuclear_density=density
        )
        coords_h5 = folder / f"d{density}.h5"
        wsi.tile_slide(info.path, f"D{density}", TISSUE, TILES, 0, coords_h5)
        out[density] = (info, coords_h5)
    return out


def measure(slides, density, tmp_path=None, seed=0):
    info, coords_h5 = slides[density]
    out = None if tmp_path is None else tmp_path / f"d{density}.tsv"
    return morphology.morphology_features(
        info.path, f"D{density}", coords_h5, MORPH, TILES, seed, out
    )


def test_higher_planted_nuclear_density_measures_higher(slides):
    sparse = measure(slides, 1500).iloc[0]
    dense = measure(slides, 4500).iloc[0]
    assert sparse["nuclei_density_per_mm2"] == pytest.approx(1500, rel=0.25)
    assert dense["nuclei_density_per_mm2"] > 2 * sparse["nuclei_density_per_mm2"]
    assert dense["mean_hematoxylin"] > sparse["mean_hematoxylin"]
    # the planted nuclei are ~8 um wide: pi * 4^2 * mean aspect 0.78 ~ 39 um^2
    assert 25 < sparse["nucleus_area_um2_mean"] < 60
    assert sparse["tissue_area_mm2"] == pytest.approx(dense["tissue_area_mm2"], rel=0.05)


def test_one_row_tsv_is_written_and_reproducible(slides, tmp_path):
    frame = measure(slides, 1500, tmp_path, seed=3)
    again = measure(slides, 1500, seed=3)
    table = read_tsv(tmp_path / "d1500.tsv", index_col="slide_id")
    assert table.index.tolist() == ["D1500"]
    assert table.shape == frame.shape
    assert table.loc["D1500", "n_tiles_sampled"] == 12
    assert table.loc["D1500", "n_tiles_unreadable"] == 0
    assert {
        "nucleus_eccentricity_q50",
        "nucleus_solidity_mean",
        "glcm_contrast",
        "tissue_fraction",
        "mean_eosin",
    } <= set(table.columns)
    np.testing.assert_allclose(frame.to_numpy(float), again.to_numpy(float))
    np.testing.assert_allclose(table.to_numpy(float), frame.to_numpy(float), rtol=1e-8)


def test_unreadable_tiles_are_skipped_and_counted(slides, tmp_path):
    info, coords_h5 = slides[1500]
    coords, _ = wsi.read_coords_h5(coords_h5)
    bad = tmp_path / "bad.svs"
    shutil.copy(info.path, bad)
    x, y = coords[0]
    corrupt_level0_tile(bad, x + 1, y + 1)
    row = morphology.morphology_features(bad, "B", coords_h5, {"n_tiles": 0}, TILES, 0).iloc[0]
    assert 1 <= row["n_tiles_unreadable"] <= 4
    assert row["n_tiles_sampled"] == len(coords) - row["n_tiles_unreadable"]
    assert row["nuclei_density_per_mm2"] == pytest.approx(1500, rel=0.25)


def disc_image(centers, radius, shape=(80, 80)):
    image = np.zeros(shape, np.float32)
    for x, y in centers:
        cv2.circle(image, (x, y), radius, 0.12, -1)
    return image


def test_watershed_splits_touching_nuclei_and_drops_specks():
    touching = disc_image([(30, 40), (44, 40)], 8)  # 16 um discs at 0.5 um/px, overlapping
    labels = morphology.segment_nuclei(touching, 0.05, 0.5, {})
    assert labels.max() == 2
    single = morphology.segment_nuclei(disc_image([(40, 40)], 8), 0.05, 0.5, {})
    assert single.max() == 1
    speck = morphology.segment_nuclei(disc_image([(40, 40)], 2), 0.05, 0.5, {})
    assert speck.max() == 0  # ~3 um^2 is below min_nucleus_area_um2


def test_nucleus_measures_are_in_physical_units():
    hematoxylin = disc_image([(40, 40)], 10)
    labels = morphology.segment_nuclei(hematoxylin, 0.05, 0.5, {})
    table = morphology.nucleus_table(labels, hematoxylin, 0.5)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["area_um2"] == pytest.approx(np.pi * 5**2, rel=0.1)
    assert row["perimeter_um"] == pytest.approx(2 * np.pi * 5, rel=0.1)
    assert row["eccentricity"] < 0.2 and row["solidity"] > 0.9
    assert row["hematoxylin_mean"] == pytest.approx(0.12, abs=1e-6)


def test_no_nuclei_gives_nan_statistics():
    empty = morphology.nucleus_table(np.zeros((10, 10), np.int32), np.zeros((10, 10)), 0.5)
    summary = morphology.summarize_nuclei(empty)
    assert np.isnan(summary["nucleus_area_um2_mean"])
    assert morphology.nuclei_threshold([np.zeros((4, 4))]) > 0


def test_tile_sample_is_seeded():
    coords = np.arange(40).reshape(20, 2)
    first = morphology.sample_tiles(coords, 5, seed=1)
    assert np.array_equal(first, morphology.sample_tiles(coords, 5, seed=1))
    assert not np.array_equal(first, morphology.sample_tiles(coords, 5, seed=2))
    assert np.array_equal(morphology.sample_tiles(coords, 0, seed=1), np.arange(20))


def test_coords_made_with_other_tile_settings_are_rejected(slides):
    info, coords_h5 = slides[1500]
    with pytest.raises(wsi.SlideError, match=r"slide D1500 .*target_mpp=0.5, now 1.0"):
        morphology.morphology_features(
            info.path, "D1500", coords_h5, MORPH, TILES | {"mpp": 1.0}, 0
        )
