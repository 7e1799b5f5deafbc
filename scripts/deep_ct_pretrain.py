"""Rule `deep_ct_pretrain`: one network trained on the pretraining cohort, the start of the
endpoint's fold models (GPU)."""

from radpath.deep_ct_jobs import pretrain_job
from radpath.jobs import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
pretrain_job(
    endpoint=snakemake.wildcards.endpoint,
    member=snakemake.wildcards.member,
    member_spec=p.member,
    settings=p.settings,
    epochs=p.epochs,
    seed=p.seed,
    clinical_path=snakemake.input.clinical[0],
    columns=p.columns,
    cube_paths=list(snakemake.input.cubes),
    checkpoint_dir=p.checkpoints,
    outputs=snakemake.output,
    threads=snakemake.threads,
)
