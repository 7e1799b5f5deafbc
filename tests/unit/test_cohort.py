"""Cohort tables: split, matrix assembly with excluded patients, train-only imputation."""

import numpy as np
import pandas as pd
import pytest

from radpath.cohort import assemble_rows, impute_with_train_medians, make_split
from radpath.io import atomic_write, write_tsv


def clinical(n=50, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"P{i:03d}" for i in range(n)]
    return pd.DataFrame({"os_event": rng.integers(0, 2, n)}, index=ids)


def test_seeded_split_is_stratified_and_reproducible():
    table = clinical()
    split = make_split(table, 0.3, seed=1)
    assert split.equals(make_split(table, 0.3, seed=1))
    assert not split.equals(make_split(table, 0.3, seed=2))
    for event in (0, 1):
        ids = table.index[table["os_event"] == event]
        assert (split[ids] == "validation").sum() == round(0.3 * len(ids))


def test_sheet_split_is_used_and_must_be_complete():
    table = clinical(4)
    table["split"] = ["train", "validation", "train", "train"]
    assert make_split(table, 0.3, seed=1).tolist() == table["split"].tolist()
    table.loc["P002", "split"] = ""
    with pytest.raises(ValueError, match="split' is empty for patient.*P002"):
        make_split(table, 0.3, seed=1)


def test_assemble_rows_separates_excluded_patients(tmp_path):
    paths = []
    for pid, row in [("P1", {"a": 1.0, "b": 2.0}), ("P2", {"a": 3.0, "b": 4.0})]:
        paths.append(tmp_path / f"{pid}.tsv")
        write_tsv(pd.DataFrame([{"patient_id": pid, **row}]), paths[-1], index=False)
    paths.append(tmp_path / "P3.tsv")
    write_tsv(pd.DataFrame([{"patient_id": "P3", "error": "empty mask"}]), paths[-1], index=False)
    matrix, excluded = assemble_rows(paths, "patient_id")
    assert matrix.index.tolist() == ["P1", "P2"]
    assert matrix.columns.tolist() == ["a", "b"]
    assert excluded.loc["P3", "reason"] == "empty mask"


def test_imputation_uses_training_medians_only():
    features = pd.DataFrame(
        {"a": [1.0, 3.0, np.nan, 100.0], "b": [np.nan, np.nan, 1.0, 2.0]},
        index=["t1", "t2", "v1", "v2"],
    )
    imputed = impute_with_train_medians(features, ["t1", "t2"])
    assert imputed.loc["v1", "a"] == 2.0  # median of training rows, not of everyone
    assert "b" not in imputed.columns  # missing for every training patient


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.tsv"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write("partial")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
