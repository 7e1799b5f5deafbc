"""Evaluation of fitted models: bootstrapped C-indices, risk groups, Kaplan-Meier plots."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from radpath.survival.metrics import (
    bootstrap_cindex,
    choose_tau,
    logrank_test,
    plot_km_by_group,
    risk_groups,
)

log = logging.getLogger(__name__)

COHORTS = ("train", "validation")


def endpoint_tau(risk: pd.DataFrame, endpoint: str, eval_cfg: dict) -> float:
    """Uno's truncation time: fixed in the config, or a quantile of validation follow-up."""
    fixed = eval_cfg.get("tau", {}).get(endpoint)
    if fixed is not None:
        return float(fixed)
    validation = risk[risk["split"] == "validation"]
    train = risk[risk["split"] == "train"]
    tau = choose_tau(validation["time"].to_numpy(), validation["event"].to_numpy(),
                     eval_cfg["tau_quantile"])
    # IPCW weights need the training censoring distribution to reach tau.
    return float(min(tau, np.max(train["time"].to_numpy()) * (1 - 1e-9)))


def evaluate_endpoint(
    endpoint: str,
    risks: dict[str, pd.DataFrame],
    optimism: dict[str, dict],
    reference: str,
    eval_cfg: dict,
    seed: int,
) -> pd.DataFrame:
    """One row per model x cohort with C-indices, CIs and the paired difference to reference."""
    tau = endpoint_tau(risks[reference], endpoint, eval_cfg)
    rows = []
    for model, risk in risks.items():
        train = risk[risk["split"] == "train"]
        for cohort in COHORTS:
            part = risk[risk["split"] == cohort]
            ref = risks[reference]
            common = part.index.intersection(ref.index)
            part = part.loc[common]
            scores = {model: part["risk"].to_numpy()}
            if model != reference:
                scores[reference] = ref.loc[common, "risk"].to_numpy()
            table = bootstrap_cindex(
                part["time"].to_numpy(), part["event"].to_numpy(), scores,
                B=eval_cfg["bootstrap"], seed=seed,
                reference=reference if model != reference else None,
                train_time=train["time"].to_numpy(), train_event=train["event"].to_numpy(),
                tau=tau,
            )
            row = table.loc[model].to_dict() if model in table.index else table.iloc[0].to_dict()
            row.update(endpoint=endpoint, model=model, cohort=cohort, tau=tau)
            if cohort == "train":
                row.update(optimism_columns(optimism[model]))
            rows.append(row)
    table = pd.DataFrame(rows)
    first = ["endpoint", "model", "cohort"]
    return table[first + [c for c in table.columns if c not in first]]


def optimism_columns(optimism: dict) -> dict:
    """The optimism bootstrap's result as cindex.tsv columns; why resamples failed as one
    text cell ("reason: count; ...")."""
    columns = {f"optimism_{k}": v for k, v in optimism.items() if k != "failures"}
    failures = optimism.get("failures") or {}
    columns["optimism_failures"] = "; ".join(f"{why}: {n}" for why, n in failures.items())
    return columns


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
    reference: str,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Accuracy, calibration and decision-curve tables of one endpoint's models on their
    validation patients (`label` names them in the plot titles), with a calibration plot per
    model in `calibration_dir` and the decision curves at `decision_path`."""
    from radpath.survival.accuracy import (
        accuracy_table,
        calibration_table,
        decision_curve_table,
    )
    from radpath.survival.plots import plot_calibration, plot_decision_curve

    horizons = eval_cfg["horizons"]
    accuracy = accuracy_table(endpoint, risks, baselines, horizons, eval_cfg["bootstrap"], seed)
    calibration = calibration_table(endpoint, risks, baselines, horizons,
                                    eval_cfg["calibration_groups"])
    decision = decision_curve_table(endpoint, risks, baselines, eval_cfg["decision_horizon"])
    for m in risks:
        plot_calibration(calibration[calibration["model"] == m],
                         accuracy[accuracy["model"] == m], time_unit,
                         f"{endpoint.upper()} - {m} ({label})",
                         Path(calibration_dir) / f"{endpoint}_{m}.png")
    plot_decision_curve(decision, time_unit,
                        f"{endpoint.upper()} ({label}, {eval_cfg['decision_horizon']:g} "
                        f"{time_unit})", decision_path, reference)
    return accuracy, calibration, decision
