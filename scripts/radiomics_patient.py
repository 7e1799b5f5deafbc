"""Rule `radiomics`: one patient's CT + mask -> features.tsv and qc.tsv."""

from radpath.jobs import run_item, setup_logging
from radpath.radiomics import extract_patient

setup_logging(snakemake.log[0])
run_item(
    snakemake.wildcards.patient,
    "patient_id",
    lambda: extract_patient(
        patient_id=snakemake.wildcards.patient,
        ct_path=snakemake.input.ct,
        mask_path=snakemake.input.mask,
        mask_label=snakemake.params.mask_label,
        ct_cfg=snakemake.params.ct_cfg,
        params_path=snakemake.input.params,
        features_out=snakemake.output.features,
        qc_out=snakemake.output.qc,
    ),
    [snakemake.output.features, snakemake.output.qc],
    snakemake.params.on_error,
)
