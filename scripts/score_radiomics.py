"""Rule `score_radiomics_matrix`: an external cohort's radiomics rows -> its raw matrix, and
the matrix harmonized with the run's training medians and ComBat estimates."""

from radpath.cohort import assemble_rows
from radpath.harmonize import ComBatModel
from radpath.io import read_json, read_tsv, write_tsv
from radpath.jobs import setup_logging
from radpath.scoring import external_harmonized, training_medians
from radpath.sheets import read_sheet

setup_logging(snakemake.log[0])
p = snakemake.params
raw, excluded = assemble_rows(snakemake.input.features, "patient_id")
run_raw = read_tsv(snakemake.input.run_matrix, index_col="patient_id")
run_split = read_tsv(snakemake.input.run_split, index_col="patient_id")["split"]
batch_covariates = read_tsv(snakemake.input.batch_covariates, index_col="patient_id")
patients = read_sheet(snakemake.input.patients, "patients").set_index("patient_id")
harmonized, treatment = external_harmonized(
    raw, training_medians(run_raw, run_split),
    ComBatModel.from_dict(read_json(snakemake.input.combat)),
    patients[p.batch_column], batch_covariates if len(batch_covariates.columns) else None,
    p.unseen_batches,
)
write_tsv(raw, snakemake.output.raw)
write_tsv(harmonized, snakemake.output.harmonized)
write_tsv(excluded, snakemake.output.excluded)
write_tsv(treatment, snakemake.output.batches, index=False)
