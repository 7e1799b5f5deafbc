"""ComBat harmonization of feature matrices with separate fit and apply.

Reproduces sva's ComBat as implemented by neuroCombat 0.2.12 (location/scale model,
parametric or non-parametric empirical Bayes, preserved covariate effects), but keeps the
fitted estimates in a :class:`ComBatModel` so that patients not seen during fitting
(validation patients, one new patient) are harmonized with the training estimates.

Tables are pandas: one row per patient (index = patient id), one column per feature.
Differences from neuroCombat, all deliberate:

- features with zero residual variance in training are passed through unchanged (and
  listed in ``model.passthrough_features``) instead of entering the priors or giving NaN;
- a batch with one training patient is an error, or is merged into the largest batch
  (``single_patient_batch="merge"``), instead of turning every output into NaN;
- the non-parametric likelihoods are computed in log space, so they cannot underflow;
- "zero variance" (passthrough, and sva's ``delta_hat == 0 -> 1`` for a feature constant
  within one batch) is compared against a tolerance relative to the feature's RMS, not
  exactly: rounding can leave 1e-31 where the exact value is 0, and neuroCombat's exact test
  then misses the constant batch (its result depends on how numpy happened to round).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from radpath.inputs.cohort import impute_with_train_medians

SINGLE_PATIENT_BATCH_POLICIES = ("error", "merge")
CONVERGENCE_TOLERANCE = 1e-4  # relative change that stops it_sol, as in sva / neuroCombat
MAX_ITERATIONS = 10_000
# Residual SD below this fraction of a feature's RMS counts as zero variance: for the whole
# training set (passthrough) and within one batch (sva's delta_hat == 0 -> 1). Rounding often
# leaves a few ulps instead of an exact 0, so the comparison needs the feature's own scale.
ZERO_VARIANCE_RELATIVE_SD = 1e-9
MAX_IDS_IN_MESSAGE = 10


class HarmonizationError(ValueError):
    """Bad input to ComBat fitting or application."""


@dataclass(eq=False)
class ComBatModel:
    """Everything needed to harmonize new patients with training ComBat estimates.

    Arrays have one column per harmonized feature (``harmonized_features`` order) and,
    for ``gamma_star``/``delta_star``, one row per batch (``batches`` order).
    """

    features: list[str]
    batches: list[str]
    covariate_names: list[str]  # design columns after one-hot encoding
    covariate_levels: dict[str, list[str] | None]  # source column -> levels (first = reference), None = numeric
    parametric: bool
    mean_only: bool
    batch_sizes: dict[str, int]
    passthrough_features: list[str]
    grand_mean: np.ndarray  # batch-size-weighted intercept, (n_harmonized,)
    covariate_coefs: np.ndarray  # B_hat rows of the covariates, (n_covariate_columns, n_harmonized)
    var_pooled: np.ndarray  # (n_harmonized,)
    gamma_star: np.ndarray  # (n_batches, n_harmonized), in standardized units
    delta_star: np.ndarray  # (n_batches, n_harmonized)
    batch_merges: dict[str, str] = field(default_factory=dict)  # merged batch -> batch it joined

    @property
    def harmonized_features(self) -> list[str]:
        passthrough = set(self.passthrough_features)
        return [name for name in self.features if name not in passthrough]

    def to_dict(self) -> dict[str, Any]:
        """Plain, ``json.dumps``-able representation (floats round-trip exactly)."""
        return {
            "features": list(self.features),
            "batches": list(self.batches),
            "covariate_names": list(self.covariate_names),
            "covariate_levels": {
                name: None if levels is None else list(levels)
                for name, levels in self.covariate_levels.items()
            },
            "parametric": bool(self.parametric),
            "mean_only": bool(self.mean_only),
            "batch_sizes": {name: int(size) for name, size in self.batch_sizes.items()},
            "passthrough_features": list(self.passthrough_features),
            "grand_mean": self.grand_mean.tolist(),
            "covariate_coefs": self.covariate_coefs.tolist(),
            "var_pooled": self.var_pooled.tolist(),
            "gamma_star": self.gamma_star.tolist(),
            "delta_star": self.delta_star.tolist(),
            "batch_merges": dict(self.batch_merges),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComBatModel:
        n_harmonized = len(data["features"]) - len(data["passthrough_features"])
        n_batches = len(data["batches"])

        def array(key: str, shape: tuple[int, ...]) -> np.ndarray:
            return np.asarray(data[key], dtype=float).reshape(shape)

        return cls(
            features=list(data["features"]),
            batches=list(data["batches"]),
            covariate_names=list(data["covariate_names"]),
            covariate_levels={
                name: None if levels is None else list(levels)
                for name, levels in data["covariate_levels"].items()
            },
            parametric=bool(data["parametric"]),
            mean_only=bool(data["mean_only"]),
            batch_sizes={name: int(size) for name, size in data["batch_sizes"].items()},
            passthrough_features=list(data["passthrough_features"]),
            grand_mean=array("grand_mean", (n_harmonized,)),
            covariate_coefs=array("covariate_coefs", (len(data["covariate_names"]), n_harmonized)),
            var_pooled=array("var_pooled", (n_harmonized,)),
            gamma_star=array("gamma_star", (n_batches, n_harmonized)),
            delta_star=array("delta_star", (n_batches, n_harmonized)),
            batch_merges=dict(data.get("batch_merges", {})),
        )


# ---------------------------------------------------------------------------- input checks


def _format_ids(ids: Any) -> str:
    ids = [str(i) for i in ids]
    shown = ", ".join(ids[:MAX_IDS_IN_MESSAGE])
    return shown + (f" (+{len(ids) - MAX_IDS_IN_MESSAGE} more)" if len(ids) > MAX_IDS_IN_MESSAGE else "")


def _feature_matrix(features: pd.DataFrame) -> np.ndarray:
    """Float matrix (patients x features); unique ids and names, numeric, finite."""
    if not isinstance(features, pd.DataFrame):
        raise HarmonizationError("features must be a pandas DataFrame (patients x features)")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise HarmonizationError(f"features table is empty (shape {features.shape})")
    duplicated_ids = features.index[features.index.duplicated()].unique()
    if len(duplicated_ids):
        raise HarmonizationError(f"duplicate patient ids in features: {_format_ids(duplicated_ids)}")
    duplicated_names = features.columns[features.columns.duplicated()].unique()
    if len(duplicated_names):
        raise HarmonizationError(f"duplicate feature names: {_format_ids(duplicated_names)}")
    non_numeric = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        raise HarmonizationError(f"non-numeric feature columns: {_format_ids(non_numeric)}")
    values = features.to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        bad_features = features.columns[bad.any(axis=0)]
        bad_patients = features.index[bad.any(axis=1)]
        raise HarmonizationError(
            f"NaN or infinite values in feature(s) {_format_ids(bad_features)} "
            f"(patients {_format_ids(bad_patients)}); impute or drop them before ComBat"
        )
    return values


def _batch_labels(batch: pd.Series, index: pd.Index) -> np.ndarray:
    """Batch label (as str) of every patient in ``index``."""
    if not isinstance(batch, pd.Series):
        raise HarmonizationError("batch must be a pandas Series indexed by patient id")
    if batch.index.duplicated().any():
        raise HarmonizationError(
            f"duplicate patient ids in batch: {_format_ids(batch.index[batch.index.duplicated()].unique())}"
        )
    aligned = batch.reindex(index)
    missing = index[aligned.isna().to_numpy()]
    if len(missing):
        raise HarmonizationError(f"no batch for patient(s) {_format_ids(missing)}")
    return aligned.astype(str).to_numpy()


def _aligned_covariates(covariates: pd.DataFrame, index: pd.Index, columns: list[str]) -> pd.DataFrame:
    if not isinstance(covariates, pd.DataFrame):
        raise HarmonizationError("covariates must be a pandas DataFrame indexed by patient id")
    absent = [c for c in columns if c not in covariates.columns]
    if absent:
        raise HarmonizationError(f"covariate column(s) missing: {_format_ids(absent)}")
    if covariates.index.duplicated().any():
        dup = covariates.index[covariates.index.duplicated()].unique()
        raise HarmonizationError(f"duplicate patient ids in covariates: {_format_ids(dup)}")
    absent_ids = index.difference(covariates.index)
    if len(absent_ids):
        raise HarmonizationError(f"no covariates for patient(s) {_format_ids(absent_ids)}")
    aligned = covariates.loc[index, columns]
    for column in columns:
        missing = index[aligned[column].isna().to_numpy()]
        if len(missing):
            raise HarmonizationError(
                f"covariate {column!r} is missing for patient(s) {_format_ids(missing)}"
            )
    return aligned


# ------------------------------------------------------------------------------ covariates


def _is_categorical(column: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(column) or isinstance(column.dtype, pd.CategoricalDtype)


def _observed_levels(column: pd.Series) -> list[str]:
    """Observed levels: declared order for a pandas Categorical, sorted otherwise."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        observed = set(column.dropna())
        return [str(level) for level in column.cat.categories if level in observed]
    return sorted({str(value) for value in column})


