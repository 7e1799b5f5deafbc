"""PathoSig cohort steps: training tile sample, cluster proportions, mosaics; demo patterns."""

import h5py
import numpy as np
import pandas as pd
import pytest

from radpath.inputs.configuration import default_config
from radpath.inputs.runtime import write_exclusion
from radpath.pathology import wsi
from radpath.pathology.pathosig import (
    MOSAIC_TILE_PX,
    hpc_column,
    hpc_tables,
    read_training_tiles,
    sample_training_tiles,
    typical_tiles,
    write_mosaics,
)
from radpath_demo.cohort import SlideSettings, slide_phenotype
from radpath_demo.slides import (
    PATTERN_REGION_UM,
    TISSUE_PATTERNS,
    pattern_regions,
    pattern_tile,
    write_synthetic_svs,
)

TISSUE = default_config()["pathology"]["tissue"]
TILES = {"patch_size": 64, "mpp": 1.0, "min_tissue_fraction": 0.6, "max_tiles": 0}
PROPORTIONS = {"tumour": 0.4, "stroma": 0.3, "lymphocytes": 0.2, "necrosis": 0.1}


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Three tiled synthetic slides; S3's tiling job excluded it."""
    folder = tmp_path_factory.mktemp("pathosig")
    out = {}
    for i, slide_id in enumerate(["S1", "S2", "S3"]):
        info = write_synthetic_svs(folder / f"{slide_id}.svs", 1600, 1200, 0.5, seed=30 + i,
                                   pattern_proportions=PROPORTIONS)
        coords = folder / f"{slide_id}.coords.h5"
        wsi.tile_slide(info.path, slide_id, TISSUE, TILES, 0, coords)
        out[slide_id] = {"path": str(info.path), "mpp": None, "coords": str(coords)}
    write_exclusion("S3", "slide_id", "slide S3: not readable", [out["S3"]["coords"]])
    return out


def test_training_tiles_are_a_seeded_sample_of_the_given_slides(slides, tmp_path):
    out = tmp_path / "tiles.h5"
    summary = sample_training_tiles(slides, TILES, 5, seed=1, out_h5=out)
    assert summary["n_slides"] == 2 and summary["excluded_slides"] == ["S3"]
    h5, tiles, slide_ids = read_training_tiles(out)
    with h5:
        assert tiles.shape == (10, 64, 64, 3) and tiles.dtype == np.uint8
        assert sorted(set(slide_ids)) == ["S1", "S2"]
        coords = h5["coords"][:]
        for slide_id in ("S1", "S2"):
            all_coords, _ = wsi.read_coords_h5(slides[slide_id]["coords"])
            picked = coords[slide_ids == slide_id]
            assert {tuple(c) for c in picked} <= {tuple(c) for c in all_coords}
        with wsi.open_slide(slides["S1"]["path"], "S1") as slide:
            x, y = coords[0]
            assert np.array_equal(tiles[0], wsi.read_tile(slide, x, y, TILES))
        first = coords.copy()
    sample_training_tiles(slides, TILES, 5, seed=1, out_h5=tmp_path / "again.h5")
    sample_training_tiles(slides, TILES, 5, seed=2, out_h5=tmp_path / "other.h5")
    with h5py.File(tmp_path / "again.h5") as again, h5py.File(tmp_path / "other.h5") as other:
        assert np.array_equal(again["coords"][:], first)
        assert not np.array_equal(other["coords"][:], first)


def test_training_tiles_without_any_usable_slide_is_an_error(slides, tmp_path):
    with pytest.raises(ValueError, match="no tiles to train on"):
        sample_training_tiles({"S3": slides["S3"]}, TILES, 5, 0, tmp_path / "t.h5")


def test_hpc_proportions_sum_to_one_and_pool_a_patients_tiles():
    counts = {"A1": np.array([3, 1, 0]), "A2": np.array([0, 4, 0]), "B1": np.array([1, 1, 2])}
    slides, patients = hpc_tables(counts, {"A1": "A", "A2": "A", "B1": "B"})
    columns = [hpc_column(k) for k in range(3)]
    assert columns == ["hpc_01", "hpc_02", "hpc_03"]
    np.testing.assert_allclose(slides[columns].sum(axis=1), 1.0)
    np.testing.assert_allclose(patients.sum(axis=1), 1.0)
    np.testing.assert_allclose(patients.loc["A"], [3 / 8, 5 / 8, 0])  # tile-weighted
    assert list(slides["n_tiles"]) == [4, 4, 4]
    assert patients.index.name == "patient_id"


