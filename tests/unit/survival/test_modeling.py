"""Tests for radpath.survival.modeling: Cox reference values, train-only fitting, leakage, optimism, encoding."""

import functools
import json

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.datasets import load_rossi
from survival_data import NULL_FORCED, NULL_SELECTION_CFG, null_cohort

from radpath.inputs.configuration import default_config
from radpath.survival import modeling as mdl
from radpath.survival.metrics import harrell_c

# The sparser 1se rule keeps these planted-signal tests strict.
SELECTION_CFG = {**default_config()["selection"], "alpha_rule": "1se"}
COX_CFG = {"penalizer": 0.01}
ROSSI_COVARIATES = ["fin", "age", "race", "wexp", "mar", "paro", "prio"]
# lifelines documentation, CoxPHFitter on the Rossi recidivism data.
ROSSI_PUBLISHED = {"fin": -0.379, "age": -0.057, "race": 0.314, "wexp": -0.150, "mar": -0.434,
                   "paro": -0.085, "prio": 0.091}  # fmt: skip


def synthetic_cohort(seed, n, p, informative=(), beta=1.0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, p)), columns=[f"x{i:03d}" for i in range(p)])
    X.index = [f"P{i:04d}" for i in range(n)]
    lp = beta * X[list(informative)].sum(axis=1).to_numpy() if informative else np.zeros(n)
    event_time = rng.exponential(np.exp(-lp))
    censor_time = rng.exponential(2.0, n)
    return X, np.minimum(event_time, censor_time), (event_time <= censor_time).astype(int)


# --------------------------------------------------------------------------- Cox reference


@pytest.fixture(scope="module")
def rossi_fit():
    rossi = load_rossi()
    model = mdl.fit_model(
        rossi[ROSSI_COVARIATES], rossi["week"], rossi["arrest"], ROSSI_COVARIATES, [],
        SELECTION_CFG, {"penalizer": 0.0}, seed=0,
    )  # fmt: skip
    return rossi, model


def test_rossi_coefficients_equal_lifelines_and_published_values(rossi_fit):
    rossi, model = rossi_fit
    reference = CoxPHFitter().fit(rossi, "week", "arrest")
    table = model.coefficients.set_index("feature")
    assert list(table.index) == ROSSI_COVARIATES
    for name in ROSSI_COVARIATES:
        original_scale = table.at[name, "coef"] / table.at[name, "train_sd"]
        assert table.at[name, "coef_per_unit"] == pytest.approx(original_scale)
        assert original_scale == pytest.approx(reference.params_[name], abs=1e-4)
        assert original_scale == pytest.approx(ROSSI_PUBLISHED[name], abs=1e-3)
        # Wald p does not depend on the scale of the covariate.
        assert table.at[name, "p"] == pytest.approx(reference.summary.at[name, "p"], rel=1e-3)
    assert table.at["fin", "hr"] == pytest.approx(np.exp(table.at["fin", "coef"]))
    assert table.at["fin", "hr_lower"] < table.at["fin", "hr"] < table.at["fin", "hr_upper"]


def test_rossi_concordance_equals_lifelines(rossi_fit):
    rossi, model = rossi_fit
    c = harrell_c(rossi["week"], rossi["arrest"], model.predict(rossi))
    assert c == pytest.approx(CoxPHFitter().fit(rossi, "week", "arrest").concordance_index_)
    assert c == pytest.approx(0.640, abs=1e-3)


