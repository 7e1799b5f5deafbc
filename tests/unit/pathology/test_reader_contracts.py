"""radpath's tile files read the way CLAM and TRIDENT read them.

Neither tool can be installed here and neither may be copied into this repository: CLAM
(github.com/mahmoodlab/CLAM) is GPL-3.0, TRIDENT (github.com/mahmoodlab/TRIDENT) is
CC BY-NC-ND 4.0, and the PyPI packages named `clam` and `trident` are unrelated projects.
So these tests restate, in our own words, what each reader requires of a file and what it
does with it: the attribute lists it needs, which pyramid level it reads, how many pixels,
and how it resizes them. Each rule names the upstream file and function it comes from.
The tests then read radpath's real outputs by those rules, on synthetic slides, and check
that the readers get exactly the tiles radpath embedded (the pixels `radpath.pathology.wsi.read_tile`
gives the encoder for the same coordinate), and that the exported features are what
CLAM's MIL loader and models accept.

Slides: "x40" is 0.25 um/px with levels at 1x, 4x, 16x, so 0.5 um/px tiles are read at
level 0 and shrunk 2x (read size != patch size: CLAM's `patch_size` and TRIDENT's differ);
"x40_2x" is 0.25 um/px with a level at exactly 0.5 um/px (read at level 1, no resize);
"x20" is 0.5 um/px (read at level 0, no resize).
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from radpath.inputs.configuration import default_config
from radpath.pathology import embedding, feature_files, wsi
from radpath_demo.slides import write_synthetic_svs

TISSUE = default_config()["pathology"]["tissue"]
TILES = {"patch_size": 112, "mpp": 0.5, "min_tissue_fraction": 0.5, "max_tiles": 0}
EMBEDDING = {
    "encoder": "resnet18",
    "weights": "random",
    "batch_size": 16,
    "num_workers": 0,
    "precision": "fp32",
}
SLIDES = {  # name: (level-0 um/px, width, height, pyramid downsamples)
    "x40": (0.25, 2400, 1800, (4, 16)),
    "x40_2x": (0.25, 2400, 1800, (2, 8)),
    "x20": (0.5, 1200, 900, (4, 16)),
}

# ---------------------------------------------------------------------- TRIDENT's rules
# trident/wsi_objects/WSI.py, WSI.extract_patch_features (same in WSI.visualize_coords):
# `coords` is read in TRIDENT's own format when all three attributes are present; when one
# is missing TRIDENT warns and falls back to the CLAM/Fishing-Rod reader
# (WSIPatcher.from_legacy_coords_file -> IO.read_coords_legacy), which needs CLAM's set.
TRIDENT_REQUIRED = ("patch_size", "level0_magnification", "target_magnification")
# trident/IO.py, coords_to_h5: what TRIDENT's own patching writes on `coords` (besides
# `savetodir`, its output folder, which no reader uses).
TRIDENT_WRITES = (
    *TRIDENT_REQUIRED, "patch_size_level0", "overlap", "name", "level0_width", "level0_height",
)
# trident/slide_encoder_models/load.py (TITAN, GigaPath and CARE forward passes) take the
# level-0 tile side from the features file's coords attributes; CARE divides coordinates
# by int(patch_size_level0) to get grid positions.
TRIDENT_SLIDE_ENCODERS = ("patch_size_level0",)

# ------------------------------------------------------------------------- CLAM's rules
# dataset_modules/dataset_h5.py, Whole_Slide_Bag_FP.__init__ (and TRIDENT's
# IO.read_coords_legacy): both attributes are indexed directly, so a missing one raises.
CLAM_REQUIRED = ("patch_level", "patch_size")
# wsi_core/WholeSlideImage.py, WholeSlideImage.process_contour: what create_patches_fp.py
# writes on `coords`.
CLAM_WRITES = (
    "patch_size", "patch_level", "downsample", "downsampled_level_dim", "level_dim", "name",
    "save_path",
)


def trident_read(attrs: dict, level_downsamples) -> tuple[int, int, int]:
    """(level, px read at that level, px given to the encoder) for one tile, per TRIDENT."""
    if any(key not in attrs for key in TRIDENT_REQUIRED):
        # Legacy path: read patch_size px at patch_level (KeyError without patch_level).
        level = int(attrs["patch_level"])
        size = int(attrs["patch_size"])
        return level, size, round(size / level_downsamples[level])
    # trident/wsi_objects/WSIPatcher.py, WSIPatcher.__init__: pixel sizes are
    # 10 / magnification; the level-0 tile side is round(patch_size * dst / src).
    src_mpp = 10 / float(attrs["level0_magnification"])
    dst_mpp = 10 / float(attrs["target_magnification"])
    downsample = dst_mpp / src_mpp
    size0 = round(int(attrs["patch_size"]) * downsample)
    # WSIPatcher._prepare: level from WSI.get_best_level_and_custom_downsample(downsample,
    # tolerance=0.1), then round(size0 / int(level downsample)) px read at that level.
    level = trident_best_level(level_downsamples, downsample, tolerance=0.1)
    read = round(size0 / int(level_downsamples[level]))
    # WSIPatcher.get_tile_xy: the region is resized to patch_size for the encoder.
    return level, read, int(attrs["patch_size"])


def trident_best_level(level_downsamples, downsample: float, tolerance: float) -> int:
    """trident/wsi_objects/WSI.py, WSI.get_best_level_and_custom_downsample: a level within
    `tolerance` of the wanted downsample; else the coarsest level not coarser than it (else,
    when upsampling, the first level at least as coarse)."""
    for level, level_downsample in enumerate(level_downsamples):
        if abs(level_downsample - downsample) <= tolerance:
            return level
    finer = [level for level, d in enumerate(level_downsamples) if d <= downsample]
    if finer:
        return max(finer)
    return next(level for level, d in enumerate(level_downsamples) if d >= downsample)


def clam_read(attrs: dict, target_patch_size: int) -> tuple[int, int, int]:
    """(level, px read at that level, px given to the encoder) for one tile, per CLAM.

    dataset_modules/dataset_h5.py, Whole_Slide_Bag_FP.__getitem__: read_region(coord,
    patch_level, (patch_size, patch_size)).convert('RGB'); then the encoder's eval
    transforms (utils/transform_utils.py, get_eval_transforms: transforms.Resize) resize
    it to extract_features_fp.py's --target_patch_size (default 224).
    """
    return int(attrs["patch_level"]), int(attrs["patch_size"]), int(target_patch_size)


def read_region_rgb(slide: wsi.Slide, coord, level: int, size: int) -> np.ndarray:
    """What both tools read: OpenSlide's read_region converted to RGB by PIL."""
    x, y = (int(v) for v in coord)
    return np.asarray(slide.osr.read_region((x, y), level, (size, size)).convert("RGB"))


