"""`radpath.pathology.export` (one slide -> float32 CLAM/TRIDENT files) and `radpath.pathology.export_layout`
(staged slides -> the two tools' folder layouts). How CLAM and TRIDENT read the results is
tested in test_reader_contracts.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from radpath.inputs.configuration import default_config
from radpath.inputs.runtime import write_exclusion
from radpath.pathology import embedding, export, export_layout, feature_files, wsi
from radpath_demo.slides import write_synthetic_svs

REPO = Path(__file__).resolve().parents[3]
TISSUE = default_config()["pathology"]["tissue"]
TILES = {"patch_size": 112, "mpp": 0.5, "min_tissue_fraction": 0.5, "max_tiles": 0}
OUTCOMES = pd.DataFrame(
    {"split": ["train", "validation"], "os_time": [12.5, 30.0], "os_event": [1, 0],
     "pfs_time": [6.0, 30.0], "pfs_event": [1, 0]},
    index=pd.Index(["P1", "P2"], name="patient_id"),
)


@pytest.fixture(scope="module")
def features_h5(tmp_path_factory):
    """A 0.25 um/px slide tiled by radpath and a features.h5 written by radpath's writer."""
    folder = tmp_path_factory.mktemp("export_src")
    info = write_synthetic_svs(folder / "S1.svs", 2000, 1500, 0.25, seed=5)
    coords_h5 = folder / "coords.h5"
    wsi.tile_slide(info.path, "S1", TISSUE, TILES, 0, coords_h5)
    coords, attrs = wsi.read_coords_h5(coords_h5)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(len(coords), 8)).astype(np.float16)
    path = folder / "features.h5"
    embedding.write_features_h5(path, features, coords, np.zeros((0, 2)), attrs,
                            {"encoder": "resnet18", "feature_dim": 8, "precision": "bf16"})
    return path


@pytest.fixture(scope="module")
def staged(features_h5, tmp_path_factory):
    out = tmp_path_factory.mktemp("staged") / "S1"
    status = export.export_slide("S1", features_h5, out)
    return out, status


def test_export_writes_float32_files_equal_to_radpaths_features(features_h5, staged):
    out, status = staged
    source, coords, _ = feature_files.read_features_h5(features_h5)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*export_layout.STAGED_FILES.values(), export_layout.STATUS_FILE]
    )  # nothing else, no temporary file left
    for name in ("clam.h5", "trident_features.h5"):
        with h5py.File(out / name) as h5:
            assert h5["features"].dtype == np.float32
            assert np.array_equal(h5["features"][:], source.astype(np.float32))
            assert np.array_equal(h5["coords"][:], coords)
    tensor = torch.load(out / "clam.pt", weights_only=True)
    assert tensor.dtype == torch.float32 and tuple(tensor.shape) == source.shape
    assert np.array_equal(tensor.numpy(), source.astype(np.float32))
    assert status["status"] == "exported" and status["n_tiles"] == len(coords)
    assert export_layout.read_status(out)["trident_features"] == (
        "20x_112px_0px_overlap/features_resnet18/S1.h5"
    )


def test_clam_file_describes_radpaths_read_and_trident_file_its_own_format(staged):
    out, _ = staged
    with h5py.File(out / "clam.h5") as h5:
        clam = feature_files.attrs_dict(h5["coords"].attrs)
        assert h5["features"].attrs["encoder"] == "resnet18"
        assert h5["features"].attrs["source_precision"] == "bf16"
    # 0.25 um/px, tiles of 112 px at 0.5: radpath read 224 px at level 0 and resized.
    assert (clam["patch_level"], clam["patch_size"], clam["target_patch_size"]) == (0, 224, 112)
    assert clam["name"] == "S1" and list(clam["downsample"]) == [1.0, 1.0]
    assert "target_magnification" not in clam
    patches, trident = wsi.read_coords_h5(out / "trident_patches.h5")
    assert (trident["patch_size"], trident["patch_size_level0"]) == (112, 224)
    assert (trident["level0_magnification"], trident["target_magnification"]) == (40.0, 20.0)
    assert trident["savetodir"] == "20x_112px_0px_overlap"
    assert "patch_level" not in trident  # CLAM's patch_size would be 224 here
    with h5py.File(out / "trident_features.h5") as h5:
        stored = feature_files.attrs_dict(h5["coords"].attrs)
        assert stored.keys() == trident.keys()
        assert all(np.array_equal(stored[key], trident[key]) for key in trident)
        assert np.array_equal(h5["coords"][:], patches)


def test_excluded_slide_gets_only_its_status(tmp_path):
    features = tmp_path / "features.h5"
    write_exclusion("S9", "slide_id", "slide S9: the file is truncated", [str(features)])
    status = export.export_slide("S9", features, tmp_path / "S9")
    assert status["status"] == "excluded"
    assert [p.name for p in (tmp_path / "S9").iterdir()] == [export_layout.STATUS_FILE]
    assert export_layout.read_status(tmp_path / "S9")["reason"] == "slide S9: the file is truncated"


