"""Cohort-level tables: train/validation split, outcomes, feature matrices, harmonization."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from radpath.inputs.io import read_tsv

log = logging.getLogger(__name__)

SPLIT_PARTS = ("train", "validation")


def level_label(value) -> str:
    """Category label as text; 2.0 read from a TSV becomes '2'."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def split_draw(patient_id: str, seed: int) -> float:
    """A uniform number in [0, 1) that depends only on the seed and the patient's ID."""
    digest = hashlib.sha256(f"radpath-split:{seed}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def read_frozen_split(path: str | os.PathLike) -> pd.Series:
    """A frozen split file (patient_id, split), e.g. a copy of results/cohort/split.tsv."""
    table = read_tsv(path)
    missing = {"patient_id", "split"} - set(table.columns)
    if missing:
        raise ValueError(f"split file {path}: missing column(s) {', '.join(sorted(missing))}")
    bad = table.loc[~table["split"].isin(SPLIT_PARTS), "patient_id"]
    if len(bad):
        raise ValueError(
            f"split file {path}: split must be train or validation for patient(s) "
            + ", ".join(bad.astype(str))
        )
    duplicated = table["patient_id"][table["patient_id"].duplicated()]
    if len(duplicated):
        raise ValueError(f"split file {path}: patient(s) listed twice: {', '.join(duplicated)}")
    return table.set_index("patient_id")["split"]


def make_split(
    clinical: pd.DataFrame,
    validation_fraction: float,
    seed: int,
    frozen: pd.Series | None = None,
    event_columns: Iterable[str] = (),
) -> pd.Series:
    """Train/validation per patient, named `split`, in clinical's order.

    The clinical sheet's `split` column wins when it has one (it must then be complete).
    Otherwise a patient listed in `frozen` keeps that split, and every other patient is
    validation when its seeded draw (:func:`split_draw`) is below `validation_fraction`.
    A patient's split so depends on nothing but its own ID, the seed and the fraction:
    adding or removing patients never moves another one, and each event stratum gets the
    validation fraction in expectation (exact stratification would move patients whenever
    the cohort changes). Each part must have events in every one of `event_columns`.
    """
    if "split" in clinical.columns and (clinical["split"].notna() & (clinical["split"] != "")).any():
        missing = clinical.index[clinical["split"].isna() | (clinical["split"] == "")]
        if len(missing):
            raise ValueError(
                "clinical sheet: column 'split' is empty for patient(s) " + ", ".join(missing)
            )
        split = clinical["split"].astype(str)
    else:
        draws = np.array([split_draw(pid, seed) for pid in clinical.index])
        split = pd.Series(
            np.where(draws < validation_fraction, "validation", "train"),
            index=clinical.index, dtype=object,
        )
        if frozen is not None:
            kept = clinical.index.intersection(frozen.index)
            split.loc[kept] = frozen.loc[kept]
    advice = "set a `split` column or split.file, or change split.validation_fraction or seed"
    for part in SPLIT_PARTS:
        in_part = split == part
        if not in_part.any():
            raise ValueError(f"the split has no {part} patients ({advice})")
        for column in event_columns:
            if column in clinical.columns:
                events = pd.to_numeric(clinical.loc[in_part, column], errors="coerce")
                if events.sum() == 0:
                    raise ValueError(
                        f"the {part} patients ({int(in_part.sum())}) have no {column} events: "
                        f"their models cannot be fitted or evaluated ({advice})"
                    )
    return split.rename("split")


def check_training_levels(clinical: pd.DataFrame, split: pd.Series, covariates_cfg) -> None:
    """Categorical covariates are encoded with the levels the training patients have (their
    coefficients are learnt from them only): a reference level without training patients, or
    a validation patient's level that no training patient has, is an error naming them."""
    train = (split.loc[clinical.index] == "train").to_numpy()
    problems = []
    for cov in covariates_cfg:
        name = cov["name"]
        if cov["type"] != "categorical" or name not in clinical.columns:
            continue
        labels = clinical[name].map(
            lambda v: None if pd.isna(v) or str(v).strip() == "" else level_label(v)
        )
        known = sorted(set(labels[train].dropna()))
        if level_label(cov["reference"]) not in known:
            problems.append(f"covariate '{name}': reference level {level_label(cov['reference'])!r} "
                            f"has no training patient (training levels: {', '.join(known)})")
        unseen = labels[~train & labels.notna() & ~labels.isin(known)]
        problems += [
            f"patient {pid}: level {level!r} of covariate '{name}' occurs in no training patient "
            f"(training levels: {', '.join(known)})"
            for pid, level in unseen.items()
        ]
    if problems:
        raise ValueError(
            "; ".join(problems) + ". Coefficients are learnt from training patients only: merge "
            "rare levels in the clinical sheet, or move a patient with the level to the training "
            "split (split column or split.file)"
        )


def split_changes(previous: pd.Series, current: pd.Series) -> pd.DataFrame:
    """Patients present in both whose split differs (columns: previous, current)."""
    common = previous.index.intersection(current.index)
    moved = common[previous.loc[common].to_numpy() != current.loc[common].to_numpy()]
    return pd.DataFrame(
        {"previous": previous.loc[moved], "current": current.loc[moved]}, index=moved
    )


def split_for_run(
    config: dict, clinical: pd.DataFrame, recorded: str | os.PathLike
) -> tuple[dict[str, str], list[str]]:
    """The run's split as {patient: part}, and warnings for the user.

    Warns about patients missing from a frozen split file, and about patients of the last
    run (its `recorded` split.tsv) whose split this run would change.
    """
    warnings = []
    frozen = None
    if config["split"]["file"]:
        frozen = read_frozen_split(config["split"]["file"])
        unlisted = clinical.index.difference(frozen.index)
        if len(unlisted):
            warnings.append(
                f"{len(unlisted)} patient(s) are not in the frozen split file "
                f"{config['split']['file']} and get the automatic split: "
                + ", ".join(unlisted[:20]) + (", ..." if len(unlisted) > 20 else "")
            )
    split = make_split(
        clinical, config["split"]["validation_fraction"], config["seed"], frozen,
        [spec["event"] for spec in config.get("endpoints", {}).values()],
    )
    check_training_levels(clinical, split, config.get("covariates", []))
    previous = _recorded_split(recorded)
    if previous is not None:
        moved = split_changes(previous, split)
        if len(moved):
            shown = [f"{pid} {row.previous}->{row.current}" for pid, row in moved.head(20).iterrows()]
            warnings.append(
                f"this run changes the train/validation split of {len(moved)} patient(s) of "
                f"the last run ({recorded}): {', '.join(shown)}"
                + (", ..." if len(moved) > 20 else "")
                + ". Every model's training set changes. To keep the last split, copy "
                f"{recorded} and set split.file to the copy."
            )
    return dict(zip(split.index, split, strict=True)), warnings


def _recorded_split(path: str | os.PathLike) -> pd.Series | None:
    """The split a previous run recorded, or None when there is none it could read."""
    try:
        return read_frozen_split(path)
    except (OSError, ValueError, KeyError, pd.errors.EmptyDataError):
        return None


def impute_covariates(
    clinical: pd.DataFrame,
    covariates_cfg: list[dict],
    batch_covariates: list[str],
    train_ids: list[str],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Blank covariate cells filled from the training patients only.

    Numeric covariates (and ComBat covariates whose training values are all numbers) get
    the training median, others the most frequent training level (ties: the first in sorted
    order). Returns the filled table and one row per covariate: fill value and how many
    training and validation patients were filled.
    """
    kinds = {c["name"]: c["type"] for c in covariates_cfg}
    filled = clinical.copy()
    rows = []
    train = clinical.index.isin(train_ids)
    for name in dict.fromkeys([*kinds, *batch_covariates]):
        cells = clinical[name].astype(object)
        blank = cells.isna() | (cells.astype(str).str.strip() == "")
        train_values = cells[train & ~blank]
        numbers = pd.to_numeric(train_values, errors="coerce")
        numeric = kinds.get(name) == "numeric" or (
            name not in kinds and len(numbers) and numbers.notna().all()
        )
        if train_values.empty:
            raise ValueError(f"covariate '{name}' is blank for every training patient")
        if numeric:
            fill = float(numbers.median())
            fill_text = repr(fill)
        else:
            counts = train_values.astype(str).value_counts()
            fill = fill_text = sorted(counts.index[counts == counts.max()])[0]
        filled.loc[blank, name] = fill_text if not numeric else fill
        rows.append({
            "covariate": name,
            "kind": "numeric" if numeric else "categorical",
            "fill": fill,
            "n_train_filled": int((blank & train).sum()),
            "n_validation_filled": int((blank & ~train).sum()),
        })
    columns = ["covariate", "kind", "fill", "n_train_filled", "n_validation_filled"]
    return filled, pd.DataFrame(rows, columns=columns)


def outcomes_table(
    clinical: pd.DataFrame, split: pd.Series, endpoints: Mapping[str, Mapping]
) -> pd.DataFrame:
    """split, then `<endpoint>_time` and `<endpoint>_event` per declared endpoint, from the
    sheet columns it declares: every later step reads these names, whatever the sheet's."""
    table = pd.DataFrame({"split": split.loc[clinical.index]}, index=clinical.index)
    for name, spec in endpoints.items():
        table[f"{name}_time"] = clinical[spec["time"]].astype(float)
        table[f"{name}_event"] = clinical[spec["event"]].astype(float).astype(int)
    table.index.name = "patient_id"
    return table


def outcome_endpoints(outcomes: pd.DataFrame) -> list[str]:
    """The endpoints of an outcomes table (:func:`outcomes_table`), in its column order."""
    return [
        column.removesuffix("_time") for column in outcomes.columns
        if column.endswith("_time") and f"{column.removesuffix('_time')}_event" in outcomes
    ]


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


