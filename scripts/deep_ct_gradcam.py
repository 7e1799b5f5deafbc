"""Rule `deep_ct_gradcam`: Grad-CAM maps of validation patients, averaged over the ensemble."""

from radpath.deep_ct_jobs import gradcam_job
from radpath.jobs import setup_logging

setup_logging(snakemake.log[0])
gradcam_job(
    endpoint=snakemake.wildcards.endpoint,
    folds_path=snakemake.input.folds,
    cube_paths=list(snakemake.input.cubes),
    model_paths=list(snakemake.input.models),
    n_patients=snakemake.params.n_patients,
    out_dir=snakemake.output.maps,
    threads=snakemake.threads,
)
