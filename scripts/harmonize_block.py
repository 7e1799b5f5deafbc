"""Rule `harmonize`: ComBat (fit on train, apply to validation) and batch-effect diagnostics."""

from radpath.cohort import harmonize_block
from radpath.harmonize import pca_by_batch
from radpath.io import read_tsv, write_json, write_tsv
from radpath.jobs import setup_logging
from radpath.plots import plot_pca_by_batch
from radpath.sheets import read_sheet

setup_logging(snakemake.log[0])
cfg = snakemake.params.harmonization
features = read_tsv(snakemake.input.matrix, index_col="patient_id")
outcomes = read_tsv(snakemake.input.outcomes, index_col="patient_id")
batch_covariates = read_tsv(snakemake.input.batch_covariates, index_col="patient_id")
patients = read_sheet(snakemake.input.patients, "patients").set_index("patient_id")

covariates = batch_covariates if len(batch_covariates.columns) else None
batch = patients[cfg["batch_column"]]
harmonized, model, tests = harmonize_block(
    features, outcomes["split"], batch, covariates, cfg
)
write_tsv(harmonized, snakemake.output.matrix)
write_json(model.to_dict(), snakemake.output.model)
write_tsv(tests, snakemake.output.batch_tests)
plot_pca_by_batch(
    pca_by_batch(features.loc[harmonized.index, harmonized.columns]),
    pca_by_batch(harmonized),
    batch.loc[harmonized.index].astype(str),
    snakemake.output.pca,
)
