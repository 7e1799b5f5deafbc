"""A finished run's frozen pipeline applied to an external cohort (`snakemake score`).

Nothing is refitted: clinical covariates are filled with the run's training fill values and
encoded with its training levels; radiomics with the training medians and the run's ComBat
estimates; the embedding PCA, the deep CT networks, the Cox coefficients, baseline hazards
and the training-median risk-group cut-off are the run's. Applied to the run's own
validation patients, this path gives their risk scores exactly (tests/workflow/test_run.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from radpath.inputs.cohort import level_label, outcomes_table
from radpath.radiomics.harmonize import (
    ComBatModel,
    HarmonizationError,
    apply_combat,
    unseen_batches,
    with_estimated_batches,
)
from radpath.survival.accuracy import horizon_column
from radpath.survival.metrics import EXTERNAL_CENSORING, check_censoring, risk_groups
from radpath.survival.modeling import FittedModel, ModelInputError, encode_clinical

log = logging.getLogger(__name__)

EXTERNAL = "external"  # the `split` of an external cohort's patients
UNSEEN_BATCH_POLICIES = ("error", "estimate")


def training_levels(encoded_columns, covariates_cfg: list[dict]) -> dict[str, list[str]]:
    """Each categorical covariate's training levels (reference first), read back from the
    run's encoded clinical table (results/cohort/clinical.tsv: `stage[II]`, ...)."""
    levels = {}
    for cov in covariates_cfg:
        if cov["type"] != "categorical":
            continue
        name = cov["name"]
        prefix = f"{name}["
        levels[name] = [level_label(cov["reference"])] + [
            column[len(prefix):-1] for column in encoded_columns
            if column.startswith(prefix) and column.endswith("]")
        ]
    return levels


def fill_covariates(clinical: pd.DataFrame, imputation: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Blank covariate cells filled with the run's training fill values (its imputation.tsv:
    covariate, kind, fill); returns the filled table and per covariate how many were filled."""
    filled = clinical.copy()
    rows = []
    for r in imputation.to_dict("records"):
        name = r["covariate"]
        cells = clinical[name].astype(object)
        blank = cells.isna() | (cells.astype(str).str.strip() == "")
        if r["kind"] == "numeric":
            filled[name] = pd.to_numeric(cells, errors="coerce").astype(float)
            filled.loc[blank, name] = float(r["fill"])
        else:
            filled.loc[blank, name] = str(r["fill"])
        rows.append({"covariate": name, "fill": r["fill"], "n_filled": int(blank.sum())})
    return filled, pd.DataFrame(rows, columns=["covariate", "fill", "n_filled"])


def external_clinical(
    clinical: pd.DataFrame,
    covariates_cfg: list[dict],
    endpoints: dict,
    imputation: pd.DataFrame,
    encoded_columns: list[str],
    harmonization_covariates: list[str],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(outcomes with split `external`, encoded covariates, ComBat covariates, fill counts)
    of an external cohort, with the run's fill values and training levels. A level that no
    training patient had is an error naming the patient."""
    split = pd.Series(EXTERNAL, index=clinical.index, name="split")
    outcomes = outcomes_table(clinical, split, endpoints)
    filled, counts = fill_covariates(clinical, imputation)
    encoded = encode_clinical(filled, covariates_cfg, training_levels(encoded_columns, covariates_cfg))
    encoded.index.name = "patient_id"
    if list(encoded.columns) != list(encoded_columns):
        raise ModelInputError(f"external clinical columns {list(encoded.columns)} differ from "
                              f"the run's {list(encoded_columns)}")
    batch_covariates = filled[list(harmonization_covariates)]
    batch_covariates.index.name = "patient_id"
    return outcomes, encoded, batch_covariates, counts


def training_medians(run_matrix: pd.DataFrame, run_split: pd.Series) -> pd.Series:
    """The training medians the run filled missing radiomics values with (see
    radpath.inputs.cohort.impute_with_train_medians), from its raw matrix and split."""
    train = [pid for pid in run_matrix.index if run_split.get(pid) == "train"]
    return run_matrix.loc[train].median()