def assert_reads_radpaths_tiles(slide: wsi.Slide, coords, plan) -> None:
    """Every tile read per `plan` (level, read px, encoder px), resized as radpath resizes,
    is exactly the tile radpath embedded; the region read is radpath's region."""
    level, read, encoder_px = plan
    geom = slide.tile_geometry(TILES)
    assert (level, read, encoder_px) == (geom.level, geom.read_size, geom.patch_size)
    for coord in coords:
        region = read_region_rgb(slide, coord, level, read)
        assert np.array_equal(region, slide.read_rgb(tuple(map(int, coord)), level, (read, read)))
        tile = wsi.read_tile(slide, *coord, TILES)
        assert np.array_equal(wsi.resize_rgb(region, encoder_px), tile)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Each synthetic slide, tiled by radpath (`coords.h5`) and embedded (`features.h5`)."""
    folder = tmp_path_factory.mktemp("contracts")
    made = {}
    for seed, (name, (mpp, width, height, downsamples)) in enumerate(SLIDES.items()):
        info = write_synthetic_svs(
            folder / f"{name}.svs", width, height, mpp, seed=30 + seed, downsamples=downsamples
        )
        coords_h5 = folder / f"{name}.coords.h5"
        wsi.tile_slide(info.path, name, TISSUE, TILES, 0, coords_h5)
        features_h5 = folder / f"{name}.features.h5"
        embedding.embed_slide(info.path, name, coords_h5, features_h5, EMBEDDING, TILES, device="cpu")
        made[name] = {"path": info.path, "coords_h5": coords_h5, "features_h5": features_h5}
    return made


def open_named(slides, name):
    return wsi.open_slide(slides[name]["path"], name)


# ------------------------------------------------------- A: coords.h5 as TRIDENT reads it


@pytest.mark.parametrize("name", list(SLIDES))
def test_trident_reads_coords_h5_in_its_own_format_and_gets_radpaths_tiles(slides, name):
    """Before: coords.h5 had none of level0_magnification/target_magnification, so TRIDENT
    fell back to CLAM's reader, which fails on the missing patch_level."""
    coords, attrs = wsi.read_coords_h5(slides[name]["coords_h5"])
    assert set(TRIDENT_WRITES) <= set(attrs)
    with open_named(slides, name) as slide:
        assert_reads_radpaths_tiles(slide, coords, trident_read(attrs, slide.level_downsamples))
        assert (attrs["level0_width"], attrs["level0_height"]) == slide.dimensions
    assert attrs["overlap"] == 0 and attrs["name"] == name
    assert isinstance(attrs["patch_size_level0"], int)


