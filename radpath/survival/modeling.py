"""Cox model pipeline fitted on training patients: impute, standardize, select, refit, predict.

Everything learnt (medians, means, SDs, selection, coefficients) comes from the training data
given to :func:`fit_model` and is stored in the :class:`FittedModel`, which applies it
unchanged to new patients.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import norm

from radpath.inputs.cohort import level_label
from radpath.survival.metrics import check_outcome, harrell_c
from radpath.survival.selection import BLOCK_COUNT_COLUMNS, counts_by_block, select_features

Z_95 = norm.ppf(0.975)
COEFFICIENT_COLUMNS = [
    "feature", "coef", "se", "hr", "hr_lower", "hr_upper", "p",
    "train_mean", "train_sd", "coef_per_unit", "binary",
]  # fmt: skip
NUMERIC_COEFFICIENT_COLUMNS = COEFFICIENT_COLUMNS[1:-1]
LOG_COLUMNS = ["step", "n_in", "n_out", "note"]
# Ridge penalties tried in turn (those above the configured one) when a Cox refit has no
# finite maximum (separation on data without signal, collinear columns without a penalty).
REFIT_PENALIZERS = (0.01, 0.1, 1.0)


class ModelInputError(ValueError):
    """Invalid model input (missing or non-numeric columns, unknown levels)."""


# --------------------------------------------------------------------------- numeric input


def _patient_ids(df: pd.DataFrame) -> pd.Index:
    return pd.Index(df["patient_id"]) if "patient_id" in df.columns else df.index


def numeric_columns(df: pd.DataFrame, columns: list[str], what: str = "feature") -> pd.DataFrame:
    """df[columns] as float; a clear error names the first patient and column that is not numeric."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ModelInputError(f"{what} columns missing from the data: {missing}")
    selected = df[columns]
    if all(pd.api.types.is_numeric_dtype(t) for t in selected.dtypes):
        return selected.astype(float)  # fast path: feature matrices are numeric already
    out = {}
    for name in columns:
        values = pd.to_numeric(df[name], errors="coerce")
        bad = values.isna() & df[name].notna()
        if bad.any():
            patient = _patient_ids(df)[np.flatnonzero(bad.to_numpy())[0]]
            raise ModelInputError(
                f"patient {patient}: non-numeric value {df[name][bad].iloc[0]!r} in column {name!r}"
            )
        out[name] = values.astype(float)
    return pd.DataFrame(out, index=df.index)


# --------------------------------------------------------------------------- fitted model


