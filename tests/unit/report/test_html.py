"""Report helpers: notes that explain numbers, hazard ratios on a readable scale, caveats,
and provenance in the footer."""

import hashlib

import jinja2
import numpy as np
import pandas as pd

from radpath.inputs.io import write_tsv
from radpath.report import html as report_html
from radpath.report.html import (
    caveats,
    cohort_summary,
    hazard_ratio_row,
    model_notes,
    provenance,
)
from smk import REPO

SPECS = {
    "clinical": {"clinical": True, "blocks": []},
    "clinical_radiomics": {"clinical": True, "blocks": ["radiomics"]},
    "radiomics": {"clinical": False, "blocks": ["radiomics"]},
}


def coefficients(tmp_path, name, features):
    path = tmp_path / f"{name}.tsv"
    write_tsv(pd.DataFrame({"feature": features, "coef": 0.1}), path, index=False)
    return path


def test_a_combined_model_without_imaging_features_says_it_is_the_clinical_model(tmp_path):
    files = {
        ("os", "clinical"): coefficients(tmp_path, "a", ["age"]),
        ("os", "clinical_radiomics"): coefficients(tmp_path, "b", ["age", "stage[II]"]),
        ("pfs", "clinical_radiomics"): coefficients(tmp_path, "c", ["age", "radiomics:x"]),
        ("os", "radiomics"): coefficients(tmp_path, "d", []),
    }
    notes = model_notes(files, SPECS)
    assert "this is the clinical model" in notes["os", "clinical_radiomics"]
    assert ("pfs", "clinical_radiomics") not in notes
    assert ("os", "clinical") not in notes
    assert "same risk for everyone" in notes["os", "radiomics"]


def test_binary_terms_per_unit_and_continuous_per_sd():
    base = {"coef": 0.4, "se": 0.2, "hr": np.exp(0.4), "hr_lower": np.exp(0.4 - 1.96 * 0.2),
            "hr_upper": np.exp(0.4 + 1.96 * 0.2), "p": 0.04}
    stage = hazard_ratio_row({**base, "feature": "stage[II]", "train_sd": 0.5, "binary": True})
    assert stage["scale"].startswith("1 vs 0")
    assert stage["hr"].startswith(f"{np.exp(0.8):.3f}")  # per unit: coef / SD
    age = hazard_ratio_row({**base, "feature": "age", "train_sd": 9.87, "binary": False})
    assert age["scale"] == "per SD (SD = 9.87)"
    assert age["hr"].startswith(f"{np.exp(0.4):.3f}")


def test_small_validation_sets_and_uncorrected_comparisons_are_stated():
    cindex = pd.DataFrame({
        "endpoint": ["os"] * 4, "model": ["clinical", "a", "clinical", "a"],
        "cohort": ["train", "train", "validation", "validation"],
        "n": [30, 30, 12, 12], "events": [10, 10, 5, 5],
    })
    stated = caveats(cindex, "clinical")
    assert stated["small"] == [{"endpoint": "OS", "n": 12, "events": 5}]
    assert stated["n_comparisons"] == 1
    big = cindex.assign(n=400, events=150)
    assert caveats(big, "clinical")["small"] == []


def test_provenance_names_version_commit_and_hashed_sheets(tmp_path):
    sheet = tmp_path / "patients.tsv"
    sheet.write_text("patient_id\nP1\n", encoding="utf-8")
    found = provenance(REPO, {"patients": str(sheet), "slides": ""})
    assert found["version"] != "unknown"
    assert found["commit"]
    assert found["inputs"] == [{
        "name": "patients", "path": str(sheet),
        "sha256": hashlib.sha256(sheet.read_bytes()).hexdigest()[:16],
    }]
    assert provenance(tmp_path, {})["commit"].startswith("unknown")


