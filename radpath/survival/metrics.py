"""Survival statistics: concordance (Harrell, Uno), paired bootstrap CIs, Kaplan-Meier, log-rank.

Conventions: ``risk`` is higher for shorter survival; ``event`` is 1 for death/progression and
0 for censoring.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from radpath.inputs.io import atomic_path

SKSURV_TIED_TOL = 1e-8  # risk ties in Uno's C, as sksurv.metrics.concordance_index_ipcw

# Whose censoring distribution weights the IPCW metrics (Uno's C, time-dependent AUC, Brier,
# IPA, integrated Brier): the run's validation patients share the training patients' follow-up,
# so the training patients' is the better estimate; an external cohort has its own hospital's
# follow-up, so only its own censoring times describe it (sksurv's ``survival_train`` = the
# cohort itself).
TRAINING_CENSORING = "training patients"
EXTERNAL_CENSORING = "external cohort"
CENSORING_SOURCES = (TRAINING_CENSORING, EXTERNAL_CENSORING)


class SurvivalDataError(ValueError):
    """Invalid survival input (lengths, missing values, event coding)."""


# --------------------------------------------------------------------------- input checks


def check_outcome(time, event) -> tuple[np.ndarray, np.ndarray]:
    """Return (time float array, event int array) after checking shape, finiteness and 0/1 coding."""
    time = np.asarray(time, dtype=float).ravel()
    event = np.asarray(event, dtype=float).ravel()
    if time.shape != event.shape:
        raise SurvivalDataError(f"time has {time.size} values but event has {event.size}")
    if not np.isfinite(time).all():
        raise SurvivalDataError(f"time has missing or infinite values at positions {_bad(time)}")
    if (time < 0).any():
        raise SurvivalDataError(
            f"time is negative at positions {np.flatnonzero(time < 0)[:5].tolist()}"
        )
    if not np.isin(event, (0.0, 1.0)).all():
        raise SurvivalDataError("event must be coded 0 (censored) / 1 (event)")
    return time, event.astype(int)


def check_risk(risk, n: int, name: str = "risk") -> np.ndarray:
    """Return risk as a float array of length n without missing values."""
    risk = np.asarray(risk, dtype=float).ravel()
    if risk.size != n:
        raise SurvivalDataError(f"{name} has {risk.size} values but there are {n} patients")
    if not np.isfinite(risk).all():
        raise SurvivalDataError(f"{name} has missing or infinite values at positions {_bad(risk)}")
    return risk


def _bad(values: np.ndarray) -> list[int]:
    return np.flatnonzero(~np.isfinite(values))[:5].tolist()


# --------------------------------------------------------------------------- concordance


def comparable_pairs(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Boolean matrix P[i, j]: i had the event strictly first, or at the same time as a censored j.

    This is the pair definition of lifelines and sksurv; two events at the same time are not
    comparable, and no patient is comparable with itself.
    """
    later = time[:, None] < time[None, :]
    tied_with_censored = (time[:, None] == time[None, :]) & (event[None, :] == 0)
    return (event[:, None] == 1) & (later | tied_with_censored)


def concordance_scores(risk: np.ndarray, tied_tol: float = 0.0) -> np.ndarray:
    """Matrix S[i, j]: 1 if risk_i > risk_j, 0.5 if tied (|difference| <= tied_tol), else 0."""
    diff = risk[:, None] - risk[None, :]
    tied = np.abs(diff) <= tied_tol
    return np.where(tied, 0.5, (diff > 0).astype(float))


def harrell_c(time, event, risk) -> float:
    """Harrell's C; equals ``lifelines.utils.concordance_index(time, -risk, event)``.

    Risk ties count 0.5. Returns NaN when there is no comparable pair (lifelines raises).
    """
    time, event = check_outcome(time, event)
    risk = check_risk(risk, time.size)
    pairs = comparable_pairs(time, event)
    n_pairs = int(pairs.sum())
    if n_pairs == 0:
        return float("nan")
    diff = risk[:, None] - risk[None, :]
    n_correct = int((pairs & (diff > 0)).sum())
    n_tied = int((pairs & (diff == 0)).sum())
    return (n_correct + n_tied / 2) / n_pairs


