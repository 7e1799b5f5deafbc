"""Rule `accuracy`: validation time-dependent AUC, Brier scores, calibration and decision curves."""

import itertools
from pathlib import Path

import pandas as pd

from radpath.evaluate import endpoint_accuracy
from radpath.io import read_json, read_tsv, write_tsv
from radpath.jobs import setup_logging
from radpath.modeling import FittedModel

setup_logging(snakemake.log[0])
p = snakemake.params
ev = p.evaluation
# Inputs come in expand() order: endpoints outer, models inner.
keys = list(itertools.product(p.endpoints, p.models))
risk_files = dict(zip(keys, snakemake.input.risks, strict=True))
model_files = dict(zip(keys, snakemake.input.models, strict=True))
calibration_dir, decision_dir = Path(snakemake.output.calibration_plots), Path(
    snakemake.output.decision_plots)
calibration_dir.mkdir(parents=True, exist_ok=True)
decision_dir.mkdir(parents=True, exist_ok=True)
tables = {"accuracy": [], "calibration": [], "decision_curve": []}
for endpoint in p.endpoints:
    risks = {m: read_tsv(risk_files[endpoint, m], index_col="patient_id") for m in p.models}
    fitted = {m: FittedModel.from_dict(read_json(model_files[endpoint, m])) for m in p.models}
    baselines = {m: (f.baseline_time, f.baseline_cumhaz) for m, f in fitted.items()}
    accuracy, calibration, decision = endpoint_accuracy(
        endpoint, risks, baselines, ev, p.seed, p.time_unit, "validation", calibration_dir,
        decision_dir / f"{endpoint}.png", p.reference)
    tables["accuracy"].append(accuracy)
    tables["calibration"].append(calibration)
    tables["decision_curve"].append(decision)
for name, parts in tables.items():
    write_tsv(pd.concat(parts, ignore_index=True), getattr(snakemake.output, name), index=False)
