"""Tests for radpath.survival.accuracy against scikit-survival on the GBSG2 breast cancer data it ships,
and on simulated cohorts whose truth is known."""

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter
from sksurv.datasets import load_gbsg2
from sksurv.metrics import brier_score, cumulative_dynamic_auc, integrated_brier_score

from radpath.inputs.configuration import default_config
from radpath.survival import accuracy as acc
from radpath.survival import modeling as mdl
from radpath.survival.metrics import bootstrap_counts

COVARIATES = ["age", "estrec", "pnodes", "progrec", "tsize"]
HORIZONS = [365.0, 730.0, 1095.0, 1825.0]


@pytest.fixture(scope="module")
def gbsg2():
    """A Cox model fitted on the first 400 patients; the other 286 are the validation set."""
    X, y = load_gbsg2()
    X = X[COVARIATES].set_axis([f"P{i:03d}" for i in range(len(X))])
    time, event = y["time"], y["cens"].astype(int)
    train, valid = slice(0, 400), slice(400, None)
    model = mdl.fit_model(X.iloc[train], time[train], event[train], COVARIATES, [],
                          default_config()["selection"], {"penalizer": 0.0}, seed=0)  # fmt: skip
    return {
        "model": model,
        "baseline": (model.baseline_time, model.baseline_cumhaz),
        "train": (time[train], event[train]),
        "valid": (time[valid], event[valid]),
        "lp": model.predict(X.iloc[valid]),
        "survival": model.predict_survival(X.iloc[valid], HORIZONS),
        "y_train": y[train],
        "y_valid": y[valid],
    }


def test_cumulative_dynamic_auc_equals_sksurv(gbsg2):
    expected, _ = cumulative_dynamic_auc(gbsg2["y_train"], gbsg2["y_valid"], gbsg2["lp"], HORIZONS)
    ours = [acc.cumulative_dynamic_auc(*gbsg2["valid"], gbsg2["lp"], h, *gbsg2["train"])
            for h in HORIZONS]  # fmt: skip
    np.testing.assert_allclose(ours, expected, atol=1e-10)
    assert 0.6 < ours[1] < 0.8
    # Tied risks count one half, as in sksurv.
    tied = np.round(gbsg2["lp"], 1)
    expected, _ = cumulative_dynamic_auc(gbsg2["y_train"], gbsg2["y_valid"], tied, HORIZONS)
    ours = [acc.cumulative_dynamic_auc(*gbsg2["valid"], tied, h, *gbsg2["train"]) for h in HORIZONS]
    np.testing.assert_allclose(ours, expected, atol=1e-10)


def test_brier_and_integrated_brier_equal_sksurv(gbsg2):
    _, expected = brier_score(gbsg2["y_train"], gbsg2["y_valid"], gbsg2["survival"], HORIZONS)
    ours = [acc.brier_score(*gbsg2["valid"], gbsg2["survival"][:, k], h, *gbsg2["train"])
            for k, h in enumerate(HORIZONS)]  # fmt: skip
    np.testing.assert_allclose(ours, expected, atol=1e-10)
    # IBS over [0, t]: at 0 every term is 0; from the first grid point on it is sksurv's.
    horizon = 1825.0  # its first grid point, 18.25 days, is after the first validation time
    grid = np.linspace(0.0, horizon, acc.IBS_GRID_POINTS)
    survival = mdl.survival_from_lp(gbsg2["lp"], *gbsg2["baseline"], grid[1:], np.inf)
    sksurv_ibs = integrated_brier_score(gbsg2["y_train"], gbsg2["y_valid"], survival, grid[1:])
    _, first = brier_score(gbsg2["y_train"], gbsg2["y_valid"], survival[:, :1], grid[1:2])
    expected = (first[0] * grid[1] / 2 + sksurv_ibs * (horizon - grid[1])) / horizon
    terms = acc.integrated_brier_terms(*gbsg2["valid"], gbsg2["lp"], gbsg2["baseline"], horizon,
                                       *gbsg2["train"])  # fmt: skip
    assert terms.mean() == pytest.approx(expected, abs=1e-10)


def test_bootstrap_resamples_equal_the_metric_on_resampled_patients(gbsg2):
    time, event = gbsg2["valid"]
    counts = bootstrap_counts(time.size, 3, np.random.default_rng(4))
    weight, control, scores = acc.auc_pairs(time, event, gbsg2["lp"], 730.0, *gbsg2["train"])
    boot = acc.bootstrap_auc(weight, control, scores, counts)
    assert acc.bootstrap_auc(weight, control, scores, np.ones((1, time.size)))[0] == pytest.approx(
        acc.cumulative_dynamic_auc(time, event, gbsg2["lp"], 730.0, *gbsg2["train"]))
    for b in range(3):
        idx = np.repeat(np.arange(time.size), counts[b].astype(int))
        expected, _ = cumulative_dynamic_auc(gbsg2["y_train"], gbsg2["y_valid"][idx],
                                             gbsg2["lp"][idx], [730.0])  # fmt: skip
        assert boot[b] == pytest.approx(expected[0], abs=1e-10)


