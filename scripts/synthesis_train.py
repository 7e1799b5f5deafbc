"""Rule `synthesis_train`: the layout-conditioned DDPM on the synthesis patients (GPU)."""

from radpath.jobs import setup_logging
from radpath.synthesis_jobs import train_job

setup_logging(snakemake.log[0])
train_job(
    layout_paths=list(snakemake.input.layouts),
    settings=snakemake.params.settings,
    seed=snakemake.params.seed,
    checkpoint_dir=snakemake.params.checkpoints,
    threads=snakemake.threads,
    model_out=snakemake.output.model,
    history_out=snakemake.output.history,
    plot_out=snakemake.output.loss_plot,
)
