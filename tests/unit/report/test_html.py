"""Report helpers: notes that explain numbers, hazard ratios on a readable scale, caveats,
and provenance in the footer."""

import hashlib

import jinja2
import numpy as np
import pandas as pd

from radpath.report import html as report_html
from radpath.report.html import (
    caveats,
    censoring_source,
    cohort_summary,
    hazard_ratio_row,
    left_out_models,
    model_statuses,
    performance_rows,
    provenance,
    selection_section,
    uno_truncation,
)
from radpath.survival.modeling import FittedModel
from radpath.survival.selection import counts_by_block
from radpath.survival.status import EMPTY, OK
from smk import REPO

TEMPLATE = REPO / "resources" / "report" / "report.html.j2"
SCORE_TEMPLATE = REPO / "resources" / "report" / "score.html.j2"
CONFIG = {"reference_model": "clinical", "evaluation": {"optimism_bootstrap": 20}}


def template_part(start: str, end: str) -> jinja2.Template:
    """The part of the report template from `start` to the first `end` after it."""
    text = TEMPLATE.read_text(encoding="utf-8")
    return jinja2.Template(start + text.split(start)[1].split(end)[0] + end, autoescape=True)


def cindex_rows():
    """A C-index table as the evaluate job writes it: a model with a result, an empty one
    and a combined one whose block kept nothing."""
    ok = {"harrell_c": 0.61, "harrell_lo": 0.52, "harrell_hi": 0.70, "uno_c": 0.60,
          "uno_lo": 0.50, "uno_hi": 0.69, "logrank_p": 0.04}
    blank = dict.fromkeys(ok, np.nan)
    rows = [
        {"model": "clinical", "status": OK, **ok},
        {"model": "pathomics_embedding", "status": EMPTY, **blank},
        {"model": "clinical_pathomics", "status": "same as clinical: clinical", **blank},
        {"model": "radiomics", "status": OK, **ok, "delta_harrell": 0.01, "delta_lo": -0.1,
         "delta_hi": 0.12, "delta_p": 0.8},
    ]
    return pd.DataFrame([{"endpoint": "os", "cohort": "validation", "n": 40, "events": 12, **r}
                         for r in rows])


def test_a_model_without_a_result_shows_its_status_instead_of_a_c_index():
    cindex = cindex_rows()
    rows = performance_rows(cindex, "clinical")
    html = template_part("<h2>Performance</h2>", "</table>").render(
        performance=rows, config=CONFIG)
    empty = html.split("<td>pathomics_embedding</td>")[1].split("</tr>")[0]
    assert "no result of its own: empty: no feature selected (constant risk)" in empty
    assert "0.500" not in empty and "nan" not in empty and "n/a" not in empty
    same = html.split("<td>clinical_pathomics</td>")[1].split("</tr>")[0]
    assert "no result of its own: same as clinical: clinical" in same
    assert "0.610 (0.520–0.700)" in html.split("<td>radiomics</td>")[1].split("</tr>")[0]
    # Nor are they compared with the reference, or left out silently.
    assert caveats(cindex, "clinical")["n_comparisons"] == 1
    assert left_out_models(model_statuses(cindex)) == [
        {"endpoint": "OS", "model": "pathomics_embedding", "status": EMPTY},
        {"endpoint": "OS", "model": "clinical_pathomics", "status": "same as clinical: clinical"},
    ]


def test_a_table_without_statuses_reads_as_every_model_ok():
    rows = performance_rows(cindex_rows().drop(columns="status").iloc[:1], "clinical")
    assert rows[0]["status"] == OK and rows[0]["harrell"] == "0.610 (0.520–0.700)"


def test_selection_section_names_the_step_that_left_a_block_empty():
    kept = {"forced": ["age"], "near_zero_variance": ["pathomics_embedding:pc1",
                                                      "pathomics_embedding:pc2"],
            "correlation": ["pathomics_embedding:pc1", "pathomics_embedding:pc2"],
            "univariate_cox": [], "penalized_cox": [], "max_features": []}
    model = FittedModel(
        features=["age"], coef=np.zeros(1), medians={}, means={}, sds={},
        selection_by_block=counts_by_block(
            ["age"], ["pathomics_embedding:pc1", "pathomics_embedding:pc2",
                      "pathomics_embedding:pc3"], kept))
    log = pd.DataFrame({"step": ["univariate_cox"], "n_in": [2], "n_out": [0],
                        "note": ["Wald p < 0.1, at most 50; 0 did not converge (dropped)"]})
    section = selection_section(model, log, "os", "clinical_pathomics",
                                "same as clinical: clinical")
    assert section["emptied"] == ["pathomics_embedding: univariable Cox filter kept 0 of 2"]
    html = template_part("<h2>Feature selection (training patients)</h2>", "<footer").render(
        selection=[section])
    assert "OS &middot; clinical_pathomics &middot; same as clinical: clinical" in html
    assert "No column left:</strong> pathomics_embedding: univariable Cox filter kept 0 of 2" in html
    assert ("<tr><td>pathomics_embedding</td><td>3</td><td></td><td>2</td><td>2</td><td>0</td>"
            "<td>0</td><td>0</td></tr>") in html
    assert "<tr><td>clinical</td><td>1</td><td>1</td><td></td>" in html
    assert "Wald p &lt; 0.1" in html


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


