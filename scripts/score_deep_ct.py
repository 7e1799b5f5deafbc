"""Rule `score_deep_ct`: an external cohort's deep CT block from the run's fold models."""

from radpath.deep_ct_jobs import score_external_job
from radpath.jobs import setup_logging

setup_logging(snakemake.log[0])
score_external_job(
    members=snakemake.params.members,
    model_paths=list(snakemake.input.models),
    cube_paths=list(snakemake.input.cubes),
    output=snakemake.output.matrix,
    threads=snakemake.threads,
)
