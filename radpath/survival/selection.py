"""Feature selection for Cox models, fitted on training patients only.

Steps, in order, on the candidate columns (forced columns, e.g. clinical covariates, are never
filtered and are unpenalized): near-zero variance, Spearman correlation pruning, univariate Cox
screening, penalized Cox (Coxnet) with the penalty chosen by cross-validation, cap on the number
of features. Each step returns what it kept and one log row (step, n_in, n_out, note).

Weak or absent signal is a normal outcome, not a crash. Where Coxnet cannot fit a path (its
linear predictor overflows: weak penalties on null data with few events, or undamped steps on
correlated forced columns), it is refitted with the forced columns orthonormalized and then on
paths cut short at the weak end (:func:`coxnet_path`); a CV fold that still fails makes the
alphas it could not fit ineligible; failing everything, the selection is empty (forced columns
only). The penalized_cox log row records every fallback taken.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd
from scipy.stats import norm

from radpath.survival.metrics import check_outcome


class SelectionError(ValueError):
    """Invalid input to feature selection."""


@dataclass
class SelectionResult:
    """Outcome of :func:`select_features`.

    ``selected``: forced columns first, then selected candidates by decreasing |coef|.
    ``alpha``: the Coxnet penalty chosen (None when the penalized step did not run).
    ``univariate``: per-candidate univariate Cox (feature, coef, se, p, converged).
    ``cv``: per alpha the number of nonzero candidates and the CV deviance (mean, se).
    ``kept``: per step of ``log`` (in its order), the columns it kept: the forced ones for
    ``forced``, candidates for the others.
    """

    selected: list[str]
    log: pd.DataFrame
    alpha: float | None
    univariate: pd.DataFrame = field(default_factory=pd.DataFrame)
    cv: pd.DataFrame = field(default_factory=pd.DataFrame)
    kept: dict[str, list[str]] = field(default_factory=dict)


def _log_row(step: str, n_in: int, n_out: int, note: str = "") -> dict:
    return {"step": step, "n_in": n_in, "n_out": n_out, "note": note}


def standardize(values: np.ndarray) -> np.ndarray:
    """Columns centred and scaled to SD 1 (ddof 0); constant columns become 0."""
    sd = values.std(axis=0)
    return (values - values.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


# --------------------------------------------------------------------------- near-zero variance


def _nzv_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """caret's freqRatio, unique fraction and number of distinct values of each column of
    values (n, p), ignoring missing values; freqRatio is 0 with fewer than 2 distinct values.

    Vectorised: each column sorted once; runs of equal values are measured only in the columns
    that have any (in the others every count is 1, so freqRatio is 1).
    """
    n, p = values.shape
    cols = np.array(values.T, order="C")  # a copy: values may be a view of the caller's data
    cols.sort(axis=1)  # NaN last
    present = ~np.isnan(cols)
    run_start = present.copy()
    run_start[:, 1:] &= cols[:, 1:] != cols[:, :-1]
    n_distinct = run_start.sum(axis=1)
    n_present = present.sum(axis=1)
    ratio = np.where(n_distinct >= 2, 1.0, 0.0)
    repeated = np.flatnonzero((n_distinct >= 2) & (n_distinct < n_present))
    if repeated.size:
        ratio[repeated] = _top_two_ratio(run_start[repeated], n_present[repeated])
    return ratio, n_distinct / n, n_distinct


def _top_two_ratio(run_start: np.ndarray, n_present: np.ndarray) -> np.ndarray:
    """Per row of run_start (True where a run of equal sorted values begins; at least two runs
    per row), the length of its longest run over that of its second longest."""
    row, pos = np.nonzero(run_start)  # row-major: by row, then position
    last = np.r_[row[1:] != row[:-1], True]
    ends = np.r_[pos[1:], 0]
    ends[last] = n_present[row[last]]
    lengths = (ends - pos)[np.lexsort((ends - pos, row))]  # each row's runs, shortest first
    last_at = np.flatnonzero(last)
    return lengths[last_at] / lengths[last_at - 1]


def near_zero_variance(
    X: pd.DataFrame, freq_ratio: float, unique_fraction: float
) -> tuple[list[str], dict]:
    """Drop constant columns and those with freqRatio > freq_ratio AND unique fraction <= unique_fraction."""
    ratio, unique, n_distinct = _nzv_stats(X.to_numpy(dtype=float))
    is_constant = n_distinct <= 1
    is_near_constant = ~is_constant & (ratio > freq_ratio) & (unique <= unique_fraction)
    kept = list(X.columns[~(is_constant | is_near_constant)])
    constant, near_constant = int(is_constant.sum()), int(is_near_constant.sum())
    note = f"{constant} constant, {near_constant} near-zero variance"
    return kept, _log_row("near_zero_variance", X.shape[1], len(kept), note)


# --------------------------------------------------------------------------- correlation


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks (1-based, ties get their average rank) within each column of values (n, p) without
    missing values; equals ``scipy.stats.rankdata(values, axis=0)``, layout included (one
    sort per column, several times faster)."""
    cols = np.array(values.T, order="C")
    order = np.argsort(cols, axis=1)  # unstable is fine: tied values get one (average) rank
    ordered = np.take_along_axis(cols, order, axis=1)
    rank = np.broadcast_to(np.arange(1.0, cols.shape[1] + 1), cols.shape).copy()
    tied = ordered[:, 1:] == ordered[:, :-1]
    with_ties = np.flatnonzero(tied.any(axis=1))
    if with_ties.size:  # a run of equal values from position first to last: (first + last) / 2
        tied = tied[with_ties]
        position = np.broadcast_to(np.arange(cols.shape[1]), (with_ties.size, cols.shape[1]))
        edge = np.ones((with_ties.size, 1), dtype=bool)
        first = np.maximum.accumulate(np.where(np.c_[edge, ~tied], position, 0), axis=1)
        last = np.where(np.c_[~tied, edge], position, cols.shape[1] - 1)[:, ::-1]
        last = np.minimum.accumulate(last, axis=1)[:, ::-1]
        rank[with_ties] = (first + last) / 2 + 1.0
    ranks = np.empty_like(cols)
    np.put_along_axis(ranks, order, rank, axis=1)
    return ranks.T