def censoring_survival(train_time, train_event, at) -> np.ndarray:
    """Kaplan-Meier of the censoring distribution of the reference patients (``train_*``: the
    training patients, or an external cohort itself, see censoring_reference) at ``at``.

    Same estimator and step convention as sksurv's CensoringDistributionEstimator (events at a
    time leave the risk set before the censorings at that time; G(t) includes the drop at t).
    """
    time, event = check_outcome(train_time, train_event)
    at = np.asarray(at, dtype=float)
    unique_time, n_event_at, n_censored_at = _counts_at_unique_times(time, event)
    if n_censored_at.sum() == 0:
        grid, prob = unique_time, np.ones(unique_time.size)
    else:
        n_at_risk = _at_risk(n_event_at + n_censored_at) - n_event_at
        ratio = np.divide(
            n_censored_at, n_at_risk, out=np.zeros(unique_time.size), where=n_censored_at != 0
        )
        grid = np.r_[-np.inf, unique_time]
        prob = np.r_[1.0, np.cumprod(1.0 - ratio)]
    beyond = at > grid[-1]
    if prob[-1] > 0 and beyond.any():
        raise SurvivalDataError(
            f"time {at[beyond].max():g} is after the last training time {grid[-1]:g}; "
            "the censoring distribution is unknown there (lower tau)"
        )
    idx = np.searchsorted(grid, at[~beyond])
    idx_safe = np.minimum(idx, grid.size - 1)
    exact = np.abs(grid[idx_safe] - at[~beyond]) < np.finfo(float).eps
    idx = np.where(exact, idx_safe, idx - 1)
    out = np.zeros(at.shape)
    out[~beyond] = prob[idx]
    return out


def check_censoring(censoring: str) -> str:
    if censoring not in CENSORING_SOURCES:
        raise ValueError(f"censoring must be one of {CENSORING_SOURCES}, got {censoring!r}")
    return censoring


def censoring_reference(evaluated: pd.DataFrame, train: pd.DataFrame,
                        censoring: str) -> tuple[np.ndarray, np.ndarray]:
    """(time, event) of the patients whose censoring Kaplan-Meier weights the IPCW metrics of
    the ``evaluated`` patients: the ``train`` patients' (TRAINING_CENSORING) or the evaluated
    patients' own (EXTERNAL_CENSORING). Both tables have `time` and `event` columns."""
    source = train if check_censoring(censoring) == TRAINING_CENSORING else evaluated
    return check_outcome(source["time"], source["event"])


def uno_weights(time, event, train_time, train_event, tau: float | None) -> np.ndarray:
    """Squared inverse censoring weights 1/G(t_i)^2 for events before tau, 0 otherwise."""
    time, event = check_outcome(time, event)
    used = event == 1
    if tau is not None:
        used &= time < tau
    weights = np.zeros(time.size)
    g = censoring_survival(train_time, train_event, time[used])
    if (g == 0).any():
        raise SurvivalDataError(
            "the censoring survival (training patients' or the external cohort's own) is zero "
            "at an evaluated event time (lower tau)"
        )
    weights[used] = np.square(1.0 / g)
    return weights


def uno_c(time, event, risk, train_time, train_event, tau: float | None) -> float:
    """Uno's IPCW C truncated at tau, censoring KM from the training data.

    Equals ``sksurv.metrics.concordance_index_ipcw(y_train, y_test, risk, tau)[0]`` (the sums are
    accumulated in the same order). Returns NaN when there is no comparable pair.
    """
    time, event = check_outcome(time, event)
    risk = check_risk(risk, time.size)
    weights = uno_weights(time, event, train_time, train_event, tau)
    pairs = comparable_pairs(time, event)
    scores = concordance_scores(risk, SKSURV_TIED_TOL)
    order = np.argsort(time)
    per_patient_pairs = pairs.sum(axis=1)[order]
    if per_patient_pairs.sum() == 0:
        return float("nan")
    tied = (pairs & (scores == 0.5)).sum(axis=1)[order]
    concordant = (pairs & (scores == 1.0)).sum(axis=1)[order]
    w = weights[order]
    numerator = np.cumsum(w * concordant + 0.5 * w * tied)[-1]
    denominator = np.cumsum(w * per_patient_pairs)[-1]
    if denominator == 0:
        return float("nan")
    return float(numerator / denominator)


