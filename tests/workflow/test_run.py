"""Real end-to-end runs of the workflow on a small synthetic cohort (minutes, marked slow)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from radpath.io import read_tsv
from radpath.survival import harrell_c
from radpath.train import train_and_predict
from smk import FAST_STATS, SNAKEFILE, assert_same_results, run, write_config

pytestmark = pytest.mark.slow

MODELS = [
    "clinical", "radiomics_raw", "radiomics", "clinical_radiomics", "pathomics_embedding",
    "pathomics_morphology", "clinical_pathomics", "clinical_radiomics_pathomics",
]


@pytest.fixture(scope="module")
def finished_run(local_run):
    return local_run


def test_report_and_tables(finished_run):
    workdir, _ = finished_run
    html = (workdir / "results/report/report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in html and "Harrell" in html
    cindex = pd.read_csv(workdir / "results/report/cindex.tsv", sep="\t")
    assert len(cindex) == 2 * len(MODELS) * 2
    assert set(cindex["model"]) == set(MODELS)
    assert cindex[["harrell_c", "uno_c"]].stack().between(0, 1).all()
    validation = cindex[cindex["cohort"] == "validation"]
    assert (validation["harrell_lo"] <= validation["harrell_c"]).all()
    assert (validation["harrell_c"] <= validation["harrell_hi"]).all()
    assert validation["n"].sum() > 0


def test_features_exclude_diagnostics_and_are_harmonized(finished_run):
    workdir, _ = finished_run
    raw = read_tsv(workdir / "results/cohort/radiomics_raw.tsv", index_col="patient_id")
    harmonized = read_tsv(workdir / "results/cohort/radiomics.tsv", index_col="patient_id")
    assert len(raw) == 20
    assert not any(c.startswith("diagnostics_") for c in raw.columns)
    assert any(c.startswith("wavelet-") for c in raw.columns)
    assert any(c.startswith("log-sigma") for c in raw.columns)
    assert harmonized.shape[0] == raw.shape[0]
    qc = read_tsv(workdir / "results/cohort/radiomics_qc.tsv", index_col="patient_id")
    assert any(c.startswith("diagnostics_") for c in qc.columns)
    tests = pd.read_csv(workdir / "results/cohort/harmonization/radiomics_batch_tests.tsv", sep="\t")
    assert tests["kruskal_p_after"].median() > tests["kruskal_p_before"].median()


def test_same_seed_same_report(finished_run, tmp_path):
    """A second run with the same config reproduces the bootstrapped tables exactly."""
    workdir, config = finished_run
    for per_item in ("radiomics", "pathology"):  # per-patient/slide outputs are reused
        shutil.copytree(workdir / "results" / per_item, tmp_path / "results" / per_item)
    run(tmp_path, config)
    assert_same_results(workdir, tmp_path)


def test_snakemake_report(finished_run):
    workdir, config = finished_run
    out = workdir / "snakemake_report.html"
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory",
         str(workdir), "--configfile", str(config), "--cores", "1", "--report", str(out)],
        capture_output=True, text=True, encoding="utf-8",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.stat().st_size > 10_000


def test_shuffled_outcomes_give_chance_validation_c(finished_run):
    """Leakage check: with outcomes permuted, the honest pipeline must not find signal."""
    workdir, config = finished_run
    import yaml

    cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    features = read_tsv(workdir / "results/cohort/radiomics_raw.tsv", index_col="patient_id")
    rng = np.random.default_rng(0)
    n = 80  # resample patients to a larger cohort so one C is not all noise
    c_values = []
    for repeat in range(6):
        ids = rng.choice(features.index, size=n, replace=True)
        design = features.loc[ids].reset_index(drop=True)
        design.index = [f"X{i}" for i in range(n)]
        design = design.add_prefix("radiomics:")
        outcomes = pd.DataFrame(
            {
                "split": np.where(rng.random(n) < 0.3, "validation", "train"),
                "os_time": rng.exponential(24, n) + 0.1,
                "os_event": rng.integers(0, 2, n),
            },
            index=design.index,
        )
        _, risk, _ = train_and_predict(
            outcomes, design, [], list(design.columns), "os",
            cfg["selection"], cfg["cox"], optimism_b=0, seed=repeat,
        )
        validation = risk[risk["split"] == "validation"]
        c_values.append(harrell_c(validation["time"], validation["event"], validation["risk"]))
    assert abs(np.mean(c_values) - 0.5) < 0.08, c_values


def test_bad_patient_is_excluded_and_listed_with_keep_going(small_cohort, tmp_path):
    """on_patient_error=exclude: an empty mask and a truncated slide are reported, the other
    patients and slides still finish and are modelled."""
    import SimpleITK as sitk

    cohort = tmp_path / "cohort"
    shutil.copytree(small_cohort, cohort)
    patients = pd.read_csv(cohort / "patients.tsv", sep="\t")
    bad = patients.iloc[3]
    mask = sitk.ReadImage(str(cohort / bad["mask"]))
    empty = sitk.Image(mask.GetSize(), mask.GetPixelID())
    empty.CopyInformation(mask)
    sitk.WriteImage(empty, str(cohort / bad["mask"]))
    slides = pd.read_csv(cohort / "slides.tsv", sep="\t")
    bad_slide = slides.iloc[-1]
    slide_file = cohort / bad_slide["path"]
    slide_file.write_bytes(slide_file.read_bytes()[: slide_file.stat().st_size // 2])
    config = write_config(tmp_path / "config.yaml", cohort, on_patient_error="exclude",
                          **FAST_STATS)
    run(tmp_path, config, "--keep-going")
    excluded = pd.read_csv(tmp_path / "results/cohort/radiomics_excluded.tsv", sep="\t")
    assert excluded["patient_id"].tolist() == [bad["patient_id"]]
    html = (tmp_path / "results/report/report.html").read_text(encoding="utf-8")
    assert bad["patient_id"] in html and "mask" in excluded["reason"][0].lower()
    slide_excluded = pd.read_csv(tmp_path / "results/cohort/pathomics_excluded.tsv", sep="\t")
    assert slide_excluded["slide_id"].tolist() == [bad_slide["slide_id"]]
    assert "truncated" in slide_excluded["reason"][0]
    assert bad_slide["slide_id"] in html
    cindex = pd.read_csv(tmp_path / "results/report/cindex.tsv", sep="\t")
    radiomics_n = cindex.query("model == 'radiomics' and endpoint == 'os'")["n"].sum()
    assert radiomics_n == 19


def test_bad_patient_stops_cohort_but_not_other_patients(small_cohort, tmp_path):
    """on_patient_error=stop (default) + --keep-going: other patients finish, cohort waits."""
    cohort = tmp_path / "cohort"
    shutil.copytree(small_cohort, cohort)
    patients = pd.read_csv(cohort / "patients.tsv", sep="\t")
    bad = patients.iloc[5]
    (cohort / bad["ct"]).write_bytes(b"not a nifti")
    config = write_config(tmp_path / "config.yaml", cohort, **FAST_STATS)
    result = run(tmp_path, config, "--keep-going", "--until", "radiomics_matrix", check=False)
    assert result.returncode != 0
    done = {p.name for p in (tmp_path / "results" / "radiomics").iterdir()
            if (p / "features.tsv").exists()}
    assert done == set(patients["patient_id"]) - {bad["patient_id"]}
    log = (tmp_path / "logs" / "radiomics" / f"{bad['patient_id']}.log").read_text(encoding="utf-8")
    assert bad["patient_id"] in log and str(bad["ct"]).split("/")[-1] in log
    assert not (tmp_path / "results/cohort/radiomics_raw.tsv").exists()
