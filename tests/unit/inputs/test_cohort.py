"""Cohort tables: split, matrix assembly with excluded patients, train-only imputation."""

import numpy as np
import pandas as pd
import pytest

from radpath.inputs.cohort import (
    assemble_rows,
    impute_covariates,
    impute_with_train_medians,
    make_split,
    outcome_endpoints,
    outcomes_table,
    read_frozen_split,
    split_changes,
    split_for_run,
)
from radpath.inputs.io import atomic_write, write_tsv


def clinical(n=50, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"P{i:03d}" for i in range(n)]
    return pd.DataFrame({"os_event": rng.integers(0, 2, n)}, index=ids)


def test_seeded_split_is_reproducible_and_near_the_fraction_in_each_stratum():
    table = clinical(2000)
    split = make_split(table, 0.3, seed=1)
    assert split.equals(make_split(table, 0.3, seed=1))
    assert not split.equals(make_split(table, 0.3, seed=2))
    for event in (0, 1):
        ids = table.index[table["os_event"] == event]
        assert abs((split[ids] == "validation").mean() - 0.3) < 0.05


def test_adding_or_removing_patients_moves_no_other_patient():
    """The issue's case: 40 patients, then 5 more (and 3 fewer): nobody else moves."""
    table = clinical(40, seed=3)
    before = make_split(table, 0.3, seed=42)
    more = pd.concat([table, clinical(45, seed=4).iloc[40:]])
    after = make_split(more, 0.3, seed=42)
    assert split_changes(before, after).empty
    assert after.loc[before.index].equals(before)
    fewer = make_split(table.iloc[3:], 0.3, seed=42)
    assert fewer.equals(before.iloc[3:])


def test_frozen_split_is_kept_and_new_patients_get_the_automatic_one(tmp_path):
    table = clinical(20)
    automatic = make_split(table, 0.3, seed=5)
    frozen = (automatic == "train").map({True: "validation", False: "train"}).iloc[:10]
    split = make_split(table, 0.3, seed=5, frozen=frozen)
    assert split.iloc[:10].equals(frozen.rename("split"))
    assert split.iloc[10:].equals(automatic.iloc[10:])
    path = tmp_path / "split.tsv"
    write_tsv(frozen.rename("split").rename_axis("patient_id").to_frame(), path)
    config = {"split": {"file": str(path), "validation_fraction": 0.3}, "seed": 5}
    run_split, warnings = split_for_run(config, table, tmp_path / "none.tsv")
    assert run_split == split.to_dict()
    assert len(warnings) == 1 and "10 patient(s) are not in the frozen split file" in warnings[0]


def test_a_changed_split_is_announced(tmp_path):
    table = clinical(30)
    recorded = tmp_path / "split.tsv"
    write_tsv(make_split(table, 0.3, seed=1).rename_axis("patient_id").to_frame(), recorded)
    config = {"split": {"file": "", "validation_fraction": 0.3}, "seed": 1}
    assert split_for_run(config, table, recorded)[1] == []
    config["seed"] = 2
    _, warnings = split_for_run(config, table, recorded)
    assert len(warnings) == 1
    assert "changes the train/validation split of" in warnings[0]
    assert "set split.file to the copy" in warnings[0]


def test_frozen_split_file_errors(tmp_path):
    path = tmp_path / "split.tsv"
    path.write_text("patient_id\tsplit\nP1\ttest\n", encoding="utf-8")
    with pytest.raises(ValueError, match="must be train or validation for patient.*P1"):
        read_frozen_split(path)