def test_magnifications_follow_tridents_10_over_mpp_convention(slides):
    """10 / mpp, exact (TRIDENT's WSIPatcher turns magnifications into um/px as 10 / mag):
    so the level-0 size TRIDENT derives is radpath's even for a 0.2527 um/px scanner."""
    _, attrs = wsi.read_coords_h5(slides["x40"]["coords_h5"])
    assert attrs["level0_magnification"] == pytest.approx(40.0)
    assert attrs["target_magnification"] == pytest.approx(20.0)
    with wsi.open_slide(slides["x40"]["path"], "x40", mpp_override=0.2527) as slide:
        geom = slide.tile_geometry(TILES)
        fresh = wsi.tile_attrs(slide, geom)
        _, read, _ = trident_read(fresh, slide.level_downsamples)
        assert read == round(geom.patch_size_level0) == fresh["patch_size_level0"] == 222
        assert read == geom.read_size


def test_trident_slide_encoders_get_the_level0_tile_side(slides):
    """features.h5 carries the coords attributes too (TRIDENT's slide encoders read them)."""
    with h5py.File(slides["x40"]["features_h5"]) as h5:
        attrs = feature_files.attrs_dict(h5["coords"].attrs)
        coords = h5["coords"][:]
    assert set(TRIDENT_REQUIRED + TRIDENT_SLIDE_ENCODERS) <= set(attrs)
    grid = coords // int(attrs["patch_size_level0"])  # CARE's grid positions
    assert len(np.unique(grid, axis=0)) == len(coords)


# ---------------------------------------------------------- A: coords.h5 as CLAM reads it


@pytest.mark.parametrize(("name", "level"), [("x20", 0), ("x40_2x", 1)])
def test_clam_reads_coords_h5_when_a_level_sits_at_the_target_mpp(slides, name, level):
    """patch_level is written when radpath read patch_size px (no resize): CLAM's
    `patch_size` then means what TRIDENT's means, and CLAM reads radpath's exact pixels."""
    coords, attrs = wsi.read_coords_h5(slides[name]["coords_h5"])
    assert attrs["patch_level"] == level
    with open_named(slides, name) as slide:
        plan = clam_read(attrs, target_patch_size=attrs["patch_size"])
        assert_reads_radpaths_tiles(slide, coords, plan)


def test_clam_fails_loudly_on_coords_h5_where_radpath_resized(slides):
    """On x40 radpath read 224 level-0 px and resized them to 112. CLAM would read
    `patch_size` (112) px at patch_level: half the tile side, a silent scale mismatch.
    So coords.h5 has no patch_level there, and CLAM's reader raises instead; the export
    (`snakemake export`) writes CLAM's own file for such slides."""
    _, attrs = wsi.read_coords_h5(slides["x40"]["coords_h5"])
    assert "patch_level" not in attrs
    with pytest.raises(KeyError, match="patch_level"):
        clam_read(attrs, target_patch_size=224)


@pytest.mark.parametrize("name", list(SLIDES))
def test_any_patch_level_written_is_never_a_scale_mismatch(slides, name):
    """Whatever reads `patch_size` px at `patch_level` covers radpath's level-0 tile."""
    for path in (slides[name]["coords_h5"], slides[name]["features_h5"]):
        _, attrs = wsi.read_coords_h5(path)
        if "patch_level" in attrs:
            with open_named(slides, name) as slide:
                side0 = attrs["patch_size"] * slide.level_downsamples[attrs["patch_level"]]
            assert side0 == pytest.approx(attrs["patch_size_level0"], abs=1)


# ------------------------------------------------ B: the export, read by CLAM and TRIDENT


