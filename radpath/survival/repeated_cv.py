"""Repeated stratified k-fold cross-validation of a model's whole pipeline (config
`validation.method: repeated_cv`), for cohorts too small for one train/validation split.

Every fold refits everything the run fits on its training patients: covariate imputation
and categorical levels, radiomics imputation and ComBat, the embedding PCA, feature
selection (its penalty chosen by an inner CV) and the Cox model; the held-out fold is only
scored. All patients of the cohort take part, whatever their split. Blocks made by networks
(deep CT scores, PathoSig clusters) would need their networks retrained in every fold (GPU
hours x folds x repeats): models with them are not cross-validated, and the report says so.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from radpath.inputs.cohort import impute_covariates, impute_with_train_medians, level_label
from radpath.pathology.matrices import embedding_pca
from radpath.radiomics.harmonize import apply_combat, fit_combat
from radpath.survival.metrics import harrell_c
from radpath.survival.modeling import (
    categorical_levels,
    encode_clinical,
    fit_model,
    one_blas_thread,
)

log = logging.getLogger(__name__)

FOLD_COLUMNS = ["repeat", "fold", "n_train", "n_test", "test_events", "harrell_c",
                "n_features", "note"]


@dataclass
class CohortInputs:
    """What the folds refit from: outcomes of every patient, the raw clinical sheet rows, the
    raw blocks (radiomics_raw; pathomics_embedding as pooled embeddings before PCA;
    pathomics_morphology), and the scanner of every patient."""

    outcomes: pd.DataFrame
    clinical: pd.DataFrame
    blocks: dict[str, pd.DataFrame] = field(default_factory=dict)
    batch: pd.Series | None = None


def _clinical_design(clinical: pd.DataFrame, covariates: list[dict], batch_covariates: list[str],
                     train: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Covariates filled and encoded with this fold's training patients only; a level that
    none of them has is left blank (then filled with the training median of its indicator
    columns by the model), as the fold cannot learn a coefficient for it."""
    filled, _ = impute_covariates(clinical, covariates, batch_covariates, train)
    levels = categorical_levels(filled.loc[train], covariates)
    for name, known in levels.items():
        labels = filled[name].map(lambda v: None if pd.isna(v) else level_label(v))
        filled[name] = labels.where(labels.isin(known))
    # ComBat covariates as the run reads them from harmonization_covariates.tsv: numbers
    # where every value is one (ComBat one-hot encodes text columns).
    combat = filled[list(batch_covariates)].apply(
        lambda column: pd.to_numeric(column) if pd.to_numeric(column, errors="coerce").notna().all()
        else column)
    return encode_clinical(filled, covariates, levels), combat


