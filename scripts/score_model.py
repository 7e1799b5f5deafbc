"""Rule `score_model`: one frozen model of the run applied to an external cohort."""

from radpath.io import read_json, read_tsv, write_tsv
from radpath.jobs import setup_logging
from radpath.modeling import FittedModel
from radpath.scoring import score_patients
from radpath.train import load_design

setup_logging(snakemake.log[0])
p = snakemake.params
spec = p.spec
outcomes, design, _, _ = load_design(
    snakemake.input.outcomes,
    snakemake.input.clinical if spec["clinical"] else None,
    dict(zip(spec["blocks"], snakemake.input.blocks, strict=True)),
)
risk = score_patients(
    FittedModel.from_dict(read_json(snakemake.input.model)), design, outcomes,
    snakemake.wildcards.endpoint, p.horizons,
    read_tsv(snakemake.input.run_risk, index_col="patient_id"),
)
write_tsv(risk, snakemake.output.risk)