@dataclass
class FittedModel:
    """A Cox model on standardized features plus the training statistics needed to apply it.

    ``coef`` is per 1 training SD. A model without features predicts 0 for everyone (a
    constant risk: radpath.survival.status reports it as empty, without a C-index).
    ``selection_by_block``: per block and selection step, the columns in and kept
    (radpath.survival.selection.counts_by_block).
    """

    features: list[str]
    coef: np.ndarray
    medians: dict[str, float]
    means: dict[str, float]
    sds: dict[str, float]
    coefficients: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=COEFFICIENT_COLUMNS)
    )
    selection_log: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LOG_COLUMNS))
    selection_by_block: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=BLOCK_COUNT_COLUMNS)
    )
    alpha: float | None = None
    forced: list[str] = field(default_factory=list)
    baseline_time: np.ndarray = field(default_factory=lambda: np.zeros(0))
    baseline_cumhaz: np.ndarray = field(default_factory=lambda: np.zeros(0))
    follow_up: float = float("nan")
    checks: dict = field(default_factory=dict)

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        """Model features of X imputed with train medians and standardized with train mean/SD."""
        values = numeric_columns(X, self.features, what="model feature")
        values = fill_missing(values, pd.Series(self.medians))
        means = np.array([self.means[f] for f in self.features])
        sds = np.array([self.sds[f] for f in self.features])
        return (values.to_numpy() - means) / sds

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Linear predictor (log relative hazard, higher = shorter survival) for each row of X."""
        if not self.features:
            return np.zeros(len(X))
        return self.transform(X) @ self.coef

    def set_baseline(self, X_train: pd.DataFrame, time, event) -> None:
        """Store the Breslow baseline cumulative hazard of the training patients (at linear
        predictor 0, the training mean) and their longest follow-up."""
        time, event = check_outcome(time, event)
        self.baseline_time, self.baseline_cumhaz = breslow_cumulative_hazard(
            time, event, self.predict(X_train)
        )
        self.follow_up = float(time.max())

    def predict_survival(self, X: pd.DataFrame, times) -> np.ndarray:
        """(patients x times) predicted survival probability S(t | x) = exp(-H0(t) exp(lp));
        NaN at times after the longest training follow-up (the model knows nothing there)."""
        return survival_from_lp(
            self.predict(X), self.baseline_time, self.baseline_cumhaz, times, self.follow_up
        )

    def to_dict(self) -> dict:
        """JSON-serializable form (NaN becomes None)."""
        return _jsonable(
            {
                "features": list(self.features),
                "coef": [float(c) for c in self.coef],
                "medians": self.medians,
                "means": self.means,
                "sds": self.sds,
                "coefficients": self.coefficients.to_dict(orient="records"),
                "selection_log": self.selection_log.to_dict(orient="records"),
                "selection_by_block": self.selection_by_block.to_dict(orient="records"),
                "alpha": self.alpha,
                "forced": list(self.forced),
                "baseline": {
                    "time": [float(t) for t in self.baseline_time],
                    "cumulative_hazard": [float(h) for h in self.baseline_cumhaz],
                    "follow_up": self.follow_up,
                },
                "checks": self.checks,
            }
        )

    @classmethod
    def from_dict(cls, data: dict) -> FittedModel:
        baseline = data.get("baseline") or {}
        coefficients = pd.DataFrame(data["coefficients"], columns=COEFFICIENT_COLUMNS)
        return cls(
            features=list(data["features"]),
            coef=np.array(data["coef"], dtype=float),
            medians={k: float(v) for k, v in data["medians"].items()},
            means={k: float(v) for k, v in data["means"].items()},
            sds={k: float(v) for k, v in data["sds"].items()},
            coefficients=coefficients.astype(
                {**dict.fromkeys(NUMERIC_COEFFICIENT_COLUMNS, float), "binary": bool}
            ),
            selection_log=pd.DataFrame(data["selection_log"], columns=LOG_COLUMNS),
            # Absent from models fitted before radpath counted them.
            selection_by_block=pd.DataFrame(data.get("selection_by_block", []),
                                            columns=BLOCK_COUNT_COLUMNS),
            alpha=None if data.get("alpha") is None else float(data["alpha"]),
            forced=list(data.get("forced", [])),
            baseline_time=np.array(baseline.get("time", []), dtype=float),
            baseline_cumhaz=np.array(baseline.get("cumulative_hazard", []), dtype=float),
            follow_up=float("nan") if baseline.get("follow_up") is None else baseline["follow_up"],
            checks=data.get("checks") or {},
        )


def breslow_cumulative_hazard(time, event, lp) -> tuple[np.ndarray, np.ndarray]:
    """Breslow's estimate of the baseline cumulative hazard H0 at each distinct event time:
    H0(t) = sum over event times s <= t of d(s) / sum_{j: T_j >= s} exp(lp_j).

    The estimator lifelines' CoxPHFitter stores (``baseline_cumulative_hazard_``, at the
    training mean of the covariates). Without events: empty arrays (H0 = 0 everywhere).
    """
    time, event = check_outcome(time, event)
    lp = np.asarray(lp, dtype=float)
    order = np.argsort(time, kind="stable")
    time, event, partial_hazard = time[order], event[order], np.exp(lp[order])
    unique_time, first = np.unique(time, return_index=True)
    # Risk set sum at each unique time: every patient whose time is at or after it.
    at_risk = np.cumsum(partial_hazard[::-1])[::-1][first]
    deaths = np.add.reduceat(event, first)
    has_event = deaths > 0
    return unique_time[has_event], np.cumsum(deaths[has_event] / at_risk[has_event])


def baseline_cumulative_hazard_at(baseline_time, baseline_cumhaz, times) -> np.ndarray:
    """H0 at each time: the step function of :func:`breslow_cumulative_hazard` (0 before the
    first event, constant after the last)."""
    steps = np.searchsorted(np.asarray(baseline_time, dtype=float), times, side="right")
    return np.r_[0.0, np.asarray(baseline_cumhaz, dtype=float)][steps]


def survival_from_lp(lp, baseline_time, baseline_cumhaz, times, follow_up: float) -> np.ndarray:
    """exp(-H0(t) exp(lp)) for each patient (rows) and time (columns), H0 a right-continuous
    step function; NaN for times after ``follow_up``."""
    times = np.atleast_1d(np.asarray(times, dtype=float))
    cumhaz = baseline_cumulative_hazard_at(baseline_time, baseline_cumhaz, times)
    survival = np.exp(-np.outer(np.exp(np.asarray(lp, dtype=float)), cumhaz))
    survival[:, ~(times <= follow_up)] = np.nan
    return survival


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------- fitting


def _check_columns(forced: list[str], candidates: list[str]) -> list[str]:
    used = list(forced) + list(candidates)
    duplicated = sorted({c for c in used if used.count(c) > 1})
    if duplicated:
        raise ModelInputError(f"columns listed twice in forced/candidates: {duplicated}")
    return used


def training_statistics(values: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Train medians (0 for all-missing columns), then mean and SD (ddof 0; 1 when constant)
    of the imputed data."""
    medians = values.median().fillna(0.0)
    imputed = fill_missing(values, medians)
    sds = imputed.std(ddof=0)
    return medians, imputed.mean(), sds.where(sds > 0, 1.0)