@pytest.fixture(scope="module")
def exported(slides, tmp_path_factory):
    """`radpath.pathology.export` run on every slide, then the layouts assembled."""
    from radpath.pathology.export import export_slide
    from radpath.pathology.export_layout import assemble_layouts

    root = tmp_path_factory.mktemp("export")
    staged = {}
    for name in SLIDES:
        staged[name] = root / "slides" / name
        export_slide(name, slides[name]["features_h5"], staged[name])
    outcomes = pd.DataFrame(
        {"split": ["train", "validation", "train"], "os_time": [10.0, 20.0, 30.0],
         "os_event": [1, 0, 1], "pfs_time": [5.0, 6.0, 7.0], "pfs_event": [1, 1, 0]},
        index=pd.Index(["P1", "P2", "P3"], name="patient_id"),
    )
    patients = dict(zip(SLIDES, outcomes.index, strict=True))
    assemble_layouts(staged, patients, outcomes, root / "clam", root / "trident",
                     root / "excluded.tsv")
    return root


def test_clam_export_reads_radpaths_tiles_even_where_radpath_resized(slides, exported):
    """CLAM's h5_files/<slide>.h5: patch_level/patch_size are the level and size radpath
    read (x40: 224 px at level 0, resized to target_patch_size 112), so CLAM's reader gets
    radpath's pixels, also where coords.h5 could not say so."""
    for name in SLIDES:
        with h5py.File(exported / "clam" / "h5_files" / f"{name}.h5") as h5:
            attrs = feature_files.attrs_dict(h5["coords"].attrs)
            coords = h5["coords"][:]
        assert set(CLAM_WRITES) <= set(attrs)
        # TRIDENT's attributes would make TRIDENT read CLAM's patch_size as its own.
        assert not {"level0_magnification", "target_magnification"} & set(attrs)
        with open_named(slides, name) as slide:
            plan = clam_read(attrs, target_patch_size=attrs["target_patch_size"])
            assert_reads_radpaths_tiles(slide, coords, plan)
    with h5py.File(exported / "clam" / "h5_files" / "x40.h5") as h5:
        assert (h5["coords"].attrs["patch_level"], h5["coords"].attrs["patch_size"]) == (0, 224)


def test_clams_own_resize_of_the_export_is_radpaths_tile_up_to_interpolation(slides, exported):
    """With CLAM's actual transform (torchvision Resize, bilinear with antialias) instead of
    radpath's area resize, tiles differ only by interpolation (same region and scale),
    unlike a naive patch_level 0 with radpath's patch_size, which reads half the side."""
    from PIL import Image
    from torchvision import transforms

    with h5py.File(exported / "clam" / "h5_files" / "x40.h5") as h5:
        attrs = feature_files.attrs_dict(h5["coords"].attrs)
        coords = h5["coords"][:]
    resize = transforms.Resize(int(attrs["target_patch_size"]))
    clam_diff, naive_diff = [], []
    with open_named(slides, "x40") as slide:
        for coord in coords:
            region = read_region_rgb(slide, coord, attrs["patch_level"], attrs["patch_size"])
            theirs = np.asarray(resize(Image.fromarray(region))).astype(int)
            ours = wsi.read_tile(slide, *coord, TILES).astype(int)
            clam_diff.append(np.abs(theirs - ours).mean())
            half = read_region_rgb(slide, coord, 0, attrs["target_patch_size"])
            naive_diff.append(np.abs(wsi.resize_rgb(half, TILES["patch_size"]) - ours).mean())
    assert max(clam_diff) < 2.0
    assert min(naive_diff) > 3 * max(clam_diff) and np.mean(naive_diff) > 10


def test_trident_export_reads_radpaths_tiles(slides, exported):
    """TRIDENT's <mag>x_<patch>px_0px_overlap/patches/<slide>_patches.h5 (Processor.
    run_patching_job's folder name and WSI.extract_tissue_coords' file name)."""
    for name in SLIDES:
        path = exported / "trident" / "20x_112px_0px_overlap" / "patches" / f"{name}_patches.h5"
        coords, attrs = wsi.read_coords_h5(path)
        assert set(TRIDENT_WRITES) <= set(attrs)
        with open_named(slides, name) as slide:
            assert_reads_radpaths_tiles(slide, coords, trident_read(attrs, slide.level_downsamples))


