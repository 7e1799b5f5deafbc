"""Absolute-risk accuracy of a fitted Cox model on validation patients: time-dependent AUC,
Brier and integrated Brier scores, calibration and net benefit at horizons.

Every metric takes the patients' linear predictor ``lp`` and the model's Breslow baseline
(``radpath.survival.modeling``), so predicted survival is S_i(t) = exp(-H0(t) exp(lp_i)). Inverse
probability of censoring weights come from the censoring distribution that ``censoring`` names
(``radpath.survival.metrics.censoring_reference``, sksurv's estimator), as for Uno's C: the TRAINING
patients' for the run's validation patients, an external cohort's own for an external cohort.
Bootstrap CIs resample the evaluated patients (patient counts, as
``radpath.survival.metrics.bootstrap_cindex``; the same resamples for models on the same patients)
with the censoring weights held fixed; the formulas equal scikit-survival's
``cumulative_dynamic_auc`` and ``brier_score`` with ``survival_train`` the training patients or the
external cohort itself (tests/unit/survival/test_accuracy.py, test_scoring.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from radpath.survival.metrics import (
    EXTERNAL_CENSORING,
    SKSURV_TIED_TOL,
    TRAINING_CENSORING,
    censoring_reference,
    censoring_survival,
    check_censoring,
    check_outcome,
    concordance_scores,
    km_survival_at,
    last_positive_censoring_time,
    percentile_ci,
)

IBS_GRID_POINTS = 101
DECISION_THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)


def horizon_column(horizon: float) -> str:
    """risk.tsv column of the predicted survival at a horizon: ``survival_24``."""
    return f"survival_{horizon:g}"


# --------------------------------------------------------------------------- evaluability


def horizon_problem(time, event, horizon: float, train_time, train_event,
                    censoring: str = TRAINING_CENSORING) -> str:
    """Why a horizon cannot be evaluated on these (validation or external) patients; "" when
    it can. The censoring weights (``censoring``: whose) must be known up to the horizon."""
    time, event = check_outcome(time, event)
    if check_censoring(censoring) == EXTERNAL_CENSORING:
        return external_horizon_problem(time, event, horizon, train_time)
    if not (time > horizon).any():
        return f"no validation patient is followed beyond {horizon:g}"
    if not ((time <= horizon) & (event == 1)).any():
        return f"no validation event by {horizon:g}"
    last = last_positive_censoring_time(train_time, train_event)
    if horizon > last:
        return f"training follow-up ends at {last:g} (censoring weights unknown after it)"
    return ""


def external_horizon_problem(time, event, horizon: float, train_time) -> str:
    """horizon_problem of an external cohort weighted with its own censoring distribution: its
    follow-up must reach the horizon, and the training follow-up too, since the frozen model
    predicts no survival after it (risk.tsv leaves it blank)."""
    # The cohort's own censoring survival G can only reach 0 at its last follow-up time, so a
    # patient followed beyond the horizon is also what keeps G(horizon) and G(T_i) of every
    # event by the horizon positive: the weights are known exactly where this check passes.
    if not (time > horizon).any():
        return (f"no external patient is followed beyond {horizon:g} (the cohort's follow-up "
                f"ends at {time.max():g}: its censoring weights are unknown after it)")
    if not ((time <= horizon) & (event == 1)).any():
        return f"no external event by {horizon:g}"
    follow_up = float(np.max(train_time))
    if horizon > follow_up:
        return (f"training follow-up ends at {follow_up:g} (the frozen model predicts no "
                "survival after it)")
    return ""


# --------------------------------------------------------------------------- per-patient terms
# ``ref_time``, ``ref_event``: the patients whose censoring Kaplan-Meier G gives the weights
# (sksurv's ``survival_train``): the training patients, or an external cohort itself.


def _inverse_censoring(time, event, horizon: float, ref_time, ref_event):
    """(1/G(T_i) for a case, an event by the horizon, and 0 otherwise; 1/G(horizon); control
    indicator, still followed after the horizon)."""
    case = (time <= horizon) & (event == 1)
    weight = np.zeros(time.size)
    if case.any():
        weight[case] = 1.0 / censoring_survival(ref_time, ref_event, time[case])
    g_horizon = float(censoring_survival(ref_time, ref_event, [horizon])[0])
    return weight, 1.0 / g_horizon, time > horizon


def brier_terms(time, event, survival, horizon: float, ref_time, ref_event) -> np.ndarray:
    """Each patient's IPCW-weighted squared error at the horizon (Graf et al.): S_i(t)^2 / G(T_i)
    for an event by t, (1 - S_i(t))^2 / G(t) for a patient still followed after t, 0 for one
    censored before t. Their mean is the Brier score."""
    weight, inverse_g, control = _inverse_censoring(time, event, horizon, ref_time, ref_event)
    survival = np.asarray(survival, dtype=float)
    return np.square(survival) * weight + np.square(1.0 - survival) * control * inverse_g


def brier_score(time, event, survival, horizon, ref_time, ref_event) -> float:
    time, event = check_outcome(time, event)
    return float(np.mean(brier_terms(time, event, survival, horizon, ref_time, ref_event)))


def integrated_brier_terms(time, event, lp, baseline, horizon, ref_time, ref_event):
    """Each patient's Brier term integrated over [0, horizon] (trapezoid on an even grid of
    IBS_GRID_POINTS times) and divided by the horizon; their mean is the integrated Brier score."""
    from radpath.survival.modeling import survival_from_lp

    grid = np.linspace(0.0, horizon, IBS_GRID_POINTS)
    survival = survival_from_lp(lp, *baseline, grid, np.inf)
    terms = np.column_stack([
        brier_terms(time, event, survival[:, k], t, ref_time, ref_event)
        for k, t in enumerate(grid)
    ])  # fmt: skip
    return np.trapezoid(terms, grid, axis=1) / horizon


def auc_pairs(time, event, risk, horizon, ref_time, ref_event):
    """Cumulative/dynamic AUC at the horizon as pair weights: cases (event by t, weight
    1/G(T_i)) against controls (followed beyond t); score 1 when the case has the higher risk,
    0.5 for a tie. Returns (case weights, control indicator, score matrix)."""
    weight, _, control = _inverse_censoring(time, event, horizon, ref_time, ref_event)
    return weight, control.astype(float), concordance_scores(risk, SKSURV_TIED_TOL)


def cumulative_dynamic_auc(time, event, risk, horizon, ref_time, ref_event) -> float:
    """Equals ``sksurv.metrics.cumulative_dynamic_auc`` at one time."""
    time, event = check_outcome(time, event)
    weight, control, scores = auc_pairs(time, event, np.asarray(risk, float), horizon,
                                        ref_time, ref_event)
    return float(weight @ scores @ control / (weight.sum() * control.sum()))


def bootstrap_auc(weight, control, scores, counts: np.ndarray) -> np.ndarray:
    """AUC of each resample (rows of patient counts); NaN without a case or a control."""
    numerator = np.einsum("bi,ij,bj->b", counts * weight, scores, counts * control)
    denominator = (counts @ weight) * (counts @ control)
    out = np.full(counts.shape[0], np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


# --------------------------------------------------------------------------- calibration


def observed_expected(time, event, lp, baseline, horizon):
    """Per patient: events observed by the horizon (0/1) and events the model expects over the
    time the patient was followed up to the horizon, H0(min(T_i, t)) exp(lp_i). sum(O) / sum(E)
    is the observed/expected ratio; its log is the calibration-in-the-large (0 is ideal)."""
    from radpath.survival.modeling import baseline_cumulative_hazard_at

    time, event = check_outcome(time, event)
    observed = ((time <= horizon) & (event == 1)).astype(float)
    cumhaz = baseline_cumulative_hazard_at(*baseline, np.minimum(time, horizon))
    return observed, cumhaz * np.exp(np.asarray(lp, dtype=float))


def calibration_slope(time, event, lp, horizon) -> tuple[float, float, float]:
    """Cox regression of the validation outcome (censored at the horizon) on the linear
    predictor: its coefficient with a 95% CI. 1 is ideal; below 1 the predictions are too
    extreme (overfitting), above 1 too timid. NaN when lifelines cannot fit it."""
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError

    time, event = check_outcome(time, event)
    data = pd.DataFrame({
        "time": np.minimum(time, horizon),
        "event": ((time <= horizon) & (event == 1)).astype(int),
        "lp": np.asarray(lp, dtype=float),
    })  # fmt: skip
    if data["event"].sum() == 0 or data["lp"].std() == 0:
        return float("nan"), float("nan"), float("nan")
    try:
        fitter = CoxPHFitter().fit(data, "time", "event")
    except (ConvergenceError, np.linalg.LinAlgError):
        return float("nan"), float("nan"), float("nan")
    summary = fitter.summary.loc["lp"]
    return (float(summary["coef"]), float(summary["coef lower 95%"]),
            float(summary["coef upper 95%"]))  # fmt: skip


def calibration_groups(time, event, survival, horizon: float, n_groups: int) -> pd.DataFrame:
    """Patients grouped by predicted risk 1 - S(t) (quantile groups; fewer when risks tie):
    per group the mean predicted risk and the Kaplan-Meier observed risk at the horizon."""
    time, event = check_outcome(time, event)
    predicted = 1.0 - np.asarray(survival, dtype=float)
    groups = pd.qcut(pd.Series(predicted).rank(method="first"), min(n_groups, time.size),
                     labels=False)
    rows = []
    for group in sorted(groups.unique()):
        members = (groups == group).to_numpy()
        rows.append({
            "group": int(group) + 1,
            "n": int(members.sum()),
            "events": int(event[members & (time <= horizon)].sum()),
            "predicted_risk": float(predicted[members].mean()),
            "observed_risk": 1.0 - km_survival_at(time[members], event[members], horizon),
        })  # fmt: skip
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- decision curve


def net_benefit(time, event, risk_at_horizon, horizon: float, thresholds) -> np.ndarray:
    """Net benefit of treating patients whose predicted risk by the horizon is at least each
    threshold p (Vickers et al. 2008, censored outcomes): the share treated times (their
    Kaplan-Meier risk by t  -  their KM survival x p / (1 - p))."""
    time, event = check_outcome(time, event)
    risk_at_horizon = np.asarray(risk_at_horizon, dtype=float)
    out = np.zeros(len(thresholds))
    for k, p in enumerate(thresholds):
        treated = risk_at_horizon >= p
        if not treated.any():
            continue
        survival = km_survival_at(time[treated], event[treated], horizon)
        share = treated.mean()
        out[k] = share * (1.0 - survival) - share * survival * p / (1.0 - p)
    return out


# --------------------------------------------------------------------------- cohort tables


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.full(np.shape(numerator), np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def horizon_row(risk: pd.DataFrame, baseline, horizon: float, counts: np.ndarray,
                censoring: str = TRAINING_CENSORING) -> dict:
    """Validation accuracy of one model at one horizon, each with a bootstrap CI (``counts``:
    resamples of the validation patients, shared by all models). ``censoring`` names whose
    censoring distribution weights the AUC and Brier scores; the no-covariate model of IPA is
    always the training patients' (a frozen model, as the one evaluated)."""
    from radpath.survival.modeling import breslow_cumulative_hazard, survival_from_lp

    train = risk[risk["split"] == "train"]
    valid = risk[risk["split"] == "validation"]
    train_time, train_event = check_outcome(train["time"], train["event"])
    time, event = check_outcome(valid["time"], valid["event"])
    ref_time, ref_event = censoring_reference(valid, train, censoring)
    lp = valid["risk"].to_numpy(float)
    row = {"horizon": horizon, "n": int(time.size),
           "events_by_horizon": int(((time <= horizon) & (event == 1)).sum()),
           "censoring": censoring}  # fmt: skip
    row["note"] = horizon_problem(time, event, horizon, train_time, train_event, censoring)
    if row["note"]:
        return row
    survival = survival_from_lp(lp, *baseline, [horizon], np.inf)[:, 0]
    null_baseline = breslow_cumulative_hazard(train_time, train_event, np.zeros(train_time.size))
    null_survival = survival_from_lp(np.zeros(time.size), *null_baseline, [horizon], np.inf)[:, 0]
    weight, control, scores = auc_pairs(time, event, lp, horizon, ref_time, ref_event)
    brier = brier_terms(time, event, survival, horizon, ref_time, ref_event)
    brier_null = brier_terms(time, event, null_survival, horizon, ref_time, ref_event)
    ibs = integrated_brier_terms(time, event, lp, baseline, horizon, ref_time, ref_event)
    observed, expected = observed_expected(time, event, lp, baseline, horizon)
    n = time.size
    resampled = {
        "auc": bootstrap_auc(weight, control, scores, counts),
        "brier": counts @ brier / n,
        "ipa": 1.0 - _ratio(counts @ brier, counts @ brier_null),
        "ibs": counts @ ibs / n,
        "log_oe": np.log(_ratio(counts @ observed, counts @ expected)),
    }
    point = {
        "auc": cumulative_dynamic_auc(time, event, lp, horizon, ref_time, ref_event),
        "brier": float(brier.mean()),
        "ipa": 1.0 - float(brier.sum() / brier_null.sum()),
        "ibs": float(ibs.mean()),
        "log_oe": float(np.log(observed.sum() / expected.sum())),
    }
    for name, value in point.items():
        row[name] = value
        row[f"{name}_lo"], row[f"{name}_hi"] = percentile_ci(resampled[name])
    row["brier_null"] = float(brier_null.mean())
    row["predicted_risk"] = float(np.mean(1.0 - survival))
    row["observed_risk"] = 1.0 - km_survival_at(time, event, horizon)
    row["slope"], row["slope_lo"], row["slope_hi"] = calibration_slope(time, event, lp, horizon)
    return row


