"""Rule `cohort_tables`: clinical sheet -> outcomes with the split (`<endpoint>_time` and
`<endpoint>_event` per declared endpoint), encoded covariates."""

import pandas as pd

from radpath import sheets
from radpath.cohort import impute_covariates, outcomes_table
from radpath.io import write_tsv
from radpath.jobs import setup_logging
from radpath.modeling import categorical_levels, encode_clinical

setup_logging(snakemake.log[0])
p = snakemake.params
clinical = sheets.load_clinical(
    snakemake.input.clinical, p.schema, p.patient_ids, p.covariates, p.harmonization_covariates,
    p.missing_covariates, endpoints=p.endpoints,
).loc[p.patient_ids]
split = pd.Series(p.split, name="split").loc[clinical.index]
split.index.name = "patient_id"
write_tsv(split.to_frame(), snakemake.output.split)
write_tsv(outcomes_table(clinical, split, p.endpoints), snakemake.output.outcomes)

train_ids = list(split.index[split == "train"])
clinical, imputation = impute_covariates(
    clinical, p.covariates, p.harmonization_covariates, train_ids
)
write_tsv(imputation, snakemake.output.imputation, index=False)
# Category levels come from the training patients only; a level that no training patient has
# is an error naming the patient (encode_clinical).
levels = categorical_levels(clinical.loc[train_ids], p.covariates)
encoded = encode_clinical(clinical, p.covariates, levels)
encoded.index.name = "patient_id"
write_tsv(encoded, snakemake.output.clinical)
# ComBat covariates stay raw: the harmonization module encodes them itself.
write_tsv(clinical[list(p.harmonization_covariates)], snakemake.output.batch_covariates)
