"""Evaluation of fitted models: bootstrapped C-indices, risk groups, Kaplan-Meier plots."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from radpath.survival.metrics import (
    TRAINING_CENSORING,
    bootstrap_cindex,
    censoring_reference,
    check_censoring,
    choose_tau,
    logrank_test,
    plot_km_by_group,
    risk_groups,
)
from radpath.survival.status import (
    OK,
    blank_without_result,
    has_constant_risk,
    has_result,
    left_out,
)

log = logging.getLogger(__name__)

COHORTS = ("train", "validation")
# A model without a result of its own (radpath.survival.status) keeps n and events only.
C_RESULT_COLUMNS = (
    "harrell_c", "harrell_lo", "harrell_hi", "uno_c", "uno_lo", "uno_hi",
    "optimism_apparent_c", "optimism_optimism", "optimism_corrected_c", "logrank_p",
)  # fmt: skip
DELTA_COLUMNS = (
    "delta_harrell", "delta_lo", "delta_hi", "delta_p",
    "delta_uno", "delta_uno_lo", "delta_uno_hi", "delta_uno_p",
)  # fmt: skip


def endpoint_tau(risk: pd.DataFrame, endpoint: str, eval_cfg: dict,
                 censoring: str = TRAINING_CENSORING) -> float:
    """Uno's truncation time: fixed in the config, or a quantile of validation follow-up."""
    fixed = eval_cfg.get("tau", {}).get(endpoint)
    if fixed is not None:
        return float(fixed)
    validation = risk[risk["split"] == "validation"]
    train = risk[risk["split"] == "train"]
    tau = choose_tau(validation["time"].to_numpy(), validation["event"].to_numpy(),
                     eval_cfg["tau_quantile"])
    # IPCW weights need the censoring distribution (``censoring``'s) to reach tau.
    ref_time, _ = censoring_reference(validation, train, censoring)
    return float(min(tau, np.max(ref_time) * (1 - 1e-9)))


def evaluated_cohorts(censoring: str) -> tuple[str, ...]:
    """The run evaluates its training and validation patients; an external cohort (weighted
    with its own censoring) only itself: its `train` rows are the run's training patients,
    whose C-indices are the run's own table."""
    return COHORTS if check_censoring(censoring) == TRAINING_CENSORING else ("validation",)


def evaluate_endpoint(
    endpoint: str,
    risks: dict[str, pd.DataFrame],
    optimism: dict[str, dict],
    reference: str,
    eval_cfg: dict,
    seed: int,
    statuses: dict[str, str] | None = None,
    censoring: str = TRAINING_CENSORING,
) -> pd.DataFrame:
    """One row per model x cohort with C-indices, CIs and the paired difference to reference.

    ``statuses`` (radpath.survival.status.endpoint_statuses; None: every model ok) go into a
    `status` column; a model without a result of its own keeps n and events but no C, CI or
    difference, and with a reference without one no model has a difference. ``censoring``
    names whose censoring distribution weights Uno's C (a `censoring` column): the model's
    training patients', or the evaluated external patients' own (then only the `validation`
    patients, the external cohort, are evaluated).
    """
    statuses = statuses or dict.fromkeys(risks, OK)
    tau = endpoint_tau(risks[reference], endpoint, eval_cfg, censoring)
    rows = []
    for model, risk in risks.items():
        train = risk[risk["split"] == "train"]
        for cohort in evaluated_cohorts(censoring):
            part = risk[risk["split"] == cohort]
            ref = risks[reference]
            common = part.index.intersection(ref.index)
            part = part.loc[common]
            scores = {model: part["risk"].to_numpy()}
            if model != reference:
                scores[reference] = ref.loc[common, "risk"].to_numpy()
            ref_time, ref_event = censoring_reference(part, train, censoring)
            table = bootstrap_cindex(
                part["time"].to_numpy(), part["event"].to_numpy(), scores,
                B=eval_cfg["bootstrap"], seed=seed,
                reference=reference if model != reference else None,
                train_time=ref_time, train_event=ref_event, tau=tau,
            )
            row = table.loc[model].to_dict() if model in table.index else table.iloc[0].to_dict()
            row.update(endpoint=endpoint, model=model, cohort=cohort, status=statuses[model],
                       tau=tau, censoring=censoring)
            if cohort == "train":
                row.update(optimism_columns(optimism[model]))
            rows.append(row)
    table = pd.DataFrame(rows)
    first = ["endpoint", "model", "cohort", "status"]
    table = blank_without_result(table[first + [c for c in table.columns if c not in first]],
                                 C_RESULT_COLUMNS + DELTA_COLUMNS)
    if not has_result(statuses[reference]):
        table.loc[:, [c for c in DELTA_COLUMNS if c in table.columns]] = np.nan
    return table


def optimism_columns(optimism: dict) -> dict:
    """The optimism bootstrap's result as cindex.tsv columns; why resamples failed as one
    text cell ("reason: count; ...")."""
    columns = {f"optimism_{k}": v for k, v in optimism.items() if k != "failures"}
    failures = optimism.get("failures") or {}
    columns["optimism_failures"] = "; ".join(f"{why}: {n}" for why, n in failures.items())
    return columns


