"""Slide features -> patient pathomics matrices; PCA is fitted on training patients only."""

import numpy as np
import pandas as pd
import pytest

from radpath.inputs.io import read_json, write_json, write_tsv
from radpath.inputs.runtime import usable_slides, write_exclusion
from radpath.pathology.embedding import write_features_h5
from radpath.pathology.matrices import (
    embedding_matrix,
    encoder_provenance,
    frozen_embedding_matrix,
    morphology_matrix,
)


def write_slide(path, tiles: np.ndarray):
    coords = np.zeros((len(tiles), 2), dtype=np.int64)
    write_features_h5(path, tiles, coords, np.zeros((0, 2)), {"patch_size": 224}, {})


@pytest.fixture()
def slides(tmp_path):
    rng = np.random.default_rng(0)
    files, patients = {}, {}
    for i in range(8):
        for k in range(1 + (i % 2)):
            slide_id = f"P{i}-S{k}"
            files[slide_id] = tmp_path / f"{slide_id}.h5"
            patients[slide_id] = f"P{i}"
            write_slide(files[slide_id], rng.normal(i, 1.0, size=(5 + k, 12)))
    split = pd.Series(["train"] * 6 + ["validation"] * 2, index=[f"P{i}" for i in range(8)])
    return files, patients, split


def test_embedding_pca_is_fitted_on_training_patients_only(slides, tmp_path):
    files, patients, split = slides
    table, info = embedding_matrix(files, patients, ["mean"], split, n_components=3)
    assert table.shape == (8, 3) and info["fitted_on"] == 6
    # Changing a validation patient's tiles must not move any training patient's scores.
    write_slide(files["P7-S0"], np.full((4, 12), 50.0))
    moved, _ = embedding_matrix(files, patients, ["mean"], split, n_components=3)
    train = split.index[split == "train"]
    np.testing.assert_allclose(moved.loc[train], table.loc[train], atol=1e-5)
    assert not np.allclose(moved.loc["P7"], table.loc["P7"])


def test_frozen_pca_gives_external_slides_the_runs_scores(slides, tmp_path):
    """`snakemake score`: the PCA of the run (its JSON) applied to slides as an external
    cohort gives the validation patients exactly the run's scores."""
    files, patients, split = slides
    table, info = embedding_matrix(files, patients, ["mean", "std"], split, n_components=3)
    write_json(info, tmp_path / "pca.json")
    external = {s: f for s, f in files.items() if patients[s] in ("P6", "P7")}

    frozen = frozen_embedding_matrix(external, patients, read_json(tmp_path / "pca.json"))

    pd.testing.assert_frame_equal(frozen, table.loc[["P6", "P7"]], check_exact=True,
                                  check_names=False)
    del info["components"]
    with pytest.raises(ValueError, match="re-run its pathomics_matrices"):
        frozen_embedding_matrix(external, patients, info)


def test_components_capped_by_training_size(slides):
    files, patients, split = slides
    table, info = embedding_matrix(files, patients, ["mean", "max"], split, n_components=50)
    assert info["n_components"] == 5  # 6 training patients -> at most 5 components


def test_excluded_slides_are_reported_not_pooled(slides):
    files, patients, _ = slides
    write_exclusion("P3-S0", "slide_id", "no tissue found", [files["P3-S0"]])
    usable, excluded = usable_slides({k: str(v) for k, v in files.items()})
    assert "P3-S0" not in usable and len(usable) == len(files) - 1
    assert excluded.to_dict("records") == [{"slide_id": "P3-S0", "reason": "no tissue found"}]


def test_morphology_is_averaged_over_a_patients_slides(tmp_path):
    paths = {}
    for slide_id, density in [("A-1", 100.0), ("A-2", 300.0), ("B-1", 50.0)]:
        paths[slide_id] = tmp_path / f"{slide_id}.tsv"
        write_tsv(pd.DataFrame([{"slide_id": slide_id, "density": density}]), paths[slide_id],
                  index=False)
    table = morphology_matrix(paths, {"A-1": "A", "A-2": "A", "B-1": "B"})
    assert table.loc["A", "density"] == 200.0 and table.loc["B", "density"] == 50.0


def provenance_attrs(encoder: str, sha: str) -> dict:
    return {"encoder": encoder, "timm_name": "resnet50.tv_in1k", "timm_kwargs": "{}",
            "weights": "/w/a.safetensors" if sha else "random", "weights_sha256": sha,
            "input_size": 0, "mean": np.array([0.5, 0.5, 0.5]),
            "std": np.array([0.2, 0.2, 0.2]), "feature_dim": 4, "pretrained": bool(sha)}


def test_encoder_provenance_of_agreeing_slides(tmp_path):
    files = {}
    for slide_id in ("S1", "S2"):
        files[slide_id] = tmp_path / f"{slide_id}.h5"
        write_features_h5(files[slide_id], np.ones((2, 4)), np.zeros((2, 2)), np.zeros((0, 2)),
                          {"patch_size": 224}, provenance_attrs("resnet50", "ab12"))
    provenance = encoder_provenance(files)
    assert provenance["encoder"] == "resnet50" and provenance["weights_sha256"] == "ab12"
    assert provenance["pretrained"] is True and provenance["n_slides"] == 2
    assert provenance["mean"] == [0.5, 0.5, 0.5]


def test_slides_of_different_weights_in_one_matrix_are_an_error(tmp_path):
    files = {"S1": tmp_path / "S1.h5", "S2": tmp_path / "S2.h5"}
    for path, sha in zip(files.values(), ("ab12", ""), strict=True):
        write_features_h5(path, np.ones((2, 4)), np.zeros((2, 2)), np.zeros((0, 2)),
                          {"patch_size": 224}, provenance_attrs("resnet50", sha))
    with pytest.raises(ValueError, match="slides S1 and S2 were embedded with different"):
        encoder_provenance(files)