ACCURACY_COLUMNS = [
    "endpoint", "model", "horizon", "n", "events_by_horizon",
    "auc", "auc_lo", "auc_hi", "brier", "brier_lo", "brier_hi", "brier_null",
    "ipa", "ipa_lo", "ipa_hi", "ibs", "ibs_lo", "ibs_hi",
    "predicted_risk", "observed_risk", "log_oe", "log_oe_lo", "log_oe_hi",
    "slope", "slope_lo", "slope_hi", "censoring", "note",
]  # fmt: skip


def accuracy_table(endpoint: str, risks: dict[str, pd.DataFrame], baselines: dict[str, tuple],
                   horizons: list[float], B: int, seed: int,
                   censoring: str = TRAINING_CENSORING) -> pd.DataFrame:
    """One row per model x horizon (each model's validation patients: models without slides
    or CT have fewer), weighted with ``censoring``'s censoring distribution (a model's own
    training patients', or its own external patients'). The bootstrap resamples are drawn
    from ``seed`` for each model, so models on the same patients share them, at every
    horizon."""
    from radpath.survival.metrics import bootstrap_counts

    rows = []
    for model, risk in risks.items():
        risk = risk.sort_index()
        n_valid = int((risk["split"] == "validation").sum())
        counts = bootstrap_counts(n_valid, B, np.random.default_rng(seed))
        rows += [{"endpoint": endpoint, "model": model,
                  **horizon_row(risk, baselines[model], float(h), counts, censoring)}
                 for h in horizons]
    return pd.DataFrame(rows).reindex(columns=ACCURACY_COLUMNS)


