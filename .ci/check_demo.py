"""After `make demo`: the shipped configuration produced the report, the C-index table and
the main table of every section it enables, each with rows. Prints one line per table;
exits 1 naming what is missing.

    .venv/bin/python .ci/check_demo.py [config/config.yaml]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


def uses_block(config: dict, block: str) -> bool:
    return any(block in spec.get("blocks", []) for spec in config["models"].values())


def expected(config: dict) -> dict[str, tuple[list[str], str]]:
    """Section -> (its main tables, its heading in report.html)."""
    endpoints = list(config["endpoints"])
    sections = {
        "performance": (["results/report/cindex.tsv"], "<h2>Performance"),
        "clinical accuracy": (["results/report/accuracy.tsv", "results/report/calibration.tsv",
                               "results/report/decision_curve.tsv"],
                              "<h2>Absolute risk: time-dependent accuracy"),
        "radiomics": (["results/cohort/radiomics.tsv"], "<h2>Harmonization"),
    }
    if config.get("slides"):
        sections["pathomics"] = (["results/cohort/pathomics_embedding.tsv",
                                  "results/cohort/pathomics_morphology.tsv"],
                                 "<h2>Whole-slide images: QC")
    if uses_block(config, "pathomics_hpc"):
        sections["PathoSig"] = (["results/cohort/pathomics_hpc.tsv",
                                 "results/report/pathosig_mosaics.tsv"],
                                "<h2>PathoSig: phenotype clusters")
    if uses_block(config, "deep_ct"):
        sections["deep CT"] = ([f"results/deep_ct/{e}/training_summary.tsv" for e in endpoints]
                               + [f"results/deep_ct/{e}/gradcam/gradcam.tsv" for e in endpoints],
                               "<h2>Deep CT models")
    if config["synthesis"]["enabled"]:
        sections["synthesis"] = (["results/synthesis/quality.tsv"], "<h2>Synthetic CT")
    if config["treatment"]["column"]:
        sections["treatment benefit"] = (["results/report/treatment_benefit.tsv"],
                                         "<h2>Who benefits from")
    if config["validation"]["method"] == "repeated_cv":
        sections["repeated CV"] = (["results/report/repeated_cv.tsv"],
                                   "<h2>How the models were validated")
    return sections


def main(config_path: str = "config/config.yaml") -> int:
    config = yaml.safe_load((REPO / config_path).read_text(encoding="utf-8"))
    report = REPO / "results/report/report.html"
    problems = []
    html = report.read_text(encoding="utf-8") if report.is_file() else ""
    if not html:
        problems.append(f"{report.relative_to(REPO)} is missing or empty")
    for section, (tables, heading) in expected(config).items():
        for table in tables:
            path = REPO / table
            rows = len(pd.read_csv(path, sep="\t")) if path.is_file() else 0
            print(f"{section:18s} {table}: {rows} rows")
            if rows == 0:
                problems.append(f"{section}: {table} is missing or has no rows")
        if html and heading not in html:
            problems.append(f"{section}: report.html has no section '{heading[4:]}'")
    for problem in problems:
        print(f"check_demo: {problem}", file=sys.stderr)
    if not problems:
        print(f"check_demo: report {report.relative_to(REPO)} ({report.stat().st_size} bytes) "
              "and every enabled section's tables are there")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
