"""Rule `score_report`: the run's evaluation on an external cohort, and its HTML report."""

import itertools
from pathlib import Path
from types import SimpleNamespace

from radpath.io import read_json, read_tsv, write_tsv
from radpath.jobs import setup_logging
from radpath.modeling import FittedModel
from radpath.report import render_external_report
from radpath.scoring import external_evaluation

setup_logging(snakemake.log[0])
p = snakemake.params
out = snakemake.output
keys = list(itertools.product(p.endpoints, p.models))  # expand() order: endpoints outer


def by_key(paths, read):
    return {key: read(path) for key, path in zip(keys, paths, strict=True)}


plot_dirs = {name: Path(getattr(out, name)) for name in ("km", "calibration_plots", "decision_plots")}
for folder in plot_dirs.values():
    folder.mkdir(parents=True, exist_ok=True)
tables = external_evaluation(
    p.cohort, p.endpoints, p.models,
    by_key(snakemake.input.run_risks, lambda path: read_tsv(path, index_col="patient_id")),
    by_key(snakemake.input.risks, lambda path: read_tsv(path, index_col="patient_id")),
    by_key(snakemake.input.models, lambda path: FittedModel.from_dict(read_json(path))),
    p.config["reference_model"], p.config["evaluation"], p.config["seed"],
    p.config["time_unit"],
    {"km": plot_dirs["km"], "calibration": plot_dirs["calibration_plots"],
     "decision_curve": plot_dirs["decision_plots"], "forest": out.forest},
)
for name, table in tables.items():
    write_tsv(table, getattr(out, name), index=False)
inp = snakemake.input
files = SimpleNamespace(
    cindex=out.cindex, accuracy=out.accuracy, forest=out.forest, km=out.km,
    calibration_plots=out.calibration_plots, decision_plots=out.decision_plots,
    outcomes=inp.outcomes, imputation=inp.imputation, batches=list(inp.batches),
    radiomics_excluded=list(inp.radiomics_excluded),
    pathomics_excluded=list(inp.pathomics_excluded), template=inp.template,
)
render_external_report(p.cohort, files, p.endpoints, p.models, p.unscored, p.config, out.html)