def choose_tau(time, event, quantile: float, train_time=None, train_event=None) -> float:
    """Truncation time for Uno's C.

    Rule: the ``quantile`` of all validation follow-up times (events and censorings), then
    - raised, if needed, to the first follow-up time after the earliest validation event, so
      at least one event counts (events count when t < tau);
    - lowered, if needed, to the last training time at which the training censoring KM is still
      positive (required by IPCW; this is below the largest training time whenever the last
      training patient is censored).
    Raises SurvivalDataError when the two bounds conflict or there is no event.
    """
    time, event = check_outcome(time, event)
    if not 0 < quantile <= 1:
        raise SurvivalDataError(f"tau quantile must be in (0, 1], got {quantile}")
    if not event.any():
        raise SurvivalDataError("no events in the validation data: Uno's C is undefined")
    first_event = time[event == 1].min()
    after_first_event = time[time > first_event]
    if after_first_event.size == 0:
        raise SurvivalDataError("no follow-up after the earliest event: Uno's C is undefined")
    tau = max(float(np.quantile(time, quantile)), float(after_first_event.min()))
    if train_time is not None:
        upper = last_positive_censoring_time(train_time, train_event)
        if upper <= first_event:
            raise SurvivalDataError(
                f"training follow-up ends (censoring KM zero after {upper:g}) before the first "
                f"validation event at {first_event:g}"
            )
        tau = min(tau, upper)
    return tau


def last_positive_censoring_time(train_time, train_event) -> float:
    """Largest training time at which the censoring survival G is still > 0."""
    time, event = check_outcome(train_time, train_event)
    unique_time = np.unique(time)
    g = censoring_survival(time, event, unique_time)
    return float(unique_time[g > 0].max())


# --------------------------------------------------------------------------- bootstrap


def bootstrap_counts(n: int, B: int, rng: np.random.Generator) -> np.ndarray:
    """(B, n) matrix of how often each patient appears in each resample (with replacement)."""
    idx = rng.integers(0, n, size=(B, n))
    flat = (idx + n * np.arange(B)[:, None]).ravel()
    return np.bincount(flat, minlength=B * n).reshape(B, n).astype(float)


