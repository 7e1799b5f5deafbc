"""One survival model for one endpoint: design matrix, fit on train, risk for everyone."""

from __future__ import annotations

import functools
import logging
import warnings

import numpy as np
import pandas as pd

from radpath.inputs.io import read_tsv
from radpath.survival.accuracy import horizon_column
from radpath.survival.modeling import fit_model, one_blas_thread, optimism_corrected_c
from radpath.survival.selection import BLOCK_SEPARATOR

log = logging.getLogger(__name__)

# Blocks that are one learned risk score (deep CT, per endpoint): they enter the model like a
# clinical covariate, without feature selection.
SCORE_BLOCKS = frozenset({"deep_ct"})


def load_design(
    outcomes_path: str,
    clinical_path: str | None,
    block_paths: dict[str, str],
) -> tuple[pd.DataFrame, pd.DataFrame, list[str], list[str]]:
    """Join the model's inputs on patient_id.

    Feature columns are prefixed with their block name (`radiomics:original_shape_...`) so
    blocks never collide. Patients missing from any block are left out (reported as n).
    Returns (outcomes, design, forced columns (clinical and SCORE_BLOCKS), candidate
    feature columns).
    """
    outcomes = read_tsv(outcomes_path, index_col="patient_id")
    design = pd.DataFrame(index=outcomes.index)
    forced: list[str] = []
    if clinical_path is not None:
        clinical = read_tsv(clinical_path, index_col="patient_id")
        design = design.join(clinical, how="inner")
        forced = list(clinical.columns)
    candidates: list[str] = []
    for block, path in block_paths.items():
        matrix = read_tsv(path, index_col="patient_id").add_prefix(f"{block}{BLOCK_SEPARATOR}")
        design = design.join(matrix, how="inner")
        if block in SCORE_BLOCKS:
            forced += list(matrix.columns)
        else:
            candidates += list(matrix.columns)
    dropped = outcomes.index.difference(design.index)
    if len(dropped):
        log.info("%d patient(s) lack a block and are left out: %s", len(dropped), ", ".join(dropped))
    return outcomes.loc[design.index], design, forced, candidates


def train_and_predict(
    outcomes: pd.DataFrame,
    design: pd.DataFrame,
    forced: list[str],
    candidates: list[str],
    endpoint: str,
    selection_cfg: dict,
    cox_cfg: dict,
    optimism_b: int,
    seed: int,
    threads: int = 1,
    horizons: tuple[float, ...] = (),
):
    """Fit on training patients only; predict risk (the linear predictor) for train and
    validation patients, and their survival probability at each of ``horizons`` (NaN after
    the longest training follow-up).

    The optimism bootstrap reuses the model fitted here and refits its resamples in ``threads``
    processes; every fit uses one BLAS thread, so the results do not depend on ``threads``.
    """
    time_col, event_col = f"{endpoint}_time", f"{endpoint}_event"
    train = outcomes.index[outcomes["split"] == "train"]
    time = outcomes.loc[train, time_col].to_numpy(float)
    event = outcomes.loc[train, event_col].to_numpy(int)
    fit = functools.partial(
        fit_model,
        forced=forced,
        candidates=candidates,
        selection_cfg=selection_cfg,
        cox_cfg=cox_cfg,
        seed=seed,
    )
    with one_blas_thread():
        model = fit(design.loc[train], time, event)
    risk = pd.DataFrame(
        {
            "split": outcomes["split"],
            "time": outcomes[time_col],
            "event": outcomes[event_col].astype(int),
            "risk": model.predict(design),
        },
        index=design.index,
    )
    survival = model.predict_survival(design, horizons)
    for k, horizon in enumerate(horizons):
        risk[horizon_column(horizon)] = survival[:, k]
    model.checks = model_checks(model, design.loc[train], time, event, forced, candidates, cox_cfg)
    optimism = {"B": 0, "B_used": 0, "B_failed": 0, "failures": {}}
    if optimism_b > 0:
        optimism = optimism_corrected_c(
            design.loc[train], time, event, fit, optimism_b, seed, model=model, threads=threads
        )
    optimism = {k: (float(v) if isinstance(v, np.floating) else v) for k, v in optimism.items()}
    return model, risk, optimism


def model_checks(model, X_train: pd.DataFrame, time, event, forced, candidates, cox_cfg) -> dict:
    """What a reviewer asks of a final model: events per candidate and per final variable, and
    the proportional-hazards test of each of its features (lifelines' Schoenfeld-residual test
    with rank-transformed time, on the training patients)."""
    events = int(np.sum(event))
    checks = {
        "training_events": events,
        "candidate_variables": len(forced) + len(candidates),
        "final_variables": len(model.features),
        "events_per_candidate": events / max(1, len(forced) + len(candidates)),
        "events_per_final_variable": events / max(1, len(model.features)),
        "proportional_hazards": [],
        "proportional_hazards_note": "",
    }
    if not model.features:
        return checks
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError
    from lifelines.statistics import proportional_hazard_test

    data = pd.DataFrame(model.transform(X_train), columns=model.features)
    data["__time__"], data["__event__"] = time, event
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitter = CoxPHFitter(penalizer=float(cox_cfg["penalizer"])).fit(
                data, "__time__", "__event__")
            test = proportional_hazard_test(fitter, data, time_transform="rank")
    except (ConvergenceError, np.linalg.LinAlgError, ValueError) as exc:
        checks["proportional_hazards_note"] = f"not tested: {type(exc).__name__}: {exc}"[:300]
        return checks
    summary = test.summary
    checks["proportional_hazards"] = [
        {"feature": str(name if not isinstance(name, tuple) else name[0]),
         "statistic": float(row["test_statistic"]), "p": float(row["p"])}
        for name, row in summary.iterrows()
    ]  # fmt: skip
    return checks
