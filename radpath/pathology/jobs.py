"""The cohort jobs of the pathology stage, one function per rule (`python -m radpath.cli
<rule>` calls it): patient matrices, PathoSig's training tiles, training, cluster
proportions and mosaics, and the CLAM/TRIDENT export layout.

Each job function takes the rule's files and settings as `python -m radpath.cli` passes
them (radpath.cli.JobFiles: `inputs`, `outputs`, `params`, `wildcards`) and imports
what it needs inside: each rule runs in its own conda environment (envs/*.yaml).
"""

from __future__ import annotations


def export(inputs, outputs, params, wildcards, threads: int) -> None:
    """Staged per-slide exports -> CLAM's and TRIDENT's folder layouts."""
    from radpath.inputs.io import read_tsv
    from radpath.pathology.export_layout import assemble_layouts

    slide_ids = list(params.slide_patients)
    assemble_layouts(
        dict(zip(slide_ids, inputs.staged, strict=True)),
        params.slide_patients,
        read_tsv(inputs.outcomes, index_col="patient_id"),
        outputs.clam,
        outputs.trident,
        outputs.excluded,
    )


def pathomics_matrices(inputs, outputs, params, wildcards, threads: int) -> None:
    """Slide embeddings and
    morphology -> patient matrices; the embedding PCA is fitted on the training patients, or
    (external cohorts, input `frozen_pca`) the run's PCA is applied."""
    import pandas as pd

    from radpath.inputs.io import read_json, read_tsv, write_json, write_tsv
    from radpath.inputs.runtime import usable_slides
    from radpath.pathology.matrices import (
        embedding_pca,
        encoder_provenance,
        frozen_embedding_matrix,
        morphology_matrix,
        pooled_embeddings,
    )

    slide_ids = list(params.slide_patients)
    features, excluded_embed = usable_slides({s: params.slide_features[s] for s in slide_ids})
    morph_files = {s: params.slide_morphology[s] for s in slide_ids}
    morph_rows = {s: read_tsv(f) for s, f in morph_files.items()}
    morph_ok = {s: f for s, f in morph_files.items() if "error" not in morph_rows[s].columns}
    excluded = pd.concat([
        excluded_embed,
        pd.DataFrame([{"slide_id": s, "reason": morph_rows[s]["error"].iloc[0]}
                      for s in morph_files if s not in morph_ok], columns=["slide_id", "reason"]),
    ]).drop_duplicates("slide_id")
    excluded.insert(1, "patient_id", [params.slide_patients[s] for s in excluded["slide_id"]])

    if hasattr(inputs, "frozen_pca"):
        embedding = frozen_embedding_matrix(features, params.slide_patients,
                                            read_json(inputs.frozen_pca))
    else:
        pooled = pooled_embeddings(features, params.slide_patients, params.pooling)
        write_tsv(pooled, outputs.pooled)  # what repeated CV refits the PCA on, per fold
        split = read_tsv(inputs.outcomes, index_col="patient_id")["split"]
        train = [pid for pid in pooled.index if split.get(pid) == "train"]
        embedding, pca_info = embedding_pca(pooled, train, params.pca_components, params.pooling)
        write_json(pca_info, outputs.pca)
    write_tsv(embedding, outputs.embedding)
    write_json(encoder_provenance(features), outputs.encoder)
    write_tsv(morphology_matrix(morph_ok, params.slide_patients), outputs.morphology)
    write_tsv(excluded, outputs.excluded, index=False)


def pathosig_training_tiles(inputs, outputs, params, wildcards, threads: int) -> None:
    """A seeded tile sample of the training patients' slides."""
    from radpath.pathology.pathosig import sample_training_tiles

    slides = {
        slide_id: {**source, "coords": coords}
        for (slide_id, source), coords in zip(params.slides.items(), inputs.coords, strict=True)
    }
    sample_training_tiles(slides, params.tiles, params.tiles_per_slide, params.seed, outputs.tiles)


def pathosig_train(inputs, outputs, params, wildcards, threads: int) -> None:
    """Contrastive clustering of the training tiles (resumable)."""
    import shutil

    import pandas as pd

    from radpath.inputs.io import write_tsv
    from radpath.pathology.contrastive import save_clustering_model, train_clustering
    from radpath.pathology.pathosig import read_training_tiles

    h5, tiles, _ = read_training_tiles(inputs.tiles)
    try:
        result = train_clustering(tiles, params.network, params.checkpoints, seed=params.seed,
                                  threads=threads)
    finally:
        h5.close()
    save_clustering_model(outputs.model, result, params.network)
    write_tsv(pd.DataFrame(result["history"]), outputs.history, index=False)
    shutil.rmtree(params.checkpoints, ignore_errors=True)  # the model is written: nothing to resume


def pathomics_hpc(inputs, outputs, params, wildcards, threads: int) -> None:
    """Slide cluster assignments -> per-patient cluster proportions."""
    import pandas as pd

    from radpath.inputs.io import write_tsv
    from radpath.inputs.runtime import usable_slides
    from radpath.pathology.contrastive import cluster_counts
    from radpath.pathology.pathosig import hpc_tables

    slide_patients = params.slide_patients
    files = {s: params.slide_clusters[s] for s in slide_patients}
    usable, excluded = usable_slides(files)
    slides, patients = hpc_tables(
        {slide_id: cluster_counts(path) for slide_id, path in usable.items()}, slide_patients
    )
    excluded.insert(1, "patient_id", [slide_patients[s] for s in excluded["slide_id"]])
    write_tsv(patients, outputs.matrix)
    write_tsv(slides, outputs.slides)
    write_tsv(pd.DataFrame(excluded), outputs.excluded, index=False)


def pathosig_mosaics(inputs, outputs, params, wildcards, threads: int) -> None:
    """Each phenotype cluster's most typical training tiles."""
    from radpath.inputs.runtime import usable_slides
    from radpath.pathology.contrastive import read_clusters_h5
    from radpath.pathology.pathosig import write_mosaics

    usable, _ = usable_slides({s: params.slide_clusters[s] for s in params.slides})
    assignments = {slide_id: read_clusters_h5(path)[:3] for slide_id, path in usable.items()}
    write_mosaics(assignments, params.slides, params.tiles, params.n_clusters, params.n_tiles,
                  outputs.mosaics, outputs.table)
