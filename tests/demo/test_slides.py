import numpy as np
import openslide
import pytest

from radpath_demo.slides import (
    GLASS_RGB,
    synthetic_he_image,
    write_pyramidal_tiff,
    write_synthetic_svs,
)


def test_svs_is_an_aperio_pyramid_with_mpp(tmp_path):
    info = write_synthetic_svs(tmp_path / "a.svs", 1600, 1200, mpp=0.5, seed=1)
    with openslide.OpenSlide(str(info.path)) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == 0.5
        assert float(slide.properties["aperio.AppMag"]) == 20
        assert slide.dimensions == (1600, 1200)
        assert slide.level_count == 3
        assert slide.level_downsamples[1] == pytest.approx(4, rel=0.01)
        assert slide.level_downsamples[2] == pytest.approx(16, rel=0.01)
        region = np.asarray(slide.read_region((0, 0), 0, (32, 32)))
    assert region[..., 3].min() == 255  # pixels exist, not transparent padding


def test_svs_without_mpp_has_no_mpp_property(tmp_path):
    info = write_synthetic_svs(tmp_path / "a.svs", 800, 600, mpp=0.5, seed=1, write_mpp=False)
    with openslide.OpenSlide(str(info.path)) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert openslide.PROPERTY_NAME_MPP_X not in slide.properties


def test_generic_tiff_with_and_without_resolution(tmp_path):
    image, _, _ = synthetic_he_image(800, 600, 0.25, seed=2)
    with_mpp = write_pyramidal_tiff(tmp_path / "a.tif", image, 0.25, kind="generic")
    without = write_pyramidal_tiff(tmp_path / "b.tif", image, None, kind="generic")
    with openslide.OpenSlide(str(with_mpp)) as slide:
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
        assert slide.level_count == 2
    with openslide.OpenSlide(str(without)) as slide:
        assert openslide.PROPERTY_NAME_MPP_X not in slide.properties


def test_unknown_kind_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown slide kind"):
        write_pyramidal_tiff(tmp_path / "a.tif", np.zeros((64, 64, 3), np.uint8), 0.5, kind="ndpi")


def test_same_seed_same_image_other_seed_other_image():
    a, _, _ = synthetic_he_image(400, 300, 0.5, seed=3)
    b, _, _ = synthetic_he_image(400, 300, 0.5, seed=3)
    c, _, _ = synthetic_he_image(400, 300, 0.5, seed=4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_tissue_is_pink_on_light_glass():
    image, tissue, _ = synthetic_he_image(1200, 900, 0.5, seed=5, nuclear_density=0)
    assert 0.1 < tissue.mean() < 0.6
    glass = image[~tissue].mean(axis=0)
    stroma = image[tissue].mean(axis=0)
    assert np.all(np.abs(glass - GLASS_RGB) < 4)
    red, green, blue = stroma
    assert red > blue > green  # eosin pink
    assert green < glass[1] - 40


def test_nuclear_density_sets_the_number_of_purple_nuclei():
    sparse, tissue, n_sparse = synthetic_he_image(1200, 900, 0.5, seed=6, nuclear_density=1000)
    dense, _, n_dense = synthetic_he_image(1200, 900, 0.5, seed=6, nuclear_density=4000)
    tissue_mm2 = tissue.sum() * (0.5 / 1000) ** 2
    assert n_sparse == pytest.approx(1000 * tissue_mm2, abs=1)
    assert n_dense == pytest.approx(4 * n_sparse, abs=4)

    def purple_fraction(image):
        red, green, blue = (image[..., i].astype(int) for i in range(3))
        return np.mean((blue > red) & (green < 100))

    assert purple_fraction(dense) > 3 * purple_fraction(sparse) > 0


def test_nuclei_have_physical_size():
    # 8 um nuclei: ~16 px wide at 0.5 um/px; count dark pixels per nucleus.
    image, _, n = synthetic_he_image(1200, 900, 0.5, seed=7, nuclear_density=500)
    dark = np.mean(image, axis=2) < 120
    mean_area_um2 = dark.sum() / n * 0.5**2
    assert 20 < mean_area_um2 < 60  # ~ pi * 4^2 * mean aspect 0.78 = 39 um^2