def calibration_table(endpoint: str, risks: dict[str, pd.DataFrame], baselines: dict[str, tuple],
                      horizons: list[float], n_groups: int,
                      censoring: str = TRAINING_CENSORING) -> pd.DataFrame:
    """Predicted vs observed risk per risk group, model and evaluable horizon (validation; a
    horizon is evaluable as in accuracy_table with the same ``censoring``)."""
    from radpath.survival.modeling import survival_from_lp

    tables = []
    for model, risk in risks.items():
        valid = risk[risk["split"] == "validation"]
        train = risk[risk["split"] == "train"]
        time, event = valid["time"].to_numpy(float), valid["event"].to_numpy(int)
        for h in horizons:
            if horizon_problem(time, event, h, train["time"], train["event"], censoring):
                continue
            survival = survival_from_lp(valid["risk"], *baselines[model], [h], np.inf)[:, 0]
            table = calibration_groups(time, event, survival, h, n_groups)
            tables.append(table.assign(endpoint=endpoint, model=model, horizon=float(h)))
    columns = ["endpoint", "model", "horizon", "group", "n", "events", "predicted_risk",
               "observed_risk"]  # fmt: skip
    return pd.concat(tables, ignore_index=True)[columns] if tables else pd.DataFrame(
        columns=columns)


