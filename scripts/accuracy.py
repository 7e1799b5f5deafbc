"""Rule `accuracy`: validation time-dependent AUC, Brier scores, calibration and decision curves."""

import itertools
from pathlib import Path

import pandas as pd

from radpath.accuracy import accuracy_table, calibration_table, decision_curve_table
from radpath.io import read_json, read_tsv, write_tsv
from radpath.jobs import setup_logging
from radpath.modeling import FittedModel
from radpath.plots import plot_calibration, plot_decision_curve

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
    accuracy = accuracy_table(endpoint, risks, baselines, ev["horizons"], ev["bootstrap"], p.seed)
    calibration = calibration_table(endpoint, risks, baselines, ev["horizons"],
                                    ev["calibration_groups"])
    decision = decision_curve_table(endpoint, risks, baselines, ev["decision_horizon"])
    for m in p.models:
        plot_calibration(calibration[calibration["model"] == m],
                         accuracy[accuracy["model"] == m], p.time_unit,
                         f"{endpoint.upper()} - {m} (validation)",
                         calibration_dir / f"{endpoint}_{m}.png")
    plot_decision_curve(decision, p.time_unit,
                        f"{endpoint.upper()} (validation, {ev['decision_horizon']:g} {p.time_unit})",
                        decision_dir / f"{endpoint}.png", p.reference)
    tables["accuracy"].append(accuracy)
    tables["calibration"].append(calibration)
    tables["decision_curve"].append(decision)
for name, parts in tables.items():
    write_tsv(pd.concat(parts, ignore_index=True), getattr(snakemake.output, name), index=False)