def require_run_features(raw: pd.DataFrame, run_features: list[str]) -> None:
    """Every feature of the run must be a column of the external matrix (a feature no
    external patient has means other pyradiomics parameters, not a patient's problem)."""
    absent = [f for f in run_features if f not in raw.columns]
    if absent:
        raise HarmonizationError(f"external radiomics lack {len(absent)} feature(s) of the run "
                                 f"({', '.join(absent[:5])}): extract them with the run's "
                                 "pyradiomics parameters")


def external_harmonized(
    raw: pd.DataFrame,
    medians: pd.Series,
    model: ComBatModel,
    batch: pd.Series,
    covariates: pd.DataFrame | None,
    unseen: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """An external raw matrix harmonized with the run's ComBat model: (matrix, one row per
    batch saying how it was treated). `unseen` (config score.unseen_batches): `error` for a
    batch the model never saw, or `estimate` its effect from this cohort's patients of it."""
    if unseen not in UNSEEN_BATCH_POLICIES:
        raise ValueError(f"score.unseen_batches must be one of {UNSEEN_BATCH_POLICIES}")
    require_run_features(raw, model.features)
    features = raw[model.features].fillna(medians[model.features])
    batch = batch.loc[features.index].astype(str)
    new = unseen_batches(model, batch)
    sizes = {}
    if new and unseen == "error":
        patients = batch.index[batch.isin(new)]
        raise HarmonizationError(
            f"scanner batch(es) {', '.join(new)} (patients {', '.join(patients[:10])}"
            f"{', ...' if len(patients) > 10 else ''}) were never seen by the run's ComBat "
            f"(training batches: {', '.join(model.batches)}); set score.unseen_batches: "
            "estimate to estimate their batch effect from this cohort's own patients of "
            "those batches, or leave them out of the sheet"
        )
    if new:
        model, sizes = with_estimated_batches(model, features, batch, covariates)
        log.warning("ComBat: batch effect of %s estimated from the external patients",
                    ", ".join(f"{b} ({n} patients)" for b, n in sizes.items()))
    harmonized = apply_combat(model, features, batch, covariates)
    treatment = pd.DataFrame([
        {"batch": b, "n_patients": int((batch == b).sum()),
         "treatment": (f"estimated from this cohort's {sizes[b]} patients" if b in sizes
                       else f"training estimates ({model.batch_sizes.get(b, 0)} "
                            "training patients)")}
        for b in sorted(set(batch))
    ], columns=["batch", "n_patients", "treatment"])  # fmt: skip
    return harmonized, treatment


def score_patients(
    model: FittedModel,
    design: pd.DataFrame,
    outcomes: pd.DataFrame,
    endpoint: str,
    horizons,
    run_risk: pd.DataFrame,
) -> pd.DataFrame:
    """An external risk table, with the run's risk.tsv columns: split, time, event, risk
    (linear predictor), survival at the horizons; and risk_group: high above the training
    median risk of the run (its Kaplan-Meier cut-off), else low."""
    risk = pd.DataFrame(
        {
            "split": outcomes.loc[design.index, "split"],
            "time": outcomes.loc[design.index, f"{endpoint}_time"],
            "event": outcomes.loc[design.index, f"{endpoint}_event"].astype(int),
            "risk": model.predict(design),
        },
        index=design.index,
    )
    survival = model.predict_survival(design, horizons)
    for k, horizon in enumerate(horizons):
        risk[horizon_column(horizon)] = survival[:, k]
    cut_off = float(np.median(run_risk.loc[run_risk["split"] == "train", "risk"]))
    risk["risk_group"] = risk_groups(risk["risk"].to_numpy(), cut_off)
    risk.index.name = "patient_id"
    return risk


TRAIN_PREFIX = "train:"


def evaluation_risks(run_risk: pd.DataFrame, external_risk: pd.DataFrame) -> pd.DataFrame:
    """The run's training patients (split train, IDs prefixed `train:` so that an external ID
    never collides) and the external patients as split `validation`: the table the run's own
    evaluation reads, so every metric, CI and cut-off is computed as it is for the internal
    validation patients (the censoring weights are the external cohort's own: see
    external_evaluation)."""
    train = run_risk[run_risk["split"] == "train"].drop(columns=["risk_group"], errors="ignore")
    train.index = TRAIN_PREFIX + train.index.astype(str)
    external = external_risk.drop(columns=["risk_group"], errors="ignore").assign(split="validation")
    return pd.concat([train, external[train.columns]])


def external_evaluation(
    cohort: str,
    endpoints: list[str],
    models: list[str],
    run_risks: dict[tuple[str, str], pd.DataFrame],
    external_risks: dict[tuple[str, str], pd.DataFrame],
    fitted: dict[tuple[str, str], FittedModel],
    reference: str,
    eval_cfg: dict,
    seed: int,
    time_unit: str,
    plot_dirs: dict[str, Path],
    specs: dict[str, dict] | None = None,
    censoring: str = EXTERNAL_CENSORING,
) -> dict[str, pd.DataFrame]:
    """The run's evaluation (C-indices with bootstrap CIs and paired differences, log-rank
    test at the training-median cut-off, time-dependent AUC, Brier scores, calibration,
    decision curves) on an external cohort; tables labelled `cohort`, plots in `plot_dirs`
    (km, calibration, decision_curve, forest: a file). Each frozen model gets the status it
    has in the run (``specs``: config `models`; None: every model ok), so a model that kept
    no feature has no C-index here either.

    ``censoring`` names whose censoring distribution weights the IPCW metrics (Uno's C, AUC,
    Brier, IPA, integrated Brier; the tables' `censoring` column): by default the external
    cohort's own (the Kaplan-Meier of its censoring times), since its follow-up is its
    hospital's, not the training patients'; a horizon its own follow-up does not reach, or
    past the training follow-up (the frozen model predicts nothing there), is not
    evaluable."""
    from radpath.survival.evaluation import (
        endpoint_accuracy,
        evaluate_endpoint,
        km_plots,
    )
    from radpath.survival.plots import plot_forest
    from radpath.survival.status import OK, endpoint_statuses

    tables: dict[str, list[pd.DataFrame]] = {
        "cindex": [], "accuracy": [], "calibration": [], "decision_curve": []}
    check_censoring(censoring)
    title = f"{cohort}, external"
    for endpoint in endpoints:
        risks = {m: evaluation_risks(run_risks[endpoint, m], external_risks[endpoint, m])
                 for m in models}
        statuses = dict.fromkeys(models, OK)
        if specs is not None:
            statuses = endpoint_statuses({m: fitted[endpoint, m].features for m in models},
                                         specs, {m: run_risks[endpoint, m] for m in models})
        cindex = evaluate_endpoint(endpoint, risks, dict.fromkeys(models, {}), reference,
                                   eval_cfg, seed, statuses, censoring)
        cindex = cindex[cindex["cohort"] == "validation"].drop(
            columns=[c for c in cindex.columns if c.startswith("optimism_")])
        logrank = km_plots(endpoint, risks, statuses, time_unit, plot_dirs["km"], title)
        cindex["logrank_p"] = [logrank[m] for m in cindex["model"]]
        baselines = {m: (fitted[endpoint, m].baseline_time, fitted[endpoint, m].baseline_cumhaz)
                     for m in models}
        accuracy, calibration, decision = endpoint_accuracy(
            endpoint, risks, baselines, eval_cfg, seed, time_unit, title,
            plot_dirs["calibration"], plot_dirs["decision_curve"] / f"{endpoint}.png", reference,
            statuses, censoring)
        for name, table in (("cindex", cindex), ("accuracy", accuracy),
                            ("calibration", calibration), ("decision_curve", decision)):
            tables[name].append(table)
    out = {name: pd.concat(parts, ignore_index=True) for name, parts in tables.items()}
    out["cindex"]["cohort"] = cohort
    plot_forest(out["cindex"], plot_dirs["forest"], f"C-index by model ({title})")
    return out
