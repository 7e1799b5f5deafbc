"""Radiomics features that could not be computed for some patients, made visible and handled
by one cohort rule (config radiomics.missing_features) instead of a silent median.

pyradiomics leaves out what it cannot compute for a patient (a LoG filter on a CT a few
slices thick: every feature of that filtered image) and returns NaN for values it cannot
define; in the cohort matrix both are missing values. `drop` removes every feature missing
for any patient from the whole cohort, so no patient's value is invented; `impute` keeps
them and the training medians fill them in (radpath.inputs.cohort.impute_with_train_medians,
before ComBat and in the models), a choice the report counts.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

MISSING_FEATURE_POLICIES = ("drop", "impute")
DROPPED = "dropped from the cohort"
IMPUTED = "imputed with the training median"
DROPPED_NO_TRAINING_VALUE = "dropped (missing for every training patient)"
SUMMARY_COLUMNS = ["radpath_n_missing_features", "radpath_missing_features"]


def missing_values(matrix: pd.DataFrame) -> pd.DataFrame:
    """One row (patient_id, feature, image_type) per missing value of the matrix: a NaN, or
    a feature absent from the patient's row (NaN after the rows are stacked)."""
    rows, columns = np.nonzero(matrix.isna().to_numpy())
    features = matrix.columns[columns].astype(str)
    return pd.DataFrame({"patient_id": matrix.index[rows].astype(str), "feature": features,
                         "image_type": [image_type(f) for f in features]})


def check_policy(policy: str) -> None:
    if policy not in MISSING_FEATURE_POLICIES:
        raise ValueError(f"radiomics.missing_features must be one of {MISSING_FEATURE_POLICIES}, "
                         f"not {policy!r}")


def image_type(feature: str) -> str:
    """pyradiomics' image type of a feature name: 'log-sigma-1-0-mm-3D' of
    'log-sigma-1-0-mm-3D_glcm_Idmn' ('original' for shape and unfiltered features)."""
    return feature.split("_", 1)[0]


def handle_missing_features(
    matrix: pd.DataFrame, policy: str, split: pd.Series
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cohort matrix under `policy`, and the missing values with what became of each
    (columns patient_id, feature, image_type, action).

    `split` (train/validation per patient) tells which features no training patient has:
    imputing cannot fill those, so they are dropped under either policy.
    """
    check_policy(policy)
    missing = missing_values(matrix)
    train = matrix.index[split.reindex(matrix.index).eq("train").to_numpy()]
    no_training_value = matrix.columns[matrix.loc[train].isna().all().to_numpy()]
    if policy == "drop":
        drop = missing["feature"].unique()
        missing["action"] = DROPPED
    else:
        drop = no_training_value
        missing["action"] = np.where(missing["feature"].isin(no_training_value),
                                     DROPPED_NO_TRAINING_VALUE, IMPUTED)
    kept = matrix.drop(columns=list(drop))
    if kept.shape[1] == 0:
        raise ValueError(
            f"radiomics: every one of the {matrix.shape[1]} features is missing for at least "
            f"one patient ({_patients(missing)}), so radiomics.missing_features: {policy} "
            "leaves none; see results/cohort/radiomics_missing.tsv and the patients' QC"
        )
    if len(missing):
        log.warning(
            "radiomics: %d feature(s) missing for %d patient(s) (%s): %d value(s) %s; %d of "
            "%d features kept (radiomics.missing_features: %s)",
            missing["feature"].nunique(), missing["patient_id"].nunique(), _patients(missing),
            len(missing), "; ".join(sorted(missing["action"].unique())), kept.shape[1],
            matrix.shape[1], policy,
        )
    return kept, missing


def per_patient_summary(missing: pd.DataFrame, matrix_columns: pd.Index,
                        patients: pd.Index) -> pd.DataFrame:
    """QC columns per patient: the number of missing features and which, grouped by image
    type ('log-sigma-1-0-mm-3D 92/92, original 1/107 (original_glcm_Idmn)')."""
    per_type = pd.Series([image_type(f) for f in matrix_columns]).value_counts()
    summary = pd.DataFrame({SUMMARY_COLUMNS[0]: 0, SUMMARY_COLUMNS[1]: ""},
                           index=pd.Index(patients.astype(str), name="patient_id"))
    for patient, part in missing.groupby("patient_id", sort=False):
        groups = []
        for kind, names in part.groupby("image_type", sort=True)["feature"]:
            text = f"{kind} {len(names)}/{per_type[kind]}"
            if len(names) <= 3 and len(names) < per_type[kind]:
                text += f" ({' '.join(names)})"
            groups.append(text)
        summary.loc[patient] = [len(part), ", ".join(groups)]
    return summary


def _patients(missing: pd.DataFrame, limit: int = 10) -> str:
    ids = list(dict.fromkeys(missing["patient_id"]))
    return ", ".join(ids[:limit]) + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def external_missing(
    raw: pd.DataFrame, run_features: list[str], policy: str
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """An external cohort's raw matrix against the features the run kept: (the patients it
    can score, the missing values with their action, the excluded patients with a reason).

    The frozen models need every one of the run's features. Under `drop` a patient missing
    any of them is excluded, naming them (the run cannot drop a feature its models use);
    under `impute` the run's training medians fill them in (radpath.survival.scoring).
    """
    check_policy(policy)
    missing = missing_values(raw.reindex(columns=run_features))
    missing["action"] = "patient excluded" if policy == "drop" else IMPUTED
    rows = []
    if policy == "drop":
        for patient, part in missing.groupby("patient_id", sort=False):
            kinds = ", ".join(f"{k} ({n})" for k, n in part["image_type"].value_counts(
                sort=False).items())
            rows.append({"patient_id": patient, "reason": (
                f"{len(part)} of the run's radiomics features could not be computed "
                f"({kinds}); the frozen models need them (radiomics.missing_features: drop; "
                "impute fills them with the run's training medians)")})
    excluded = pd.DataFrame(rows, columns=["patient_id", "reason"]).set_index("patient_id")
    if len(missing):
        log.warning("radiomics: %d missing value(s) of the run's features for %d patient(s) "
                    "(%s): %s", len(missing), missing["patient_id"].nunique(),
                    _patients(missing), missing["action"].iloc[0])
    kept = raw.drop(index=excluded.index) if policy == "drop" else raw
    return kept, missing, excluded
