"""Rule `fit_model`: fit one model for one endpoint on training patients; risk for all."""

from radpath.io import write_json, write_tsv
from radpath.jobs import setup_logging
from radpath.train import load_design, train_and_predict

setup_logging(snakemake.log[0])
p = snakemake.params
spec = p.spec
block_paths = dict(zip(spec["blocks"], snakemake.input.blocks, strict=True))
outcomes, design, forced, candidates = load_design(
    snakemake.input.outcomes,
    snakemake.input.clinical if spec["clinical"] else None,
    block_paths,
)
model, risk, optimism = train_and_predict(
    outcomes, design, forced, candidates, snakemake.wildcards.endpoint,
    p.selection, p.cox, p.optimism_bootstrap, p.seed, threads=snakemake.threads,
    horizons=p.horizons,
)
write_json(model.to_dict(), snakemake.output.model)
write_tsv(model.coefficients, snakemake.output.coefficients, index=False)
write_tsv(model.selection_log, snakemake.output.selection, index=False)
write_tsv(risk, snakemake.output.risk)
write_json(optimism, snakemake.output.optimism)
