"""Rules `pathomics_matrices` and `score_pathomics_matrices`: slide embeddings and
morphology -> patient matrices; the embedding PCA is fitted on the training patients, or
(external cohorts, input `frozen_pca`) the run's PCA is applied."""

import pandas as pd

from radpath.io import read_json, read_tsv, write_json, write_tsv
from radpath.jobs import setup_logging, usable_slides
from radpath.pathomics import (
    embedding_pca,
    encoder_provenance,
    frozen_embedding_matrix,
    morphology_matrix,
    pooled_embeddings,
)

setup_logging(snakemake.log[0])
p = snakemake.params
slide_ids = list(p.slide_patients)
features, excluded_embed = usable_slides(dict(zip(slide_ids, snakemake.input.features, strict=True)))
morph_files = dict(zip(slide_ids, snakemake.input.morphology, strict=True))
morph_rows = {s: read_tsv(f) for s, f in morph_files.items()}
morph_ok = {s: f for s, f in morph_files.items() if "error" not in morph_rows[s].columns}
excluded = pd.concat([
    excluded_embed,
    pd.DataFrame([{"slide_id": s, "reason": morph_rows[s]["error"].iloc[0]}
                  for s in morph_files if s not in morph_ok], columns=["slide_id", "reason"]),
]).drop_duplicates("slide_id")
excluded.insert(1, "patient_id", [p.slide_patients[s] for s in excluded["slide_id"]])

if hasattr(snakemake.input, "frozen_pca"):
    embedding = frozen_embedding_matrix(features, p.slide_patients,
                                        read_json(snakemake.input.frozen_pca))
else:
    pooled = pooled_embeddings(features, p.slide_patients, p.pooling)
    write_tsv(pooled, snakemake.output.pooled)  # what repeated CV refits the PCA on, per fold
    split = read_tsv(snakemake.input.outcomes, index_col="patient_id")["split"]
    train = [pid for pid in pooled.index if split.get(pid) == "train"]
    embedding, pca_info = embedding_pca(pooled, train, p.pca_components, p.pooling)
    write_json(pca_info, snakemake.output.pca)
write_tsv(embedding, snakemake.output.embedding)
write_json(encoder_provenance(features), snakemake.output.encoder)
write_tsv(morphology_matrix(morph_ok, p.slide_patients), snakemake.output.morphology)
write_tsv(excluded, snakemake.output.excluded, index=False)
