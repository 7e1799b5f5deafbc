import pickle
import shutil

import cv2
import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile

from radpath.inputs.configuration import default_config
from radpath.pathology import wsi
from radpath_demo.slides import synthetic_he_image, write_pyramidal_tiff, write_synthetic_svs

TISSUE = default_config()["pathology"]["tissue"]
TILES = {"patch_size": 224, "mpp": 0.5, "min_tissue_fraction": 0.6, "max_tiles": 0}


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """The same tissue at 0.5 um/px (2000x1500) and 0.25 um/px (2x upsampled, 4000x3000)."""
    folder = tmp_path_factory.mktemp("slides")
    image, tissue, _ = synthetic_he_image(2000, 1500, 0.5, seed=11)
    fine = cv2.resize(image, (4000, 3000), interpolation=cv2.INTER_LINEAR)
    return {
        "coarse": write_pyramidal_tiff(folder / "coarse.svs", image, 0.5),
        "fine": write_pyramidal_tiff(folder / "fine.svs", fine, 0.25),
        "tissue": tissue,
        "folder": folder,
    }


@pytest.fixture(scope="module")
def coarse(slides):
    with wsi.open_slide(slides["coarse"], "S1") as slide:
        yield slide


def test_open_reads_mpp_and_levels(coarse):
    assert coarse.mpp == 0.5
    assert coarse.dimensions == (2000, 1500)
    assert coarse.level_mpp(1) == pytest.approx(2.0, rel=0.01)


def test_mpp_override_wins_and_bad_override_is_named(slides):
    with wsi.open_slide(slides["coarse"], "S1", mpp_override=0.2527) as slide:
        assert slide.mpp == 0.2527
    for empty in (float("nan"), pd.NA, None, " "):  # an empty `mpp` cell in slides.tsv
        with wsi.open_slide(slides["coarse"], "S1", mpp_override=empty) as slide:
            assert slide.mpp == 0.5
    with pytest.raises(wsi.SlideError, match=r"slide S1 .*mpp override -1"):
        wsi.open_slide(slides["coarse"], "S1", mpp_override=-1)


def test_missing_mpp_is_a_clear_error_and_override_fixes_it(tmp_path):
    info = write_synthetic_svs(tmp_path / "nompp.svs", 800, 600, 0.5, seed=1, write_mpp=False)
    with pytest.raises(wsi.SlideError) as err:
        wsi.open_slide(info.path, "S3")
    assert str(err.value) == (
        f"slide S3 ({info.path}): no microns-per-pixel in metadata (OpenSlide reports no "
        "openslide.mpp-x); set the `mpp` column in slides.tsv"
    )
    with wsi.open_slide(info.path, "S3", mpp_override=0.5) as slide:
        assert slide.mpp == 0.5


def test_generic_tiff_mpp_from_resolution_tags(tmp_path):
    image, _, _ = synthetic_he_image(600, 400, 0.25, seed=1)
    path = write_pyramidal_tiff(tmp_path / "g.tif", image, 0.25, kind="generic")
    with wsi.open_slide(path, "G1") as slide:
        assert slide.mpp == pytest.approx(0.25)


def test_implausible_resolution_tags_are_refused_naming_where_they_came_from(tmp_path):
    """Resolution tags in the wrong unit (352.8 um/px) would cut sub-pixel tiles: refused,
    saying which tags, with the sheet's `mpp` column as the way out; an implausible sheet
    value is refused too."""
    image, _, _ = synthetic_he_image(600, 400, 0.5, seed=1)
    path = write_pyramidal_tiff(tmp_path / "unit.tif", image, 352.8, kind="generic")
    with pytest.raises(wsi.SlideError, match=(
            r"slide T1 \(.*unit\.tif\): level-0 resolution 352\.8 um/px \(from the TIFF "
            r"resolution tags: XResolution 28\.34\d* per centimeter\) is outside the plausible "
            r"range of brightfield scans \(0\.05-5 um/px\); set the right value in the `mpp` "
            r"column of slides\.tsv$")):
        wsi.open_slide(path, "T1")
    with wsi.open_slide(path, "T1", mpp_override=0.5) as slide:
        assert slide.mpp == 0.5
    with pytest.raises(wsi.SlideError, match=r"0\.001 um/px \(from the `mpp` column of "
                                              r"slides\.tsv\) is outside .*correct that value"):
        wsi.open_slide(path, "T1", mpp_override=0.001)


