"""Whether a fitted model has a result of its own to report.

A model whose feature selection kept nothing predicts the same risk for everyone: its C-index
is 0.5 by construction, and a bootstrap interval of [0.5, 0.5] would read as certainty. A
combined model whose feature blocks kept nothing is the clinical covariates' model under
another name. Neither has a result of its own: their rows in the evaluation tables carry a
status instead of numbers, and the forest plot, the paired comparisons and the decision curves
leave them out, saying so.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from radpath.survival.selection import BLOCK_SEPARATOR

OK = "ok"
EMPTY = "empty: no feature selected (constant risk)"
SAME_AS_CLINICAL = "same as clinical"


def has_result(status) -> bool:
    """True for a model with a result of its own (a blank status: a table written before
    radpath recorded one)."""
    return not isinstance(status, str) or status in ("", OK)


def status_text(status) -> str:
    """A status as read back from a table: OK for a blank one."""
    return OK if has_result(status) else status


def has_constant_risk(status) -> bool:
    return status == EMPTY


def clinical_only_model(specs: dict[str, dict]) -> str | None:
    """The first model of clinical covariates alone, the one a combined model whose blocks
    kept nothing equals."""
    return next((name for name, spec in specs.items()
                 if spec.get("clinical") and not spec.get("blocks")), None)


def block_features(features: list[str], blocks: list[str]) -> list[str]:
    """The features that come from one of ``blocks`` (named `<block>:<feature>`)."""
    prefixes = tuple(f"{block}{BLOCK_SEPARATOR}" for block in blocks)
    return [f for f in features if str(f).startswith(prefixes)]


def training_ids(risk: pd.DataFrame) -> pd.Index:
    return risk.index[risk["split"] == "train"]


def same_as_clinical(clinical: str | None, train_ids: pd.Index,
                     clinical_train_ids: pd.Index | None) -> str:
    """The status of a combined model whose blocks kept nothing: which model it equals, and
    whether it was fitted on other training patients (those with every block)."""
    if clinical is None:
        return f"{SAME_AS_CLINICAL}: clinical covariates only (no clinical-only model among those evaluated)"
    if clinical_train_ids is None or train_ids.sort_values().equals(
            clinical_train_ids.sort_values()):
        return f"{SAME_AS_CLINICAL}: {clinical}"
    return (f"{SAME_AS_CLINICAL}: {clinical}'s covariates, refitted on {len(train_ids)} "
            f"training patients ({clinical}: {len(clinical_train_ids)})")


def model_status(features: list[str], spec: dict, clinical: str | None, train_ids: pd.Index,
                 clinical_train_ids: pd.Index | None) -> str:
    """OK, EMPTY (no final feature) or "same as clinical: <model>" (a model with clinical
    covariates and blocks whose final features are all clinical)."""
    if not features:
        return EMPTY
    blocks = spec.get("blocks") or []
    if blocks and spec.get("clinical") and not block_features(features, blocks):
        return same_as_clinical(clinical, train_ids, clinical_train_ids)
    return OK


def endpoint_statuses(features: dict[str, list[str]], specs: dict[str, dict],
                      risks: dict[str, pd.DataFrame]) -> dict[str, str]:
    """The status of each model of one endpoint, from its final features (FittedModel.features),
    its spec (config `models`) and its risk table (whose training patients it was fitted on)."""
    clinical = clinical_only_model({m: specs[m] for m in features})
    clinical_ids = training_ids(risks[clinical]) if clinical in risks else None
    return {
        model: model_status(selected, specs[model], clinical, training_ids(risks[model]),
                            clinical_ids)
        for model, selected in features.items()
    }


def blank_without_result(table: pd.DataFrame, columns) -> pd.DataFrame:
    """``table`` with the given columns blank (NaN) in the rows whose status has no result."""
    table = table.copy()
    present = [c for c in columns if c in table.columns]
    without = ~table["status"].map(has_result)
    table.loc[without, present] = np.nan
    return table


def left_out(statuses: dict[str, str]) -> dict[str, str]:
    """The models without a result of their own, with their status."""
    return {model: status for model, status in statuses.items() if not has_result(status)}
