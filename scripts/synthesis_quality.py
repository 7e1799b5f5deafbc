"""Rule `synthesis_quality`: voxel metrics of held-out reconstructions and radiomics
realism (real vs synthetic) in one table, and the real-vs-synthetic figure."""

from radpath.jobs import setup_logging
from radpath.synthesis_jobs import quality_job

setup_logging(snakemake.log[0])
p = snakemake.params
quality_job(
    heldout=p.heldout,
    real_features=p.real_features,
    synthetic_features=p.synthetic_features,
    pairs=p.pairs,
    settings=p.settings,
    seed=p.seed,
    quality_out=snakemake.output.quality,
    volumes_out=snakemake.output.volumes,
    ks_out=snakemake.output.ks,
    figure_out=snakemake.output.figure,
)