def test_rossi_baseline_hazard_and_survival_equal_lifelines(rossi_fit):
    """Breslow's baseline cumulative hazard and each patient's predicted survival agree with
    lifelines' CoxPHFitter (whose baseline is at the covariate means, as ours)."""
    rossi, model = rossi_fit
    reference = CoxPHFitter().fit(rossi, "week", "arrest")
    H0 = reference.baseline_cumulative_hazard_.iloc[:, 0]
    at_events = H0.loc[model.baseline_time]
    np.testing.assert_allclose(model.baseline_cumhaz, at_events.to_numpy(), rtol=1e-6)
    times = [1.0, 10.0, 26.0, 52.0]
    expected = reference.predict_survival_function(rossi, times=times).T.to_numpy()
    np.testing.assert_allclose(model.predict_survival(rossi, times), expected, rtol=1e-6)
    # Between event times the survival stays at its last step (lifelines would interpolate).
    np.testing.assert_array_equal(model.predict_survival(rossi, [26.5]),
                                  model.predict_survival(rossi, [26.0]))
    assert model.follow_up == 52.0
    assert np.isnan(model.predict_survival(rossi.iloc[:3], [52.5])).all()
    restored = mdl.FittedModel.from_dict(json.loads(json.dumps(model.to_dict())))
    np.testing.assert_array_equal(restored.predict_survival(rossi, times),
                                  model.predict_survival(rossi, times))


def test_model_checks_equal_lifelines_proportional_hazards_test(rossi_fit):
    from lifelines.statistics import proportional_hazard_test

    from radpath.survival.fit import model_checks

    rossi, model = rossi_fit
    checks = model_checks(model, rossi[ROSSI_COVARIATES], rossi["week"].to_numpy(),
                          rossi["arrest"].to_numpy(), ROSSI_COVARIATES, [], {"penalizer": 0.0})
    reference = proportional_hazard_test(CoxPHFitter().fit(rossi, "week", "arrest"), rossi,
                                         time_transform="rank").summary  # fmt: skip
    ours = {t["feature"]: t["p"] for t in checks["proportional_hazards"]}
    assert set(ours) == set(ROSSI_COVARIATES)
    for name in ROSSI_COVARIATES:
        assert ours[name] == pytest.approx(reference.at[name, "p"], rel=1e-6)
    assert ours["age"] < 0.001  # lifelines' documented violation
    assert checks["training_events"] == 114 and checks["events_per_candidate"] == 114 / 7


def test_breslow_without_covariates_is_nelson_aalen():
    from lifelines import NelsonAalenFitter

    _, time, event = synthetic_cohort(5, 50, 1)
    time = np.round(time, 1)  # ties
    event_times, cumhaz = mdl.breslow_cumulative_hazard(time, event, np.zeros(50))
    reference = NelsonAalenFitter(nelson_aalen_smoothing=False).fit(time, event)
    expected = reference.cumulative_hazard_.iloc[:, 0].loc[event_times].to_numpy()
    np.testing.assert_allclose(cumhaz, expected, rtol=1e-10)


# --------------------------------------------------------------------------- fitted model


@pytest.fixture(scope="module")
def signal_split():
    X, time, event = synthetic_cohort(1, 300, 60, informative=("x001", "x002"))
    X = X.assign(age=np.random.default_rng(1).normal(60, 8, 300))
    train, valid = slice(0, 200), slice(200, 300)
    model = mdl.fit_model(
        X.iloc[train], time[train], event[train], ["age"],
        [c for c in X.columns if c != "age"], SELECTION_CFG, COX_CFG, seed=3,
    )  # fmt: skip
    return X, time, event, train, valid, model


def test_fit_model_finds_signal_and_validates(signal_split):
    X, time, event, train, valid, model = signal_split
    assert model.features[0] == "age"
    assert {"x001", "x002"} <= set(model.features)
    c_valid = harrell_c(time[valid], event[valid], model.predict(X.iloc[valid]))
    assert c_valid > 0.7
    assert model.selection_log["step"].iloc[-1] == "max_features"


