"""Figures for the report (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from radpath.inputs.figures import plt, save_figure  # pyplot on the Agg backend
from radpath.survival.status import has_result


def forest_rows(cindex: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows to draw, rows left out): a model without a result of its own
    (radpath.survival.status) has no C to draw."""
    if "status" not in cindex.columns:
        return cindex, cindex.iloc[:0]
    with_result = cindex["status"].map(has_result)
    return cindex[with_result], cindex[~with_result]


def left_out_note(names: list[str], statuses: list[str]) -> str:
    """A figure's footnote naming the models it leaves out and why ("" when none)."""
    if not names:
        return ""
    return "Not shown (no result of their own):\n" + "\n".join(
        f"{name}: {status}" for name, status in zip(names, statuses, strict=True))


FOOTNOTE_STYLE = {"ha": "left", "fontsize": 7, "color": "dimgrey"}


def footnote_height(note: str) -> float:
    """Inches a footnote of FOOTNOTE_STYLE takes (0 for none)."""
    return (note.count("\n") + 1) * 7 * 1.3 / 72 + 0.05 if note else 0.0


def add_footnote_below(fig, note: str, label) -> None:
    """``note`` at the left of the figure, just under an axes' ``label`` (its x label); the
    saved image grows to hold it (bbox_inches='tight'). Not under a figure legend: saving
    with a tight box moves those to its new bottom, onto the note."""
    if note:
        from matplotlib.text import Annotation

        fig.add_artist(Annotation(note, xy=(0.01, 0.0), xycoords=("figure fraction", label),
                                  xytext=(0, -6), textcoords="offset points", va="top",
                                  **FOOTNOTE_STYLE))


def plot_forest(cindex: pd.DataFrame, path, title: str) -> None:
    """Validation Harrell's C with 95% CI per model and endpoint; the models without a result
    of their own (:func:`forest_rows`) are named in a footnote instead."""
    rows, left_out = forest_rows(cindex.sort_values(["endpoint", "model"]))
    fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(rows), 1) + 1.2))
    labels = [f"{r.endpoint.upper()}  {r.model}" for r in rows.itertuples()]
    y = range(len(rows))
    ax.errorbar(
        rows["harrell_c"], list(y),
        xerr=[rows["harrell_c"] - rows["harrell_lo"], rows["harrell_hi"] - rows["harrell_c"]],
        fmt="o", color="black", ecolor="grey", capsize=3,
    )
    ax.axvline(0.5, color="red", linestyle="--", linewidth=1)
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("Harrell's C (validation, 95% bootstrap CI)")
    ax.set_title(title)
    add_footnote_below(fig, left_out_note(
        [f"{r.endpoint.upper()} {r.model}" for r in left_out.itertuples()],
        list(left_out["status"])), ax.xaxis.label)
    save_figure(fig, path)


