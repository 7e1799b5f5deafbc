"""Rule `treatment_benefit`: risk groups x treatment, per endpoint and model."""

from pathlib import Path

from radpath.benefit import benefit_frame, plot_benefit, treated_flags, treatment_benefit
from radpath.io import read_tsv, write_tsv
from radpath.jobs import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
keys = [(endpoint, model) for endpoint in p.endpoints for model in p.models]
risks = {key: read_tsv(path, index_col="patient_id")
         for key, path in zip(keys, snakemake.input.risks, strict=True)}
clinical = read_tsv(snakemake.input.clinical, index_col="patient_id")
treated = treated_flags(clinical, p.treatment["column"], p.treatment["treated"])
table = treatment_benefit(risks, treated)
plots = Path(snakemake.output.plots)
plots.mkdir(parents=True, exist_ok=True)
for (endpoint, model), risk in risks.items():
    p_interaction = table.set_index(["endpoint", "model", "cohort"]).at[
        (endpoint, model, "validation"), "p_interaction"]
    title = (f"{endpoint.upper()} - {model} (validation): interaction p = "
             + ("n/a" if p_interaction != p_interaction else f"{p_interaction:.3g}"))
    plot_benefit(benefit_frame(risk, treated, "validation"), title,
                 plots / f"{endpoint}_{model}.png", p.time_unit, p.treatment["column"])
write_tsv(table, snakemake.output.table, index=False)
