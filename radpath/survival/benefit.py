"""Who benefits from treatment: a model's risk groups x a treatment (the PathoSig study's
question: which patients gain from chemoradiotherapy).

For each endpoint, model and cohort (train, validation) the patients are split at the
TRAINING median of the model's risk (as the Kaplan-Meier plots), and one Cox model

    log h(t) = b_high * high + b_treated * treated + b_interaction * high * treated

is fitted on that cohort's patients. exp(b_treated) is the treatment's hazard ratio in the
low-risk group, exp(b_treated + b_interaction) in the high-risk group, and the Wald p of
b_interaction tests whether the treatment's effect differs between the groups. The
treatment is not randomised in most cohorts: these are associations, and the report says so.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pandas as pd
from scipy.stats import norm

from radpath.survival.metrics import plot_km_by_group

log = logging.getLogger(__name__)

Z_95 = norm.ppf(0.975)
COLUMNS = [
    "endpoint", "model", "cohort", "n", "events", "n_low_untreated", "n_low_treated",
    "n_high_untreated", "n_high_treated", "hr_treated_low", "hr_treated_low_lo",
    "hr_treated_low_hi", "hr_treated_high", "hr_treated_high_lo", "hr_treated_high_hi",
    "hr_interaction", "hr_interaction_lo", "hr_interaction_hi", "p_interaction", "note",
]  # fmt: skip


def treated_flags(clinical: pd.DataFrame, column: str, treated: str) -> pd.Series:
    """patient -> True (treated) / False from the sheet's treatment column (text compare)."""
    return clinical[column].astype(str).str.strip().eq(str(treated)).rename("treated")


def benefit_frame(risk: pd.DataFrame, treated: pd.Series, cohort: str) -> pd.DataFrame:
    """The cohort's patients with time, event, high (risk above the training median),
    treated and their product."""
    threshold = float(np.median(risk.loc[risk["split"] == "train", "risk"]))
    part = risk[risk["split"] == cohort].join(treated, how="inner")
    frame = pd.DataFrame({
        "time": part["time"].astype(float),
        "event": part["event"].astype(int),
        "high": (part["risk"] > threshold).astype(float),
        "treated": part["treated"].astype(float),
    }, index=part.index)
    frame["high_x_treated"] = frame["high"] * frame["treated"]
    return frame


def _ratio(beta: float, variance: float) -> tuple[float, float, float]:
    if not (math.isfinite(beta) and math.isfinite(variance) and variance >= 0):
        return (math.nan,) * 3
    se = math.sqrt(variance)
    # Near-separation (an arm whose events all come first or last) gives huge standard
    # errors: the bounds are then 0 and inf, not an overflow.
    return tuple(
        math.exp(min(value, 700.0)) if value < 700 else math.inf
        for value in (beta, beta - Z_95 * se, beta + Z_95 * se)
    )


def interaction_row(frame: pd.DataFrame) -> dict:
    """Counts, hazard ratios with 95% CIs and the interaction's p (NaN with a note when the
    model cannot be estimated: an empty cell, no events, no convergence)."""
    cells = {
        f"n_{risk}_{arm}": int(((frame["high"] == h) & (frame["treated"] == t)).sum())
        for risk, h in (("low", 0), ("high", 1)) for arm, t in (("untreated", 0), ("treated", 1))
    }
    row = {"n": len(frame), "events": int(frame["event"].sum()), **cells}
    empty = [name[2:].replace("_", " ") for name, count in cells.items() if count == 0]
    if empty:
        return {**row, "note": f"no patients {', '.join(empty)}: not estimable"}
    event_cells = frame.groupby(["high", "treated"])["event"].sum()
    if (event_cells == 0).any():
        return {**row, "note": "a risk group x treatment cell has no events: not estimable"}
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = CoxPHFitter().fit(frame, "time", "event")
    except (ConvergenceError, np.linalg.LinAlgError, ValueError) as error:
        return {**row, "note": f"Cox model did not converge: {str(error).splitlines()[0]}"}
    beta, cov = fit.params_, fit.variance_matrix_
    low = _ratio(beta["treated"], cov.loc["treated", "treated"])
    high = _ratio(
        beta["treated"] + beta["high_x_treated"],
        cov.loc["treated", "treated"] + cov.loc["high_x_treated", "high_x_treated"]
        + 2 * cov.loc["treated", "high_x_treated"],
    )
    interaction = _ratio(beta["high_x_treated"], cov.loc["high_x_treated", "high_x_treated"])
    unbounded = any(math.isinf(bound) or bound == 0 for bound in (*low, *high, *interaction))
    return {
        **row,
        "hr_treated_low": low[0], "hr_treated_low_lo": low[1], "hr_treated_low_hi": low[2],
        "hr_treated_high": high[0], "hr_treated_high_lo": high[1], "hr_treated_high_hi": high[2],
        "hr_interaction": interaction[0], "hr_interaction_lo": interaction[1],
        "hr_interaction_hi": interaction[2],
        "p_interaction": float(fit.summary.loc["high_x_treated", "p"]),
        "note": "near-separation: a confidence interval is unbounded" if unbounded else "",
    }  # fmt: skip


def treatment_benefit(
    risks: dict[tuple[str, str], pd.DataFrame], treated: pd.Series
) -> pd.DataFrame:
    """One row per endpoint x model x cohort (see the module docstring)."""
    rows = []
    for (endpoint, model), risk in risks.items():
        for cohort in ("train", "validation"):
            frame = benefit_frame(risk, treated, cohort)
            rows.append({"endpoint": endpoint, "model": model, "cohort": cohort,
                         **interaction_row(frame)})
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def plot_benefit(
    frame: pd.DataFrame, title: str, path, time_unit: str, treatment: str
) -> None:
    """Kaplan-Meier curves of the four risk group x treatment arms."""
    groups = np.array([
        f"{'high' if h else 'low'} risk, {'' if t else 'no '}{treatment}"
        for h, t in zip(frame["high"], frame["treated"], strict=True)
    ])
    plot_km_by_group(frame["time"].to_numpy(), frame["event"].to_numpy(), groups,
                     title=title, path=path, xlabel=f"Time ({time_unit})")