def km_plots(
    endpoint: str, risks: dict[str, pd.DataFrame], statuses: dict[str, str], time_unit: str,
    km_dir: Path, label: str = "validation",
) -> dict[str, float]:
    """The KM plot (`<endpoint>_<model>.png` in km_dir) and log-rank p of each model, except
    those with a constant risk: at the training median everyone is in one group, so they get
    no plot. The p of a model without a result of its own is NaN."""
    p_values = {}
    for model, risk in risks.items():
        if has_constant_risk(statuses[model]):
            log.info("%s %s: no Kaplan-Meier plot (%s)", endpoint, model, statuses[model])
            p_values[model] = float("nan")
            continue
        p_value = km_validation(endpoint, model, risk, time_unit,
                                Path(km_dir) / f"{endpoint}_{model}.png", label)
        p_values[model] = p_value if has_result(statuses[model]) else float("nan")
    return p_values


def km_validation(
    endpoint: str, model: str, risk: pd.DataFrame, time_unit: str, path: str | Path,
    label: str = "validation",
) -> float:
    """KM of validation patients split at the training median risk; returns log-rank p.
    `label` names the validation patients in the title (an external cohort's name)."""
    threshold = float(np.median(risk.loc[risk["split"] == "train", "risk"]))
    validation = risk[risk["split"] == "validation"]
    groups = risk_groups(validation["risk"].to_numpy(), threshold)
    time, event = validation["time"].to_numpy(), validation["event"].to_numpy()
    p_value = np.nan
    if len(set(groups)) > 1:
        _, p_value = logrank_test(time, event, groups)
    plot_km_by_group(
        time, event, groups,
        title=f"{endpoint.upper()} - {model} ({label}; split at training median)",
        path=path, xlabel=f"Time ({time_unit})",
    )
    return float(p_value)


def endpoint_accuracy(
    endpoint: str, risks: dict[str, pd.DataFrame], baselines: dict[str, tuple], eval_cfg: dict,
    seed: int, time_unit: str, label: str, calibration_dir: Path, decision_path: Path,
    reference: str, statuses: dict[str, str] | None = None,
    censoring: str = TRAINING_CENSORING,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Accuracy, calibration and decision-curve tables of one endpoint's models on their
    validation patients (`label` names them in the plot titles), with a calibration plot per
    model in `calibration_dir` and the decision curves at `decision_path`.

    A model without a result of its own (``statuses``, None: every model ok) keeps its
    accuracy rows with the status and no metric (its calibration plot says why), and has no
    calibration groups and no decision curve (the plot names it). ``censoring``: whose
    censoring distribution weights the AUC and Brier scores (accuracy_table)."""
    from radpath.survival.accuracy import (
        accuracy_table,
        calibration_table,
        decision_curve_table,
    )
    from radpath.survival.plots import plot_calibration, plot_decision_curve

    statuses = statuses or dict.fromkeys(risks, OK)
    horizons = eval_cfg["horizons"]
    accuracy = accuracy_without_results(
        accuracy_table(endpoint, risks, baselines, horizons, eval_cfg["bootstrap"], seed,
                       censoring),
        statuses)
    calibration = calibration_table(endpoint, risks, baselines, horizons,
                                    eval_cfg["calibration_groups"], censoring)
    # a boolean array: an empty object Series would select columns and drop them all
    with_result = calibration["model"].map(lambda m: has_result(statuses[m])).to_numpy(bool)
    calibration = calibration[with_result]
    decision = decision_curve_table(endpoint, risks, baselines, eval_cfg["decision_horizon"])
    decision = decision[~decision["model"].isin(left_out(statuses))]
    for m in risks:
        rows = accuracy[accuracy["model"] == m]
        if not has_result(statuses[m]):
            rows = rows.assign(note=statuses[m])
        plot_calibration(calibration[calibration["model"] == m], rows, time_unit,
                         f"{endpoint.upper()} - {m} ({label})",
                         Path(calibration_dir) / f"{endpoint}_{m}.png")
    plot_decision_curve(decision, time_unit,
                        f"{endpoint.upper()} ({label}, {eval_cfg['decision_horizon']:g} "
                        f"{time_unit})", decision_path, reference, left_out(statuses))
    return accuracy, calibration.reset_index(drop=True), decision.reset_index(drop=True)


def accuracy_without_results(accuracy: pd.DataFrame, statuses: dict[str, str]) -> pd.DataFrame:
    """The accuracy table with a `status` column after `model`; the metrics of models
    without a result of their own blank (an AUC of 0.5 (0.5-0.5) for a constant risk)."""
    kept = ("endpoint", "model", "status", "horizon", "n", "events_by_horizon", "censoring",
            "note")
    accuracy = accuracy.copy()
    accuracy.insert(accuracy.columns.get_loc("model") + 1, "status",
                    accuracy["model"].map(statuses))
    return blank_without_result(accuracy, [c for c in accuracy.columns if c not in kept])