def spearman_abs(values: np.ndarray) -> np.ndarray:
    """|Spearman rho| between columns (average ranks for ties); 0 for constant columns."""
    ranks = standardize(average_ranks(values))
    corr = np.abs(ranks.T @ ranks) / values.shape[0]
    np.fill_diagonal(corr, 0.0)
    return corr


def correlation_prune(X: pd.DataFrame, threshold: float) -> tuple[list[str], dict]:
    """Greedy pruning of pairs with |Spearman rho| > threshold, strongest pair first.

    Of a pair, the column with the higher mean |rho| to the columns still kept is dropped (later
    column on a tie), as caret::findCorrelation; unlike caret's fast variant the means are
    updated after each drop. Deterministic.
    """
    names = list(X.columns)
    if len(names) < 2:
        return names, _log_row("correlation", len(names), len(names), "fewer than 2 columns")
    corr = spearman_abs(X.to_numpy(dtype=float))
    i_idx, j_idx = np.nonzero(np.triu(corr > threshold, k=1))
    order = np.lexsort((j_idx, i_idx, -corr[i_idx, j_idx]))
    kept = np.ones(len(names), dtype=bool)
    row_sums = corr.sum(axis=1)
    for i, j in zip(i_idx[order], j_idx[order], strict=True):
        if not (kept[i] and kept[j]):
            continue
        drop = i if row_sums[i] > row_sums[j] else j
        kept[drop] = False
        row_sums -= corr[:, drop]
    note = f"|Spearman rho| > {threshold}: {int((~kept).sum())} dropped"
    selected = [n for n, k in zip(names, kept, strict=True) if k]
    return selected, _log_row("correlation", len(names), len(selected), note)


# --------------------------------------------------------------------------- univariate Cox


# Step halving treats a trial step as worse only when the log-likelihood falls by more than this
# fraction of its size (at least 1): the rounding error of a sum over n patients grows with
# |loglik|, itself growing with n, so an absolute tolerance made columns that had converged look
# worse at large n and halve their steps in vain.
LOGLIK_RTOL = 1e-12
MAX_HALVINGS = 30
# A column whose information per event (standardized: the variance of the column within the
# risk sets, weighted by the fitted hazards) is below this has a flat, i.e. monotone,
# likelihood: its estimate is infinite, whatever point the iterations stopped at.
MIN_INFO_PER_EVENT = 1e-8


@dataclass
class _EfronRiskSets:
    """Distinct event times of patients sorted by time, for Efron's risk-set sums.

    ``starts``: index (in time order) of the first patient of each event time, whose risk set
    is every patient from there on; ``n_events_at``: the events at that time. The events of
    tied times (``tie_rows``, grouped by ``tie_starts``) are needed for Efron's correction.
    """

    order: np.ndarray
    starts: np.ndarray
    n_events_at: np.ndarray
    event_sorted: np.ndarray
    tie_rows: np.ndarray
    tie_starts: np.ndarray

    @classmethod
    def build(cls, time: np.ndarray, event: np.ndarray) -> _EfronRiskSets:
        order = np.argsort(time, kind="stable")
        t, ev = time[order], event[order].astype(bool)
        starts = np.flatnonzero(np.r_[True, t[1:] != t[:-1]])
        n_events = np.add.reduceat(ev.astype(int), starts)
        has_event = n_events > 0
        group = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, t.size]))
        tied_group = n_events[group] > 1
        tie_rows = np.flatnonzero(ev & tied_group)
        tie_starts = np.flatnonzero(np.r_[True, group[tie_rows][1:] != group[tie_rows][:-1]])
        tie_starts = tie_starts if tie_rows.size else np.zeros(0, dtype=int)
        return cls(order, starts[has_event], n_events[has_event], ev.astype(float), tie_rows,
                   tie_starts)  # fmt: skip

    def tied_sum(self, values: np.ndarray) -> np.ndarray:
        """Per row of values (k, len(tie_rows)), its sum over the events of each tied time."""
        return np.add.reduceat(values, self.tie_starts, axis=1)

    def at_risk(self, values: np.ndarray) -> np.ndarray:
        """Per row of values (k, n patients in time order), its sum over each risk set."""
        reverse = np.cumsum(values[:, ::-1], axis=1)
        return reverse[:, values.shape[1] - 1 - self.starts]


