"""One survival model for one endpoint: design matrix, fit on train, risk for everyone."""

from __future__ import annotations

import functools
import logging

import numpy as np
import pandas as pd

from radpath.io import read_tsv
from radpath.modeling import fit_model, one_blas_thread, optimism_corrected_c

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
        matrix = read_tsv(path, index_col="patient_id").add_prefix(f"{block}:")
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
):
    """Fit on training patients only; predict risk for train and validation patients.

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
    optimism = {"B_used": 0}
    if optimism_b > 0:
        optimism = optimism_corrected_c(
            design.loc[train], time, event, fit, optimism_b, seed, model=model, threads=threads
        )
    optimism = {k: (float(v) if isinstance(v, np.floating) else v) for k, v in optimism.items()}
    return model, risk, optimism