def _covariate_levels(covariates: pd.DataFrame) -> dict[str, list[str] | None]:
    return {
        str(name): _observed_levels(covariates[name]) if _is_categorical(covariates[name]) else None
        for name in covariates.columns
    }


def _covariate_design_names(levels: dict[str, list[str] | None]) -> list[str]:
    names: list[str] = []
    for column, column_levels in levels.items():
        if column_levels is None:
            names.append(column)
        else:
            names.extend(f"{column}_{level}" for level in column_levels[1:])
    return names


def _covariate_design(covariates: pd.DataFrame, levels: dict[str, list[str] | None]) -> np.ndarray:
    """Numeric columns as-is, categorical ones one-hot against their first level."""
    blocks = [np.zeros((len(covariates), 0))]
    for column, column_levels in levels.items():
        values = covariates[column]
        if column_levels is None:
            numeric = pd.to_numeric(values, errors="coerce")
            bad = values.index[numeric.isna().to_numpy()]
            if len(bad):
                raise HarmonizationError(
                    f"numeric covariate {column!r} is not a number for patient(s) {_format_ids(bad)}"
                )
            blocks.append(numeric.to_numpy(dtype=float)[:, None])
            continue
        labels = values.astype(str).to_numpy()
        unseen = values.index[~np.isin(labels, column_levels)]
        if len(unseen):
            raise HarmonizationError(
                f"covariate {column!r} has level(s) {_format_ids(sorted(set(labels) - set(column_levels)))} "
                f"not seen in training (patients {_format_ids(unseen)})"
            )
        blocks.append((labels[:, None] == np.asarray(column_levels[1:])[None, :]).astype(float))
    return np.hstack(blocks)