def _efron_terms(x: np.ndarray, beta: np.ndarray, event_sum: np.ndarray, risk: _EfronRiskSets):
    """Efron log partial likelihood, score and information of one coefficient per row of x.

    x: (k, n) covariate rows, patients in time order; event_sum: each row's sum over the events.
    """
    eta = x * beta[:, None]
    eta -= eta.max(axis=1, keepdims=True)  # the ratios below are invariant to a per-row shift
    loglik = eta @ risk.event_sorted
    r = np.exp(eta, out=eta)
    rx = r * x
    s0, s1 = risk.at_risk(r), risk.at_risk(rx)
    rx *= x
    s2 = risk.at_risk(rx)
    loglik -= np.log(s0).sum(axis=1)
    m1 = s1 / s0
    score = event_sum - m1.sum(axis=1)
    info = (s2 / s0 - m1 * m1).sum(axis=1)
    multiple = np.flatnonzero(risk.n_events_at > 1)
    if multiple.size:
        xt = x[:, risk.tie_rows]
        rt = r[:, risk.tie_rows]
        d0, d1, d2 = (risk.tied_sum(v) for v in (rt, rt * xt, rt * xt * xt))
        d = risk.n_events_at[multiple]
        for tie in range(1, int(d.max())):
            sel = d > tie
            frac = tie / d[sel]
            g = multiple[sel]
            den = s0[:, g] - frac * d0[:, sel]
            m1 = (s1[:, g] - frac * d1[:, sel]) / den
            loglik -= np.log(den).sum(axis=1)
            score -= m1.sum(axis=1)
            info += ((s2[:, g] - frac * d2[:, sel]) / den - m1 * m1).sum(axis=1)
    return loglik, score, info


def univariate_cox(
    X: pd.DataFrame, time, event, max_iter: int = 50, tol: float = 1e-9, max_abs_beta: float = 20.0
) -> pd.DataFrame:
    """One Cox model per column (Efron ties, as lifelines), all columns at once by Newton-Raphson.

    Columns are standardized first, so ``coef`` is per 1 SD. Wald p = 2 * (1 - Phi(|coef/se|)).
    Columns that do not converge (e.g. monotone likelihood: |coef| > max_abs_beta, or an
    information below MIN_INFO_PER_EVENT per event) or are constant get converged=False and
    p=NaN.

    A column has converged when its Newton step (per SD, score / information) is below
    ``tol``; that last step is taken without evaluating the likelihood again. Each iteration
    updates the columns still iterating at once; the steps of those whose log-likelihood would
    fall (beyond rounding: LOGLIK_RTOL of its size) are halved, those columns only. A column
    whose likelihood still falls after MAX_HALVINGS halvings has no usable ascent direction
    (its information is ~0: a monotone likelihood) and stops there, not converged.
    """
    time, event = check_outcome(time, event)
    raw = X.to_numpy(dtype=float)
    risk = _EfronRiskSets.build(time, event)
    x = np.ascontiguousarray(standardize(raw)[risk.order].T)  # one row per column of X
    event_sum = x @ risk.event_sorted
    beta = np.zeros(x.shape[0])
    loglik, score, info = _efron_terms(x, beta, event_sum, risk)
    converged = np.zeros(x.shape[0], dtype=bool)
    iterating = np.ones(x.shape[0], dtype=bool)
    for _ in range(max_iter):
        todo = np.flatnonzero(iterating)
        step = np.divide(score[todo], info[todo], out=np.zeros(todo.size), where=info[todo] > 0)
        step = np.clip(step, -1.0, 1.0)
        last = np.abs(step) < tol
        beta[todo[last]] += step[last]
        converged[todo[last]] = True
        iterating[todo[last]] = False
        todo, step = todo[~last], step[~last]
        if not todo.size:
            break
        rows = x if todo.size == x.shape[0] else x[todo]
        stuck, new = _newton_step(rows, beta[todo], step, loglik[todo], event_sum[todo], risk)
        moved = todo[~stuck]
        for values, updated in zip((beta, loglik, score, info), new, strict=True):
            values[moved] = updated[~stuck]
        iterating[todo[stuck]] = False
    informative = info > MIN_INFO_PER_EVENT * risk.n_events_at.sum()
    ok = converged & informative & (np.abs(beta) <= max_abs_beta) & (raw.std(axis=0) > 0)
    se = np.where(ok, 1.0 / np.sqrt(np.where(info > 0, info, 1.0)), np.nan)
    p = np.where(ok, 2 * norm.sf(np.abs(beta / se)), np.nan)
    return pd.DataFrame({"feature": X.columns, "coef": beta, "se": se, "p": p, "converged": ok})


def _newton_step(x, beta, step, loglik, event_sum, risk: _EfronRiskSets):
    """beta + step for each row of x, the step halved (up to MAX_HALVINGS times) for the rows
    whose log-likelihood would fall. Returns (rows whose likelihood still falls, (beta, loglik,
    score, info) after the steps)."""
    new = list(_efron_terms(x, beta + step, event_sum, risk))
    floor = loglik - LOGLIK_RTOL * np.maximum(np.abs(loglik), 1.0)
    worse = np.flatnonzero(new[0] < floor)
    for _ in range(MAX_HALVINGS):  # the likelihood is concave: a short enough step increases it
        if not worse.size:
            break
        step[worse] /= 2
        again = _efron_terms(x[worse], beta[worse] + step[worse], event_sum[worse], risk)
        for values, updated in zip(new, again, strict=True):
            values[worse] = updated
        worse = worse[again[0] < floor[worse]]
    stuck = np.zeros(beta.size, dtype=bool)
    stuck[worse] = True
    return stuck, (beta + step, *new)


def univariate_screen(
    X: pd.DataFrame, time, event, p_max: float, max_features: int
) -> tuple[list[str], dict, pd.DataFrame]:
    """Keep columns with univariate Wald p < p_max, at most max_features with the smallest p."""
    table = univariate_cox(X, time, event)
    failed = int((~table["converged"]).sum())
    passing = table[table["converged"] & (table["p"] < p_max)]
    passing = passing.sort_values(["p", "feature"], kind="stable").head(max_features)
    kept = list(passing["feature"])
    note = f"Wald p < {p_max}, at most {max_features}; {failed} did not converge (dropped)"
    return kept, _log_row("univariate_cox", X.shape[1], len(kept), note), table


