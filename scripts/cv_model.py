"""Rule `cv_model`: repeated stratified k-fold CV of one model's whole pipeline, one
endpoint, on all patients (validation.method: repeated_cv)."""

from radpath import sheets
from radpath.io import read_tsv, write_tsv
from radpath.jobs import setup_logging
from radpath.repeated_cv import CohortInputs, cross_validate

setup_logging(snakemake.log[0])
p = snakemake.params
outcomes = read_tsv(snakemake.input.outcomes, index_col="patient_id")
clinical = sheets.load_clinical(
    snakemake.input.clinical, p.schema, list(outcomes.index), p.covariates,
    p.harmonization["covariates"], p.missing_covariates, endpoints=p.endpoints,
).loc[outcomes.index]
patients = sheets.read_sheet(snakemake.input.patients, "patients").set_index("patient_id")
inputs = CohortInputs(
    outcomes=outcomes,
    clinical=clinical,
    blocks={block: read_tsv(path, index_col="patient_id")
            for block, path in zip(p.spec["blocks"], snakemake.input.blocks, strict=True)},
    batch=patients[p.harmonization["batch_column"]],
)
table = cross_validate(
    inputs, p.spec, snakemake.wildcards.endpoint, p.covariates, p.harmonization, p.selection,
    p.cox, p.validation["folds"], p.validation["repeats"], p.seed, p.pca_components,
)
write_tsv(table, snakemake.output.folds, index=False)