def plot_calibration(groups: pd.DataFrame, accuracy: pd.DataFrame, time_unit: str, title: str,
                     path) -> None:
    """One panel per horizon: mean predicted vs Kaplan-Meier observed risk per risk group."""
    horizons = list(accuracy["horizon"])
    fig, axes = plt.subplots(1, len(horizons), figsize=(3.2 * len(horizons), 3.4), squeeze=False)
    for ax, (_, row) in zip(axes[0], accuracy.iterrows(), strict=True):
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        at = groups[groups["horizon"] == row["horizon"]]
        if row["note"] or at.empty:
            ax.text(0.5, 0.5, "not evaluable:\n" + str(row["note"]), ha="center", va="center",
                    fontsize=7, wrap=True)
        else:
            ax.plot(at["predicted_risk"], at["observed_risk"], "o-", color="black")
            ax.set_title(f"{row['horizon']:g} {time_unit}: slope {row['slope']:.2f}, "
                         f"log O/E {row['log_oe']:+.2f}", fontsize=8)
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("Predicted risk")
    axes[0][0].set_ylabel("Observed risk (Kaplan-Meier)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_decision_curve(curve: pd.DataFrame, time_unit: str, title: str, path,
                        reference: str | None = None,
                        left_out: dict[str, str] | None = None) -> None:
    """Net benefit by threshold: one small panel per model (beside the reference model,
    treating all and treating none), so that a dozen models stay readable. ``left_out``:
    models without a curve (no result of their own) and why, named in a footnote."""
    models = [m for m in dict.fromkeys(curve["model"]) if m not in ("treat all", "treat none")]
    columns = min(4, max(1, len(models)))
    rows = -(-len(models) // columns) if models else 1
    left_out = left_out or {}
    note = left_out_note(list(left_out), list(left_out.values()))
    below = footnote_height(note)  # inches at the bottom for the note
    height = 2.2 * rows + 1.2 + below  # inches; 0.75 above the note: the x label and legend
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns + 1.0, height),
                             sharex=True, sharey=True, squeeze=False)
    prevalence = curve.loc[curve["model"] == "treat all", "net_benefit"].max()

    def line(ax, model, **style):
        part = curve[curve["model"] == model]
        ax.plot(part["threshold"], part["net_benefit"], **style)

    for ax, model in zip(axes.flat, models, strict=False):
        line(ax, "treat all", color="grey", linewidth=1.5, label="treat all")
        line(ax, "treat none", color="black", linewidth=1.5, label="treat none")
        if reference in models and model != reference:
            line(ax, reference, color="tab:orange", linestyle="--", linewidth=1.2,
                 label=reference)
        line(ax, model, color="tab:blue", linewidth=1.6, label="this model")
        ax.set_title(model, fontsize=8)
        ax.set_ylim(-0.05, max(0.05, 1.1 * prevalence))
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=7)
    for k in range(len(models), rows * columns):  # empty panels: the one above gets x labels
        axes.flat[k].axis("off")
        axes.flat[k - columns].tick_params(labelbottom=True)
    handles = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels(),
                                                                    strict=True)}
    if handles:  # none when every model was left out
        fig.legend(handles.values(), handles.keys(), loc="lower center",
                   bbox_to_anchor=(0.5, below / height), ncol=len(handles), fontsize=8,
                   frameon=False)
    fig.supxlabel("Risk threshold for treatment", fontsize=9, y=(0.4 + below) / height)
    fig.supylabel("Net benefit", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, (0.75 + below) / height, 1, 1))
    if note:
        fig.text(0.01, 0.0, note, va="bottom", **FOOTNOTE_STYLE)
    save_figure(fig, path)


def plot_repeated_cv(folds: dict[tuple[str, str], pd.DataFrame], k: int, repeats: int,
                     path) -> None:
    """Repeated CV: per endpoint, each model's repeat means of Harrell's C (dots) and their
    mean (bar), so the spread that one k-fold split hides is visible."""
    endpoints = list(dict.fromkeys(e for e, _ in folds))
    models = list(dict.fromkeys(m for _, m in folds))
    fig, axes = plt.subplots(1, len(endpoints), figsize=(4.5 * len(endpoints), 0.4 * len(models) + 1.6),
                             sharey=True, squeeze=False)
    for ax, endpoint in zip(axes[0], endpoints, strict=True):
        for y, model in enumerate(models):
            table = folds[endpoint, model]
            means = table.dropna(subset=["harrell_c"]).groupby("repeat")["harrell_c"].mean()
            ax.plot(means, np.full(len(means), y), "o", color="tab:blue", alpha=0.5, markersize=4)
            if len(means):
                ax.plot([means.mean()] * 2, [y - 0.3, y + 0.3], color="black", linewidth=2)
        ax.axvline(0.5, color="red", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(models)))
        ax.set_yticklabels(models, fontsize=8)
        ax.set_xlabel("Harrell's C (mean of a repeat's folds)")
        ax.set_title(f"{endpoint.upper()}: {repeats} x {k}-fold CV", fontsize=10)
    axes[0, 0].invert_yaxis()  # the first model on top, as in the tables
    fig.tight_layout()
    save_figure(fig, path)