# --------------------------------------------------------------------------------- batches


def _single_patient_merges(labels: np.ndarray, index: pd.Index, policy: str) -> dict[str, str]:
    """Map each one-patient batch to the largest batch, or raise (policy 'error')."""
    if policy not in SINGLE_PATIENT_BATCH_POLICIES:
        raise HarmonizationError(
            f"single_patient_batch must be one of {SINGLE_PATIENT_BATCH_POLICIES}, got {policy!r}"
        )
    levels, counts = np.unique(labels, return_counts=True)
    singles = levels[counts == 1]
    if len(singles) == 0:
        return {}
    if policy == "error":
        described = "; ".join(
            f"batch {level!r} (patient {_format_ids(index[labels == level])})" for level in singles
        )
        raise HarmonizationError(
            f"ComBat needs at least 2 training patients per batch: {described}; "
            "use single_patient_batch='merge' to merge such batches into the largest batch"
        )
    largest = levels[np.argmax(counts)]  # first in sorted order on ties
    if counts.max() == 1:
        raise HarmonizationError(
            f"every batch has a single training patient ({_format_ids(levels)}); nothing to merge into"
        )
    return {str(level): str(largest) for level in singles}


def _map_merged(labels: np.ndarray, merges: dict[str, str]) -> np.ndarray:
    return np.array([merges.get(label, label) for label in labels], dtype=object).astype(str)


