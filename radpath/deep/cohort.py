"""Deep CT models at the cohort level, without torch: folds of the training patients, the
block of scores (out-of-fold for training patients, the ensemble for validation patients),
the leakage audit and the training summary.

Protocol (rules/deep_ct.smk): the training patients are split into k folds stratified on the
endpoint's event; the model of fold f trains on the other folds, chooses its epoch on an
inner part of them and scores fold f (`heldout`) and the validation patients (`validation`).
Each model's raw outputs are standardised with the mean and SD of its outputs on the
patients it was fitted on, so every score is in "SDs of that model's training scores".
A training patient's block value is the mean over networks of its held-out score (one fold
model per network never saw it). A validation or external patient's is the same kind of
predictor: the mean over networks of ONE fold model's score, the fold drawn from the patient
ID (`scoring_fold`). The Cox model is fitted on out-of-fold scores, so it must be given scores
of the same spread: the mean over all k fold models would be more precise, but its spread is
narrower (on the demo, SD 0.77 against 0.91 out-of-fold), which biases calibration, absolute
risk and the risk-group cut-off.
"""

from __future__ import annotations

import logging
import warnings
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from radpath.inputs.runtime import exclusion_reason
from radpath.survival.metrics import harrell_c

log = logging.getLogger(__name__)

# Roles of a patient in one fold model (usage.tsv): trained on, chose the epoch, scored.
FIT, INNER, HELDOUT, VALIDATION, LEFT_OUT = "fit", "inner", "heldout", "validation", "left_out"
SYNTHETIC = "synthetic"  # a synthetic CT of a fit patient, fitted on (synthesis augmentation)


def assign_folds(patient_ids: Sequence[str], event: Sequence[int], n_folds: int,
                 seed: int) -> dict[str, int]:
    """{patient: fold 1..n_folds}, stratified on the event, seeded, independent of the order
    the patients come in."""
    order = np.argsort(np.asarray(patient_ids, dtype=str), kind="stable")
    ids = np.asarray(patient_ids, dtype=str)[order]
    events = np.asarray(event, dtype=int)[order]
    n_events = int(events.sum())
    if len(ids) < 2 * n_folds or n_events < n_folds:
        raise ValueError(
            f"deep_ct.folds: {n_folds} folds need at least {2 * n_folds} training patients "
            f"and {n_folds} events (one per held-out fold); there are {len(ids)} training "
            f"patients with {n_events} events"
        )
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed % 2**32)
    assigned = {}
    with warnings.catch_warnings():  # fewer censored patients than folds: still stratified
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, held) in enumerate(folds.split(ids, events), start=1):
            assigned.update({ids[i]: fold for i in held})
    return assigned


def fold_table(outcomes: pd.DataFrame, endpoint: str, cube_files: Mapping[str, str],
               n_folds: int, seed: int) -> pd.DataFrame:
    """One row per patient of `outcomes`: split, fold (1..k for training patients, 0 for
    validation patients and those without cubes) and why a patient is left out."""
    reasons = {pid: exclusion_reason(path) for pid, path in cube_files.items()}
    status = pd.Series(
        [
            "no cube file" if pid not in reasons else (reasons[pid] or "")
            for pid in outcomes.index
        ],
        index=outcomes.index,
    )
    usable = status == ""
    train = outcomes.index[(outcomes["split"] == "train") & usable]
    folds = assign_folds(list(train), outcomes.loc[train, f"{endpoint}_event"], n_folds, seed)
    table = pd.DataFrame(
        {
            "split": outcomes["split"],
            "fold": [folds.get(pid, 0) for pid in outcomes.index],
            "excluded": status,
        },
        index=outcomes.index,
    )
    table.index.name = "patient_id"
    return table


def read_folds(path) -> pd.DataFrame:
    """folds.tsv as written by `fold_table` (an empty `excluded` cell = usable)."""
    from radpath.inputs.io import read_tsv

    folds = read_tsv(path, index_col="patient_id")
    folds["excluded"] = folds["excluded"].fillna("").astype(str)
    return folds