# --------------------------------------------------------------------------- penalized Cox


@dataclass
class _TimeGroups:
    """Patients sorted by time and grouped by distinct time, for risk-set sums."""

    order: np.ndarray
    starts: np.ndarray
    event_sorted: np.ndarray
    n_events: np.ndarray

    @classmethod
    def build(cls, time: np.ndarray, event: np.ndarray) -> _TimeGroups:
        order = np.argsort(time, kind="stable")
        t = time[order]
        starts = np.flatnonzero(np.r_[True, t[1:] != t[:-1]])
        ev = event[order].astype(float)
        return cls(order, starts, ev, np.add.reduceat(ev, starts))

    def group_sum(self, values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, self.starts, axis=0)

    def risk_set_sum(self, values: np.ndarray) -> np.ndarray:
        """Sum over patients with time >= each distinct time."""
        return self.group_sum(values)[::-1].cumsum(axis=0)[::-1]


def breslow_loglik(eta: np.ndarray, time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Breslow log partial likelihood of each column of linear predictors eta (n, k)."""
    groups = _TimeGroups.build(time, event)
    eta = eta[groups.order]
    shift = eta.max(axis=0)
    s0 = groups.risk_set_sum(np.exp(eta - shift))
    ev = groups.event_sorted
    return (eta * ev[:, None]).sum(axis=0) - (groups.n_events[:, None] * (np.log(s0) + shift)).sum(
        axis=0
    )


def _surv(time: np.ndarray, event: np.ndarray):
    from sksurv.util import Surv

    return Surv.from_arrays(event.astype(bool), time)


def _coxnet(l1_ratio: float, penalty_factor: np.ndarray, **kwargs):
    from sksurv.linear_model import CoxnetSurvivalAnalysis

    return CoxnetSurvivalAnalysis(l1_ratio=l1_ratio, penalty_factor=penalty_factor, **kwargs)


def _fit_quietly(model, x, y):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="all coefficients are zero")
        return model.fit(x, y)


def _failure(exc: BaseException) -> str:
    """Short reason for a log note: the exception's first sentence."""
    return str(exc).split(". ")[0].strip().rstrip(".") or type(exc).__name__


def _auto_min_ratio(n_samples: int, n_columns: int) -> float:
    """scikit-survival's alpha_min_ratio='auto' (as glmnet's lambda.min.ratio)."""
    return 1e-4 if n_samples > n_columns else 1e-2


def _path_cuts(n_alphas: int, log10_span: float) -> list[int]:
    """Fallback path lengths for a failed geometric path of n_alphas alphas spanning log10_span
    decades: the path cut at 10**-k times its first (strongest) alpha, for k from
    ceil(span) - 1 down to 1, i.e. each a decade shorter at the weak end. With the default
    50 alphas over 4 decades: 37, 25 and 13 alphas."""
    if n_alphas < 2 or log10_span <= 0:
        return []
    per_step = log10_span / (n_alphas - 1)
    cuts: list[int] = []
    for k in range(int(np.ceil(log10_span - 1e-9)) - 1, 0, -1):
        n = int(np.floor(k / per_step + 1e-9)) + 1
        if n < (cuts[-1] if cuts else n_alphas):
            cuts.append(n)
    return cuts


def _orthonormal_forced(x: np.ndarray, n_forced: int) -> tuple[np.ndarray, np.ndarray]:
    """x with its first n_forced (unpenalized) columns replaced by an orthonormal basis of their
    centred span (SD 1; zero columns where the span has a lower rank), and the matrix that maps
    the basis's coefficients back to the forced columns' (beta = back @ gamma).

    An exact reparametrization: unpenalized columns enter the Coxnet objective only through
    their span, so the candidates' path and the linear predictors are unchanged (up to a
    constant shift, to which the Cox partial likelihood is blind).
    """
    centred = x[:, :n_forced] - x[:, :n_forced].mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    rank = s > (s.max() if s.size else 0.0) * 1e-10
    scale = np.sqrt(x.shape[0])
    basis = np.where(rank, u * scale, 0.0)
    back = np.where(rank, vt.T / np.where(rank, s, 1.0) * scale, 0.0)
    return np.c_[basis, x[:, n_forced:]], back


@dataclass
class _CoxnetFit:
    """A Coxnet fit that may have needed fallbacks: alphas, coefficients on the given columns
    (n_columns x n_alphas; both None when every attempt failed), the log note ("" when the
    first attempt fitted) and whether the fitted path was cut short."""

    alphas: np.ndarray | None
    coef: np.ndarray | None
    note: str
    cut: bool = False


def _attempts(n_alphas: int, log10_span: float, n_forced: int) -> list[tuple[int, bool]]:
    """(number of alphas, orthonormalize forced columns) in the order tried: the whole path,
    then each cut of :func:`_path_cuts`; each length as given and, with two or more forced
    columns, with them orthonormalized (:func:`_orthonormal_forced`)."""
    parametrizations = [False, True] if n_forced >= 2 else [False]
    lengths = [n_alphas] + _path_cuts(n_alphas, log10_span)
    return [(n, orthonormal) for n in lengths for orthonormal in parametrizations]


def _fit_attempts(x, y, n_forced: int, l1_ratio: float, attempts: list) -> _CoxnetFit:
    """Coxnet on x (first n_forced columns unpenalized) with each attempt in turn until one fits.

    ``attempts``: (label, orthonormalize forced columns, path cut short, CoxnetSurvivalAnalysis
    keyword arguments), the first one the unchanged default. Coxnet raises ArithmeticError
    ("weights are too large") when the linear predictor overflows; that moves on to the next.
    """
    penalty_factor = np.r_[np.zeros(n_forced), np.ones(x.shape[1] - n_forced)]
    failed: list[tuple[str, str]] = []
    for label, orthonormal, cut, kwargs in attempts:
        design, back = _orthonormal_forced(x, n_forced) if orthonormal else (x, None)
        try:
            model = _fit_quietly(_coxnet(l1_ratio, penalty_factor, **kwargs), design, y)
        except ArithmeticError as exc:
            failed.append((label, _failure(exc)))
            continue
        coef = model.coef_
        if back is not None:
            coef = np.r_[back @ coef[:n_forced], coef[n_forced:]]
        note = ""
        if failed:
            tried = "; ".join(name for name, _ in failed)
            note = f"Coxnet failed ({failed[0][1]}) on: {tried}; fitted on: {label}"
        return _CoxnetFit(model.alphas_, coef, note, cut)
    tried = "; ".join(name for name, _ in failed)
    return _CoxnetFit(None, None, f"Coxnet failed ({failed[0][1]}) on every attempt: {tried}")


def _label(n: int, n_alphas: int, orthonormal: bool, ratio: float | None = None) -> str:
    label = f"{n}/{n_alphas} alphas"
    if ratio is not None and n < n_alphas:
        label += f" (alpha_min_ratio {ratio:.3g})"
    return label + (", forced orthonormalized" if orthonormal else "")


def coxnet_path(x, y, n_forced: int, l1_ratio: float, n_alphas: int) -> _CoxnetFit:
    """Coxnet's own path, alpha_max down to alpha_max * alpha_min_ratio ('auto'), with fallbacks.

    Coxnet raises ArithmeticError ("weights are too large") when the linear predictor
    overflows: at weak penalties on data with no signal and few events, and also when its
    undamped coordinate-wise Newton steps on unpenalized correlated columns (the one-hot
    levels of a covariate) overshoot, whatever the penalty. In the order of :func:`_attempts`:
    the default path; the same path with the forced columns orthonormalized (an exact
    reparametrization that changes the steps); then the same alpha grid cut a decade shorter
    at its weak end each time (alpha_min_ratio raised tenfold, the alphas kept are those of
    the default path). All deterministic.
    """
    min_ratio = _auto_min_ratio(*x.shape)
    per_step = np.log10(min_ratio) / max(n_alphas - 1, 1)
    attempts = []
    for n, orthonormal in _attempts(n_alphas, -np.log10(min_ratio), n_forced):
        ratio = min_ratio if n == n_alphas else 10 ** (per_step * (n - 1))
        kwargs = {"n_alphas": n, "alpha_min_ratio": ratio}
        label = _label(n, n_alphas, orthonormal, ratio)
        attempts.append((label, orthonormal, n < n_alphas, kwargs))
    return _fit_attempts(x, y, n_forced, l1_ratio, attempts)


def cv_folds(event: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded K-fold split stratified on the event; K lowered to the smaller event class size."""
    from sklearn.model_selection import StratifiedKFold

    class_sizes = np.bincount(event, minlength=2)
    k = int(min(n_folds, class_sizes[class_sizes > 0].min()))
    if k < 2:
        return []
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(event.size), event))


def _effective_alphas(per_candidate: np.ndarray, n_forced: int, n_candidates: int) -> np.ndarray:
    """Coxnet alphas giving each candidate the penalty ``per_candidate``.

    Coxnet rescales penalty factors to sum to the number of columns, so with n_forced columns of
    factor 0 each candidate is penalized alpha * (n_forced + n_candidates) / n_candidates; folds
    that screened in different numbers of candidates must correct for it.
    """
    return per_candidate * n_candidates / (n_forced + n_candidates)


def _fold_coxnet(x, y, n_forced: int, fold_alphas: np.ndarray, l1_ratio: float) -> _CoxnetFit:
    """Coxnet on one fold at the given alphas, with the fallbacks of :func:`coxnet_path` (the
    alphas a cut leaves out get no fit in this fold)."""
    span = float(np.log10(fold_alphas[0] / fold_alphas[-1])) if fold_alphas.size > 1 else 0.0
    size = fold_alphas.size
    attempts = [
        (_label(n, size, orthonormal), orthonormal, n < size, {"alphas": fold_alphas[:n]})
        for n, orthonormal in _attempts(size, span, n_forced)
    ]
    return _fit_attempts(x, y, n_forced, l1_ratio, attempts)


def _fold_linear_predictors(x, time, event, train, n_forced, candidate_cols, alphas, l1_ratio):
    """Linear predictors (all patients, fold-training patients) per alpha of a fold's fit, and a
    note on any fallback ("" when none was needed).

    Columns 0..n_forced-1 of x are forced (unpenalized); ``candidate_cols`` are the candidate
    columns this fold screened in. Alphas the fold's path did not reach, or could not be
    fitted at (see :func:`_fold_coxnet`), are NaN columns.
    """
    lp = np.full((x.shape[0], alphas.size), np.nan)
    cols = list(range(n_forced)) + list(candidate_cols)
    note = ""
    if candidate_cols:
        fold_alphas = _effective_alphas(alphas, n_forced, len(candidate_cols))
        y = _surv(time[train], event[train])
        fit = _fold_coxnet(x[train][:, cols], y, n_forced, fold_alphas, l1_ratio)
        if fit.coef is not None:
            lp[:, : fit.alphas.size] = x[:, cols] @ fit.coef
        note = fit.note + ("; weaker alphas not eligible" if fit.cut else "")
    elif n_forced:
        beta = _unpenalized_cox(x[train][:, cols], time[train], event[train])
        if beta is None:
            note = "Cox on the forced columns failed, also with a ridge penalty"
        else:
            lp[:] = (x[:, cols] @ beta)[:, None]
    else:
        lp[:] = 0.0
    return lp, lp[train], note


def _unpenalized_cox(x: np.ndarray, time: np.ndarray, event: np.ndarray) -> np.ndarray | None:
    """Cox coefficients of the forced columns on one fold's training patients.

    Columns constant in the fold (a covariate level absent from a small fold) get 0; if the
    fit still does not converge (separation in a tiny fold), a light ridge penalty is used.
    None if that fails too (the fold then has no usable fit).
    """
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError

    beta = np.zeros(x.shape[1])
    varying = np.flatnonzero(np.ptp(x, axis=0) > 0)
    if varying.size == 0:
        return beta
    data = pd.DataFrame(x[:, varying], columns=[f"c{i}" for i in varying])
    data["__time__"], data["__event__"] = time, event
    for penalizer in (0.0, 0.1):
        try:
            fitted = CoxPHFitter(penalizer=penalizer).fit(data, "__time__", "__event__")
        except (ConvergenceError, np.linalg.LinAlgError):
            continue
        beta[varying] = fitted.params_.to_numpy()
        return beta
    return None


def cv_deviance(
    x, time, event, alphas, folds, l1_ratio, n_forced, screen, candidate_names
) -> tuple[pd.DataFrame, list[str]]:
    """Cross-validated partial-likelihood deviance per alpha (Verweij & van Houwelingen 1993).

    ``alphas`` are penalties per candidate (see :func:`_effective_alphas`).
    Per fold k: -2 * (l_all(b_-k) - l_-k(b_-k)) / events in fold, with b_-k fitted without
    fold k (glmnet's grouped Cox CV; Breslow ties as Coxnet). ``screen(X_fold, t, e)`` picks the
    fold's candidates on the fold's training patients, so the univariate screen is
    cross-validated too (screening once outside the folds makes CV favour weak penalties).
    Mean and SE are event-weighted across folds; alphas a fold's path did not reach, or with an
    infinite fold deviance, are not eligible.

    A fold whose Coxnet path cannot be fitted is refitted with the fallbacks of
    :func:`coxnet_path` (:func:`_fold_coxnet`: forced columns orthonormalized, then the same
    alphas cut a decade shorter at the weak end each time). Alphas a fold could not be fitted
    at have no deviance in that fold, so they are not eligible: the penalty is only chosen
    among those every fold could be fitted at (a fold that fits nothing makes none eligible,
    and the selection is empty). Returns the table and one note per fold that needed a
    fallback ("fold k: ...").
    """
    raw = np.full((len(folds), alphas.size), np.nan)
    fold_events = np.array([event[val].sum() for _, val in folds], dtype=float)
    candidates = pd.DataFrame(x[:, n_forced:], columns=candidate_names)
    position = {name: i for i, name in enumerate(candidate_names)}
    notes = []
    for k, (train, _) in enumerate(folds):
        kept = screen(candidates.iloc[train], time[train], event[train])
        candidate_cols = [n_forced + position[c] for c in kept]
        lp_all, lp_train, note = _fold_linear_predictors(
            x, time, event, train, n_forced, candidate_cols, alphas, l1_ratio
        )
        if note:
            notes.append(f"fold {k + 1}: {note}")
        # Weak penalties on tiny folds can overfit to an infinite held-out deviance.
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            ll_all = breslow_loglik(lp_all, time, event)
            ll_train = breslow_loglik(lp_train, time[train], event[train])
            raw[k] = -2 * (ll_all - ll_train) / fold_events[k]
    reached = np.isfinite(raw)
    w = fold_events[:, None] * reached
    filled = np.where(reached, raw, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (w * filled).sum(axis=0) / w.sum(axis=0)
        var = (w * (filled - np.nan_to_num(mean)) ** 2).sum(axis=0) / w.sum(axis=0)
        se = np.sqrt(var / (reached.sum(axis=0) - 1))
    complete = reached.all(axis=0)
    table = pd.DataFrame({"alpha": alphas, "cv_deviance": mean, "cv_se": se, "complete": complete})
    return table, notes


def choose_alpha_index(cv: pd.DataFrame, rule: str) -> int:
    """Index of the alpha with the smallest CV deviance ('min'), or the largest alpha within one
    SE of it ('1se'); only alphas with a finite deviance in every fold are eligible."""
    eligible = cv[cv["complete"]]
    if eligible.empty:
        raise SelectionError("no penalty had a finite CV deviance in every fold")
    best = eligible["cv_deviance"].idxmin()
    if rule == "min":
        return int(best)
    if rule == "1se":
        bound = eligible.at[best, "cv_deviance"] + eligible.at[best, "cv_se"]
        within = eligible[eligible["cv_deviance"] <= bound]
        return int(within["alpha"].idxmax())
    raise SelectionError(f"selection.alpha_rule must be 'min' or '1se', got {rule!r}")


def _no_screen(X: pd.DataFrame, time, event) -> list[str]:
    return list(X.columns)


def _screened_names(X: pd.DataFrame, time, event, p_max: float, max_features: int) -> list[str]:
    return univariate_screen(X, time, event, p_max, max_features)[0]


def penalized_cox(
    X: pd.DataFrame,
    time,
    event,
    forced: list[str],
    cfg: dict,
    seed: int,
    screen: Callable[[pd.DataFrame, np.ndarray, np.ndarray], list[str]] = _no_screen,
    X_unscreened: pd.DataFrame | None = None,
) -> tuple[list[str], dict, float | None, pd.DataFrame]:
    """Coxnet on forced + candidate columns of X (standardized; forced unpenalized).

    The alpha path comes from the fit on all given patients; alpha is chosen by seeded K-fold
    CV deviance (see :func:`cv_deviance`) and the coefficients are read from the full path at
    exactly that alpha. When X's candidates were screened from ``X_unscreened`` by ``screen``,
    each fold repeats the screen on its own training patients. Returns candidates with
    nonzero coefficients, by decreasing |coef|.

    A path (full or one fold's) that cannot be fitted is retried as :func:`coxnet_path` says.
    When no attempt fits the full path, or no alpha could be fitted and cross-validated in
    every fold, no candidate is kept (alpha None): a weak or absent signal gives an empty
    selection, not an error. The log note records every fallback taken and why.
    """
    time, event = check_outcome(time, event)
    candidates = [c for c in X.columns if c not in forced]
    pool = X if X_unscreened is None else X_unscreened
    pool_candidates = [c for c in pool.columns if c not in forced]
    folds = cv_folds(event, int(cfg["cv_folds"]), seed)
    if not folds:
        note = "too few events or censorings for cross-validation; no candidate kept"
        return [], _log_row("penalized_cox", len(candidates), 0, note), None, pd.DataFrame()
    l1_ratio = float(cfg["l1_ratio"])
    x = standardize(X[forced + candidates].to_numpy(dtype=float))
    full = coxnet_path(x, _surv(time, event), len(forced), l1_ratio, int(cfg["n_alphas"]))
    if full.coef is None:
        note = f"{full.note}; no candidate kept"
        return [], _log_row("penalized_cox", len(candidates), 0, note), None, pd.DataFrame()
    per_candidate = full.alphas * (len(forced) + len(candidates)) / len(candidates)
    x_pool = standardize(pool[forced + pool_candidates].to_numpy(dtype=float))
    cv, fold_notes = cv_deviance(
        x_pool, time, event, per_candidate, folds, l1_ratio, len(forced), screen, pool_candidates
    )
    cv["alpha"] = full.alphas
    cv["n_nonzero"] = (full.coef[len(forced) :] != 0).sum(axis=0)
    fallbacks = "; ".join(note for note in [full.note, *fold_notes] if note)
    if not cv["complete"].any():
        note = "no alpha had a finite CV deviance in every fold; no candidate kept"
        note += f"; {fallbacks}" if fallbacks else ""
        return [], _log_row("penalized_cox", len(candidates), 0, note), None, cv
    idx = choose_alpha_index(cv, cfg["alpha_rule"])
    coef = pd.Series(full.coef[len(forced) :, idx], index=candidates)
    nonzero = coef[coef != 0]
    kept = list(nonzero.abs().sort_values(ascending=False, kind="stable").index)
    alpha = float(full.alphas[idx])
    note = f"alpha={alpha:.4g} ({cfg['alpha_rule']}, {len(folds)}-fold CV deviance)"
    if not kept:
        note += "; no candidate has a nonzero coefficient"
    if fallbacks:
        note += f"; {fallbacks}"
    return kept, _log_row("penalized_cox", len(candidates), len(kept), note), alpha, cv


# --------------------------------------------------------------------------- counts per block

BLOCK_SEPARATOR = ":"  # design columns are named `<block>:<feature>` (radpath.survival.fit)
BLOCK_COUNT_COLUMNS = ["block", "step", "n_in", "n_out"]
# The steps of the selection log in words, for the report.
STEP_LABELS = {
    "forced": "forced columns (constant ones dropped)",
    "near_zero_variance": "near-zero variance filter",
    "correlation": "correlation pruning",
    "univariate_cox": "univariable Cox filter",
    "penalized_cox": "penalised Cox (Coxnet)",
    "max_features": "cap on the number of features",
    "cox_refit": "Cox refit fallback",
}
FORCED_STEPS = ("forced", "cox_refit")
CANDIDATE_STEPS = ("near_zero_variance", "correlation", "univariate_cox", "penalized_cox",
                   "max_features", "cox_refit")


def feature_block(name: str, unprefixed: str) -> str:
    """The block a design column comes from (`radiomics:original_shape_...` -> `radiomics`);
    ``unprefixed`` for a column without a block prefix (a clinical covariate)."""
    block, separator, _ = str(name).partition(BLOCK_SEPARATOR)
    return block if separator else unprefixed


def counts_by_block(
    forced: list[str], candidates: list[str], kept: dict[str, list[str]]
) -> pd.DataFrame:
    """Per block and step of ``kept`` (step -> columns kept, in order): the block's columns
    that entered the step (n_in) and that it kept (n_out). Forced columns (`clinical` when
    unprefixed) go through the ``forced`` and ``cox_refit`` steps only, candidates
    (`candidates` when unprefixed) through the others."""
    rows = []
    for names, unprefixed, own_steps in ((forced, "clinical", FORCED_STEPS),
                                         (candidates, "candidates", CANDIDATE_STEPS)):
        steps = [step for step in kept if step in own_steps]
        blocks: dict[str, set[str]] = {}
        for name in names:
            blocks.setdefault(feature_block(name, unprefixed), set()).add(name)
        for block, members in blocks.items():
            n_in = len(members)
            for step in steps:
                n_out = sum(name in members for name in kept[step])
                rows.append({"block": block, "step": step, "n_in": n_in, "n_out": n_out})
                n_in = n_out
    return pd.DataFrame(rows, columns=BLOCK_COUNT_COLUMNS)


def where_emptied(counts: pd.DataFrame) -> dict[str, dict]:
    """Per block of :func:`counts_by_block` that ended with no column: the first step that
    kept none of the columns it got (its row: step, n_in, n_out)."""
    emptied = {}
    for block, rows in counts.groupby("block", sort=False):
        if len(rows) and rows["n_out"].iloc[-1] == 0:
            first = rows[(rows["n_out"] == 0) & (rows["n_in"] > 0)]
            row = first.iloc[0] if len(first) else rows.iloc[0]
            emptied[block] = {"step": row["step"], "n_in": int(row["n_in"]),
                              "n_out": int(row["n_out"])}
    return emptied


# --------------------------------------------------------------------------- pipeline


def _check_inputs(X: pd.DataFrame, time, event, forced: list[str]) -> None:
    missing = [c for c in forced if c not in X.columns]
    if missing:
        raise SelectionError(f"forced columns not in the feature matrix: {missing}")
    if X.columns.duplicated().any():
        raise SelectionError(f"duplicated columns: {list(X.columns[X.columns.duplicated()])}")
    non_numeric = [c for c, dtype in X.dtypes.items() if not pd.api.types.is_numeric_dtype(dtype)]
    if non_numeric:
        raise SelectionError(f"non-numeric columns: {non_numeric[:5]}")
    has_nan = X.columns[X.isna().any()].tolist()
    if has_nan:
        raise SelectionError(f"missing values in columns {has_nan[:5]} (impute before selection)")
    t, _ = check_outcome(time, event)
    if t.size != len(X):
        raise SelectionError(f"{len(X)} rows in the feature matrix but {t.size} outcomes")


def _usable_forced(X: pd.DataFrame, forced: list[str]) -> tuple[list[str], dict]:
    """Forced columns minus those constant in training (their Cox coefficient is undefined)."""
    constant = [c for c in forced if X[c].nunique() <= 1]
    kept = [c for c in forced if c not in constant]
    note = f"constant in training, dropped: {constant}" if constant else ""
    return kept, _log_row("forced", len(forced), len(kept), note)


def _unsupervised_filters(X: pd.DataFrame, cfg: dict) -> tuple[list[str], list[str], list[dict]]:
    """(kept by the near-zero variance filter, kept by both filters, their log rows)."""
    nzv = cfg["near_zero_variance"]
    varying, nzv_row = near_zero_variance(
        X, float(nzv["freq_ratio"]), float(nzv["unique_fraction"]))
    kept, corr_row = correlation_prune(X[varying], float(cfg["correlation_threshold"]))
    return varying, kept, [nzv_row, corr_row]


def _cap_row(candidates: list[str], max_features: int) -> dict:
    note = f"largest |coef| kept, at most {max_features}"
    if not candidates:
        note += "; empty selection: model uses forced columns only"
    return _log_row("max_features", len(candidates), min(len(candidates), max_features), note)


def select_features(
    X_train: pd.DataFrame, time, event, selection_cfg: dict, forced: list[str], seed: int
) -> SelectionResult:
    """Run the selection steps on the training patients; forced columns are always kept.

    Forced columns that are constant in the training data are dropped (they cannot be
    estimated) and logged. If no candidate survives, ``selected`` holds only the forced columns.
    ``method`` "univariate" (PathoSig's signature) keeps every screened candidate, smallest p
    first, without the penalized Cox step.
    """
    _check_inputs(X_train, time, event, forced)
    time, event = check_outcome(time, event)
    cfg = selection_cfg
    kept_forced, forced_row = _usable_forced(X_train, forced)
    varying, filtered, logs = _unsupervised_filters(X_train.drop(columns=forced), cfg)
    logs.insert(0, forced_row)

    screen = partial(
        _screened_names,
        p_max=float(cfg["univariate_p"]),
        max_features=int(cfg["univariate_max_features"]),
    )
    selected, alpha, univariate, cv = [], None, pd.DataFrame(), pd.DataFrame()
    if filtered:
        screened, row, univariate = univariate_screen(
            X_train[filtered], time, event, **screen.keywords
        )
        logs.append(row)
    else:
        screened = []
        logs.append(_log_row("univariate_cox", 0, 0, "no candidates left"))
    if screened and cfg.get("method", "penalized") == "univariate":
        # PathoSig's signature: every screened feature (smallest p first) into the
        # multivariable Cox refit, no penalised selection.
        selected = screened
        logs.append(_log_row("penalized_cox", len(screened), len(screened),
                             "skipped (method univariate: screened features refit together)"))
    elif screened:
        selected, row, alpha, cv = penalized_cox(
            X_train[kept_forced + screened], time, event, kept_forced, cfg, seed,
            screen=screen, X_unscreened=X_train[kept_forced + filtered],
        )  # fmt: skip
        logs.append(row)
    else:
        logs.append(_log_row("penalized_cox", 0, 0, "no candidates left"))
    max_features = int(cfg["max_features"])
    logs.append(_cap_row(selected, max_features))
    kept = dict(zip(
        [row["step"] for row in logs],
        [kept_forced, varying, filtered, screened, selected, selected[:max_features]],
        strict=True,
    ))  # fmt: skip
    return SelectionResult(
        selected=kept_forced + selected[:max_features],
        log=pd.DataFrame(logs, columns=["step", "n_in", "n_out", "note"]),
        alpha=alpha,
        univariate=univariate,
        cv=cv,
        kept=kept,
    )