def simulated(seed: int, n: int, beta: float = 1.0):
    """Exponential survival with hazard exp(beta x), uniform censoring; truth S(t|x) known."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    event_time = rng.exponential(np.exp(-beta * x))
    censor_time = rng.uniform(0.5, 4.0, n)
    return x, np.minimum(event_time, censor_time), (event_time <= censor_time).astype(int)


def test_a_correct_model_is_calibrated_and_an_overfitted_one_is_not():
    x, time, event = simulated(1, 4000)
    baseline = mdl.breslow_cumulative_hazard(time, event, x)  # the true lp
    observed, expected = acc.observed_expected(time, event, x, baseline, 1.0)
    assert np.log(observed.sum() / expected.sum()) == pytest.approx(0.0, abs=0.05)
    slope, lo, hi = acc.calibration_slope(time, event, x, 1.0)
    assert lo < 1.0 < hi and slope == pytest.approx(1.0, abs=0.1)
    slope, _, hi = acc.calibration_slope(time, event, 2 * x, 1.0)  # predictions too extreme
    assert slope == pytest.approx(0.5, abs=0.06) and hi < 1.0
    survival = mdl.survival_from_lp(x, *baseline, [1.0], np.inf)[:, 0]
    groups = acc.calibration_groups(time, event, survival, 1.0, 5)
    assert groups["n"].tolist() == [800] * 5
    np.testing.assert_allclose(groups["observed_risk"], groups["predicted_risk"], atol=0.05)
    assert groups["predicted_risk"].is_monotonic_increasing
    first = np.argsort(1 - survival, kind="stable")[:800]
    km = KaplanMeierFitter().fit(time[first], event[first]).predict(1.0)
    assert groups["observed_risk"].iloc[0] == pytest.approx(1 - km)


def test_net_benefit_without_censoring_is_true_minus_weighted_false_positives():
    rng = np.random.default_rng(3)
    risk = rng.uniform(size=200)
    time = rng.uniform(0.1, 2.0, 200)
    event = np.ones(200, int)  # nobody censored: the KM risk by t is the event fraction
    horizon = 1.0
    thresholds = [0.1, 0.3, 0.5, 0.8]
    ours = acc.net_benefit(time, event, risk, horizon, thresholds)
    died = time <= horizon
    for k, p in enumerate(thresholds):
        treated = risk >= p
        expected = (treated & died).mean() - (treated & ~died).mean() * p / (1 - p)
        assert ours[k] == pytest.approx(expected)


def test_accuracy_table_names_horizons_that_cannot_be_evaluated():
    x, time, event = simulated(2, 300)
    split = np.where(np.arange(300) < 200, "train", "validation")
    risk = pd.DataFrame({"split": split, "time": time, "event": event, "risk": x},
                        index=[f"P{i:03d}" for i in range(300)])  # fmt: skip
    train = risk["split"] == "train"
    baseline = mdl.breslow_cumulative_hazard(time[train], event[train], x[train])
    risks = {"m": risk, "null": risk.assign(risk=0.0)}
    baselines = {"m": baseline, "null": mdl.breslow_cumulative_hazard(
        time[train], event[train], np.zeros(int(train.sum())))}
    table = acc.accuracy_table("os", risks, baselines, [1.0, 10.0], B=50, seed=1)
    again = acc.accuracy_table("os", risks, baselines, [1.0, 10.0], B=50, seed=1)
    pd.testing.assert_frame_equal(table, again)
    at_1 = table[table["horizon"] == 1.0].set_index("model")
    assert at_1.at["m", "note"] == "" and at_1.at["m", "auc_lo"] < at_1.at["m", "auc"]
    assert at_1.at["m", "auc"] > 0.65 and at_1.at["m", "ipa"] > 0.05
    assert at_1.at["null", "auc"] == pytest.approx(0.5) and at_1.at["null", "ipa"] == pytest.approx(0.0)
    assert at_1.at["m", "brier_lo"] < at_1.at["m", "brier"] < at_1.at["m", "brier_hi"]
    at_10 = table[table["horizon"] == 10.0]
    assert at_10["note"].str.startswith("no validation patient is followed beyond 10").all()
    assert at_10["auc"].isna().all()
    curve = acc.decision_curve_table("os", risks, baselines, 1.0)
    assert set(curve["model"]) == {"m", "null", "treat all", "treat none"}
    best = curve.groupby("model")["net_benefit"].max()
    assert best["m"] >= best["treat all"]


def test_decision_curve_plot_has_one_panel_per_model(tmp_path):
    """Small multiples: each model in its own panel beside the reference, so a dozen models
    stay readable (the issue: one crowded plot)."""
    import matplotlib.image as mpimg

    from radpath.survival.plots import plot_decision_curve

    thresholds = np.round(np.arange(0.01, 1.0, 0.01), 2)
    models = [f"model_{k}" for k in range(6)] + ["treat all", "treat none"]
    curve = pd.DataFrame([
        {"endpoint": "os", "horizon": 12.0, "model": m, "threshold": t,
         "net_benefit": 0.3 - t if m == "treat all" else (0.0 if m == "treat none" else 0.1 - t / 10)}
        for m in models for t in thresholds
    ])  # fmt: skip
    plot_decision_curve(curve, "months", "OS", tmp_path / "six.png", "model_0")
    plot_decision_curve(curve[curve["model"].isin(["model_0", "treat all", "treat none"])],
                        "months", "OS", tmp_path / "one.png", "model_0")
    six, one = mpimg.imread(tmp_path / "six.png"), mpimg.imread(tmp_path / "one.png")
    assert six.shape[0] > 1.5 * one.shape[0] and six.shape[1] > 3 * one.shape[1]
