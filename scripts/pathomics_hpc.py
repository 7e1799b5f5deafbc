"""Rule `pathomics_hpc`: slide cluster assignments -> per-patient cluster proportions."""

import pandas as pd

from radpath.contrastive import cluster_counts
from radpath.io import write_tsv
from radpath.jobs import setup_logging, usable_slides
from radpath.pathosig import hpc_tables

setup_logging(snakemake.log[0])
slide_patients = snakemake.params.slide_patients
files = dict(zip(slide_patients, snakemake.input.clusters, strict=True))
usable, excluded = usable_slides(files)
slides, patients = hpc_tables(
    {slide_id: cluster_counts(path) for slide_id, path in usable.items()}, slide_patients
)
excluded.insert(1, "patient_id", [slide_patients[s] for s in excluded["slide_id"]])
write_tsv(patients, snakemake.output.matrix)
write_tsv(slides, snakemake.output.slides)
write_tsv(pd.DataFrame(excluded), snakemake.output.excluded, index=False)