def test_trident_features_are_what_its_slide_encoders_take(exported):
    """Processor.run_patch_feature_extraction_job writes features_<encoder>/<slide>.h5;
    WSI.extract_slide_features reads `features`, `coords` and the coords attributes into
    the batch a slide encoder gets (features as float)."""
    folder = exported / "trident" / "20x_112px_0px_overlap"
    for name in SLIDES:
        with h5py.File(folder / "features_resnet18" / f"{name}.h5") as h5:
            features, coords = h5["features"][:], h5["coords"][:]
            attrs = feature_files.attrs_dict(h5["coords"].attrs)
        patches, _ = wsi.read_coords_h5(folder / "patches" / f"{name}_patches.h5")
        assert features.dtype == np.float32 and features.shape == (len(coords), 512)
        assert np.array_equal(coords, patches)
        assert set(TRIDENT_WRITES + TRIDENT_SLIDE_ENCODERS) <= set(attrs)
        batch = {"features": torch.from_numpy(features).unsqueeze(0), "coords": coords,
                 "attributes": attrs}
        assert batch["features"].mean(dim=1).shape == (1, 512)  # TRIDENT's mean slide encoder


class GatedAttentionMIL(nn.Module):
    """A minimal attention-MIL model shaped like CLAM's CLAM_SB (models/model_clam.py,
    gate=True, size "small"): fc (D -> 512) + ReLU, gated attention (a tanh branch times a
    sigmoid branch, one score per tile), softmax over tiles, attention-weighted sum of
    tiles, linear classifier. Weights are float32, as CLAM builds them."""

    def __init__(self, dim: int, hidden: int = 512, attention: int = 256, classes: int = 2):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
        self.attention_a = nn.Sequential(nn.Linear(hidden, attention), nn.Tanh())
        self.attention_b = nn.Sequential(nn.Linear(hidden, attention), nn.Sigmoid())
        self.attention_c = nn.Linear(attention, 1)
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc(tiles)
        scores = self.attention_c(self.attention_a(h) * self.attention_b(h)).T  # (1, N)
        slide = torch.softmax(scores, dim=1) @ h
        return self.classifier(slide), scores


def clam_mil_item(data_dir, slide_id: str, use_h5: bool) -> torch.Tensor:
    """dataset_modules/dataset_generic.py, Generic_MIL_Dataset.__getitem__: the bag of a
    slide is torch.load(<data_dir>/pt_files/<slide_id>.pt), or with load_from_h5(True)
    `features` of <data_dir>/h5_files/<slide_id>.h5 via torch.from_numpy. (Upstream calls
    torch.load without arguments, which is weights_only=True since torch 2.6.)"""
    if use_h5:
        with h5py.File(os.path.join(data_dir, "h5_files", f"{slide_id}.h5"), "r") as h5:
            return torch.from_numpy(h5["features"][:])
    return torch.load(os.path.join(data_dir, "pt_files", f"{slide_id}.pt"), weights_only=True)


def test_clam_mil_dataset_and_model_take_the_export(slides, exported):
    """Every slide of the exported dataset.csv loads as CLAM's MIL loader loads it, as a
    float32 (N, D) bag equal to radpath's features, and runs through a CLAM_SB-shaped
    float32 model; radpath's float16 features.h5 raises the Half/Float error instead."""
    table = pd.read_csv(exported / "clam" / "dataset.csv", dtype={"slide_id": str})
    assert {"case_id", "slide_id", "os_time", "os_event"} <= set(table.columns)
    assert sorted(table["slide_id"]) == sorted(SLIDES)
    torch.manual_seed(0)
    model = GatedAttentionMIL(512)
    for slide_id in table["slide_id"]:
        source, _, _ = feature_files.read_features_h5(slides[slide_id]["features_h5"])
        for use_h5 in (False, True):
            bag = clam_mil_item(exported / "clam", slide_id, use_h5)
            assert bag.dtype == torch.float32 and bag.shape == source.shape
            assert torch.equal(bag, torch.from_numpy(source.astype(np.float32)))
            logits, scores = model(bag)
            assert logits.shape == (1, 2) and scores.shape == (1, len(bag))
        with pytest.raises(RuntimeError, match="Half and Float"):
            model(torch.from_numpy(source))


def test_clam_label_column_of_the_dataset_csv(exported):
    """dataset_modules/dataset_generic.py, Generic_WSI_Classification_Dataset: rows need
    case_id and slide_id; `label_col` names the label, mapped through `label_dict`."""
    table = pd.read_csv(exported / "clam" / "dataset.csv")
    label_dict = {0: 0, 1: 1}
    assert table["os_event"].map(label_dict).notna().all()
    assert (table["os_censorship"] == 1 - table["os_event"]).all()
    assert table.groupby("case_id")["slide_id"].count().to_dict() == {"P1": 1, "P2": 1, "P3": 1}