def test_cohort_summary_lists_every_declared_endpoint():
    outcomes = pd.DataFrame(
        {"split": ["train", "train", "validation"], "os_time": [10.0, 20.0, 30.0],
         "os_event": [1, 0, 1], "dfs_time": [4.0, 8.0, 30.0], "dfs_event": [1, 1, 0]},
        index=pd.Index(["P1", "P2", "P3"], name="patient_id"),
    )
    rows = cohort_summary(outcomes)
    assert rows == [
        {"split": "train", "n": 2, "endpoints": [
            {"name": "OS", "events": 1, "median_followup": 15.0},
            {"name": "DFS", "events": 2, "median_followup": 6.0}]},
        {"split": "validation", "n": 1, "endpoints": [
            {"name": "OS", "events": 1, "median_followup": 30.0},
            {"name": "DFS", "events": 0, "median_followup": 30.0}]},
    ]
    # The report's cohort table, rendered from the template itself.
    text = (REPO / "resources" / "report" / "report.html.j2").read_text(encoding="utf-8")
    table = text.split("<h2>Cohort</h2>")[1].split("</table>")[0] + "</table>"
    html = jinja2.Template(table, autoescape=True).render(cohort=rows)
    assert ("<th>OS events</th><th>median OS follow-up</th><th>DFS events</th>"
            "<th>median DFS follow-up</th>") in html
    assert "<td>train</td><td>2</td><td>1</td><td>15.0</td><td>2</td><td>6.0</td>" in html
    assert "PFS" not in html


def test_patient_flow_counts_patients_and_events_per_split():
    outcomes = pd.DataFrame(
        {"split": ["train", "train", "train", "validation", "validation"],
         "os_time": [5.0, 8.0, 9.0, 3.0, 7.0], "os_event": [1, 0, 1, 1, 0]},
        index=pd.Index(["P1", "P2", "P3", "P4", "P5"], name="patient_id"),
    )  # fmt: skip
    radiomics_excluded = pd.DataFrame({"patient_id": ["P2", "P4"],
                                       "reason": ["mask is empty", "mask is empty"]})
    pathomics_excluded = pd.DataFrame({"slide_id": ["S3"], "patient_id": ["P3"],
                                       "reason": ["no tissue"]})
    slides = {"S1": "P1", "S3": "P3", "S5": "P5"}
    rows = report_html.patient_flow(outcomes, radiomics_excluded, pathomics_excluded, slides)
    table = {r["step"]: (r["train"], r["validation"]) for r in rows}
    assert table["in the sheets (the clinical model analyses all of them)"] == (
        "3 (OS 2 events)", "2 (OS 1 events)")
    assert table["excluded from the CT models: mask is empty"] == (
        "1 (OS 0 events)", "1 (OS 1 events)")
    assert table["analysed by the CT models (radiomics, deep CT)"] == (
        "2 (OS 2 events)", "1 (OS 0 events)")
    assert table["without a usable slide"] == ("2 (OS 1 events)", "1 (OS 1 events)")
    assert table["analysed by the pathomics models"] == ("1 (OS 1 events)", "1 (OS 0 events)")


def test_features_missing_for_some_patients_are_counted_in_the_cohort_section():
    missing = pd.DataFrame({
        "patient_id": ["P7", "P7", "P9"],
        "feature": ["log-sigma-1-0-mm-3D_glcm_Idmn", "log-sigma-1-0-mm-3D_glcm_Idm",
                    "original_glcm_Idmn"],
        "image_type": ["log-sigma-1-0-mm-3D", "log-sigma-1-0-mm-3D", "original"],
        "action": ["dropped from the cohort"] * 3,
    })
    summary = report_html.missing_features_summary(missing, "drop")
    assert summary["n_features"] == 3 and summary["n_values"] == 3
    assert summary["patients"] == [
        {"patient_id": "P7", "n": 2, "types": "log-sigma-1-0-mm-3D (2)"},
        {"patient_id": "P9", "n": 1, "types": "original (1)"}]
    assert report_html.missing_features_summary(missing.iloc[:0], "drop") == {}
    text = (REPO / "resources" / "report" / "report.html.j2").read_text(encoding="utf-8")
    block = text[text.index("{% if missing_features %}"):text.index("{% if imputation %}")]
    html = jinja2.Template(block, autoescape=True).render(missing_features=summary)
    assert "3 features, 3 values" in html and "3 dropped from the cohort" in html
    assert "<td>P7</td><td>2</td><td>log-sigma-1-0-mm-3D (2)</td>" in html
    empty = jinja2.Template(block, autoescape=True).render(missing_features={})
    assert "Every radiomics feature was computed for every patient" in empty