def test_a_slide_much_coarser_than_the_tiles_is_refused(tmp_path):
    image, _, _ = synthetic_he_image(600, 400, 4.0, seed=1)
    path = write_pyramidal_tiff(tmp_path / "overview.tif", image, 4.0, kind="generic")
    with wsi.open_slide(path, "T2") as slide:
        assert wsi.best_level_for_mpp(slide, 2.0, 224).read_size == 112  # 2x: allowed
        with pytest.raises(wsi.SlideError, match=(
                r"slide T2 .*: a 224-px tile at 0\.5 um/px would be read from 28 px of level 0 "
                r"\(4 um/px\), upsampled more than 4x")):
            wsi.best_level_for_mpp(slide, 0.5, 224)


def test_openslide_s_own_reason_is_kept(tmp_path):
    """A compression OpenSlide cannot decode (JPEG 2000 in a generic TIFF) is named."""
    image, _, _ = synthetic_he_image(512, 512, 0.5, seed=1)
    path = tmp_path / "j2k.tif"
    tifffile.imwrite(path, image, tile=(256, 256), compression="jpeg2000", photometric="rgb",
                     metadata=None)
    with pytest.raises(wsi.SlideError, match=(
            r"slide T3 \(.*j2k\.tif\): not readable by OpenSlide: OpenSlide says "
            r"'Unsupported TIFF compression: 34712'$")):
        wsi.open_slide(path, "T3", mpp_override=0.5)


@pytest.mark.parametrize("keep", [0.6, 0.9999])
def test_truncated_file_is_a_clear_error(slides, tmp_path, keep):
    path = tmp_path / "cut.svs"
    shutil.copy(slides["coarse"], path)
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(int(size * keep))
    with pytest.raises(wsi.SlideError, match=r"slide S3 \(.*cut\.svs\): .*truncated"):
        wsi.open_slide(path, "S3")


def test_not_a_slide_and_missing_file_errors(tmp_path):
    text = tmp_path / "notes.svs"
    text.write_text("not an image\n")
    with pytest.raises(
        wsi.SlideError, match=r"slide S4 \(.*notes\.svs\): not readable by OpenSlide"
    ):
        wsi.open_slide(text, "S4")
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    with pytest.raises(wsi.SlideError, match="empty"):
        wsi.open_slide(empty, "S5")
    with pytest.raises(wsi.SlideError, match=r"slide S6 .*file not found"):
        wsi.open_slide(tmp_path / "absent.svs", "S6")


def test_slide_handles_refuse_pickling(coarse):
    with pytest.raises(TypeError, match="per process"):
        pickle.dumps(coarse)


def test_level_choice_downsamples_never_upsamples(slides):
    with wsi.open_slide(slides["fine"], "F") as fine:  # 0.25, 1.0, 4.0 um/px levels
        same = wsi.best_level_for_mpp(fine, 1.0, 224)
        assert (same.level, same.read_size, same.patch_size_level0) == (1, 224, 896)
        between = wsi.best_level_for_mpp(fine, 2.0, 224)
        assert (between.level, between.read_size) == (1, 448)
        level0 = wsi.best_level_for_mpp(fine, 0.5, 224)
        assert (level0.level, level0.read_size) == (0, 448)
        finer = wsi.best_level_for_mpp(fine, 0.2, 100)
        assert (finer.level, finer.read_size) == (0, 80)  # only case that upsamples
        near = wsi.best_level_for_mpp(fine, 0.99, 224)  # within tolerance of level 1
        assert near.level == 1