def fold_design(inputs: CohortInputs, spec: dict, train: list[str], test: list[str],
                covariates: list[dict], harmonization: dict, pca_components: int, seed: int
                ) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The model's design matrix for one fold's training and test patients, every step
    fitted on the training patients; returns (design, forced, candidate columns)."""
    ids = list(train) + list(test)
    design = pd.DataFrame(index=pd.Index(ids, name="patient_id"))
    encoded, batch_covariates = _clinical_design(
        inputs.clinical.loc[ids], covariates, harmonization["covariates"], list(train))
    forced: list[str] = []
    if spec["clinical"]:
        design = design.join(encoded)
        forced = list(encoded.columns)
    candidates: list[str] = []
    for block in spec["blocks"]:
        raw = inputs.blocks[block]
        present = [p for p in ids if p in raw.index]
        part_train = [p for p in train if p in raw.index]
        if block == "radiomics":
            features = impute_with_train_medians(raw.loc[present], part_train)
            batch = inputs.batch.loc[present].astype(str)
            covs = batch_covariates.loc[present] if len(batch_covariates.columns) else None
            model = fit_combat(features.loc[part_train], batch.loc[part_train],
                               None if covs is None else covs.loc[part_train],
                               parametric=harmonization["parametric"],
                               single_patient_batch=harmonization["single_patient_batch"])
            matrix = apply_combat(model, features, batch, covs)
        elif block == "pathomics_embedding":
            matrix, _ = embedding_pca(raw.loc[present], part_train, pca_components, [], seed)
        else:
            matrix = raw.loc[present]
        matrix = matrix.add_prefix(f"{block}:")
        design = design.join(matrix, how="inner")
        candidates += list(matrix.columns)
    return design, forced, candidates


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]


def cross_validate(inputs: CohortInputs, spec: dict, endpoint: str, covariates: list[dict],
                   harmonization: dict, selection_cfg: dict, cox_cfg: dict, folds: int,
                   repeats: int, seed: int, pca_components: int = 16) -> pd.DataFrame:
    """One row per repeat x fold (FOLD_COLUMNS): Harrell's C of the held-out patients from a
    pipeline fitted on the others. Folds are stratified on the endpoint's event and seeded by
    (seed, repeat); patients missing from one of the model's blocks are left out of all of
    them. A fold whose pipeline cannot be fitted has no C and its reason in `note`."""
    time_col, event_col = f"{endpoint}_time", f"{endpoint}_event"
    ids = [p for p in inputs.outcomes.index
           if all(p in inputs.blocks[b].index for b in spec["blocks"])]
    event = inputs.outcomes.loc[ids, event_col].to_numpy(int)
    rows = []
    for repeat in range(1, repeats + 1):
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed * 1000 + repeat)
        for fold, (train_rows, test_rows) in enumerate(splitter.split(ids, event), start=1):
            train = [ids[i] for i in train_rows]
            test = [ids[i] for i in test_rows]
            row = {"repeat": repeat, "fold": fold, "n_train": len(train), "n_test": len(test),
                   "test_events": int(event[test_rows].sum()), "harrell_c": np.nan,
                   "n_features": 0, "note": ""}
            try:
                with warnings.catch_warnings(), one_blas_thread():
                    warnings.simplefilter("ignore")
                    design, forced, candidates = fold_design(
                        inputs, spec, train, test, covariates, harmonization, pca_components,
                        seed)
                    model = fit_model(
                        design.loc[train], inputs.outcomes.loc[train, time_col].to_numpy(float),
                        inputs.outcomes.loc[train, event_col].to_numpy(int), forced, candidates,
                        selection_cfg, cox_cfg, seed)
                    risk = model.predict(design.loc[test])
                row["harrell_c"] = harrell_c(inputs.outcomes.loc[test, time_col],
                                             inputs.outcomes.loc[test, event_col], risk)
                row["n_features"] = len(model.features)
            except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
                row["note"] = _first_line(exc)
                log.warning("repeat %d fold %d: %s", repeat, fold, row["note"])
            rows.append(row)
    return pd.DataFrame(rows, columns=FOLD_COLUMNS)


def summarize(endpoint: str, model: str, table: pd.DataFrame) -> dict:
    """A model's repeated-CV result: mean C over all fitted folds with a 95% CI from the
    corrected resampled t statistic (Nadeau and Bengio 2003: the variance of the fold C's
    times 1/(k r) + n_test/n_train, which accounts for the folds sharing training patients;
    the naive 1/(k r) alone is far too narrow); per repeat the mean of its folds, and the
    2.5-97.5% range and SD of those repeat means (how far one k-fold estimate moves with the
    partition); fits done and failed."""
    from scipy import stats

    fitted = table.dropna(subset=["harrell_c"])
    by_repeat = fitted.groupby("repeat")["harrell_c"].mean()
    n_fits = len(fitted)
    half_width = np.nan
    if n_fits > 1:
        ratio = float((fitted["n_test"] / fitted["n_train"]).mean())
        variance = float(fitted["harrell_c"].var(ddof=1)) * (1.0 / n_fits + ratio)
        half_width = float(stats.t.ppf(0.975, n_fits - 1) * np.sqrt(variance))
    return {
        "endpoint": endpoint, "model": model,
        "repeats": int(table["repeat"].nunique()), "folds": int(table["fold"].nunique()),
        "fits": len(table), "failed": int(table["harrell_c"].isna().sum()),
        "n": int(table.loc[table["repeat"] == table["repeat"].min(), "n_test"].sum()),
        "events": int(table.loc[table["repeat"] == table["repeat"].min(), "test_events"].sum()),
        "mean_c": float(fitted["harrell_c"].mean()) if len(fitted) else np.nan,
        # Clipped to C's own range [0, 1] (few folds and repeats give wide intervals).
        "ci_lo": float(np.clip(fitted["harrell_c"].mean() - half_width, 0.0, 1.0)),
        "ci_hi": float(np.clip(fitted["harrell_c"].mean() + half_width, 0.0, 1.0)),
        "repeat_sd": float(by_repeat.std(ddof=1)) if len(by_repeat) > 1 else np.nan,
        "repeat_lo": float(by_repeat.quantile(0.025)) if len(by_repeat) else np.nan,
        "repeat_hi": float(by_repeat.quantile(0.975)) if len(by_repeat) else np.nan,
        "failures": "; ".join(f"{note}: {n}" for note, n in
                              table.loc[table["note"] != "", "note"].value_counts().items()),
    }
