"""Rule `radiomics_matrix`: per-patient radiomics rows -> cohort matrix, QC, exclusions."""

import pandas as pd

from radpath.cohort import assemble_rows
from radpath.io import read_tsv, write_tsv
from radpath.jobs import setup_logging

setup_logging(snakemake.log[0])
matrix, excluded = assemble_rows(snakemake.input.features, "patient_id")
qc = pd.concat([read_tsv(p, index_col="patient_id") for p in snakemake.input.qc], sort=False)
write_tsv(matrix, snakemake.output.matrix)
write_tsv(qc, snakemake.output.qc)
write_tsv(excluded, snakemake.output.excluded)
