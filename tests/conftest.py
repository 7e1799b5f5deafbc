"""Shared fixtures: the repository root, small synthetic cohorts made by the demo generator,
the demo's finished run and a small run of every branch."""

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
    from radpath_demo.cohort import SlideSettings, generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, n_patients=20, n_scanners=2, seed=7, slides=SlideSettings())
    generate_cohort(out / "pretrain", n_patients=12, n_scanners=2, seed=8, id_prefix="G")
    return out


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The shipped demo's finished run (`demo_run.FinishedRun`): the checkout's own when
    `make demo` left it complete and current (CI runs it first), else one made here."""
    from demo_run import finished_demo

    return finished_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def local_run(small_cohort, tmp_path_factory) -> tuple[Path, Path]:
    """Every branch of the workflow run locally on `small_cohort` with the smallest settings
    that still exercise each rule: (workdir, config file). Deep CT with pretraining and
    synthetic-CT augmentation (no random-start twins), synthesis, PathoSig, and four models
    that use every block. Session-scoped: the SLURM tests run the same config on the cluster
    and compare; the augmentation test reads it."""
    from radpath.inputs.configuration import default_config
    from smk import FAST_STATS, run, write_config

    defaults = default_config()
    models = {name: defaults["models"][name] for name in (
        "clinical", "clinical_radiomics_pathomics", "clinical_pathosig",
        "clinical_radiomics_deep_ct")}
    workdir = tmp_path_factory.mktemp("run")
    # One CPU per job: on the test's 2-CPU SLURM node two jobs run at once, as here.
    config = write_config(
        workdir / "config.yaml", small_cohort, with_deep_ct=True, with_synthesis=True,
        models=models,
        deep_ct={"synthetic_augmentation": True, "compare_random_start": False, "epochs": 3,
                 "threads": 1},
        synthesis={"steps": 100, "layouts": 2, "threads": 1,
                   "fresh": {**defaults["synthesis"]["fresh"], "patients": 1}},
        pathology={"threads": 1,
                   "pathosig": {**defaults["pathology"]["pathosig"], "epochs": 2}},
        evaluation={**FAST_STATS["evaluation"], "threads": 1})
    run(workdir, config)
    return workdir, config
