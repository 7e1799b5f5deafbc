"""Rule `score_clinical`: an external cohort's outcomes and covariates, filled with the run's
training fill values and encoded with its training levels."""

from radpath import sheets
from radpath.io import read_tsv, write_tsv
from radpath.jobs import setup_logging
from radpath.scoring import external_clinical

setup_logging(snakemake.log[0])
p = snakemake.params
clinical = sheets.load_clinical(
    snakemake.input.clinical, p.schema, p.patient_ids, p.covariates,
    p.harmonization_covariates, p.missing_covariates, endpoints=p.endpoints,
).loc[p.patient_ids]
outcomes, encoded, batch_covariates, filled = external_clinical(
    clinical, p.covariates, p.endpoints, read_tsv(snakemake.input.imputation),
    list(read_tsv(snakemake.input.run_clinical, index_col="patient_id").columns),
    p.harmonization_covariates,
)
write_tsv(outcomes, snakemake.output.outcomes)
write_tsv(encoded, snakemake.output.clinical)
write_tsv(batch_covariates, snakemake.output.batch_covariates)
write_tsv(filled, snakemake.output.imputation, index=False)
