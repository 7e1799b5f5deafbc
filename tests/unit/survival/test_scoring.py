"""The frozen pipeline applied to external cohorts (radpath.survival.scoring): clinical encoding with
the training levels and fill values, ComBat for seen and unseen scanners, risk groups."""

import numpy as np
import pandas as pd
import pytest

from radpath.inputs.cohort import impute_covariates
from radpath.inputs.configuration import scorable_models
from radpath.inputs.sheets import training_overlap
from radpath.radiomics.harmonize import HarmonizationError, apply_combat, fit_combat
from radpath.survival.modeling import ModelInputError, categorical_levels, encode_clinical
from radpath.survival.scoring import (
    EXTERNAL,
    evaluation_risks,
    external_clinical,
    external_harmonized,
    training_levels,
    training_medians,
)

COVARIATES = [{"name": "age", "type": "numeric"},
              {"name": "stage", "type": "categorical", "reference": "I"}]
ENDPOINTS = {"os": {"time": "os_time", "event": "os_event"}}


def clinical_sheet(ids, ages, stages):
    return pd.DataFrame({"patient_id": ids, "os_time": np.arange(1.0, len(ids) + 1),
                         "os_event": [1, 0] * (len(ids) // 2) + [1] * (len(ids) % 2),
                         "age": ages, "stage": stages}, index=pd.Index(ids))


def run_tables():
    """A run's training clinical table as cohort_tables writes it."""
    run = clinical_sheet([f"P{i}" for i in range(6)], [50, 60, np.nan, 70, 40, 65],
                         ["I", "II", "III", "II", "II", ""])
    filled, imputation = impute_covariates(run, COVARIATES, ["age"], list(run.index))
    encoded = encode_clinical(filled, COVARIATES, categorical_levels(filled, COVARIATES))
    return filled, imputation, encoded


def test_external_clinical_uses_training_fill_values_and_levels():
    filled, imputation, encoded = run_tables()
    external = clinical_sheet(["X1", "X2", "X3"], [np.nan, 80, 30], ["III", "", "I"])

    outcomes, ext_encoded, batch_covariates, counts = external_clinical(
        external, COVARIATES, ENDPOINTS, imputation, list(encoded.columns), ["age"])

    assert list(ext_encoded.columns) == ["age", "stage[II]", "stage[III]"]
    assert training_levels(encoded.columns, COVARIATES) == {"stage": ["I", "II", "III"]}
    # Blank age: the training median (60), not the external patients' (55).
    assert ext_encoded.loc["X1", "age"] == filled["age"].median() == 60.0
    # Blank stage: the training mode (II), whatever the external cohort's levels.
    assert ext_encoded.loc["X2"].tolist() == [80.0, 1.0, 0.0]
    assert ext_encoded.loc["X3"].tolist() == [30.0, 0.0, 0.0]
    assert (outcomes["split"] == EXTERNAL).all()
    assert outcomes["os_event"].tolist() == [1, 0, 1]
    assert batch_covariates["age"].tolist() == [60.0, 80.0, 30.0]
    assert dict(zip(counts["covariate"], counts["n_filled"], strict=True)) == {"age": 1, "stage": 1}


def test_external_level_unseen_in_training_names_the_patient():
    _, imputation, encoded = run_tables()
    external = clinical_sheet(["X1", "X2"], [50, 60], ["I", "IV"])

    with pytest.raises(ModelInputError, match=r"patient X2: level 'IV' of 'stage'"):
        external_clinical(external, COVARIATES, ENDPOINTS, imputation, list(encoded.columns),
                          ["age"])


def combat_run(seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"P{i:02d}" for i in range(30)]
    batch = pd.Series(np.repeat(["A", "B"], 15), index=ids)
    raw = pd.DataFrame(rng.normal(size=(30, 6)) + np.where(batch.to_numpy() == "B", 2.0, 0.0)[:, None],
                       index=pd.Index(ids, name="patient_id"),
                       columns=[f"f{j}" for j in range(6)])
    raw.iloc[3, 2] = np.nan
    split = pd.Series(["train"] * 24 + ["validation"] * 6, index=ids)
    return raw, batch, split


def test_external_radiomics_reproduce_the_runs_validation_patients():
    raw, batch, split = combat_run()
    medians = training_medians(raw, split)
    train = split.index[split == "train"]
    model = fit_combat(raw.loc[train].fillna(medians), batch.loc[train])
    validation = split.index[split == "validation"]
    expected = apply_combat(model, raw.loc[validation].fillna(medians), batch.loc[validation])
    external = raw.loc[validation].copy()
    external.loc[validation[0], "f1"] = np.nan  # filled with the training median

    harmonized, treatment = external_harmonized(raw.loc[validation], medians, model,
                                                batch, None, "error")

    pd.testing.assert_frame_equal(harmonized, expected)
    assert treatment["treatment"].str.startswith("training estimates").all()
    filled, _ = external_harmonized(external, medians, model, batch, None, "error")
    assert filled.loc[validation[0], "f1"] == apply_combat(
        model, external.fillna(medians), batch.loc[validation]).loc[validation[0], "f1"]


def test_unseen_scanner_is_an_error_by_default_and_estimated_on_request():
    raw, batch, split = combat_run()
    medians = training_medians(raw, split)
    train = split.index[split == "train"]
    model = fit_combat(raw.loc[train].fillna(medians), batch.loc[train])
    external = raw.loc[split.index[split == "validation"]] * 1.5 + 3.0
    new_batch = pd.Series("C", index=external.index)

    with pytest.raises(HarmonizationError, match=r"batch\(es\) C .*P24.*score.unseen_batches"):
        external_harmonized(external, medians, model, new_batch, None, "error")
    harmonized, treatment = external_harmonized(external, medians, model, new_batch, None,
                                                "estimate")
    assert treatment.to_dict("records") == [
        {"batch": "C", "n_patients": 6, "treatment": "estimated from this cohort's 6 patients"}]
    # The new scanner's shift is removed: its harmonized features sit with the training ones.
    harmonized_train = apply_combat(model, raw.loc[train].fillna(medians), batch.loc[train])
    assert abs(harmonized.mean().mean() - harmonized_train.mean().mean()) < 0.5
    assert abs(external.mean().mean() - harmonized_train.mean().mean()) > 2.0


def test_evaluation_table_keeps_training_patients_apart_from_external_ones():
    run_risk = pd.DataFrame({"split": ["train", "train", "validation"], "time": [1.0, 2, 3],
                             "event": [1, 0, 1], "risk": [0.1, 0.2, 0.3]},
                            index=pd.Index(["P1", "P2", "P3"], name="patient_id"))
    external = pd.DataFrame({"split": [EXTERNAL, EXTERNAL], "time": [4.0, 5], "event": [0, 1],
                             "risk": [0.5, -0.5], "risk_group": ["high", "low"]},
                            index=pd.Index(["P1", "X2"], name="patient_id"))
    table = evaluation_risks(run_risk, external)
    assert table.index.tolist() == ["train:P1", "train:P2", "P1", "X2"]
    assert table["split"].tolist() == ["train", "train", "validation", "validation"]
    assert "risk_group" not in table.columns


def test_models_that_need_slides_are_not_scored_without_them():
    models = {"clinical": {"clinical": True, "blocks": []},
              "pathosig": {"clinical": False, "blocks": ["pathomics_hpc"]}}
    assert scorable_models(models, has_slides=True) == (["clinical", "pathosig"], {})
    scored, unscored = scorable_models(models, has_slides=False)
    assert scored == ["clinical"] and "slides" in unscored["pathosig"]


def test_external_patient_with_a_training_patients_ct_is_a_problem(tmp_path):
    for name in ("a.nii.gz", "b.nii.gz", "m.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    run = pd.DataFrame({"ct": [str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")],
                        "mask": [str(tmp_path / "m.nii.gz")] * 2}, index=["P1", "P2"])
    external = pd.DataFrame({"ct": [str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")],
                             "mask": [str(tmp_path / "x.nii.gz")] * 2}, index=["X1", "X2"])
    problems = training_overlap(external, run, {"P1": "train", "P2": "validation"}, "hosp")
    assert problems == [f"score.cohorts.hosp: patient X1's ct {tmp_path / 'a.nii.gz'} is "
                        "training patient P1's: the models were fitted on it"]