def test_score_report_names_whose_censoring_weights_its_ipcw_metrics():
    """The external report says which censoring distribution weighted Uno's C and the accuracy
    measures, from the tables (an old table without the column: the training patients'), and
    Uno's truncation time."""
    cindex = pd.DataFrame({"endpoint": ["os", "os", "pfs"], "model": ["clinical", "a", "a"],
                           "tau": [1.3901, 1.3901, 0.5], "censoring": "external cohort"})
    accuracy = pd.DataFrame({"model": ["a"], "censoring": ["external cohort"]})
    assert censoring_source(cindex, accuracy) == "external cohort"
    assert censoring_source(cindex.drop(columns="censoring")) == "training patients"
    assert uno_truncation(cindex) == [{"endpoint": "OS", "tau": "1.39"},
                                      {"endpoint": "PFS", "tau": "0.5"}]
    text = SCORE_TEMPLATE.read_text(encoding="utf-8")
    start, end = "<h2>Discrimination</h2>", "<table>"
    part = jinja2.Template(start + text.split(start)[1].split(end)[0], autoescape=True)
    config = {"reference_model": "clinical", "time_unit": "months"}

    def render(**context) -> str:
        return " ".join(part.render(config=config, **context).split())

    own = render(censoring="external cohort", truncation=uno_truncation(cindex))
    assert "Censoring weights: external cohort." in own
    assert "Kaplan-Meier of this cohort's own censoring times" in own
    assert "before its truncation time (OS 1.39, PFS 0.5 months)." in own
    training = render(censoring="training patients", truncation=[])
    assert "Censoring weights: training patients." in training
    assert "own censoring times" not in training and "truncation time." in training


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
    html = template_part("<h2>Cohort</h2>", "</table>").render(cohort=rows)
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


def write_attention_maps(folder, table: pd.DataFrame) -> None:
    """A gradcam/ folder as deep_ct_gradcam writes it: gradcam.tsv and a montage each."""
    from PIL import Image

    folder.mkdir()
    table.to_csv(folder / "gradcam.tsv", sep="\t", index=False)
    for name in set(table["file"]):
        Image.new("RGB", (4, 4)).save(folder / name)


def test_attention_maps_are_summarised_per_scale_with_how_to_read_the_ratio(tmp_path):
    rows = [(p, scale, edge, ratio) for p, ratios in (("P1", (1.8, 2.4, 0.7)),
                                                      ("P2", (0.9, 1.2, np.nan)))
            for (scale, edge), ratio in zip((("50mm", 50.0), ("37.5mm", 37.5), ("25mm", 25.0)),
                                            ratios, strict=True)]
    table = pd.DataFrame(rows, columns=["patient_id", "scale", "edge_mm", "ratio"]).assign(
        method="saliency", members=6, mask_share=[0.02, 0.04, 0.1] * 2,
        mass_in_mask=lambda t: t["ratio"] * t["mask_share"], file=lambda t: t["patient_id"] + ".png",
        nifti="", nifti_ct="")
    write_attention_maps(tmp_path / "gradcam", table)
    section = report_html.attention_section(tmp_path / "gradcam")
    assert section["summary"] == [
        {"scale": "50 mm", "method": "saliency", "n": 2, "median": "1.35", "range": "0.90–1.80",
         "above": 1, "share": "2.0%"},
        {"scale": "37.5 mm", "method": "saliency", "n": 2, "median": "1.80", "range": "1.20–2.40",
         "above": 2, "share": "4.0%"},
        {"scale": "25 mm", "method": "saliency", "n": 1, "median": "0.70", "range": "0.70–0.70",
         "above": 0, "share": "10.0%"},
    ]
    assert [f["caption"] for f in section["figures"]] == [
        "ratio 1.80 (50 mm), 2.40 (37.5 mm), 0.70 (25 mm)", "ratio 0.90 (50 mm), 1.20 (37.5 mm)"]
    html = template_part("{% if e.gradcam %}", "</figure>{% endfor %}</div>{% endif %}").render(
        e={"gradcam": section, "endpoint": "OS"})
    assert "1 is chance" in html and "stacked as channels" in html
    assert "<td>50 mm</td><td>saliency</td><td>2</td><td>1.35 (0.90–1.80)</td><td>1</td>" in html
    assert 'alt="attention map P2"' in html and "results/deep_ct/os/gradcam/" in html
    # maps of an older radpath: shown, with what to re-run
    old = pd.DataFrame({"patient_id": ["P1"], "file": ["P1.png"], "nifti": ["P1.nii.gz"],
                        "mass_in_mask": [0.07]})
    write_attention_maps(tmp_path / "old", old)
    section = report_html.attention_section(tmp_path / "old")
    html = template_part("{% if e.gradcam %}", "</figure>{% endfor %}</div>{% endif %}").render(
        e={"gradcam": section, "endpoint": "OS"})
    assert "--forcerun deep_ct_gradcam" in html and 'alt="attention map P1"' in html
    assert report_html.attention_section(tmp_path / "none") == {}
