"""Cohort-level tables: train/validation split, outcomes, feature matrices, harmonization."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import pandas as pd

from radpath.io import read_tsv

log = logging.getLogger(__name__)

OUTCOME_COLUMNS = ["os_time", "os_event", "pfs_time", "pfs_event"]


def make_split(clinical: pd.DataFrame, validation_fraction: float, seed: int) -> pd.Series:
    """The sheet's `split` column if it has one, else a seeded split stratified on OS event."""
    if "split" in clinical.columns and clinical["split"].notna().any():
        missing = clinical.index[clinical["split"].isna() | (clinical["split"] == "")]
        if len(missing):
            raise ValueError(
                "clinical sheet: column 'split' is empty for patient(s) " + ", ".join(missing)
            )
        split = clinical["split"].astype(str)
    else:
        rng = np.random.default_rng(seed)
        split = pd.Series("train", index=clinical.index, dtype=object)
        events = clinical["os_event"].astype(int)
        for stratum in (0, 1):
            ids = np.array(sorted(events.index[events == stratum]))
            n_validation = int(round(validation_fraction * len(ids)))
            chosen = rng.choice(ids, size=n_validation, replace=False) if n_validation else []
            split.loc[list(chosen)] = "validation"
    for part in ("train", "validation"):
        if not (split == part).any():
            raise ValueError(f"clinical sheet: the split has no {part} patients")
    return split.rename("split")


def outcomes_table(clinical: pd.DataFrame, split: pd.Series) -> pd.DataFrame:
    table = clinical[OUTCOME_COLUMNS].astype(float)
    for col in ("os_event", "pfs_event"):
        table[col] = table[col].astype(int)
    table.insert(0, "split", split.loc[table.index])
    table.index.name = "patient_id"
    return table


def assemble_rows(paths: Iterable[str], id_column: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stack one-row TSVs into a matrix; rows carrying an `error` are returned separately."""
    rows = [read_tsv(path, index_col=id_column) for path in paths]
    if not rows:
        raise ValueError("no per-item feature files to assemble")
    table = pd.concat(rows, axis=0, sort=False)
    if "error" in table.columns:
        failed = table["error"].notna()
        excluded = table.loc[failed, ["error"]].rename(columns={"error": "reason"})
        table = table.loc[~failed].drop(columns="error")
    else:
        excluded = pd.DataFrame(columns=["reason"])
    excluded.index.name = id_column
    if table.empty:
        raise ValueError("every item failed; nothing to assemble (see the excluded list)")
    return table.astype(float), excluded


def impute_with_train_medians(features: pd.DataFrame, train_ids: list[str]) -> pd.DataFrame:
    """Fill missing values with training medians; features all-missing in training are dropped."""
    medians = features.loc[train_ids].median()
    unusable = medians.index[medians.isna()]
    if len(unusable):
        log.warning("dropping %d feature(s) missing for every training patient", len(unusable))
    features = features.drop(columns=unusable)
    n_missing = int(features.isna().sum().sum())
    if n_missing:
        log.info("imputing %d missing value(s) with training medians", n_missing)
    return features.fillna(medians.drop(unusable))


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
    from radpath.harmonize import apply_combat, batch_effect_summary, fit_combat

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