def test_predict_uses_training_statistics_only(signal_split):
    X, time, event, train, valid, model = signal_split
    train_x = X.iloc[train]
    for name in model.features:
        assert model.medians[name] == pytest.approx(train_x[name].median())
        assert model.means[name] == pytest.approx(train_x[name].mean())
        assert model.sds[name] == pytest.approx(train_x[name].std(ddof=0))
    # A missing value is replaced by the training median before standardizing.
    row = X.iloc[[250]].copy()
    name = model.features[1]
    row[name] = np.nan
    imputed = row.copy()
    imputed[name] = train_x[name].median()
    assert model.predict(row) == pytest.approx(model.predict(imputed))
    # Validation patients are scaled with the training mean and SD, not their own.
    table = model.coefficients.set_index("feature")
    valid_x = X.iloc[valid][model.features]
    expected = ((valid_x - train_x[model.features].mean()) / table["train_sd"]) @ table["coef"]
    np.testing.assert_allclose(model.predict(X.iloc[valid]), expected, rtol=1e-10)
    # The linear predictor is centred on the training patients.
    assert model.predict(train_x).mean() == pytest.approx(0.0, abs=1e-10)


def test_predict_names_missing_and_non_numeric_columns(signal_split):
    X, _, _, _, valid, model = signal_split
    name = model.features[1]
    with pytest.raises(mdl.ModelInputError, match=f"missing from the data: \\['{name}'\\]"):
        model.predict(X.iloc[valid].drop(columns=name))
    bad = X.iloc[valid].astype({name: object})
    bad.loc["P0205", name] = "n/a"
    with pytest.raises(mdl.ModelInputError, match=f"patient P0205: .* column '{name}'"):
        model.predict(bad)


def test_model_round_trips_through_json(signal_split):
    X, *_, model = signal_split
    restored = mdl.FittedModel.from_dict(json.loads(json.dumps(model.to_dict())))
    np.testing.assert_allclose(restored.predict(X), model.predict(X), rtol=1e-12)
    assert restored.features == model.features and restored.alpha == model.alpha
    pd.testing.assert_frame_equal(restored.coefficients, model.coefficients)
    pd.testing.assert_frame_equal(restored.selection_log, model.selection_log)
    pd.testing.assert_frame_equal(restored.selection_by_block, model.selection_by_block)
    assert set(model.selection_by_block["block"]) == {"clinical", "candidates"}


def test_model_without_features_predicts_zero():
    X, time, event = synthetic_cohort(2, 60, 3)
    X[:] = 1.0  # every candidate constant: nothing can be selected
    model = mdl.fit_model(X, time, event, [], list(X.columns), SELECTION_CFG, COX_CFG, seed=0)
    assert model.features == [] and model.coefficients.empty
    assert model.predict(X).tolist() == [0.0] * 60
    assert harrell_c(time, event, model.predict(X)) == 0.5
    restored = mdl.FittedModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert restored.predict(X).tolist() == [0.0] * 60


def test_column_listed_as_forced_and_candidate_is_an_error():
    X, time, event = synthetic_cohort(2, 40, 3)
    with pytest.raises(mdl.ModelInputError, match="listed twice.*x001"):
        mdl.fit_model(X, time, event, ["x001"], ["x001", "x002"], SELECTION_CFG, COX_CFG, 0)


# --------------------------------------------------------------------------- honesty


@pytest.fixture(scope="module")
def permuted_outcome_fits():
    """Models fitted on training patients whose outcomes were permuted relative to features.

    Five forced (unpenalized) columns make sure each model has features to overfit with.
    """
    fits = []
    for seed in (11, 12, 13):
        X, time, event = synthetic_cohort(seed, 400, 100, informative=("x000", "x001", "x002"))
        perm = np.random.default_rng(seed).permutation(400)
        time, event = time[perm], event[perm]
        train, valid = slice(0, 250), slice(250, 400)
        forced = ["x000", "x001", "x002", "x003", "x004"]
        candidates = list(X.columns[5:])
        model = mdl.fit_model(
            X.iloc[train], time[train], event[train], forced, candidates, SELECTION_CFG,
            COX_CFG, seed,
        )  # fmt: skip
        apparent = harrell_c(time[train], event[train], model.predict(X.iloc[train]))
        validation = harrell_c(time[valid], event[valid], model.predict(X.iloc[valid]))
        fits.append((model, apparent, validation))
    return fits