def _weighted_pair_sums(counts: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """For each resample b: sum_ij w_bi w_bj M_ij (pairs of copies of patients i and j)."""
    return np.einsum("bj,bj->b", counts @ matrix, counts)


def _resampled_ratio(counts: np.ndarray, weighted_pairs: np.ndarray, scores: np.ndarray):
    denominator = _weighted_pair_sums(counts, weighted_pairs)
    numerator = _weighted_pair_sums(counts, weighted_pairs * scores)
    out = np.full(counts.shape[0], np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def bootstrap_harrell(time, event, risk, counts: np.ndarray) -> np.ndarray:
    """Harrell's C of each resample given as a row of patient counts (NaN: no comparable pair).

    Equals harrell_c on the resampled data: copies of a patient are never comparable with each
    other, so a pair (i, j) simply counts w_i * w_j times.
    """
    time, event = check_outcome(time, event)
    risk = check_risk(risk, time.size)
    pairs = comparable_pairs(time, event).astype(float)
    return _resampled_ratio(counts, pairs, concordance_scores(risk))


def bootstrap_uno(time, event, risk, counts, train_time, train_event, tau) -> np.ndarray:
    """Uno's C of each resample (censoring KM fixed from the training data), as bootstrap_harrell."""
    time, event = check_outcome(time, event)
    risk = check_risk(risk, time.size)
    weights = uno_weights(time, event, train_time, train_event, tau)
    pairs = weights[:, None] * comparable_pairs(time, event)
    return _resampled_ratio(counts, pairs, concordance_scores(risk, SKSURV_TIED_TOL))


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the finite values (NaN, NaN when there are none)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def _two_sided_p(deltas: np.ndarray) -> float:
    """Two-sided bootstrap p: 2 x the smaller fraction of deltas on either side of 0, capped at 1."""
    if deltas.size == 0:
        return float("nan")
    return float(min(1.0, 2 * min(np.mean(deltas <= 0), np.mean(deltas >= 0))))


def bootstrap_cindex(
    time,
    event,
    risks: dict[str, np.ndarray],
    B: int,
    seed: int,
    reference: str | None = None,
    train_time=None,
    train_event=None,
    tau: float | None = None,
    level: float = 0.95,
) -> pd.DataFrame:
    """Paired percentile bootstrap of Harrell's and Uno's C for several models.

    All models share the same resamples of patients. A resample's C is computed exactly as on
    the resampled data, via pair weights w_i * w_j (self-pairs are never comparable). Resamples
    with no comparable pair (Harrell, or Uno when computed) are skipped and counted in
    ``n_skipped``. Uno columns are NaN without ``train_time``/``train_event``. With a
    ``reference``, delta columns give model - reference for Harrell (``delta_*``) and Uno
    (``delta_uno_*``); NaN when the reference model is absent.
    """
    time, event = check_outcome(time, event)
    n = time.size
    risks = {name: check_risk(r, n, f"risk of model {name!r}") for name, r in risks.items()}
    with_uno = train_time is not None
    counts = bootstrap_counts(n, B, np.random.default_rng(seed))
    boot_harrell = {name: bootstrap_harrell(time, event, r, counts) for name, r in risks.items()}
    boot_uno = {}
    if with_uno:
        boot_uno = {
            name: bootstrap_uno(time, event, r, counts, train_time, train_event, tau)
            for name, r in risks.items()
        }
    # Which resamples are undefined depends on the outcomes only, not on the model.
    valid = np.isfinite(next(iter(boot_harrell.values()))) if risks else np.zeros(B, bool)
    if with_uno and risks:
        valid &= np.isfinite(next(iter(boot_uno.values())))
    boot_harrell = {name: c[valid] for name, c in boot_harrell.items()}
    boot_uno = {name: c[valid] for name, c in boot_uno.items()}

    rows = []
    for name, risk in risks.items():
        row = {
            "model": name,
            "n": n,
            "events": int(event.sum()),
            "harrell_c": harrell_c(time, event, risk),
        }
        row["harrell_lo"], row["harrell_hi"] = percentile_ci(boot_harrell[name], level)
        if with_uno:
            row["uno_c"] = uno_c(time, event, risk, train_time, train_event, tau)
            row["uno_lo"], row["uno_hi"] = percentile_ci(boot_uno[name], level)
        else:
            row["uno_c"] = row["uno_lo"] = row["uno_hi"] = float("nan")
        row["n_boot"] = int(valid.sum())
        row["n_skipped"] = int(B - valid.sum())
        rows.append(row)

    table = pd.DataFrame(rows)
    if reference is not None:
        table = _add_deltas(table, boot_harrell, boot_uno, reference, level)
    return table


def _add_deltas(table, boot_harrell, boot_uno, reference, level) -> pd.DataFrame:
    columns = [
        "delta_harrell", "delta_lo", "delta_hi", "delta_p",
        "delta_uno", "delta_uno_lo", "delta_uno_hi", "delta_uno_p",
    ]  # fmt: skip
    table = table.assign(**{c: float("nan") for c in columns})
    if reference not in boot_harrell:
        return table
    ref = table.set_index("model").loc[reference]
    for i, name in enumerate(table["model"]):
        d = boot_harrell[name] - boot_harrell[reference]
        lo, hi = percentile_ci(d, level)
        point = table.at[i, "harrell_c"] - ref["harrell_c"]
        table.loc[i, columns[:4]] = [point, lo, hi, _two_sided_p(d)]
        if boot_uno:
            d = boot_uno[name] - boot_uno[reference]
            lo, hi = percentile_ci(d, level)
            point = table.at[i, "uno_c"] - ref["uno_c"]
            table.loc[i, columns[4:]] = [point, lo, hi, _two_sided_p(d)]
    return table


# --------------------------------------------------------------------------- KM and log-rank


def _counts_at_unique_times(time: np.ndarray, event: np.ndarray):
    unique_time, inverse = np.unique(time, return_inverse=True)
    n_event = np.bincount(inverse, weights=event, minlength=unique_time.size).astype(int)
    n_all = np.bincount(inverse, minlength=unique_time.size)
    return unique_time, n_event, n_all - n_event


def _at_risk(n_leaving: np.ndarray) -> np.ndarray:
    """Number still followed just before each unique time, from the number leaving at each."""
    return n_leaving[::-1].cumsum()[::-1]


def kaplan_meier(time, event) -> pd.DataFrame:
    """Kaplan-Meier estimate (lifelines' KaplanMeierFitter): one row per unique time plus a
    first row at time 0. Columns: time, survival (after the time), at_risk (just before),
    events, censored."""
    from lifelines import KaplanMeierFitter

    time, event = check_outcome(time, event)
    fitter = KaplanMeierFitter().fit(time, event)
    table = fitter.event_table
    return pd.DataFrame(
        {
            "time": table.index.to_numpy(float),
            "survival": fitter.survival_function_.iloc[:, 0].loc[table.index].to_numpy(),
            "at_risk": table["at_risk"].to_numpy(int),
            "events": table["observed"].to_numpy(int),
            "censored": table["censored"].to_numpy(int),
        }
    )


def km_survival_at(time, event, at: float) -> float:
    """Kaplan-Meier survival at one time (lifelines; a right-continuous step function)."""
    from lifelines import KaplanMeierFitter

    time, event = check_outcome(time, event)
    return float(KaplanMeierFitter().fit(time, event).predict(float(at)))


def logrank_test(time, event, group) -> tuple[float, float]:
    """Log-rank test across the groups (any number); (NaN, NaN) with fewer than two groups."""
    from lifelines.statistics import multivariate_logrank_test

    time, event = check_outcome(time, event)
    group = np.asarray(group).ravel()
    if group.size != time.size:
        raise SurvivalDataError(f"group has {group.size} values but there are {time.size} patients")
    if np.unique(group).size < 2:
        return float("nan"), float("nan")
    result = multivariate_logrank_test(time, group, event)
    return float(result.test_statistic), float(result.p_value)


def risk_groups(risk, threshold: float) -> np.ndarray:
    """'high' where risk > threshold, else 'low'."""
    risk = np.asarray(risk, dtype=float)
    if np.isnan(risk).any():
        raise SurvivalDataError("risk has missing values; cannot assign risk groups")
    return np.where(risk > threshold, "high", "low")


# --------------------------------------------------------------------------- plotting

GROUP_ORDER = ("low", "high")


def _ordered_groups(groups: np.ndarray) -> list:
    present = list(pd.unique(groups))
    known = [g for g in GROUP_ORDER if g in present]
    return known + sorted((g for g in present if g not in GROUP_ORDER), key=str)


def plot_km_by_group(time, event, groups, title: str, path, xlabel: str = "Time") -> None:
    """Write a PNG with one KM curve per group, numbers at risk below and log-rank p in the legend."""
    from matplotlib.figure import Figure

    time, event = check_outcome(time, event)
    groups = np.asarray(groups).ravel()
    _, p = logrank_test(time, event, groups)
    order = _ordered_groups(groups)

    fig = Figure(figsize=(6.5, 5.0))
    grid = fig.add_gridspec(2, 1, height_ratios=[4, 1], hspace=0.35)
    ax = fig.add_subplot(grid[0])
    table_ax = fig.add_subplot(grid[1], sharex=ax)
    for name in order:
        in_group = groups == name
        km = kaplan_meier(time[in_group], event[in_group])
        label = f"{name} (n={in_group.sum()}, events={event[in_group].sum()})"
        (line,) = ax.step(km["time"], km["survival"], where="post", label=label)
        censored = km["censored"] > 0
        ax.plot(km["time"][censored], km["survival"][censored], "|", color=line.get_color(), ms=8)
    p_text = "log-rank p = n/a" if np.isnan(p) else f"log-rank p = {p:.3g}"
    ax.plot([], [], " ", label=p_text)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("Survival probability")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    _draw_at_risk_table(table_ax, time, groups, order, ax.get_xticks(), xlabel)
    ax.set_xlim(-0.03 * time.max(), 1.03 * time.max())
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def _draw_at_risk_table(ax, time, groups, order, ticks, xlabel) -> None:
    ticks = [t for t in ticks if 0 <= t <= time.max()]
    for row, name in enumerate(order):
        group_time = time[groups == name]
        for t in ticks:
            ax.text(t, row, str(int((group_time >= t).sum())), ha="center", va="center", fontsize=8)
    ax.set_yticks(range(len(order)), [str(g) for g in order])
    ax.set_ylim(len(order) - 0.5, -0.5)
    ax.set_title("Number at risk", fontsize=9, loc="left")
    ax.set_xlabel(xlabel)
    ax.tick_params(axis="y", length=0, pad=12)
    ax.tick_params(axis="x", labelbottom=True)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