# ------------------------------------------------------------------------ empirical Bayes


def _inverse_gamma_priors(delta_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Method-of-moments a and b priors per batch (sva's aprior / bprior)."""
    mean = delta_hat.mean(axis=1)
    var = delta_hat.var(axis=1, ddof=1)
    return (2 * var + mean**2) / var, (mean * var + mean**3) / var


def _posterior_mean(g_hat, g_bar, n, d_star, t2):
    return (t2 * n * g_hat + d_star * g_bar) / (t2 * n + d_star)


def _posterior_var(sum2, n, a, b):
    return (0.5 * sum2 + b) / (n / 2.0 + a - 1.0)


def _parametric_batch(
    s_data: np.ndarray, g_hat: np.ndarray, d_hat: np.ndarray, g_bar: float, t2: float, a: float, b: float
) -> tuple[np.ndarray, np.ndarray]:
    """sva's it_sol for one batch: s_data is (patients in batch x features)."""
    n = s_data.shape[0]
    g_old, d_old = g_hat.copy(), d_hat.copy()
    for _ in range(MAX_ITERATIONS):
        g_new = _posterior_mean(g_hat, g_bar, n, d_old, t2)
        sum2 = ((s_data - g_new[None, :]) ** 2).sum(axis=0)
        d_new = _posterior_var(sum2, n, a, b)
        change = max((np.abs(g_new - g_old) / g_old).max(), (np.abs(d_new - d_old) / d_old).max())
        g_old, d_old = g_new, d_new
        if not change > CONVERGENCE_TOLERANCE:  # NaN stops too, as in sva
            return g_new, d_new
    raise HarmonizationError(f"parametric ComBat did not converge in {MAX_ITERATIONS} iterations")


def _nonparametric_batch(
    s_data: np.ndarray, g_hat: np.ndarray, d_hat: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """sva's int_eprior for one batch, with the likelihoods normalized in log space."""
    n, n_features = s_data.shape
    others = ~np.eye(n_features, dtype=bool)
    gamma_star = np.empty(n_features)
    delta_star = np.empty(n_features)
    for i in range(n_features):
        g, d = g_hat[others[i]], d_hat[others[i]]
        sum2 = ((s_data[:, i][None, :] - g[:, None]) ** 2).sum(axis=1)
        log_lh = -0.5 * n * np.log(2 * np.pi * d) - sum2 / (2 * d)
        weights = np.exp(log_lh - log_lh.max())
        gamma_star[i] = (g * weights).sum() / weights.sum()
        delta_star[i] = (d * weights).sum() / weights.sum()
    return gamma_star, delta_star


def _zero_within_batch_variance(rms: np.ndarray, var_pooled: np.ndarray) -> np.ndarray:
    """Per feature, the largest within-batch variance of the standardized data that is zero.

    The passthrough rule in standardized units: a residual SD of at most
    ``ZERO_VARIANCE_RELATIVE_SD`` times the feature's RMS. A feature constant within a batch
    gets a variance of rounding noise (e.g. 5e-32: the mean of n equal floats is not always
    that float), far below this bound; for a harmonized (not passed through) feature the
    bound is below the pooled variance, so a batch that varies is never called constant.
    """
    return (ZERO_VARIANCE_RELATIVE_SD * rms) ** 2 / var_pooled


def _empirical_bayes(
    s_data: np.ndarray,
    batch_index: np.ndarray,
    n_batches: int,
    parametric: bool,
    mean_only: bool,
    zero_variance: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """gamma_star and delta_star (n_batches x features) from standardized data.

    ``zero_variance``: per feature, the within-batch variance at or below which a batch
    counts as constant (:func:`_zero_within_batch_variance`); its delta_hat becomes 1, as sva's
    ``delta_hat == 0`` replacement.
    """
    rows = [batch_index == b for b in range(n_batches)]
    gamma_hat = np.vstack([s_data[r].mean(axis=0) for r in rows])
    if mean_only:
        delta_hat = np.ones_like(gamma_hat)
    else:
        delta_hat = np.vstack([s_data[r].var(axis=0, ddof=1) for r in rows])
        delta_hat[delta_hat <= zero_variance[None, :]] = 1.0
    gamma_bar = gamma_hat.mean(axis=1)
    t2 = gamma_hat.var(axis=1, ddof=1)

    if parametric and mean_only:
        gamma_star = _posterior_mean(gamma_hat, gamma_bar[:, None], 1, 1, t2[:, None])
        return gamma_star, np.ones_like(gamma_star)
    if parametric:
        a_prior, b_prior = _inverse_gamma_priors(delta_hat)
        fitted = [
            _parametric_batch(s_data[rows[b]], gamma_hat[b], delta_hat[b], gamma_bar[b], t2[b], a_prior[b], b_prior[b])
            for b in range(n_batches)
        ]
    else:
        fitted = [_nonparametric_batch(s_data[rows[b]], gamma_hat[b], delta_hat[b]) for b in range(n_batches)]
    return np.vstack([g for g, _ in fitted]), np.vstack([d for _, d in fitted])


# ------------------------------------------------------------------------------ public API


def fit_combat(
    features: pd.DataFrame,
    batch: pd.Series,
    covariates: pd.DataFrame | None = None,
    parametric: bool = True,
    mean_only: bool = False,
    single_patient_batch: str = "error",
) -> ComBatModel:
    """Fit ComBat on training patients.

    ``covariates`` (indexed by patient id) holds effects to preserve: numeric columns are
    used as-is, object/category columns are one-hot encoded against their first level
    (declared order for a pandas Categorical, sorted otherwise). ``single_patient_batch``:
    ``"error"`` rejects a batch with one patient; ``"merge"`` folds it into the largest
    batch and records that in ``model.batch_merges`` so :func:`apply_combat` maps it too.
    Features with zero residual variance are passed through and listed in
    ``model.passthrough_features``.
    """
    values = _feature_matrix(features)
    index = features.index
    labels = _batch_labels(batch, index)
    merges = _single_patient_merges(labels, index, single_patient_batch)
    labels = _map_merged(labels, merges)
    batches, batch_index, batch_sizes = np.unique(labels, return_inverse=True, return_counts=True)
    if len(batches) < 2:
        raise HarmonizationError(
            f"ComBat needs at least 2 batches, training patients have only {_format_ids(batches)}"
        )

    if covariates is None:
        covariates = pd.DataFrame(index=index)
    aligned = _aligned_covariates(covariates, index, list(covariates.columns))
    aligned.columns = [str(c) for c in aligned.columns]
    covariate_levels = _covariate_levels(aligned)
    covariate_names = _covariate_design_names(covariate_levels)
    covariate_design = _covariate_design(aligned, covariate_levels)
    batch_design = (batch_index[:, None] == np.arange(len(batches))[None, :]).astype(float)
    design = np.hstack([batch_design, covariate_design])
    if np.linalg.matrix_rank(design) < design.shape[1]:
        raise HarmonizationError(
            f"ComBat design matrix is rank-deficient: covariate column(s) {_format_ids(covariate_names)} "
            "are constant or collinear with the batches in the training patients"
        )

    b_hat = np.linalg.lstsq(design, values, rcond=None)[0]
    n_batches = len(batches)
    grand_mean = (batch_sizes / len(index)) @ b_hat[:n_batches]
    covariate_coefs = b_hat[n_batches:]
    var_pooled = ((values - design @ b_hat) ** 2).mean(axis=0)

    rms = np.sqrt((values**2).mean(axis=0))
    passthrough = np.sqrt(var_pooled) <= ZERO_VARIANCE_RELATIVE_SD * rms
    if (~passthrough).sum() < 2:
        raise HarmonizationError(
            "ComBat's empirical Bayes priors need at least 2 features with non-zero variance, "
            f"got {int((~passthrough).sum())} of {values.shape[1]}"
        )
    keep = ~passthrough
    preserved = grand_mean[keep] + covariate_design @ covariate_coefs[:, keep]
    s_data = (values[:, keep] - preserved) / np.sqrt(var_pooled[keep])
    zero_variance = _zero_within_batch_variance(rms[keep], var_pooled[keep])
    gamma_star, delta_star = _empirical_bayes(
        s_data, batch_index, n_batches, parametric, mean_only, zero_variance
    )

    return ComBatModel(
        features=[str(c) for c in features.columns],
        batches=[str(b) for b in batches],
        covariate_names=covariate_names,
        covariate_levels=covariate_levels,
        parametric=parametric,
        mean_only=mean_only,
        batch_sizes={str(b): int(n) for b, n in zip(batches, batch_sizes, strict=True)},
        passthrough_features=[str(c) for c in features.columns[passthrough]],
        grand_mean=grand_mean[keep],
        covariate_coefs=covariate_coefs[:, keep],
        var_pooled=var_pooled[keep],
        gamma_star=gamma_star,
        delta_star=delta_star,
        batch_merges=merges,
    )


def _standardized(model: ComBatModel, values: np.ndarray, index: pd.Index,
                  covariates: pd.DataFrame | None) -> tuple[np.ndarray, np.ndarray]:
    """(preserved effects, standardized data) of the harmonized features' `values` (columns
    in ``model.harmonized_features`` order) with the model's grand mean, covariate effects
    and pooled variance."""
    if model.covariate_levels:
        if covariates is None:
            raise HarmonizationError(
                f"this ComBat model preserves covariates {_format_ids(list(model.covariate_levels))}; pass them"
            )
        aligned = _aligned_covariates(covariates, index, list(model.covariate_levels))
        covariate_design = _covariate_design(aligned, model.covariate_levels)
    else:
        covariate_design = np.zeros((len(index), 0))
    preserved = model.grand_mean + covariate_design @ model.covariate_coefs
    return preserved, (values - preserved) / np.sqrt(model.var_pooled)


def apply_combat(
    model: ComBatModel,
    features: pd.DataFrame,
    batch: pd.Series,
    covariates: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Harmonize patients (any number, any subset of training batches) with a fitted model.

    ``features`` must hold exactly the training feature columns (any order); extra
    ``covariates`` columns are ignored. Returns a new table with the same index and columns.
    """
    values = _feature_matrix(features)
    columns = [str(c) for c in features.columns]
    missing = sorted(set(model.features) - set(columns))
    extra = sorted(set(columns) - set(model.features))
    if missing or extra:
        raise HarmonizationError(
            f"features do not match the ComBat model: missing {_format_ids(missing) or 'none'}, "
            f"not in training {_format_ids(extra) or 'none'}"
        )
    index = features.index
    labels = _map_merged(_batch_labels(batch, index), model.batch_merges)
    unseen = sorted(set(labels) - set(model.batches))
    if unseen:
        patients = index[np.isin(labels, unseen)]
        raise HarmonizationError(
            f"batch(es) {_format_ids(unseen)} never seen in ComBat training "
            f"(patients {_format_ids(patients)}); training batches: {_format_ids(model.batches)}"
        )
    batch_index = np.searchsorted(np.asarray(model.batches), labels)

    order = [columns.index(name) for name in model.harmonized_features]
    preserved, s_data = _standardized(model, values[:, order], index, covariates)
    scale = np.sqrt(model.var_pooled)
    adjusted = (s_data - model.gamma_star[batch_index]) / np.sqrt(model.delta_star[batch_index])
    harmonized = values.copy()
    harmonized[:, order] = adjusted * scale + preserved
    return pd.DataFrame(harmonized, index=index, columns=features.columns)


def unseen_batches(model: ComBatModel, batch: pd.Series) -> list[str]:
    """The batches of `batch` that the model was not fitted on (after its merges)."""
    labels = _map_merged(_batch_labels(batch, batch.index), model.batch_merges)
    return sorted(set(labels) - set(model.batches))


def with_estimated_batches(
    model: ComBatModel,
    features: pd.DataFrame,
    batch: pd.Series,
    covariates: pd.DataFrame | None = None,
) -> tuple[ComBatModel, dict[str, int]]:
    """The model plus batch effects of the batches of `batch` it never saw, estimated from
    those patients alone; returns it and {new batch: patients}.

    Everything the training fitted stays frozen: the grand mean, covariate effects and
    pooled variance standardize the new patients, and each new batch's location and scale
    get ComBat's empirical Bayes estimates from its own patients (the priors pool that
    batch's features, as they do for every training batch). Only features are used, never
    outcomes. A new batch needs at least 2 patients (its variance); its estimates rest on
    its own patients only, so they are noisy below about 10.
    """
    labels = _map_merged(_batch_labels(batch, features.index), model.batch_merges)
    new = sorted(set(labels) - set(model.batches))
    if not new:
        return model, {}
    sizes = {b: int((labels == b).sum()) for b in new}
    small = [b for b, n in sizes.items() if n < 2]
    if small:
        patients = features.index[np.isin(labels, small)]
        raise HarmonizationError(
            f"batch(es) {_format_ids(small)} never seen in ComBat training have one patient "
            f"each ({_format_ids(patients)}): a batch effect cannot be estimated from one patient"
        )
    rows = np.isin(labels, new)
    part = features.loc[rows]
    values = _feature_matrix(part)[:, [list(map(str, part.columns)).index(f)
                                       for f in model.harmonized_features]]
    _, s_data = _standardized(model, values, part.index, covariates)
    new_index = np.searchsorted(np.asarray(new), labels[rows])
    rms = np.sqrt((values**2).mean(axis=0))
    gamma_star, delta_star = _empirical_bayes(
        s_data, new_index, len(new), model.parametric, model.mean_only,
        _zero_within_batch_variance(rms, model.var_pooled),
    )
    order = np.argsort(np.array(model.batches + new, dtype=object).astype(str), kind="stable")
    batches = [(model.batches + new)[i] for i in order]
    extended = ComBatModel.from_dict(model.to_dict())
    extended.batches = batches
    extended.batch_sizes = {**model.batch_sizes, **sizes}
    extended.gamma_star = np.vstack([model.gamma_star, gamma_star])[order]
    extended.delta_star = np.vstack([model.delta_star, delta_star])[order]
    return extended, sizes


def fit_apply_combat(
    features: pd.DataFrame,
    batch: pd.Series,
    covariates: pd.DataFrame | None = None,
    **fit_options: Any,
) -> tuple[ComBatModel, pd.DataFrame]:
    """Fit on ``features`` and harmonize the same patients (options as :func:`fit_combat`)."""
    model = fit_combat(features, batch, covariates, **fit_options)
    return model, apply_combat(model, features, batch, covariates)


# ---------------------------------------------------------------------------- diagnostics


def batch_effect_summary(features: pd.DataFrame, batch: pd.Series) -> pd.DataFrame:
    """Per feature: Kruskal-Wallis H/p and one-way ANOVA F/p across batches.

    NaN values are dropped per feature; features that are constant (or have fewer than
    two batches with data) are left out. Indexed by feature name.
    """
    labels = _batch_labels(batch, features.index)
    rows = {}
    for name in features.columns:
        column = pd.to_numeric(features[name], errors="coerce").to_numpy(dtype=float)
        present = np.isfinite(column)
        groups = [column[present & (labels == level)] for level in np.unique(labels[present])]
        groups = [g for g in groups if len(g)]
        if len(groups) < 2 or np.ptp(column[present]) == 0:
            continue
        h, h_p = stats.kruskal(*groups)
        within = sum(((g - g.mean()) ** 2).sum() for g in groups)
        if within > 0 and present.sum() > len(groups):
            f, f_p = stats.f_oneway(*groups)
        else:
            f, f_p = np.nan, np.nan
        rows[name] = {"kruskal_h": h, "kruskal_p": h_p, "anova_f": f, "anova_p": f_p}
    return pd.DataFrame.from_dict(
        rows, orient="index", columns=["kruskal_h", "kruskal_p", "anova_f", "anova_p"]
    ).astype(float)


def pca_by_batch(features: pd.DataFrame, n_components: int = 2) -> pd.DataFrame:
    """Scores on the first principal components of the standardized features.

    Columns are z-scored (constant or all-NaN columns dropped, remaining NaN set to the
    column mean); signs are fixed so each component's largest loading is positive.
    Returns columns PC1..PCk indexed like ``features``; ``attrs['explained_variance_ratio']``
    holds each component's share of variance.
    """
    numeric = features.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    numeric[~np.isfinite(numeric)] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(numeric, axis=0) if numeric.size else np.zeros(0)
        sd = np.nanstd(numeric, axis=0) if numeric.size else np.zeros(0)
    usable = np.isfinite(sd) & (sd > 0)
    max_components = min(features.shape[0] - 1, int(usable.sum()))
    if n_components < 1 or n_components > max_components:
        raise HarmonizationError(
            f"pca_by_batch: asked for {n_components} components but {features.shape[0]} patients and "
            f"{int(usable.sum())} non-constant features allow at most {max(max_components, 0)}"
        )
    z = (numeric[:, usable] - mean[usable]) / sd[usable]
    z = np.nan_to_num(z, nan=0.0)
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
    scores = (u * s * signs)[:, :n_components]
    result = pd.DataFrame(scores, index=features.index, columns=[f"PC{k + 1}" for k in range(n_components)])
    result.attrs["explained_variance_ratio"] = (s[:n_components] ** 2 / (s**2).sum()).tolist()
    return result


def harmonize_block(
    features: pd.DataFrame,
    split: pd.Series,
    batch: pd.Series,
    covariates: pd.DataFrame | None,
    cfg: dict,
):
    """ComBat fitted on the training patients, applied to the validation patients.

    Returns (harmonized matrix, fitted model, per-feature batch tests before/after).
    """
    split = split.loc[features.index]
    train_ids = list(split.index[split == "train"])
    validation_ids = list(split.index[split != "train"])
    features = impute_with_train_medians(features, train_ids)
    batch = batch.loc[features.index].astype(str)
    covs = covariates.loc[features.index] if covariates is not None else None

    model = fit_combat(
        features.loc[train_ids],
        batch.loc[train_ids],
        None if covs is None else covs.loc[train_ids],
        parametric=cfg["parametric"],
        single_patient_batch=cfg["single_patient_batch"],
    )
    parts = [apply_combat(model, features.loc[train_ids], batch.loc[train_ids],
                          None if covs is None else covs.loc[train_ids])]
    if validation_ids:
        parts.append(apply_combat(model, features.loc[validation_ids], batch.loc[validation_ids],
                                  None if covs is None else covs.loc[validation_ids]))
    harmonized = pd.concat(parts).loc[features.index]

    before = batch_effect_summary(features, batch).add_suffix("_before")
    after = batch_effect_summary(harmonized, batch).add_suffix("_after")
    tests = before.join(after, how="outer")
    tests.index.name = "feature"
    return harmonized, model, tests


def plot_pca_by_batch(before: pd.DataFrame, after: pd.DataFrame, batch: pd.Series, path) -> None:
    """Two scatter plots of the first two principal components, coloured by batch."""
    from radpath.inputs.figures import plt, save_figure  # pyplot on the Agg backend

    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, scores, title in ((axes[0], before, "before ComBat"), (axes[1], after, "after ComBat")):
        for name in sorted(batch.unique()):
            ids = batch.index[batch == name]
            ax.scatter(scores.loc[ids].iloc[:, 0], scores.loc[ids].iloc[:, 1], label=name, s=18)
        ax.set_xlabel(scores.columns[0])
        ax.set_ylabel(scores.columns[1])
        ax.set_title(title)
    axes[1].legend(title="batch", fontsize=8)
    save_figure(fig, path)
