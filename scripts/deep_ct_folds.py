"""Rule `deep_ct_folds`: the cross-validation folds of the training patients for one endpoint."""

from radpath.deep_ct_cohort import fold_table
from radpath.io import read_tsv, write_tsv
from radpath.jobs import setup_logging

setup_logging(snakemake.log[0])
outcomes = read_tsv(snakemake.input.outcomes, index_col="patient_id")
cube_files = {path.rsplit("/", 1)[-1].removesuffix(".npz"): path for path in snakemake.input.cubes}
table = fold_table(outcomes, snakemake.wildcards.endpoint, cube_files,
                   snakemake.params.folds, snakemake.params.seed)
write_tsv(table, snakemake.output.folds)