def decision_curve_table(endpoint: str, risks: dict[str, pd.DataFrame],
                         baselines: dict[str, tuple], horizon: float) -> pd.DataFrame:
    """Net benefit by threshold at the horizon: every model (on its validation patients), and
    treating all or none (all validation patients of the endpoint)."""
    from radpath.survival.modeling import survival_from_lp

    rows = {}
    everyone = pd.DataFrame()
    for model, risk in risks.items():
        valid = risk[risk["split"] == "validation"].sort_index()
        everyone = valid if len(valid) > len(everyone) else everyone
        time, event = valid["time"].to_numpy(float), valid["event"].to_numpy(int)
        survival = survival_from_lp(valid["risk"], *baselines[model], [horizon], np.inf)[:, 0]
        rows[model] = net_benefit(time, event, 1.0 - survival, horizon, DECISION_THRESHOLDS)
    time, event = everyone["time"].to_numpy(float), everyone["event"].to_numpy(int)
    rows["treat all"] = net_benefit(time, event, np.ones(time.size), horizon, DECISION_THRESHOLDS)
    rows["treat none"] = np.zeros(DECISION_THRESHOLDS.size)
    table = pd.DataFrame(rows, index=pd.Index(DECISION_THRESHOLDS, name="threshold"))
    long = table.reset_index().melt(id_vars="threshold", var_name="model",
                                    value_name="net_benefit")
    return long.assign(endpoint=endpoint, horizon=float(horizon))[
        ["endpoint", "horizon", "model", "threshold", "net_benefit"]]
