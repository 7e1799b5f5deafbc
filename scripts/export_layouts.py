"""Rule `export`: staged per-slide exports -> CLAM's and TRIDENT's folder layouts."""

from radpath.export_layout import assemble_layouts
from radpath.io import read_tsv
from radpath.jobs import setup_logging

setup_logging(snakemake.log[0])
slide_ids = list(snakemake.params.slide_patients)
assemble_layouts(
    dict(zip(slide_ids, snakemake.input.staged, strict=True)),
    snakemake.params.slide_patients,
    read_tsv(snakemake.input.outcomes, index_col="patient_id"),
    snakemake.output.clam,
    snakemake.output.trident,
    snakemake.output.excluded,
)