def test_permuted_outcomes_do_not_validate(permuted_outcome_fits):
    """Leakage check: with outcomes unrelated to the features, validation C must be ~0.5."""
    validation = [c for _, _, c in permuted_outcome_fits]
    assert all(len(model.features) >= 5 for model, _, _ in permuted_outcome_fits)
    assert all(abs(c - 0.5) < 0.1 for c in validation)
    assert abs(np.mean(validation) - 0.5) < 0.05
    # The models did fit noise on their own training patients.
    assert all(apparent > c for _, apparent, c in permuted_outcome_fits)


def test_optimism_correction_lowers_c_on_noise():
    X, time, event = synthetic_cohort(21, 80, 30)
    fit = functools.partial(
        mdl.fit_model, forced=["x000", "x001", "x002"], candidates=list(X.columns[3:]),
        selection_cfg=SELECTION_CFG, cox_cfg=COX_CFG, seed=0,
    )  # fmt: skip
    result = mdl.optimism_corrected_c(X, time, event, fit, B=10, seed=1)
    assert result["B_used"] == 10
    assert result["apparent_c"] > 0.5
    assert result["optimism"] > 0
    assert result["corrected_c"] == pytest.approx(result["apparent_c"] - result["optimism"])
    assert result["corrected_c"] < result["apparent_c"]
    assert abs(result["corrected_c"] - 0.5) < abs(result["apparent_c"] - 0.5)
    again = mdl.optimism_corrected_c(X, time, event, fit, B=10, seed=1)
    assert again == result


def fit_noise_or_fail(X, time, event):
    """fit_model with three forced columns, whose refit 'fails to converge' on resamples (their
    rows come renumbered) with an even number of events. Module level: worker processes import
    it."""
    from lifelines.exceptions import ConvergenceError

    if isinstance(X.index, pd.RangeIndex) and event.sum() % 2 == 0:
        raise ConvergenceError("delta contains nan value(s). Convergence halted.")
    return mdl.fit_model(
        X, time, event, ["x000", "x001", "x002"], list(X.columns[3:]), SELECTION_CFG, COX_CFG, 0
    )


def test_parallel_optimism_equals_serial_and_counts_failed_refits():
    """Resamples refitted in 2 or 3 worker processes give the same per-resample optimism, in the
    same order, and the same result dict bit for bit as in one process; refits that fail are
    left out of B_used alike."""
    X, time, event = synthetic_cohort(21, 80, 30)
    rng = np.random.default_rng(1)
    resamples = [rng.integers(0, 80, 80) for _ in range(8)]
    serial = mdl._resample_optimisms(X, time, event, fit_noise_or_fail, resamples, threads=1)
    assert any(isinstance(value, str) for value in serial)
    assert any(not isinstance(value, str) for value in serial)
    for threads in (2, 3):
        parallel = mdl._resample_optimisms(X, time, event, fit_noise_or_fail, resamples, threads)
        assert parallel == serial
    one = mdl.optimism_corrected_c(X, time, event, fit_noise_or_fail, B=8, seed=1, threads=1)
    two = mdl.optimism_corrected_c(X, time, event, fit_noise_or_fail, B=8, seed=1, threads=2)
    assert json.dumps(one) == json.dumps(two)
    assert one["B_used"] == sum(not isinstance(value, str) for value in serial) < 8
    assert one["B_failed"] == 8 - one["B_used"] == sum(one["failures"].values())
    assert all(why.startswith("refit failed: ") for why in one["failures"])


