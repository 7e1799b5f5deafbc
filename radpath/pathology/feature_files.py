"""Tile feature files (features.h5) read back and pooled to patients.

Only h5py, numpy and pandas: the cohort step `pathomics_matrices` runs in the stats
environment, which has no torch, timm or OpenSlide (radpath.pathology.embedding writes these files).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import h5py
import numpy as np
import pandas as pd

POOLINGS = ("mean", "max", "std")
# Attributes radpath.pathology.embedding writes from radpath.pathology.encoders.encoder_provenance, and the
# precision the features were computed in.
PROVENANCE_KEYS = (
    "encoder",
    "timm_name",
    "timm_kwargs",
    "weights",
    "weights_sha256",
    "pretrained",
    "input_size",
    "mean",
    "std",
    "feature_dim",
    "precision",
)


def attrs_dict(attrs) -> dict:
    """HDF5 attributes as plain Python values (str, int, float; arrays stay arrays)."""
    return {key: _plain(value) for key, value in attrs.items()}


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_features_h5(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    """(features (N, D) float16, coords (N, 2) int64, attrs) of a features file."""
    with h5py.File(path, "r") as h5:
        return h5["features"][:], h5["coords"][:], attrs_dict(h5.attrs)


def feature_attrs(path: str | os.PathLike) -> dict:
    """The file-level attributes of a features file (encoder provenance, tile geometry)."""
    with h5py.File(path, "r") as h5:
        return attrs_dict(h5.attrs)


def read_encoder_provenance(path: str | os.PathLike) -> dict:
    """The encoder provenance attributes of a features file (those present: files written
    before provenance have only `encoder` and `feature_dim`); mean/std as lists."""
    attrs = feature_attrs(path)
    return {
        key: attrs[key].tolist() if isinstance(attrs[key], np.ndarray) else attrs[key]
        for key in PROVENANCE_KEYS
        if key in attrs
    }


# ---------------------------------------------------------------------------- pooling


def pool_slide_features(features: np.ndarray, methods: Sequence[str]) -> dict[str, np.ndarray]:
    """Pool (N, D) tile features to one D vector per method (mean, max, std), in float32."""
    unknown = set(methods) - set(POOLINGS)
    if unknown:
        raise ValueError(f"unknown pooling {sorted(unknown)}: use {list(POOLINGS)}")
    tiles = np.asarray(features, dtype=np.float32)
    if tiles.ndim != 2 or len(tiles) == 0:
        raise ValueError(f"pooling needs (N>0, D) tile features, got shape {tiles.shape}")
    pooled = {"mean": tiles.mean(axis=0), "max": tiles.max(axis=0), "std": tiles.std(axis=0)}
    return {method: pooled[method] for method in methods}


def patient_embedding_table(
    feature_files: Mapping[str, Sequence[str | os.PathLike]],
    methods: Sequence[str],
) -> pd.DataFrame:
    """One row per patient: tiles of all the patient's slides pooled together.

    Pooling over the union of tiles weighs each slide by its tissue (tile count).
    Columns are `{method}_{i:04d}`; the index is `patient_id`.
    """
    rows = {}
    for patient_id, paths in feature_files.items():
        if not paths:
            raise ValueError(f"patient {patient_id}: no slide feature files")
        tiles = np.concatenate([read_features_h5(path)[0] for path in paths], axis=0)
        pooled = pool_slide_features(tiles, methods)
        rows[patient_id] = np.concatenate([pooled[m] for m in methods])
    if not rows:
        raise ValueError("no patients to pool")
    dim = len(next(iter(rows.values()))) // len(methods)
    columns = [f"{method}_{i:04d}" for method in methods for i in range(dim)]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    table.index.name = "patient_id"
    return table
