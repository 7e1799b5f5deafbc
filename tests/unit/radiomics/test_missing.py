"""radpath.radiomics.missing: features some patients lack are listed, and dropped for the
whole cohort or imputed, never filled silently."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from radpath.radiomics.missing import (
    DROPPED,
    DROPPED_NO_TRAINING_VALUE,
    IMPUTED,
    external_missing,
    handle_missing_features,
    per_patient_summary,
)

LOG = [f"log-sigma-1-0-mm-3D_glcm_F{k}" for k in range(3)]
ORIGINAL = [f"original_glcm_F{k}" for k in range(4)]


def cohort() -> tuple[pd.DataFrame, pd.Series]:
    """Five patients; T3 (training) lacks its LoG features and V1 (validation) one original
    value."""
    rng = np.random.default_rng(0)
    ids = ["T1", "T2", "T3", "V1", "V2"]
    matrix = pd.DataFrame(rng.normal(size=(5, 7)), index=pd.Index(ids, name="patient_id"),
                          columns=ORIGINAL + LOG)
    matrix.loc["T3", LOG] = np.nan
    matrix.loc["V1", ORIGINAL[1]] = np.nan
    split = pd.Series(["train", "train", "train", "validation", "validation"], index=ids)
    return matrix, split


def test_drop_removes_every_feature_missing_for_any_patient_and_lists_each_value():
    matrix, split = cohort()
    kept, missing = handle_missing_features(matrix, "drop", split)
    assert list(kept.columns) == [ORIGINAL[0], ORIGINAL[2], ORIGINAL[3]]
    assert kept.loc["T3"].equals(matrix.loc["T3", kept.columns])  # values untouched
    assert sorted(zip(missing["patient_id"], missing["feature"], strict=True)) == sorted(
        [("T3", f) for f in LOG] + [("V1", ORIGINAL[1])])
    assert set(missing["action"]) == {DROPPED}
    assert set(missing["image_type"]) == {"log-sigma-1-0-mm-3D", "original"}


def test_impute_keeps_the_features_and_drops_only_those_no_training_patient_has():
    matrix, split = cohort()
    matrix.loc[["T1", "T2"], LOG[0]] = np.nan  # now missing for every training patient
    kept, missing = handle_missing_features(matrix, "impute", split)
    assert list(kept.columns) == [c for c in matrix.columns if c != LOG[0]]
    assert kept.isna().sum().sum() == 3  # T3: two LoG values; V1: one (training medians fill)
    action = missing.set_index(["patient_id", "feature"])["action"]
    assert action[("T3", LOG[1])] == IMPUTED and action[("V1", ORIGINAL[1])] == IMPUTED
    assert action[("T1", LOG[0])] == DROPPED_NO_TRAINING_VALUE


def test_a_complete_matrix_is_returned_as_is():
    matrix, split = cohort()
    complete = matrix.dropna(axis=1)
    kept, missing = handle_missing_features(complete, "drop", split)
    assert kept.equals(complete) and missing.empty


def test_nothing_left_and_unknown_policies_are_clear_errors():
    matrix, split = cohort()
    matrix.loc["V2", :] = np.nan
    with pytest.raises(ValueError, match=r"every one of the 7 features is missing for at "
                                         r"least one patient \(.*V2.*\)"):
        handle_missing_features(matrix, "drop", split)
    with pytest.raises(ValueError, match="radiomics.missing_features must be one of"):
        handle_missing_features(matrix, "median", split)


def test_per_patient_summary_groups_by_image_type():
    matrix, split = cohort()
    _, missing = handle_missing_features(matrix, "drop", split)
    summary = per_patient_summary(missing, matrix.columns, matrix.index)
    assert summary.loc["T3"].tolist() == [3, "log-sigma-1-0-mm-3D 3/3"]
    assert summary.loc["V1"].tolist() == [1, f"original 1/4 ({ORIGINAL[1]})"]
    assert summary.loc["T1"].tolist() == [0, ""]


def test_external_patients_missing_a_run_feature_are_excluded_or_imputed():
    matrix, _ = cohort()
    run_features = [ORIGINAL[0], ORIGINAL[1]] + LOG[:1]
    kept, missing, excluded = external_missing(matrix, run_features, "drop")
    assert list(excluded.index) == ["T3", "V1"]
    assert "1 of the run's radiomics features could not be computed " \
           "(log-sigma-1-0-mm-3D (1))" in excluded.loc["T3", "reason"]
    assert list(kept.index) == ["T1", "T2", "V2"]
    kept, missing, excluded = external_missing(matrix, run_features, "impute")
    assert excluded.empty and kept.equals(matrix)
    assert set(missing["action"]) == {IMPUTED} and len(missing) == 2
