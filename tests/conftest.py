"""Shared fixtures: the repository root and small synthetic cohorts made by the demo generator."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    """A 20-patient synthetic cohort (CT, masks, H&E slides, clinical), made once per session,
    and in pretrain/ a 12-patient cohort (CT and clinical only, IDs G001...) for deep CT
    pretraining."""
    from radpath.demo import SlideSettings, generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, n_patients=20, n_scanners=2, seed=7, slides=SlideSettings())
    generate_cohort(out / "pretrain", n_patients=12, n_scanners=2, seed=8, id_prefix="G")
    return out


@pytest.fixture(scope="session")
def local_run(small_cohort, tmp_path_factory) -> tuple[Path, Path]:
    """The whole workflow run locally on `small_cohort`: (workdir, config file).

    Session-scoped so the SLURM tests can compare their results with it.
    """
    from smk import FAST_STATS, run, write_config

    workdir = tmp_path_factory.mktemp("run")
    config = write_config(workdir / "config.yaml", small_cohort, with_deep_ct=True,
                          with_synthesis=True, deep_ct={"synthetic_augmentation": True},
                          **FAST_STATS)
    run(workdir, config)
    return workdir, config
