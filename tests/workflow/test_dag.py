"""The DAG: what a dry-run would build, and what re-runs after a user changes one thing.

These use empty placeholder inputs and Snakemake's touch mode, so they run in seconds
while going through the real Snakefile, sheets validation and rerun triggers.
"""

from __future__ import annotations

import os
import time

import pytest

from placeholders import write_placeholder_cohort
from smk import dry_run, touch_all, write_config

COHORT_STEPS = {
    "results/cohort/radiomics_raw.tsv",
    "results/cohort/radiomics.tsv",
    "results/report/cindex.tsv",
    "results/report/report.html",
}


def radiomics_patients(files: list[str]) -> set[str]:
    return {f.split("/")[2] for f in files if f.startswith("results/radiomics/")}


def slide_jobs(files: list[str]) -> set[str]:
    return {f.split("/")[2] for f in files if f.startswith("results/pathology/")}


@pytest.fixture()
def cohort(tmp_path):
    write_placeholder_cohort(tmp_path / "data", n_patients=12, slides_per_patient=1)
    config = write_config(tmp_path / "config.yaml", tmp_path / "data")
    return tmp_path, config


def test_dry_run_plans_every_patient_and_model(cohort):
    workdir, config = cohort
    files = dry_run(workdir, config)
    assert radiomics_patients(files) == {f"P{i:05d}" for i in range(1, 13)}
    assert slide_jobs(files) == {f"P{i:05d}_S0" for i in range(1, 13)}
    for slide in ("P00001_S0", "P00012_S0"):
        for output in ("coords.h5", "thumbnail.png", "features.h5", "morphology.tsv"):
            assert f"results/pathology/{slide}/{output}" in files
    for endpoint in ("os", "pfs"):
        for model in ("clinical", "radiomics_raw", "radiomics", "clinical_radiomics",
                      "pathomics_embedding", "clinical_radiomics_pathomics"):
            assert f"results/models/{endpoint}/{model}/risk.tsv" in files
    assert COHORT_STEPS <= set(files)


def test_changed_mask_reruns_only_that_patient_and_cohort_steps(cohort):
    workdir, config = cohort
    touch_all(workdir, config)
    assert dry_run(workdir, config) == []
    time.sleep(0.01)
    os.utime(workdir / "data" / "ct" / "P00004_mask.nii.gz")
    files = dry_run(workdir, config)
    assert radiomics_patients(files) == {"P00004"}
    assert slide_jobs(files) == set()
    assert COHORT_STEPS <= set(files)


def test_changed_slide_reruns_only_that_slide_and_cohort_steps(cohort):
    workdir, config = cohort
    touch_all(workdir, config)
    time.sleep(0.01)
    os.utime(workdir / "data" / "slides" / "P00009_S0.svs")
    files = dry_run(workdir, config)
    assert slide_jobs(files) == {"P00009_S0"}
    assert radiomics_patients(files) == set()
    assert "results/cohort/pathomics_embedding.tsv" in files
    assert "results/report/report.html" in files


def test_forcerun_one_patient(cohort):
    workdir, config = cohort
    touch_all(workdir, config)
    files = dry_run(workdir, config, forcerun=["results/radiomics/P00007/features.tsv"])
    assert radiomics_patients(files) == {"P00007"}
    assert COHORT_STEPS <= set(files)


def test_new_patients_run_only_their_jobs_and_cohort_steps(cohort):
    workdir, config = cohort
    touch_all(workdir, config)
    write_placeholder_cohort(workdir / "data", n_patients=5, first=13, seed=1,
                             slides_per_patient=1)
    files = dry_run(workdir, config)
    assert radiomics_patients(files) == {f"P{i:05d}" for i in range(13, 18)}
    assert slide_jobs(files) == {f"P{i:05d}_S0" for i in range(13, 18)}
    assert COHORT_STEPS <= set(files)