def test_optimism_reuses_the_apparent_model(monkeypatch):
    """train_and_predict fits the apparent model once and hands it to the optimism bootstrap:
    1 + B fits in all, the same result as when the bootstrap refits it itself."""
    from radpath.survival import fit as survival_fit

    X, time, event = synthetic_cohort(21, 80, 30)
    outcomes = pd.DataFrame({"split": "train", "os_time": time, "os_event": event}, index=X.index)
    calls = []
    real_fit = survival_fit.fit_model

    def counting_fit(*args, **kwargs):
        calls.append(len(args[0]))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(survival_fit, "fit_model", counting_fit)
    model, _, optimism = survival_fit.train_and_predict(
        outcomes, X, ["x000", "x001", "x002"], list(X.columns[3:]), "os", SELECTION_CFG,
        COX_CFG, optimism_b=3, seed=1,
    )  # fmt: skip
    assert len(calls) == 1 + 3
    fit = functools.partial(
        mdl.fit_model, forced=["x000", "x001", "x002"], candidates=list(X.columns[3:]),
        selection_cfg=SELECTION_CFG, cox_cfg=COX_CFG, seed=1,
    )  # fmt: skip
    assert optimism == mdl.optimism_corrected_c(X, time, event, fit, B=3, seed=1)
    assert optimism["apparent_c"] == harrell_c(time, event, model.predict(X))


# --------------------------------------------------------------------------- null cohorts


def test_permuted_outcomes_never_crash_a_model_fit():
    """The demo's clinical_radiomics job died in Coxnet ("weights are too large") on permuted
    outcomes. Over 30 permutations of a null cohort shaped like it, every fit must finish (as
    the rule calls it, with config.yaml's defaults), fallbacks logged, forced features first.
    Before the fix 10 of these 30 fits raised ArithmeticError."""
    X, time, event = null_cohort(0)
    candidates = [c for c in X.columns if c not in NULL_FORCED]
    with_fallback = 0
    for seed in range(30):
        perm = np.random.default_rng(seed).permutation(len(X))
        model = mdl.fit_model(
            X, time[perm], event[perm], NULL_FORCED, candidates, NULL_SELECTION_CFG, COX_CFG, 42
        )
        log = model.selection_log.set_index("step")
        note = log.at["penalized_cox", "note"]
        assert model.features[:4] == NULL_FORCED and np.isfinite(model.predict(X)).all()
        if "no candidate kept" in note:
            assert model.features == NULL_FORCED and log.at["penalized_cox", "n_out"] == 0
        with_fallback += "Coxnet failed" in note
    assert with_fallback >= 5  # the fallbacks were exercised (10 of these 30 need one)


def test_refit_without_a_finite_fit_is_retried_with_a_ridge_penalty():
    """Forced columns only, no penalty: on these permuted outcomes the rare stage separates and
    lifelines cannot fit them; the refit moves to the next penalizer and says so."""
    from lifelines.exceptions import ConvergenceError

    X, time, event = null_cohort(0)
    perm = np.random.default_rng(7).permutation(len(X))
    time, event = time[perm], event[perm]
    Z = (X[NULL_FORCED] - X[NULL_FORCED].mean()) / X[NULL_FORCED].std(ddof=0)
    with pytest.raises(ConvergenceError):
        mdl.cox_refit(Z, time, event, 0.0)
    model = mdl.fit_model(X, time, event, NULL_FORCED, [], SELECTION_CFG, {"penalizer": 0.0}, 0)
    assert model.features == NULL_FORCED and np.isfinite(model.coef).all()
    row = model.selection_log.iloc[-1]
    assert (row["step"], row["n_in"], row["n_out"]) == ("cox_refit", 4, 4)
    assert row["note"].startswith("lifelines did not converge (")
    assert row["note"].endswith(
        "with penalizer 0 on 4 column(s); refitted with penalizer 0.01 on 4 column(s)"
    )
    expected = mdl.cox_refit(Z, time, event, 0.01)
    np.testing.assert_allclose(model.coef, expected["coef"], rtol=1e-10)


