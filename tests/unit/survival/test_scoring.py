"""The frozen pipeline applied to external cohorts (radpath.survival.scoring): clinical encoding with
the training levels and fill values, ComBat for seen and unseen scanners, risk groups, and the
external evaluation weighted with the cohort's own censoring distribution (against sksurv)."""

import numpy as np
import pandas as pd
import pytest
from sksurv.metrics import (
    brier_score,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from sksurv.util import Surv

from radpath.inputs.cohort import impute_covariates
from radpath.inputs.configuration import default_config, scorable_models
from radpath.inputs.sheets import training_overlap
from radpath.radiomics.harmonize import HarmonizationError, apply_combat, fit_combat
from radpath.survival.accuracy import IBS_GRID_POINTS, accuracy_table, horizon_problem
from radpath.survival.metrics import EXTERNAL_CENSORING, TRAINING_CENSORING
from radpath.survival.modeling import (
    ModelInputError,
    breslow_cumulative_hazard,
    categorical_levels,
    encode_clinical,
    fit_model,
    survival_from_lp,
)
from radpath.survival.scoring import (
    EXTERNAL,
    evaluation_risks,
    external_clinical,
    external_evaluation,
    external_harmonized,
    score_patients,
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


# --------------------------------------------------------------------------- external censoring


def follow_up_cohort(seed, n, prefix, admin, censor_scale, fade=None):
    """Cox-shaped outcomes on a risk factor x (and noise z), censored at random (exponential,
    mean ``censor_scale``) and administratively at ``admin``. With ``fade``, x stops mattering
    after that time (the model ranks early deaths better than late ones), so that weights
    growing with time visibly move Uno's C and AUC(t), not only the Brier scores."""
    rng = np.random.default_rng(seed)
    x, z = rng.normal(size=n), rng.normal(size=n)
    event_time = rng.exponential(2.0 * np.exp(-x))
    if fade is not None:
        late = event_time > fade
        event_time[late] = fade + rng.exponential(2.0, late.sum())
    censor_time = np.minimum(rng.exponential(censor_scale, n), admin)
    ids = pd.Index([f"{prefix}{i:03d}" for i in range(n)], name="patient_id")
    outcomes = pd.DataFrame({"os_time": np.minimum(event_time, censor_time),
                             "os_event": (event_time <= censor_time).astype(int)}, index=ids)
    return pd.DataFrame({"x": x, "z": z}, index=ids), outcomes


EXTERNAL_MODELS = {"clinical": ["x"], "combined": ["x", "z"]}
EXTERNAL_HORIZONS = [1.0, 2.0, 4.0]


def frozen_run_and_external_cohort(train, external, horizons=EXTERNAL_HORIZONS):
    """Cox models fitted on the training cohort (the run) and the external cohort scored with
    them as `snakemake score` does (score_patients)."""
    (X, outcomes), (X_ext, outcomes_ext) = train, external
    fitted, run_risks, external_risks = {}, {}, {}
    for name, covariates in EXTERNAL_MODELS.items():
        model = fit_model(X, outcomes["os_time"], outcomes["os_event"], covariates, [],
                          default_config()["selection"], {"penalizer": 0.0}, seed=0)
        run_risk = pd.DataFrame({"split": "train", "time": outcomes["os_time"],
                                 "event": outcomes["os_event"], "risk": model.predict(X)})
        fitted["os", name], run_risks["os", name] = model, run_risk
        external_risks["os", name] = score_patients(
            model, X_ext, outcomes_ext.assign(split=EXTERNAL), "os", horizons, run_risk)
    return fitted, run_risks, external_risks


def evaluate_external(folder, run, censoring):
    fitted, run_risks, external_risks = run
    plot_dirs = {name: folder / name for name in ("km", "calibration", "decision_curve")}
    for path in plot_dirs.values():
        path.mkdir(parents=True)
    plot_dirs["forest"] = folder / "forest.png"
    eval_cfg = {**default_config()["evaluation"], "bootstrap": 50,
                "horizons": EXTERNAL_HORIZONS, "decision_horizon": 1.0}
    return external_evaluation("hospital_b", ["os"], list(EXTERNAL_MODELS), run_risks,
                               external_risks, fitted, "clinical", eval_cfg, 0, "years",
                               plot_dirs, censoring=censoring)


@pytest.fixture(scope="module")
def external_follow_up(tmp_path_factory):
    """Training follow-up to 10 years with little censoring; an external hospital that stops
    following at 3 years and loses most patients before (censoring mean 1 year)."""
    train = follow_up_cohort(0, 200, "P", admin=10.0, censor_scale=40.0)
    external = follow_up_cohort(1, 150, "X", admin=3.0, censor_scale=1.0, fade=0.5)
    run = frozen_run_and_external_cohort(train, external)
    return {
        "train": train[1], "external": external[1], "run": run,
        "own": evaluate_external(tmp_path_factory.mktemp("own"), run, EXTERNAL_CENSORING),
        "training": evaluate_external(tmp_path_factory.mktemp("training"), run,
                                      TRAINING_CENSORING),
    }


def outcome_struct(outcomes: pd.DataFrame):
    return Surv.from_arrays(outcomes["os_event"].astype(bool), outcomes["os_time"])


def sksurv_metrics(survival_train, survival_test, risk: pd.DataFrame, tau, horizons):
    """Uno's C, AUC(t) and Brier scores of scikit-survival, censoring from ``survival_train``."""
    lp = risk["risk"].to_numpy()
    survival = risk[[f"survival_{h:g}" for h in horizons]].to_numpy()
    return {
        "uno_c": concordance_index_ipcw(survival_train, survival_test, lp, tau)[0],
        "auc": cumulative_dynamic_auc(survival_train, survival_test, lp, horizons)[0],
        "brier": brier_score(survival_train, survival_test, survival, horizons)[1],
    }


def radpath_metrics(tables, model: str, horizons):
    cindex = tables["cindex"].set_index("model")
    accuracy = tables["accuracy"][tables["accuracy"]["model"] == model].set_index("horizon")
    return {"uno_c": cindex.at[model, "uno_c"],
            "auc": accuracy.loc[horizons, "auc"].to_numpy(),
            "brier": accuracy.loc[horizons, "brier"].to_numpy()}


@pytest.mark.parametrize("model", list(EXTERNAL_MODELS))
def test_external_cohort_is_weighted_with_its_own_censoring_as_sksurv(external_follow_up, model):
    """Uno's C, AUC(t) and Brier scores of an external cohort equal scikit-survival's with the
    cohort as its own censoring reference (`survival_train` = the cohort) to 1e-10, and
    differ clearly from those weighted with the training patients' censoring (radpath's
    behaviour before issue 30), which scoring still reproduces when asked to."""
    external = outcome_struct(external_follow_up["external"])
    train = outcome_struct(external_follow_up["train"])
    risk = external_follow_up["run"][2]["os", model]
    horizons = EXTERNAL_HORIZONS[:2]
    own = radpath_metrics(external_follow_up["own"], model, horizons)
    tau = external_follow_up["own"]["cindex"].set_index("model").at[model, "tau"]
    expected = sksurv_metrics(external, external, risk, tau, horizons)
    with_training = sksurv_metrics(train, external, risk, tau, horizons)
    for name, value in own.items():
        np.testing.assert_allclose(value, expected[name], rtol=0, atol=1e-10, err_msg=name)
        # The training patients' weights give another value (as radpath did before).
        assert np.all(np.abs(np.asarray(with_training[name]) - expected[name]) > 0.015), name
    old = radpath_metrics(external_follow_up["training"], model, horizons)
    for name, value in old.items():
        np.testing.assert_allclose(value, with_training[name], rtol=0, atol=1e-10,
                                   err_msg=name)


def test_external_tables_and_horizons_name_the_cohorts_own_censoring(external_follow_up):
    tables = external_follow_up["own"]
    assert (tables["cindex"]["censoring"] == "external cohort").all()
    assert (tables["accuracy"]["censoring"] == "external cohort").all()
    assert (external_follow_up["training"]["cindex"]["censoring"] == "training patients").all()
    # 4 years: inside the training follow-up (10), beyond this hospital's (3).
    at_4 = tables["accuracy"][tables["accuracy"]["horizon"] == 4.0]
    assert at_4["note"].str.fullmatch(
        r"no external patient is followed beyond 4 \(the cohort's follow-up ends at 3: its "
        r"censoring weights are unknown after it\)").all()
    assert at_4["auc"].isna().all() and at_4["brier"].isna().all()
    assert set(tables["calibration"]["horizon"]) == {1.0, 2.0}
    # IPA and the integrated Brier score use the same weights: sksurv's, cohort as reference.
    outcomes, train = external_follow_up["external"], external_follow_up["train"]
    external = outcome_struct(outcomes)
    fitted = external_follow_up["run"][0]["os", "combined"]
    lp = external_follow_up["run"][2]["os", "combined"]["risk"].to_numpy()
    row = tables["accuracy"].set_index(["model", "horizon"]).loc[("combined", 2.0)]
    null = breslow_cumulative_hazard(train["os_time"], train["os_event"], np.zeros(len(train)))
    null_survival = survival_from_lp(np.zeros(lp.size), *null, [2.0], np.inf)
    model_survival = survival_from_lp(lp, fitted.baseline_time, fitted.baseline_cumhaz, [2.0],
                                      np.inf)
    briers = [brier_score(external, external, s, [2.0])[1][0]
              for s in (model_survival, null_survival)]
    assert row["ipa"] == pytest.approx(1 - briers[0] / briers[1], abs=1e-10)
    grid = np.linspace(0.0, 2.0, IBS_GRID_POINTS)
    assert grid[1] >= outcomes["os_time"].min()  # sksurv's grid must start inside follow-up
    survival = survival_from_lp(lp, fitted.baseline_time, fitted.baseline_cumhaz, grid[1:],
                                np.inf)
    first = brier_score(external, external, survival[:, :1], grid[1:2])[1][0]
    rest = integrated_brier_score(external, external, survival, grid[1:])
    assert row["ibs"] == pytest.approx((first * grid[1] / 2 + rest * (2.0 - grid[1])) / 2.0,
                                       abs=1e-10)


def test_a_horizon_past_the_training_follow_up_is_not_evaluable_on_a_longer_followed_cohort():
    """An external hospital following patients longer than the run: its own censoring weights
    are known at 4 years, but the frozen model predicts no survival after the training
    follow-up (3 years), so the horizon is not evaluable, with that reason."""
    train = follow_up_cohort(2, 120, "P", admin=3.0, censor_scale=20.0)
    external = follow_up_cohort(3, 100, "X", admin=8.0, censor_scale=20.0)
    fitted, run_risks, external_risks = frozen_run_and_external_cohort(train, external,
                                                                       [1.0, 2.0])
    risks = {m: evaluation_risks(run_risks["os", m], external_risks["os", m])
             for m in EXTERNAL_MODELS}
    baselines = {m: (fitted["os", m].baseline_time, fitted["os", m].baseline_cumhaz)
                 for m in EXTERNAL_MODELS}
    table = accuracy_table("os", risks, baselines, [2.0, 4.0], 20, 0, EXTERNAL_CENSORING)
    at_4 = table[table["horizon"] == 4.0]
    assert at_4["note"].str.fullmatch(
        r"training follow-up ends at 3 \(the frozen model predicts no survival after it\)").all()
    assert (table.loc[table["horizon"] == 2.0, "note"] == "").all()
    time, event = external[1]["os_time"], external[1]["os_event"]
    assert horizon_problem(time, event, 4.0, train[1]["os_time"], train[1]["os_event"],
                           TRAINING_CENSORING).startswith("training follow-up ends at")
    with pytest.raises(ValueError, match="censoring must be one of"):
        horizon_problem(time, event, 2.0, time, event, "validation patients")