def test_trident_encoder_name_can_be_set_and_is_folder_safe(features_h5, tmp_path):
    status = export.export_slide("S1", features_h5, tmp_path / "S1", "hf-hub:org/uni v2")
    assert status["trident_features"] == "20x_112px_0px_overlap/features_hf-hub_org_uni_v2/S1.h5"


@pytest.mark.parametrize(("mpp", "patch_size", "folder"), [
    (0.5, 224, "20x_224px_0px_overlap"),
    (0.25, 256, "40x_256px_0px_overlap"),
    (1.0, 224, "10x_224px_0px_overlap"),
    (0.6, 224, "16.6667x_224px_0px_overlap"),
])
def test_trident_folder_name(mpp, patch_size, folder):
    assert export_layout.trident_patch_folder(wsi.magnification(mpp), patch_size) == folder


def test_layouts_link_exported_slides_and_list_excluded_ones(staged, tmp_path):
    out, _ = staged
    bad = tmp_path / "staged" / "S2"
    export_layout.write_status(bad, {"slide_id": "S2", "status": "excluded",
                                     "reason": "no tissue found"})
    clam, trident, excluded = tmp_path / "clam", tmp_path / "trident", tmp_path / "excluded.tsv"
    summary = export_layout.assemble_layouts(
        {"S1": out, "S2": bad}, {"S1": "P1", "S2": "P2"}, OUTCOMES, clam, trident, excluded
    )
    assert summary == {"exported": ["S1"], "excluded": ["S2"]}
    assert os.path.samefile(clam / "pt_files" / "S1.pt", out / "clam.pt")  # a hard link
    assert os.path.samefile(clam / "h5_files" / "S1.h5", out / "clam.h5")
    folder = trident / "20x_112px_0px_overlap"
    assert (folder / "patches" / "S1_patches.h5").is_file()
    assert (folder / "features_resnet18" / "S1.h5").is_file()
    assert not list(clam.rglob("S2*")) and not list(trident.rglob("S2*"))
    table = pd.read_csv(clam / "dataset.csv")
    assert table.to_dict("records") == [{
        "case_id": "P1", "slide_id": "S1", "split": "train", "os_time": 12.5, "os_event": 1,
        "os_censorship": 0, "pfs_time": 6.0, "pfs_event": 1, "pfs_censorship": 0,
    }]
    assert pd.read_csv(excluded, sep="\t").to_dict("records") == [
        {"slide_id": "S2", "patient_id": "P2", "reason": "no tissue found"}
    ]


def test_layouts_copy_where_hard_links_fail(staged, tmp_path, monkeypatch):
    out, _ = staged

    def no_links(source, target):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    export_layout.assemble_layouts({"S1": out}, {"S1": "P1"}, OUTCOMES, tmp_path / "clam",
                                   tmp_path / "trident", tmp_path / "excluded.tsv")
    copy = tmp_path / "clam" / "pt_files" / "S1.pt"
    assert not os.path.samefile(copy, out / "clam.pt")
    assert copy.read_bytes() == (out / "clam.pt").read_bytes()
    assert pd.read_csv(tmp_path / "excluded.tsv", sep="\t").empty


def test_cohort_step_needs_neither_torch_nor_h5py():
    """Rule `export` runs in the stats environment, which has neither."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['h5py'] = None; "
            "import radpath.pathology.export_layout")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            encoding="utf-8", env=env)
    assert result.returncode == 0, result.stderr


def test_export_slide_command_line(features_h5, tmp_path):
    """The command rule export_slide runs."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "radpath.cli", "export_slide", "--slide-id", "S1",
         "--features", str(features_h5), "--out", str(tmp_path / "S1"),
         "--settings", json.dumps({"trident_encoder": ""}), "--log", str(tmp_path / "job.log")],
        capture_output=True, text=True, encoding="utf-8", env=env,
    )
    assert result.returncode == 0, result.stderr
    assert export_layout.read_status(tmp_path / "S1")["status"] == "exported"
    assert "export status" in (tmp_path / "job.log").read_text(encoding="utf-8")


def test_dataset_csv_has_the_declared_endpoints_only():
    outcomes = pd.DataFrame(
        {"split": ["train", "validation"], "os_time": [12.5, 30.0], "os_event": [1, 0],
         "dfs_time": [6.0, 30.0], "dfs_event": [1, 0]},
        index=pd.Index(["P1", "P2"], name="patient_id"),
    )
    table = export_layout.dataset_table(["S2", "S1"], {"S1": "P1", "S2": "P2"}, outcomes)
    assert list(table.columns) == [
        "case_id", "slide_id", "split", "os_time", "os_event", "os_censorship",
        "dfs_time", "dfs_event", "dfs_censorship",
    ]
    assert table["dfs_censorship"].tolist() == [1, 0]
    assert table["case_id"].tolist() == ["P2", "P1"]