def test_hpc_tables_reject_mixed_k_and_empty_slides():
    with pytest.raises(ValueError, match="different K"):
        hpc_tables({"A": np.ones(3), "B": np.ones(4)}, {"A": "a", "B": "b"})
    with pytest.raises(ValueError, match="slide B has no assigned tiles"):
        hpc_tables({"A": np.ones(3), "B": np.zeros(3)}, {"A": "a", "B": "b"})


def test_typical_tiles_take_the_most_probable_and_spread_over_slides():
    coords = np.arange(20).reshape(10, 2)
    cluster = np.array([0] * 8 + [1] * 2)
    probability = np.linspace(0.1, 1.0, 10)
    chosen = typical_tiles({"S1": (coords, cluster, probability),
                            "S2": (coords, cluster, probability * 0.5)}, 3, 8)
    assert len(chosen[0]) == 4  # at most ceil(8 / 4) = 2 per slide
    assert [t[0] for t in chosen[0]] == ["S1", "S1", "S2", "S2"]
    assert chosen[0][0][3] == pytest.approx(probability[7])
    assert chosen[2] == []


def test_mosaics_read_the_tiles_of_each_cluster(slides, tmp_path):
    coords, _ = wsi.read_coords_h5(slides["S1"]["coords"])
    n = len(coords)
    cluster = np.arange(n) % 2
    probability = np.full(n, 0.9)
    table = write_mosaics({"S1": (coords, cluster, probability)}, slides, TILES, 3, 4,
                          tmp_path / "mosaics", tmp_path / "mosaics.tsv")
    assert list(table["cluster"]) == ["hpc_01", "hpc_02", "hpc_03"]
    assert list(table["n_tiles"]) == [(n + 1) // 2, n // 2, 0]
    assert list(table["n_slides"]) == [1, 1, 0]
    assert list(table["shown"]) == [1, 1, 0]  # one slide: at most ceil(4 / 4) tiles
    import cv2

    image = cv2.imread(str(tmp_path / "mosaics" / "cluster_01.png"))
    assert image.shape[0] == MOSAIC_TILE_PX + 4 and image.shape[1] == 2 * (MOSAIC_TILE_PX + 2) + 2
    assert pd.read_csv(tmp_path / "mosaics.tsv", sep="\t").shape == (3, 5)


def test_pattern_regions_follow_the_proportions():
    rng = np.random.default_rng(0)
    mpp = 1.0
    side = int(PATTERN_REGION_UM / mpp)
    regions = pattern_regions(10 * side, 10 * side, mpp, PROPORTIONS, rng)
    counts = np.bincount(regions[::side, ::side].ravel(), minlength=len(TISSUE_PATTERNS))
    assert list(counts) == [40, 30, 20, 10]
    with pytest.raises(ValueError, match="unknown tissue patterns"):
        pattern_regions(100, 100, mpp, {"fat": 1.0}, rng)


def test_pattern_tiles_differ_by_pattern():
    tiles = {p: pattern_tile(p, 96, 0.5, seed=1) for p in TISSUE_PATTERNS}
    assert all(t.shape == (96, 96, 3) and t.dtype == np.uint8 for t in tiles.values())
    dark = {p: float((t.mean(axis=2) < 120).mean()) for p, t in tiles.items()}
    assert dark["lymphocytes"] > dark["tumour"] > dark["stroma"]
    with pytest.raises(ValueError, match="unknown tissue pattern"):
        pattern_tile("fat", 96, 0.5, seed=1)


def test_demo_pattern_proportions_follow_risk():
    settings = SlideSettings()
    low = slide_phenotype(-1.5, settings)["pattern_proportions"]
    high = slide_phenotype(1.5, settings)["pattern_proportions"]
    assert sum(high.values()) == pytest.approx(1.0)
    assert high["tumour"] > low["tumour"] and high["lymphocytes"] < low["lymphocytes"]