def test_tiles_have_the_same_physical_size_at_any_slide_mpp(slides):
    coords = {}
    tiles = {}
    for name in ("coarse", "fine"):
        with wsi.open_slide(slides[name], name) as slide:
            mask = wsi.tissue_mask(slide, TISSUE)
            coords[name] = wsi.tile_coordinates(slide, mask, TILES, seed=0)
            x, y = coords[name][len(coords[name]) // 2]
            tiles[name] = wsi.read_tile(slide, x, y, TILES)
    assert len(coords["coarse"]) >= 10
    assert np.array_equal(coords["fine"], 2 * coords["coarse"])
    assert tiles["fine"].shape == tiles["coarse"].shape == (224, 224, 3)
    difference = np.abs(tiles["fine"].astype(int) - tiles["coarse"].astype(int)).mean()
    assert difference < 6  # same 112 um of tissue (JPEG noise only)


def test_tile_count_matches_a_per_tile_reference(coarse):
    mask = wsi.tissue_mask(coarse, TISSUE)
    coords = wsi.tile_coordinates(coarse, mask, TILES, seed=0)
    upsampled = cv2.resize(
        mask.mask.astype(np.uint8), coarse.dimensions, interpolation=cv2.INTER_NEAREST
    ).astype(bool)
    expected = [
        (x, y)
        for y in range(0, 1500 - 223, 224)
        for x in range(0, 2000 - 223, 224)
        if upsampled[y : y + 224, x : x + 224].mean() >= 0.6
    ]
    assert len(coords) == pytest.approx(len(expected), abs=1)
    assert len(set(map(tuple, coords.tolist())) ^ set(expected)) <= 1


def test_tissue_fractions_integrate_fractional_boxes_exactly():
    mask = np.zeros((4, 4), bool)
    mask[:, :2] = True  # left half is tissue
    tissue = wsi.TissueMask(mask=mask, downsample=10.0, mpp=5.0)
    coords = np.array([[0, 0], [15, 0], [10, 5], [20, 0], [15, 35]])
    fractions = wsi.tissue_fractions(tissue, coords, size0=10.0)
    # the last tile hangs half off the mask: outside counts as glass
    assert fractions == pytest.approx([1.0, 0.5, 1.0, 0.0, 0.25])


def test_tissue_mask_finds_the_blobs_and_not_the_glass(coarse, slides):
    mask = wsi.tissue_mask(coarse, TISSUE)
    assert mask.mpp == pytest.approx(8.0)
    assert mask.mask.shape == (94, 125)
    truth = (
        cv2.resize(
            slides["tissue"].astype(np.float32), mask.mask.shape[::-1], interpolation=cv2.INTER_AREA
        )
        > 0.5
    )
    recall = (mask.mask & truth).sum() / truth.sum()
    precision = (mask.mask & truth).sum() / mask.mask.sum()
    assert recall > 0.85
    assert precision > 0.9
    n_blobs, _ = cv2.connectedComponents(mask.mask.astype(np.uint8))
    assert n_blobs - 1 == 3  # three tissue fragments, debris dropped
    assert mask.area_mm2 == pytest.approx(truth.sum() * 0.008**2, rel=0.15)


def test_fixed_threshold_and_unknown_method(coarse, slides):
    fixed = wsi.tissue_mask(coarse, TISSUE | {"method": "fixed_saturation"})
    truth = (
        cv2.resize(
            slides["tissue"].astype(np.float32),
            fixed.mask.shape[::-1],
            interpolation=cv2.INTER_AREA,
        )
        > 0.5
    )
    assert (fixed.mask & truth).sum() / truth.sum() > 0.85
    with pytest.raises(wsi.SlideError, match="no tissue found"):  # pink stroma S ~ 90
        wsi.tissue_mask(
            coarse, TISSUE | {"method": "fixed_saturation", "saturation_threshold": 120}
        )
    with pytest.raises(ValueError, match="unknown tissue method"):
        wsi.tissue_mask(coarse, TISSUE | {"method": "magic"})


def test_blank_slide_has_no_tissue_error(tmp_path):
    glass = np.full((600, 800, 3), 240, np.uint8)
    glass += np.random.default_rng(0).integers(0, 4, glass.shape, dtype=np.uint8)
    path = write_pyramidal_tiff(tmp_path / "glass.svs", glass, 0.5)
    with (
        wsi.open_slide(path, "S7") as slide,
        pytest.raises(wsi.SlideError, match=r"slide S7 \(.*glass\.svs\): no tissue found"),
    ):
        wsi.tissue_mask(slide, TISSUE)


def test_no_tile_with_enough_tissue_is_an_error(coarse):
    mask = wsi.tissue_mask(coarse, TISSUE)
    with pytest.raises(wsi.SlideError, match=r"slide S1 .*min_tissue_fraction"):
        wsi.tile_coordinates(coarse, mask, TILES | {"min_tissue_fraction": 1.01}, seed=0)


def test_max_tiles_is_a_seeded_subset(coarse):
    mask = wsi.tissue_mask(coarse, TISSUE)
    every = wsi.tile_coordinates(coarse, mask, TILES, seed=0)
    first = wsi.tile_coordinates(coarse, mask, TILES | {"max_tiles": 5}, seed=1)
    again = wsi.tile_coordinates(coarse, mask, TILES | {"max_tiles": 5}, seed=1)
    other = wsi.tile_coordinates(coarse, mask, TILES | {"max_tiles": 5}, seed=2)
    assert len(first) == 5
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert set(map(tuple, first.tolist())) <= set(map(tuple, every.tolist()))


def test_tile_slide_writes_coords_h5_and_qc(slides, tmp_path):
    out = tmp_path / "coords" / "S2.h5"
    qc = tmp_path / "qc" / "S2.png"
    summary = wsi.tile_slide(slides["fine"], "S2", TISSUE, TILES, 42, out, qc)
    coords, attrs = wsi.read_coords_h5(out)
    assert coords.dtype == np.int64 and coords.shape == (summary["n_tiles"], 2)
    assert attrs["patch_size"] == 224
    assert attrs["patch_size_level0"] == 448
    assert attrs["target_mpp"] == 0.5
    assert attrs["slide_mpp"] == 0.25
    assert attrs["level"] == 0 and attrs["downsample"] == 1.0
    assert attrs["slide_id"] == "S2"
    with h5py.File(out) as h5:  # what CLAM/TRIDENT-style readers see
        assert h5["coords"].shape == coords.shape
        assert h5["coords"].attrs["patch_size_level0"] == 448
        # TRIDENT's own set (trident/IO.py coords_to_h5), magnifications as 10 / mpp
        assert h5["coords"].attrs["level0_magnification"] == 40.0
        assert h5["coords"].attrs["target_magnification"] == 20.0
        assert h5["coords"].attrs["overlap"] == 0 and h5["coords"].attrs["name"] == "S2"
        assert (h5["coords"].attrs["level0_width"], h5["coords"].attrs["level0_height"]) == (
            4000, 3000,
        )
        # 448 level-0 px resized to 224: CLAM's patch_size would be 448, so no patch_level
        assert "patch_level" not in h5["coords"].attrs
    mask = wsi.read_tissue_mask_h5(out)
    assert mask.mpp == pytest.approx(8.0) and mask.mask.any()
    assert sorted(p.name for p in out.parent.iterdir()) == ["S2.h5"]  # no temp left

    image = cv2.imread(str(qc))
    assert max(image.shape[:2]) == wsi.QC_MAX_SIDE and image.shape[1] / image.shape[0] == 4 / 3
    blue, green, red = (image[..., i].astype(int) for i in range(3))
    assert np.sum((green > 120) & (red < 60) & (blue < 60)) > 500  # tissue contour
    assert np.sum((blue > 180) & (red < 80) & (green < 100)) > 500  # kept tiles


def test_read_tile_outside_the_slide_is_white(coarse):
    tile = wsi.read_tile(coarse, 1900, 1400, TILES)
    assert tile.shape == (224, 224, 3)
    assert tile[-50:, -50:].min() == 255


def test_patch_level_is_written_only_where_clam_reads_radpaths_pixels(slides):
    """CLAM reads `patch_size` px at `patch_level`: true to radpath only without a resize."""
    with wsi.open_slide(slides["coarse"], "C") as coarse:  # 0.5 um/px, tiles at 0.5
        geom = coarse.tile_geometry(TILES)
        assert wsi.tile_attrs(coarse, geom)["patch_level"] == 0
    with wsi.open_slide(slides["fine"], "F") as fine:  # 0.25, 1.0, 4.0 um/px levels
        at_level1 = fine.tile_geometry(TILES | {"mpp": 1.0})  # 224 px read at level 1
        attrs = wsi.tile_attrs(fine, at_level1)
        assert (attrs["patch_level"], attrs["patch_size"], attrs["read_size"]) == (1, 224, 224)
        assert attrs["target_magnification"] == 10.0
        resized = fine.tile_geometry(TILES)  # 448 px read at level 0
        assert wsi.clam_patch_level(resized) is None
        clam = wsi.clam_attrs(resized, "F", fine.level_dimensions[0])
        assert (clam["patch_level"], clam["patch_size"], clam["target_patch_size"]) == (0, 448, 224)
        assert wsi.geometry_from_attrs(wsi.tile_attrs(fine, resized)) == resized