def check_usage(usage: pd.DataFrame, folds: pd.DataFrame) -> None:
    """The leakage audit: no validation patient, nor a synthetic copy of one, is fitted or
    early-stopped on, and every usable training patient is held out by exactly one fold
    model per network, which never fitted or early-stopped on it or on a synthetic copy of
    it. `usage`: patient_id, member, fold, role, source (the patient a synthetic copy was
    made from; the patient itself for real rows)."""
    usage = with_sources(usage)
    validation = set(folds.index[folds["split"] == "validation"])
    trained = usage[usage["role"].isin([FIT, INNER, SYNTHETIC])]
    leaked = trained[trained["source"].isin(validation)]
    if len(leaked):
        raise AssertionError("validation patients used in training: " + ", ".join(
            f"{row.patient_id} (of {row.source}) by {row.member} fold {row.fold}"
            if row.patient_id != row.source else f"{row.patient_id} by {row.member} fold "
            f"{row.fold}" for row in leaked.head(10).itertuples()))
    wanted = set(folds.index[(folds["split"] == "train") & (folds["fold"] > 0)])
    for member, rows in usage.groupby("member"):
        held = rows[rows["role"] == HELDOUT]
        counts = held["patient_id"].value_counts()
        twice = sorted(counts.index[counts > 1])
        missing = sorted(wanted - set(counts.index))
        if twice or missing:
            raise AssertionError(
                f"{member}: training patients held out more than once ({', '.join(twice[:10])})"
                f" or never ({', '.join(missing[:10])})"
            )
        seen = rows[rows["role"].isin([FIT, INNER, SYNTHETIC])][["patient_id", "source", "fold"]]
        clash = held[["patient_id", "fold"]].merge(
            seen.rename(columns={"patient_id": "used", "source": "patient_id"}),
            on=["patient_id", "fold"])
        if len(clash):
            raise AssertionError(f"{member}: fold models scored patients they trained on: " +
                                 ", ".join(f"{row.patient_id} (as {row.used}, fold {row.fold})"
                                           if row.used != row.patient_id else
                                           f"{row.patient_id} (fold {row.fold})"
                                           for row in clash.head(10).itertuples()))


def with_sources(usage: pd.DataFrame) -> pd.DataFrame:
    """`usage` with its `source` column; usage tables written before it had one name a
    synthetic copy `<patient>~synthetic<k>`."""
    if "source" in usage.columns:
        return usage
    return usage.assign(source=usage["patient_id"].astype(str).str.replace(
        r"~synthetic\d+$", "", regex=True))


def scoring_fold(patient_id: str, n_folds: int, seed: int) -> int:
    """The fold (1..n_folds) whose models score a patient outside the training folds
    (validation, external): drawn from the seed and the patient ID alone, so a patient keeps
    it whatever else is in the cohort, and the folds share such patients about equally."""
    return zlib.crc32(f"{int(seed)}:{patient_id}".encode()) % int(n_folds) + 1


