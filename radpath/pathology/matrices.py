"""Slide features -> patient pathomics matrices (embedding PCA fitted on train, morphology)."""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from radpath.inputs.io import read_tsv
from radpath.pathology.feature_files import patient_embedding_table, read_encoder_provenance

log = logging.getLogger(__name__)


# The features.h5 provenance attributes that say which weights made the features; the
# slides of one cohort matrix must agree on all of them.
ENCODER_IDENTITY = ("encoder", "timm_name", "timm_kwargs", "weights_sha256")


def encoder_provenance(feature_files: dict[str, str]) -> dict:
    """Which encoder and weights made the slides' features (radpath.pathology.embedding's provenance
    attributes and `n_slides`). Features of different encoders or weights in one matrix
    are an error naming a slide of each."""
    seen: dict[tuple, str] = {}
    provenance = {}
    for slide_id, path in feature_files.items():
        provenance = read_encoder_provenance(path)
        identity = tuple(str(provenance.get(key, "")) for key in ENCODER_IDENTITY)
        seen.setdefault(identity, slide_id)
        if len(seen) > 1:
            (first, a), (second, b) = list(seen.items())[:2]
            raise ValueError(
                f"pathomics: slides {a} and {b} were embedded with different encoders or "
                f"weights ({dict(zip(ENCODER_IDENTITY, first, strict=True))} vs "
                f"{dict(zip(ENCODER_IDENTITY, second, strict=True))}): re-run their "
                "slide_embedding jobs"
            )
    if provenance:
        provenance.setdefault("pretrained", False)  # files written before provenance
        provenance["n_slides"] = len(feature_files)
    return provenance


def pooled_embeddings(feature_files: dict[str, str], slide_patients: dict[str, str],
                      pooling: list[str]) -> pd.DataFrame:
    """Each patient's tiles (of all its slides) pooled: one row per patient, sorted."""
    by_patient: dict[str, list[str]] = defaultdict(list)
    for slide_id, path in feature_files.items():
        by_patient[slide_patients[slide_id]].append(path)
    return patient_embedding_table(by_patient, pooling).sort_index()


def embedding_matrix(
    feature_files: dict[str, str],
    slide_patients: dict[str, str],
    pooling: list[str],
    split: pd.Series,
    n_components: int,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict]:
    """Pool each patient's tiles, then PCA fitted on training patients only."""
    pooled = pooled_embeddings(feature_files, slide_patients, pooling)
    train = [pid for pid in pooled.index if split.get(pid) == "train"]
    return embedding_pca(pooled, train, n_components, pooling, seed)


def embedding_pca(pooled: pd.DataFrame, train: list[str], n_components: int,
                  pooling: list[str], seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Pooled embeddings (:func:`pooled_embeddings`) projected on a PCA fitted on the `train`
    patients only (at most one component fewer than them); the PCA's description as info."""
    if len(train) < 2:
        raise ValueError("pathomics: fewer than 2 training patients have slides")
    k = min(n_components, len(train) - 1, pooled.shape[1])
    pca = PCA(n_components=k, random_state=seed).fit(pooled.loc[train].to_numpy())
    table = project_embedding(pooled, pca.mean_, pca.components_)
    info = {
        "n_components": k,
        "fitted_on": len(train),
        "explained_variance_ratio": pca.explained_variance_ratio_.tolist(),
        "pooling": list(pooling),
        "features": list(pooled.columns),
        "mean": pca.mean_.tolist(),
        "components": pca.components_.tolist(),
    }
    return table, info


def frozen_embedding_matrix(
    feature_files: dict[str, str], slide_patients: dict[str, str], info: dict
) -> pd.DataFrame:
    """Pool each patient's tiles and project them on the training PCA (`info` as written by
    :func:`embedding_matrix`), nothing refitted: the external cohorts of `snakemake score`."""
    if "components" not in info:
        raise ValueError("pathomics: the run's pathomics_embedding_pca.json has no PCA "
                         "components (written by an older radpath): re-run its "
                         "pathomics_matrices job (snakemake -R pathomics_matrices)")
    pooled = pooled_embeddings(feature_files, slide_patients, info["pooling"])
    if list(pooled.columns) != list(info["features"]):
        raise ValueError(f"pathomics: slide features have {pooled.shape[1]} pooled dimensions, "
                         f"the run's PCA was fitted on {len(info['features'])}: embed the "
                         "external slides with the run's encoder and pooling")
    return project_embedding(pooled, info["mean"], info["components"])


def project_embedding(pooled: pd.DataFrame, mean, components) -> pd.DataFrame:
    """Pooled embeddings projected on PCA components (pc01, pc02, ...), in float64 and one
    patient at a time (einsum, not a BLAS product whose rounding depends on how many rows
    it is given), so an external cohort's patients get what the run gave them."""
    values = pooled.to_numpy(dtype=np.float64) - np.asarray(mean, dtype=np.float64)
    components = np.asarray(components, dtype=np.float64)
    scores = np.einsum("ij,kj->ik", values, components)
    return pd.DataFrame(scores, index=pooled.index,
                        columns=[f"pc{i + 1:02d}" for i in range(len(components))])


def morphology_matrix(files: dict[str, str], slide_patients: dict[str, str]) -> pd.DataFrame:
    """Per-slide morphology rows averaged over each patient's slides."""
    rows = pd.concat([read_tsv(path, index_col="slide_id") for path in files.values()])
    rows = rows.apply(pd.to_numeric, errors="coerce")
    rows.index = [slide_patients[s] for s in rows.index]
    table = rows.groupby(level=0).mean().sort_index()
    table.index.name = "patient_id"
    return table.replace([np.inf, -np.inf], np.nan)
