"""Rule `cohort_tables`: clinical sheet -> outcomes with the split, encoded covariates."""

from radpath import sheets
from radpath.cohort import make_split, outcomes_table
from radpath.io import write_tsv
from radpath.jobs import setup_logging
from radpath.modeling import encode_clinical

setup_logging(snakemake.log[0])
p = snakemake.params
clinical = sheets.load_clinical(
    snakemake.input.clinical, p.schema, p.patient_ids, p.covariates, p.harmonization_covariates
).loc[p.patient_ids]
split = make_split(clinical, p.validation_fraction, p.seed)
write_tsv(outcomes_table(clinical, split), snakemake.output.outcomes)

encoded = encode_clinical(clinical, p.covariates)
encoded.index.name = "patient_id"
write_tsv(encoded, snakemake.output.clinical)
# ComBat covariates stay raw: the harmonization module encodes them itself.
write_tsv(clinical[list(p.harmonization_covariates)], snakemake.output.batch_covariates)
