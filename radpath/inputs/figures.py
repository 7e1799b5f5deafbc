"""Figures written like every other output: matplotlib's Agg backend (no display on a
compute node), PNG, atomically. A module of its own so that jobs without figures never
import matplotlib (envs/radiomics.yaml does not install it)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from radpath.inputs.io import atomic_path  # noqa: E402


def save_figure(fig, path: str | os.PathLike) -> None:
    """`fig` as PNG at `path`, written atomically, then closed."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