def test_covariates_are_imputed_from_training_patients_only():
    table = pd.DataFrame(
        {"age": ["50", "", "70", "", "1000"], "stage": ["I", "II", "", "", "I"],
         "site": ["a", "b", "", "b", "b"]},
        index=["t1", "t2", "t3", "v1", "v2"],
    )
    covariates = [{"name": "age", "type": "numeric"},
                  {"name": "stage", "type": "categorical", "reference": "I"}]
    filled, report = impute_covariates(table, covariates, ["site"], ["t1", "t2", "t3"])
    assert filled.loc["t2", "age"] == 60.0 and filled.loc["v1", "age"] == 60.0  # not 70
    assert filled.loc["v1", "stage"] == "I"  # tie I/II in training: first in sorted order
    assert filled.loc["t3", "site"] == "a"
    counts = report.set_index("covariate")
    assert counts.loc["age", "n_train_filled"] == 1 and counts.loc["age", "n_validation_filled"] == 1
    assert counts.loc["site", "kind"] == "categorical"


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


def test_a_split_part_without_events_is_an_error():
    table = clinical(30, seed=2)
    table["os_event"] = 0
    table.loc[table.index[0], "os_event"] = 1  # one event: one part of the split has none
    with pytest.raises(ValueError, match=r"patients \(\d+\) have no os_event events"):
        make_split(table, 0.3, seed=1, event_columns=["os_event"])


def test_every_declared_event_column_needs_events_in_each_part(tmp_path):
    table = clinical(30, seed=2)
    table["dfs_status"] = 0
    table.loc[table.index[0], "dfs_status"] = 1
    assert make_split(table, 0.3, seed=1, event_columns=["os_event"]).notna().all()
    config = {"split": {"file": "", "validation_fraction": 0.3}, "seed": 1, "endpoints": {
        "os": {"time": "os_time", "event": "os_event", "not_after": None},
        "dfs": {"time": "dfs_months", "event": "dfs_status", "not_after": "os"},
    }}
    with pytest.raises(ValueError, match=r"patients \(\d+\) have no dfs_status events"):
        split_for_run(config, table, tmp_path / "none.tsv")


def test_categorical_levels_must_occur_among_training_patients(tmp_path):
    table = clinical(40, seed=3).assign(stage="I")
    config = {"split": {"file": "", "validation_fraction": 0.3}, "seed": 1, "endpoints": {},
              "covariates": [{"name": "stage", "type": "categorical", "reference": "I"}]}
    split, _ = split_for_run(config, table, tmp_path / "none.tsv")
    validation = [pid for pid, part in split.items() if part == "validation"]
    table.loc[validation[0], "stage"] = "IV"
    with pytest.raises(ValueError, match=rf"^patient {validation[0]}: level 'IV' of covariate "
                       r"'stage' occurs in no training patient \(training levels: I\)"):
        split_for_run(config, table, tmp_path / "none.tsv")
    table["stage"] = ["II" if split[pid] == "train" else "I" for pid in table.index]
    with pytest.raises(ValueError, match=r"reference level 'I' has no training patient"):
        split_for_run(config, table, tmp_path / "none.tsv")


def test_outcomes_take_standard_names_from_the_declared_columns():
    sheet = pd.DataFrame(
        {"os_time": [12.5, 30.0], "os_event": [1, 0], "dfs_months": [6.0, 30.0],
         "dfs_status": ["1", "0"], "pfs_time": [1.0, 2.0], "pfs_event": [1, 1]},
        index=pd.Index(["P1", "P2"], name="patient_id"),
    )
    split = pd.Series({"P1": "train", "P2": "validation"})
    endpoints = {"os": {"time": "os_time", "event": "os_event", "not_after": None},
                 "dfs": {"time": "dfs_months", "event": "dfs_status", "not_after": "os"}}
    table = outcomes_table(sheet, split, endpoints)
    assert list(table.columns) == ["split", "os_time", "os_event", "dfs_time", "dfs_event"]
    assert table.index.name == "patient_id"
    assert table["dfs_time"].tolist() == [6.0, 30.0]
    assert table["dfs_event"].tolist() == [1, 0] and table["dfs_event"].dtype.kind == "i"
    assert table["split"].tolist() == ["train", "validation"]
    assert outcome_endpoints(table) == ["os", "dfs"]
