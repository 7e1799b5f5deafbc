"""Rule `evaluate`: C-index table over all models, KM plots, forest plot."""

import itertools
from pathlib import Path

import pandas as pd

from radpath.evaluate import evaluate_endpoint, km_validation
from radpath.io import read_json, read_tsv, write_tsv
from radpath.jobs import setup_logging
from radpath.plots import plot_forest

setup_logging(snakemake.log[0])
p = snakemake.params
km_dir = Path(snakemake.output.km)
km_dir.mkdir(parents=True, exist_ok=True)
# Inputs come in expand() order: endpoints outer, models inner.
keys = list(itertools.product(p.endpoints, p.models))
risk_files = dict(zip(keys, snakemake.input.risks, strict=True))
optimism_files = dict(zip(keys, snakemake.input.optimism, strict=True))
tables = []
for endpoint in p.endpoints:
    risks = {m: read_tsv(risk_files[endpoint, m], index_col="patient_id") for m in p.models}
    optimism = {m: read_json(optimism_files[endpoint, m]) for m in p.models}
    table = evaluate_endpoint(endpoint, risks, optimism, p.reference, p.evaluation, p.seed)
    logrank = {
        m: km_validation(endpoint, m, risks[m], p.time_unit, km_dir / f"{endpoint}_{m}.png")
        for m in p.models
    }
    table["logrank_p"] = [
        logrank[m] if cohort == "validation" else float("nan")
        for m, cohort in zip(table["model"], table["cohort"], strict=True)
    ]
    tables.append(table)
cindex = pd.concat(tables, ignore_index=True)
write_tsv(cindex, snakemake.output.cindex, index=False)
plot_forest(cindex[cindex["cohort"] == "validation"], snakemake.output.forest,
            "Validation C-index by model")