def test_refit_fallback_order_ends_with_the_forced_columns(monkeypatch):
    """A refit that fails whenever a candidate is in it: every penalizer on the selection first,
    then the forced columns alone."""
    from lifelines.exceptions import ConvergenceError

    real_refit, tried = mdl.cox_refit, []

    def refit(Z, time, event, penalizer):
        tried.append((list(Z.columns), penalizer))
        if "x001" in Z.columns:
            raise ConvergenceError("delta contains nan value(s). Convergence halted.")
        return real_refit(Z, time, event, penalizer)

    monkeypatch.setattr(mdl, "cox_refit", refit)
    X, time, event = synthetic_cohort(5, 80, 3, informative=("x001",))
    table, columns, row = mdl.refit_with_fallback(X, ["x000", "x001"], ["x000"], time, event, 0.0)
    assert tried == [(["x000", "x001"], p) for p in (0.0, 0.01, 0.1, 1.0)] + [(["x000"], 0.0)]
    assert columns == ["x000"] and list(table["feature"]) == ["x000"]
    assert row["step"] == "cox_refit" and (row["n_in"], row["n_out"]) == (2, 1)
    assert row["note"].endswith(
        "refitted with penalizer 0 on 1 column(s); selected candidates dropped: forced columns only"
    )
    table, columns, row = mdl.refit_with_fallback(X, ["x001"], [], time, event, 0.01)
    assert table is None and columns == [] and "null model" in row["note"]


# --------------------------------------------------------------------------- clinical encoding

COVARIATES = [
    {"name": "age", "type": "numeric"},
    {"name": "stage", "type": "categorical", "reference": "I"},
]


def clinical_table():
    return pd.DataFrame(
        {"age": [61, 70.5, None, 55], "stage": ["II", "I", "III", None]},
        index=pd.Index(["P1", "P2", "P3", "P4"], name="patient_id"),
    )


def test_encode_clinical_one_hot_against_reference():
    encoded = mdl.encode_clinical(clinical_table(), COVARIATES)
    assert list(encoded.columns) == ["age", "stage[II]", "stage[III]"]
    assert encoded.loc["P1"].tolist() == [61.0, 1.0, 0.0]
    assert encoded.loc["P2"].tolist() == [70.5, 0.0, 0.0]
    assert encoded.loc["P3", "stage[III]"] == 1.0 and np.isnan(encoded.at["P3", "age"])
    assert encoded.loc["P4", ["stage[II]", "stage[III]"]].isna().all()
    levels = mdl.categorical_levels(clinical_table(), COVARIATES)
    assert levels == {"stage": ["I", "II", "III"]}
    assert mdl.encoded_columns(COVARIATES, levels) == list(encoded.columns)


def test_encode_clinical_uses_training_levels_for_other_patients():
    levels = mdl.categorical_levels(clinical_table(), COVARIATES)
    validation = pd.DataFrame({"age": [50.0], "stage": ["III"]}, index=["V1"])
    encoded = mdl.encode_clinical(validation, COVARIATES, levels)
    assert list(encoded.columns) == ["age", "stage[II]", "stage[III]"]
    assert encoded.loc["V1"].tolist() == [50.0, 0.0, 1.0]
    unseen = pd.DataFrame({"age": [50.0], "stage": ["IV"]}, index=["V2"])
    with pytest.raises(mdl.ModelInputError, match="patient V2: level 'IV' of 'stage'"):
        mdl.encode_clinical(unseen, COVARIATES, levels)


def test_encode_clinical_reads_integer_like_levels():
    cfg = [{"name": "grade", "type": "categorical", "reference": 1}]
    table = pd.DataFrame({"grade": [1.0, 2.0, np.nan, 3.0]}, index=["A", "B", "C", "D"])
    encoded = mdl.encode_clinical(table, cfg)
    assert list(encoded.columns) == ["grade[2]", "grade[3]"]


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("age", "sixty", "patient P2: non-numeric value 'sixty' in column 'age'"),
        ("stage", "II", "reference level 'I' of 'stage' does not occur in the training"),
    ],
)
def test_encode_clinical_errors_name_patient_and_column(column, value, message):
    table = clinical_table().astype({"age": object})
    table.loc["P2", column] = value
    with pytest.raises(mdl.ModelInputError, match=message):
        mdl.encode_clinical(table, COVARIATES)
