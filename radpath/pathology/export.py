"""One slide's tile features in CLAM's and TRIDENT's formats, float32 (rule `export_slide`).

radpath's features.h5 keeps float16 features (half the disk). CLAM cannot train on it as
is: its MIL models are float32 (CLAM_SB raises "Half and Float" on a float16 bag), its
loader reads pt_files/<slide>.pt, and its `patch_level`/`patch_size` must describe exactly
the pixels radpath read. This module writes, into the slide's staging folder:

- clam.h5: `features` float32 (N, D), `coords` with CLAM's attributes (`wsi.clam_attrs`:
  the level and size radpath read, target_patch_size = what the encoder saw);
- clam.pt: the same features as a float32 tensor (torch.save);
- trident_patches.h5: `coords` with radpath's and TRIDENT's attributes (`wsi.coords_attrs`);
- trident_features.h5: `features` float32 and `coords`, as TRIDENT's feature extraction
  writes them;
- status.tsv: exported, with each file's path in its tool's layout (written last), or
  excluded with the reason when the slide's features.h5 is an exclusion record.

`radpath.pathology.export_layout` links them into the two layouts (rule `export`). float16 ->
float32 is exact, so the exported features equal radpath's.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from radpath.inputs.io import atomic_path
from radpath.inputs.runtime import exclusion_reason
from radpath.pathology.export_layout import (
    EXCLUDED,
    EXPORTED,
    STAGED_FILES,
    clam_paths,
    folder_safe,
    trident_patch_folder,
    trident_paths,
    write_status,
)
from radpath.pathology.feature_files import attrs_dict
from radpath.pathology.wsi import clam_attrs, coords_attrs, geometry_from_attrs

log = logging.getLogger(__name__)


def read_slide_features(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """(features (N, D), coords (N, 2) int64, coords attributes, features attributes)."""
    with h5py.File(path, "r") as h5:
        return (
            h5["features"][:],
            h5["coords"][:].astype(np.int64),
            attrs_dict(h5["coords"].attrs),
            attrs_dict(h5["features"].attrs),
        )


def write_features_h5(
    path: Path, features: np.ndarray, coords: np.ndarray, coord_attrs: dict, feature_attrs: dict
) -> None:
    """Atomically write `features` float32 and `coords` with their attributes."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("features", data=np.asarray(features, dtype=np.float32))
        h5["features"].attrs.update(feature_attrs)
        h5.create_dataset("coords", data=np.asarray(coords, dtype=np.int64).reshape(-1, 2))
        h5["coords"].attrs.update(coord_attrs)


def write_coords_h5(path: Path, coords: np.ndarray, coord_attrs: dict) -> None:
    """Atomically write a `coords` dataset with its attributes (TRIDENT's patches file)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("coords", data=np.asarray(coords, dtype=np.int64).reshape(-1, 2))
        h5["coords"].attrs.update(coord_attrs)


def write_tensor(path: Path, features: np.ndarray) -> None:
    """Atomically torch.save features as a float32 (N, D) tensor (loads with weights_only)."""
    tensor = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    with atomic_path(path) as tmp:
        torch.save(tensor, tmp)


def export_slide(
    slide_id: str,
    features_h5: str | os.PathLike,
    out_dir: str | os.PathLike,
    trident_encoder: str = "",
) -> dict:
    """Write one slide's CLAM and TRIDENT files into `out_dir`; returns its status row.

    trident_encoder: the encoder name in TRIDENT's features_<encoder> folder; "" = the
    encoder radpath embedded with (features.h5's `encoder`).
    """
    out_dir = Path(out_dir)
    reason = exclusion_reason(features_h5)
    if reason is not None:
        log.warning("slide %s: excluded upstream, not exported: %s", slide_id, reason)
        status = {"slide_id": slide_id, "status": EXCLUDED, "reason": reason}
        write_status(out_dir, status)
        return status
    features, coords, tile, meta = read_slide_features(features_h5)
    if features.ndim != 2 or len(features) != len(coords):
        raise ValueError(
            f"slide {slide_id} ({features_h5}): features {features.shape} do not match "
            f"{len(coords)} coordinates"
        )
    features = features.astype(np.float32)  # exact: every float16 is a float32
    geom = geometry_from_attrs(tile)
    encoder = str(meta.get("encoder", "")) or "encoder"
    trident_name = folder_safe(trident_encoder or encoder)
    trident = coords_attrs(geom, slide_id, tile["level_dim"], tile["level0_dim"])
    paths = clam_paths(slide_id) | trident_paths(
        slide_id, trident["target_magnification"], geom.patch_size, trident_name
    )
    folder = trident_patch_folder(trident["target_magnification"], geom.patch_size)
    described = {"name": slide_id, "feature_dim": int(features.shape[1]),
                 "source_precision": str(meta.get("precision", ""))}

    write_features_h5(
        out_dir / STAGED_FILES["clam_h5"], features, coords,
        clam_attrs(geom, slide_id, tile["level_dim"]) | {"save_path": "h5_files"},
        described | {"encoder": encoder},
    )
    write_tensor(out_dir / STAGED_FILES["clam_pt"], features)
    write_coords_h5(
        out_dir / STAGED_FILES["trident_patches"], coords, trident | {"savetodir": folder}
    )
    write_features_h5(
        out_dir / STAGED_FILES["trident_features"], features, coords,
        trident | {"savetodir": folder},
        described | {"encoder": trident_name, "savetodir": f"{folder}/features_{trident_name}"},
    )
    status = {"slide_id": slide_id, "status": EXPORTED, "reason": "",
              "n_tiles": len(features), "feature_dim": int(features.shape[1]),
              "encoder": encoder, **paths}
    write_status(out_dir, status)
    log.info("slide %s: exported %d tiles x %d features", slide_id, *features.shape)
    return status