def single_fold_scores(scores: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """The rows of `scores` (patient_id, fold, ...) from each patient's `scoring_fold`."""
    wanted = [scoring_fold(p, n_folds, seed) for p in scores["patient_id"].astype(str)]
    return scores[scores["fold"].to_numpy(int) == np.asarray(wanted, int)]


def validation_scores(scores: pd.DataFrame, n_folds: int, seed: int) -> pd.Series:
    """Per validation patient, the mean over networks of its scoring fold's score (see
    module doc): the same kind of predictor as the out-of-fold scores."""
    validation = single_fold_scores(scores[scores["role"] == VALIDATION], n_folds, seed)
    return validation.groupby("patient_id")["score"].mean()


def block_scores(scores: pd.DataFrame, folds: pd.DataFrame, seed: int,
                 members: Sequence[str] | None = None) -> pd.DataFrame:
    """The block `deep_ct` (one column, `risk`): training patients' out-of-fold scores and
    validation patients' scores of their scoring fold (see module doc) of `members`
    (default: all). `scores`: patient_id, member, fold, role, raw, score."""
    if members is not None:
        scores = scores[scores["member"].isin(list(members))]
    heldout = scores[scores["role"] == HELDOUT]
    risk = pd.concat([
        heldout.groupby("patient_id")["score"].mean(),
        validation_scores(scores, int(folds["fold"].max()), seed),
    ])
    usable = folds.index[folds["excluded"] == ""]
    risk = risk.reindex([pid for pid in folds.index if pid in set(usable) & set(risk.index)])
    block = pd.DataFrame({"risk": risk.to_numpy(float)}, index=risk.index)
    block.index.name = "patient_id"
    return block


def training_summary(histories: pd.DataFrame, usage: pd.DataFrame, scores: pd.DataFrame,
                     outcomes: pd.DataFrame, endpoint: str) -> pd.DataFrame:
    """Per network x fold: patients fitted / early-stopped on / held out / left out, the
    chosen epoch, its inner C, and the held-out fold's C (honest: that model never saw them)."""
    rows = []
    for (member, fold), hist in histories.groupby(["member", "fold"], sort=False):
        used = usage[(usage["member"] == member) & (usage["fold"] == fold)]
        held = scores[(scores["member"] == member) & (scores["fold"] == fold)
                      & (scores["role"] == HELDOUT)].set_index("patient_id")
        out = outcomes.loc[held.index]
        best = hist.loc[hist["best"].astype(bool)]
        rows.append({
            "member": member,
            "fold": fold,
            **{f"n_{role}": int((used["role"] == role).sum())
               for role in (FIT, INNER, HELDOUT, VALIDATION, LEFT_OUT, SYNTHETIC)},
            "epochs": int(hist["epoch"].max()),
            "best_epoch": int(best["epoch"].iloc[0]) if len(best) else 0,
            "inner_cindex": float(best["inner_cindex"].iloc[0]) if len(best) else float("nan"),
            "heldout_cindex": harrell_c(out[f"{endpoint}_time"], out[f"{endpoint}_event"],
                                        held["score"]),
        })
    return pd.DataFrame(rows)


START_LABELS = {"pretrain": "pretrained on another cohort", "init": "checkpoint file",
                "random": "random start"}


def block_members(members: Mapping[str, Mapping]) -> list[str]:
    """The members whose scores form the block: all but the random-start twins (members
    whose `compares` names the member they twin)."""
    return [m for m, spec in members.items() if not spec["compares"]]


def start_comparison(scores: pd.DataFrame, members: Mapping[str, Mapping], start: str,
                     outcomes: pd.DataFrame, endpoint: str, B: int, seed: int) -> pd.DataFrame:
    """Validation C of the deep score by start: the configured start (the members that form
    the block) and, when trained, their random-start twins, with paired bootstrap CIs of
    both and of the difference (start - random start). Also the out-of-fold C on the
    training patients. The start was chosen in the config before any training: this table
    reports what it changed, it does not choose."""
    twins = [m for m, spec in members.items() if spec["compares"] and not spec.get("twin")]
    groups = {START_LABELS[start]: block_members(members)}
    if twins:
        groups[START_LABELS["random"]] = twins
    table = twin_comparison(scores, groups, outcomes, endpoint, B, seed)
    return table.rename(columns={"variant": "start"})


def synthetic_comparison(scores: pd.DataFrame, members: Mapping[str, Mapping],
                         outcomes: pd.DataFrame, endpoint: str, B: int, seed: int
                         ) -> pd.DataFrame:
    """Validation C of the deep score trained with synthetic CTs (the block) and without
    them (the `without_synthetic` twins), as `start_comparison`; empty without them."""
    twins = [m for m, spec in members.items() if spec.get("twin") == "without_synthetic"]
    if not twins:
        return pd.DataFrame(columns=["variant", *COMPARISON_COLUMNS])
    groups = {"with synthetic CTs": block_members(members), "without synthetic CTs": twins}
    return twin_comparison(scores, groups, outcomes, endpoint, B, seed)


COMPARISON_COLUMNS = ["members", "n_validation", "events_validation", "validation_c",
                      "validation_lo", "validation_hi", "difference", "difference_lo",
                      "difference_hi", "difference_p", "training_oof_c"]


def twin_comparison(scores: pd.DataFrame, groups: Mapping[str, list[str]],
                    outcomes: pd.DataFrame, endpoint: str, B: int, seed: int) -> pd.DataFrame:
    """Validation C of each group's score (first: the block's members; second, if any:
    their twins, the reference of the paired difference), computed as the block's (each
    validation patient scored by its scoring fold, see module doc), and out-of-fold C.
    `seed` is the run's: it draws the scoring folds and the bootstrap samples."""
    from radpath.survival.metrics import bootstrap_cindex

    twins = len(groups) > 1
    n_folds = int(scores["fold"].max()) if len(scores) else 1

    def ensemble(role: str, group: list[str]) -> pd.Series:
        rows = scores[(scores["role"] == role) & scores["member"].isin(group)]
        if role == VALIDATION:
            return validation_scores(rows, n_folds, seed)
        return rows.groupby("patient_id")["score"].mean()

    validation = {label: ensemble(VALIDATION, group) for label, group in groups.items()}
    ids = sorted(set.intersection(*(set(v.index) for v in validation.values())))
    time = outcomes.loc[ids, f"{endpoint}_time"].to_numpy(float)
    event = outcomes.loc[ids, f"{endpoint}_event"].to_numpy(int)
    reference = list(groups)[1] if twins else None
    if ids and event.sum() > 0:
        table = bootstrap_cindex(time, event, {k: v[ids].to_numpy(float)
                                               for k, v in validation.items()},
                                 B, seed, reference=reference)
    else:
        table = pd.DataFrame({"model": list(groups), "n": len(ids), "events": int(event.sum()),
                              "harrell_c": np.nan, "harrell_lo": np.nan, "harrell_hi": np.nan})
    for column in ("delta_harrell", "delta_lo", "delta_hi", "delta_p"):
        if column not in table:
            table[column] = np.nan
    out = pd.DataFrame({
        "variant": table["model"],
        "members": [", ".join(groups[label]) for label in table["model"]],
        "n_validation": table["n"],
        "events_validation": table["events"],
        "validation_c": table["harrell_c"],
        "validation_lo": table["harrell_lo"],
        "validation_hi": table["harrell_hi"],
        "difference": table["delta_harrell"],
        "difference_lo": table["delta_lo"],
        "difference_hi": table["delta_hi"],
        "difference_p": table["delta_p"],
    })
    heldout = {label: ensemble(HELDOUT, group) for label, group in groups.items()}
    out["training_oof_c"] = [
        harrell_c(outcomes.loc[h.index, f"{endpoint}_time"],
                  outcomes.loc[h.index, f"{endpoint}_event"], h.to_numpy(float))
        if len(h) else np.nan
        for h in (heldout[label] for label in out["variant"])
    ]
    if twins:  # the difference of a group with itself says nothing
        out.loc[out["variant"] == reference, ["difference", "difference_lo", "difference_hi",
                                              "difference_p"]] = np.nan
    return out


def plot_training_curves(histories: pd.DataFrame, endpoint: str, path: str) -> None:
    """Training and inner-part loss per epoch, one line per fold, a panel per network; the
    chosen epoch of each fold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from radpath.inputs.io import atomic_path

    members = list(dict.fromkeys(histories["member"]))
    fig, axes = plt.subplots(1, len(members), figsize=(4.5 * len(members), 3.4), squeeze=False)
    for ax, member in zip(axes[0], members, strict=True):
        for fold, hist in histories[histories["member"] == member].groupby("fold"):
            line, = ax.plot(hist["epoch"], hist["train_loss"], label=f"fold {fold} train")
            ax.plot(hist["epoch"], hist["inner_loss"], linestyle="--", color=line.get_color(),
                    label=f"fold {fold} inner")
            best = hist[hist["best"].astype(bool)]
            ax.plot(best["epoch"], best["inner_loss"], marker="o", color=line.get_color())
        ax.set_title(f"{endpoint}: {member}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend(fontsize=6)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
