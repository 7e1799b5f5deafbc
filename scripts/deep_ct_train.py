"""Rule `deep_ct_train`: one network x one fold of the endpoint's deep CT model (GPU)."""

from radpath.deep_ct_jobs import train_fold_job
from radpath.jobs import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
train_fold_job(
    endpoint=snakemake.wildcards.endpoint,
    member=snakemake.wildcards.member,
    fold=int(snakemake.wildcards.fold),
    member_spec=p.member,
    settings=p.settings,
    seed=p.seed,
    folds_path=snakemake.input.folds,
    outcomes_path=snakemake.input.outcomes,
    cube_paths=list(snakemake.input.cubes),
    init_path=snakemake.input.init[0] if snakemake.input.init else None,
    checkpoint_dir=p.checkpoints,
    outputs=snakemake.output,
    threads=snakemake.threads,
    synthetic_paths=list(snakemake.input.synthetic),
)