def fill_missing(values: pd.DataFrame, fill: pd.Series) -> pd.DataFrame:
    """values with NaN replaced column-wise by `fill` (numpy: pandas' fillna is slow when wide)."""
    array = values.to_numpy(dtype=float, copy=True)
    holes = np.isnan(array)
    if holes.any():
        array[holes] = np.broadcast_to(fill.reindex(values.columns).to_numpy(float), array.shape)[holes]
    return pd.DataFrame(array, index=values.index, columns=values.columns)


def cox_refit(Z: pd.DataFrame, time, event, penalizer: float) -> pd.DataFrame:
    """lifelines CoxPHFitter (Efron ties) on standardized columns; per-1-SD coefficient table."""
    from lifelines import CoxPHFitter

    data = Z.reset_index(drop=True).copy()
    data["__time__"], data["__event__"] = time, event
    fitter = CoxPHFitter(penalizer=penalizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fitter.fit(data, duration_col="__time__", event_col="__event__")
    summary = fitter.summary.loc[list(Z.columns)]
    coef, se = summary["coef"].to_numpy(), summary["se(coef)"].to_numpy()
    return pd.DataFrame(
        {
            "feature": list(Z.columns),
            "coef": coef,
            "se": se,
            "hr": np.exp(coef),
            "hr_lower": np.exp(coef - Z_95 * se),
            "hr_upper": np.exp(coef + Z_95 * se),
            "p": summary["p"].to_numpy(),
        }
    )


def _refit_attempts(
    features: list[str], forced: list[str], penalizer: float
) -> list[tuple[list[str], float]]:
    """(columns, penalizer) in the order tried: the selected features with the configured
    penalizer, then with each larger one of REFIT_PENALIZERS; then the same for the forced
    columns alone when the selection added candidates to them (no columns: a null model)."""
    penalizers = [penalizer] + [p for p in REFIT_PENALIZERS if p > penalizer]
    attempts = [(features, p) for p in penalizers]
    if forced != features:
        attempts += [(forced, p) for p in penalizers] if forced else [([], penalizer)]
    return attempts


def refit_with_fallback(
    Z: pd.DataFrame, features: list[str], forced: list[str], time, event, penalizer: float
) -> tuple[pd.DataFrame | None, list[str], dict | None]:
    """:func:`cox_refit` of the selected features, retried while lifelines cannot fit them.

    A refit that raises ConvergenceError (or a singular matrix) is retried as
    :func:`_refit_attempts` lists. Returns (coefficient table, None for a null model; the
    columns it is on; a ``cox_refit`` selection-log row saying what failed and what was fitted
    instead, None when the first attempt fitted). Raises the first error if nothing fits.
    """
    from lifelines.exceptions import ConvergenceError

    failed: list[str] = []
    error: Exception | None = None
    for columns, pen in _refit_attempts(features, forced, penalizer):
        table = None
        if columns:
            try:
                table = cox_refit(Z[columns], time, event, pen)
            except (ConvergenceError, np.linalg.LinAlgError) as exc:
                error = error or exc
                failed.append(f"penalizer {pen:g} on {len(columns)} column(s)")
                continue
        if not failed:
            return table, columns, None
        note = f"lifelines did not converge ({_first_sentence(error)}) with {'; '.join(failed)}"
        if columns:
            note += f"; refitted with penalizer {pen:g} on {len(columns)} column(s)"
        if columns != features:
            note += "; selected candidates dropped: " + (
                "forced columns only" if columns else "null model (predicts 0)"
            )
        return table, columns, {"step": "cox_refit", "n_in": len(features),
                                "n_out": len(columns), "note": note}  # fmt: skip
    raise error


def _first_sentence(exc: BaseException) -> str:
    return str(exc).split(". ")[0].strip().rstrip(".") or type(exc).__name__


def fit_model(
    X_train: pd.DataFrame,
    time,
    event,
    forced: list[str],
    candidates: list[str],
    selection_cfg: dict,
    cox_cfg: dict,
    seed: int,
) -> FittedModel:
    """Impute (train medians) and standardize (train mean/SD) forced + candidate columns, select
    among candidates (forced kept, unpenalized), refit a Cox model on the result.

    An empty selection without forced columns gives a null model (predicts 0). A refit that
    lifelines cannot fit (no signal: separation) is retried with a larger ridge penalty, then
    on the forced columns only (:func:`refit_with_fallback`); a ``cox_refit`` row in the
    selection log says so.
    """
    time, event = check_outcome(time, event)
    if len(X_train) != time.size:
        raise ModelInputError(f"{len(X_train)} training rows but {time.size} outcomes")
    used = _check_columns(forced, candidates)
    values = numeric_columns(X_train, used)
    medians, means, sds = training_statistics(values)
    Z = (fill_missing(values, medians) - means) / sds
    selection = select_features(Z, time, event, selection_cfg, list(forced), seed)
    features, table, log = selection.selected, None, selection.log
    kept = dict(selection.kept)
    if features:
        kept_forced = [f for f in forced if f in features]
        table, features, refit_row = refit_with_fallback(
            Z, features, kept_forced, time, event, float(cox_cfg["penalizer"])
        )
        if refit_row is not None:
            refit_log = pd.DataFrame([refit_row], columns=LOG_COLUMNS)
            log = pd.concat([log, refit_log], ignore_index=True)
            kept["cox_refit"] = features
    model = FittedModel(
        features=features,
        coef=np.zeros(len(features)),
        medians={f: float(medians[f]) for f in features},
        means={f: float(means[f]) for f in features},
        sds={f: float(sds[f]) for f in features},
        selection_log=log,
        selection_by_block=counts_by_block(list(forced), list(candidates), kept),
        alpha=selection.alpha,
        forced=[f for f in forced if f in features],
    )
    if table is not None:
        _set_coefficients(model, table, values, means, sds)
    model.set_baseline(X_train, time, event)
    return model


def _set_coefficients(model: FittedModel, table: pd.DataFrame, values, means, sds) -> None:
    features = model.features
    table["train_mean"] = means[features].to_numpy()
    table["train_sd"] = sds[features].to_numpy()
    table["coef_per_unit"] = table["coef"] / table["train_sd"]
    # 0/1 columns (a category against its reference) are read per unit, not per SD.
    table["binary"] = [bool(set(np.unique(values[f].dropna())) <= {0.0, 1.0}) for f in features]
    model.coef = table["coef"].to_numpy()
    model.coefficients = table[COEFFICIENT_COLUMNS]


# --------------------------------------------------------------------------- optimism


def _refit_failures() -> tuple[type[BaseException], ...]:
    from lifelines.exceptions import ConvergenceError

    return (ConvergenceError, ArithmeticError, np.linalg.LinAlgError)


def one_blas_thread():
    """Context in which BLAS/OpenMP libraries use one thread: results then do not depend on
    the threads a job was given (its parallelism is over bootstrap resamples instead)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _resample_optimism(X_train: pd.DataFrame, time, event, fit_fn, idx) -> float | str:
    """Optimism of one resample (rows idx): C of its refit on the resample minus on the
    original data; or why there is none: the refit's error, or that a C is undefined."""
    Xb = X_train.iloc[idx].reset_index(drop=True)
    try:
        model_b = fit_fn(Xb, time[idx], event[idx])
    except _refit_failures() as exc:
        return f"refit failed: {type(exc).__name__}: {_first_sentence(exc)}"
    c_boot = harrell_c(time[idx], event[idx], model_b.predict(Xb))
    c_orig = harrell_c(time, event, model_b.predict(X_train))
    if not (np.isfinite(c_boot) and np.isfinite(c_orig)):
        return "C undefined (no comparable pair)"
    return c_boot - c_orig


def _resample_optimisms(X_train, time, event, fit_fn, resamples, threads: int) -> list:
    """:func:`_resample_optimism` of each resample, in order: in this process, or with
    threads > 1 in that many worker processes (joblib's loky: no re-run of the calling script,
    BLAS pinned to one thread in each). Each resample's result depends on its rows only."""
    if threads <= 1 or len(resamples) <= 1:
        with one_blas_thread():
            return [_resample_optimism(X_train, time, event, fit_fn, idx) for idx in resamples]
    from joblib import Parallel, delayed, parallel_config

    jobs = min(threads, len(resamples))
    with parallel_config(backend="loky", n_jobs=jobs, inner_max_num_threads=1):
        return Parallel()(
            delayed(_resample_optimism)(X_train, time, event, fit_fn, idx) for idx in resamples
        )


def optimism_corrected_c(
    X_train: pd.DataFrame,
    time,
    event,
    fit_fn: Callable[[pd.DataFrame, np.ndarray, np.ndarray], FittedModel],
    B: int,
    seed: int,
    model: FittedModel | None = None,
    threads: int = 1,
) -> dict:
    """Harrell's bootstrap optimism correction of the apparent training C.

    For each of B resamples the whole pipeline is refitted with ``fit_fn(Xb, tb, eb)``;
    optimism_b = C(model_b on resample) - C(model_b on the original training data). Resamples
    whose refit fails or whose C is undefined are skipped, never silently: B_used counts the
    rest, B_failed the skipped ones and ``failures`` says why (reason -> count), because
    dropping them biases the estimate toward resamples that fit easily.

    ``model``: the apparent model, ``fit_fn(X_train, time, event)``, when the caller has fitted
    it already (otherwise it is fitted here). The resamples are drawn up front from one
    generator seeded with ``seed`` and refitted with ``threads`` processes; the result is the
    same whatever ``threads`` (each refit uses one BLAS thread, the mean is taken in order).
    """
    time, event = check_outcome(time, event)
    if model is None:
        with one_blas_thread():
            model = fit_fn(X_train, time, event)
    apparent = harrell_c(time, event, model.predict(X_train))
    rng = np.random.default_rng(seed)
    resamples = [rng.integers(0, time.size, time.size) for _ in range(B)]
    results = _resample_optimisms(X_train, time, event, fit_fn, resamples, threads)
    optimism = [value for value in results if not isinstance(value, str)]
    failures = Counter(value for value in results if isinstance(value, str))
    mean_optimism = float(np.mean(optimism)) if optimism else float("nan")
    return {
        "apparent_c": apparent,
        "optimism": mean_optimism,
        "corrected_c": apparent - mean_optimism,
        "B": B,
        "B_used": len(optimism),
        "B_failed": B - len(optimism),
        "failures": dict(sorted(failures.items())),
    }


# --------------------------------------------------------------------------- clinical covariates


def categorical_levels(df: pd.DataFrame, covariates_cfg: list[dict]) -> dict[str, list[str]]:
    """Levels of each categorical covariate in df (the training patients): reference first, then
    the others sorted. Raises if the reference level does not occur."""
    levels = {}
    for cov in covariates_cfg:
        if cov["type"] != "categorical":
            continue
        name, reference = cov["name"], level_label(cov["reference"])
        if name not in df.columns:
            raise ModelInputError(f"clinical table has no column {name!r}")
        present = sorted({level_label(v) for v in df[name].dropna()})
        if reference not in present:
            raise ModelInputError(
                f"reference level {reference!r} of {name!r} does not occur in the training "
                f"patients (levels: {present})"
            )
        levels[name] = [reference] + [v for v in present if v != reference]
    return levels


def encoded_columns(covariates_cfg: list[dict], levels: dict[str, list[str]]) -> list[str]:
    """Names of the encoded columns: numeric covariates as is, categorical as ``name[level]``."""
    columns = []
    for cov in covariates_cfg:
        if cov["type"] == "categorical":
            columns += [f"{cov['name']}[{lvl}]" for lvl in levels[cov["name"]][1:]]
        else:
            columns.append(cov["name"])
    return columns


def encode_clinical(
    df: pd.DataFrame, covariates_cfg: list[dict], levels: dict[str, list[str]] | None = None
) -> pd.DataFrame:
    """Numeric covariates as float, categorical one-hot against the reference (``stage[II]``).

    ``levels`` are the training levels (:func:`categorical_levels`); None derives them from df,
    i.e. pass None for the training patients and the training levels for everyone else. A
    level not seen in training is an error naming the patient. Missing values stay missing
    (all indicator columns NaN) and are imputed later with training medians.
    """
    levels = categorical_levels(df, covariates_cfg) if levels is None else levels
    ids = _patient_ids(df)
    out = {}
    for cov in covariates_cfg:
        name = cov["name"]
        if cov["type"] == "numeric":
            out[name] = numeric_columns(df, [name], what="clinical")[name]
            continue
        if cov["type"] != "categorical":
            raise ModelInputError(f"covariate {name!r}: type must be numeric or categorical")
        if name not in df.columns:
            raise ModelInputError(f"clinical table has no column {name!r}")
        labels = df[name].map(lambda v: None if pd.isna(v) else level_label(v))
        unknown = labels.notna() & ~labels.isin(levels[name])
        if unknown.any():
            i = np.flatnonzero(unknown.to_numpy())[0]
            raise ModelInputError(
                f"patient {ids[i]}: level {labels.iloc[i]!r} of {name!r} was not seen in the "
                f"training patients (levels: {levels[name]}); merge it with another level in "
                "the clinical sheet, or move a patient with it to the training split"
            )
        for level in levels[name][1:]:
            out[f"{name}[{level}]"] = (labels == level).astype(float).where(labels.notna())
    return pd.DataFrame(out, index=df.index, columns=encoded_columns(covariates_cfg, levels))
