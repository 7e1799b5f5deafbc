"""Repeated CV of a model's whole pipeline (radpath.survival.repeated_cv): every step refitted on
each fold's training patients, folds stratified and seeded, failures counted."""

import numpy as np
import pandas as pd
import pytest
import yaml

from radpath.inputs.configuration import cross_validated_models
from radpath.survival.repeated_cv import (
    CohortInputs,
    cross_validate,
    fold_design,
    summarize,
)
from smk import REPO

CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
COVARIATES = [{"name": "age", "type": "numeric"},
              {"name": "stage", "type": "categorical", "reference": "I"}]
HARMONIZATION = {"batch_column": "scanner", "covariates": ["age"], "parametric": True,
                 "single_patient_batch": "error"}
RADIOMICS = {"clinical": True, "blocks": ["radiomics"]}


def cohort(n=60, seed=0, signal=1.0):
    rng = np.random.default_rng(seed)
    ids = pd.Index([f"P{i:03d}" for i in range(n)], name="patient_id")
    scanner = pd.Series(np.where(np.arange(n) % 2, "A", "B"), index=ids)
    hazard = rng.normal(size=n)
    time = rng.exponential(24 * np.exp(-signal * hazard))
    event = (rng.random(n) < 0.7).astype(int)
    outcomes = pd.DataFrame({"split": "train", "os_time": time + 0.1, "os_event": event},
                            index=ids)
    # Text, as the sheet loader reads it: ComBat's covariate age must still be a number.
    clinical = pd.DataFrame({"age": rng.integers(40, 80, n).astype(str),
                             "stage": rng.choice(["I", "II", "III"], n)}, index=ids)
    raw = pd.DataFrame(rng.normal(size=(n, 8)), index=ids, columns=[f"f{j}" for j in range(8)])
    raw["f0"] = hazard + rng.normal(scale=0.3, size=n)
    raw += np.where(scanner.to_numpy() == "A", 3.0, 0.0)[:, None]  # a scanner effect
    raw.iloc[2, 3] = np.nan
    return CohortInputs(outcomes, clinical, {"radiomics": raw}, scanner)


def test_models_with_network_blocks_are_not_cross_validated():
    done, skipped = cross_validated_models(CONFIG["models"])
    assert "clinical_radiomics_pathomics" in done and "radiomics" in done
    assert set(skipped) == {"pathosig", "clinical_pathosig", "deep_ct", "clinical_deep_ct",
                            "clinical_radiomics_deep_ct"}
    assert "retrained in every fold" in skipped["deep_ct"]


def test_each_fold_fits_combat_and_imputation_on_its_training_patients_only():
    inputs = cohort()
    ids = list(inputs.outcomes.index)
    train, test = ids[:45], ids[45:]
    design, forced, candidates = fold_design(inputs, RADIOMICS, train, test, COVARIATES,
                                             HARMONIZATION, 16, 0)
    assert forced == ["age", "stage[II]", "stage[III]"]
    assert candidates == [f"radiomics:f{j}" for j in range(8)]
    # Another test fold's features change nothing the training patients get.
    inputs.blocks["radiomics"].loc[test] += 100.0
    moved, _, _ = fold_design(inputs, RADIOMICS, train, test, COVARIATES, HARMONIZATION, 16, 0)
    pd.testing.assert_frame_equal(moved.loc[train], design.loc[train])
    assert not np.allclose(moved.loc[test, candidates], design.loc[test, candidates])
    # The scanner effect is removed within the fold.
    harmonized = design.loc[train, "radiomics:f1"]
    scanner = inputs.batch.loc[train]
    assert abs(harmonized[scanner == "A"].mean() - harmonized[scanner == "B"].mean()) < 0.5


def test_a_level_only_the_test_fold_has_is_left_blank_not_an_error():
    inputs = cohort()
    ids = list(inputs.outcomes.index)
    inputs.clinical.loc[ids[50], "stage"] = "IV"
    design, _, _ = fold_design(inputs, {"clinical": True, "blocks": []}, ids[:45], ids[45:],
                               COVARIATES, HARMONIZATION, 16, 0)
    assert design.loc[ids[50], ["stage[II]", "stage[III]"]].isna().all()


def test_repeated_cv_finds_the_signal_is_seeded_and_partitions_every_repeat():
    inputs = cohort()
    args = (inputs, RADIOMICS, "os", COVARIATES, HARMONIZATION, CONFIG["selection"],
            CONFIG["cox"], 3, 2, 42)
    table = cross_validate(*args)
    assert len(table) == 6 and (table["note"] == "").all()
    assert (table.groupby("repeat")["n_test"].sum() == 60).all()
    assert table["harrell_c"].mean() > 0.65
    pd.testing.assert_frame_equal(cross_validate(*args), table)
    summary = summarize("os", "radiomics", table)
    assert summary["fits"] == 6 and summary["failed"] == 0 and summary["n"] == 60
    assert summary["repeat_lo"] <= summary["mean_c"] <= summary["repeat_hi"]
    # The corrected interval (Nadeau-Bengio): wider than the naive one by sqrt(1 + k r n_test
    # / n_train) = sqrt(1 + 6 / 2) = 2 with 3 folds, 2 repeats.
    from scipy import stats

    naive = stats.t.ppf(0.975, 5) * table["harrell_c"].std(ddof=1) / np.sqrt(6)
    half = (summary["ci_hi"] - summary["ci_lo"]) / 2
    assert half == pytest.approx(naive * 2, rel=0.02)
    assert summary["ci_lo"] < summary["mean_c"] < summary["ci_hi"]


def test_a_fold_that_cannot_be_fitted_is_counted_with_its_reason():
    inputs = cohort(n=30)
    inputs.batch.iloc[:] = "A"  # one scanner: ComBat cannot be fitted in any fold
    table = cross_validate(inputs, RADIOMICS, "os", COVARIATES, HARMONIZATION,
                           CONFIG["selection"], CONFIG["cox"], 3, 1, 0)
    assert table["harrell_c"].isna().all()
    assert table["note"].str.contains("at least 2 batches").all()
    summary = summarize("os", "radiomics", table)
    assert summary["failed"] == 3 and summary["failures"].endswith("training patients have only A: 3")
