"""CLAM's and TRIDENT's folder layouts from the slides' staged exports (rule `export`).

Each slide's job (rule `export_slide`, `radpath.pathology.export`) writes its float32 files into a
staging folder with a one-row `status.tsv`: exported, with the path each file takes in
CLAM's or TRIDENT's layout, or excluded, with the reason. The cohort step links the files
of exported slides into

    clam/h5_files/<slide>.h5, clam/pt_files/<slide>.pt, clam/dataset.csv
    trident/<mag>x_<patch>px_0px_overlap/patches/<slide>_patches.h5
    trident/<mag>x_<patch>px_0px_overlap/features_<encoder>/<slide>.h5

and lists excluded slides in a TSV, so no layout ever holds a file of an excluded slide.
Snakemake outputs cannot be optional, which is why the per-slide jobs stage their files
instead of writing the layouts themselves.

This module runs in the stats environment: pandas and the standard library only.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from radpath.inputs.cohort import outcome_endpoints
from radpath.inputs.io import atomic_path, atomic_write, read_tsv, write_tsv

log = logging.getLogger(__name__)

STATUS_FILE = "status.tsv"
EXPORTED = "exported"
EXCLUDED = "excluded"
# status column -> staged file name; the column holds the file's path in its tool's folder
STAGED_FILES = {
    "clam_h5": "clam.h5",
    "clam_pt": "clam.pt",
    "trident_patches": "trident_patches.h5",
    "trident_features": "trident_features.h5",
}
TOOL = {"clam_h5": "clam", "clam_pt": "clam", "trident_patches": "trident",
        "trident_features": "trident"}
DATASET_CSV = "dataset.csv"


def trident_patch_folder(target_magnification: float, patch_size: int, overlap: int = 0) -> str:
    """TRIDENT's patching folder name, `<mag>x_<patch>px_<overlap>px_overlap`
    (trident/Processor.py, Processor.run_patching_job), e.g. 20x_224px_0px_overlap."""
    return f"{float(target_magnification):g}x_{int(patch_size)}px_{int(overlap)}px_overlap"


def folder_safe(name: str) -> str:
    """An encoder name usable in a folder name (hub names may hold '/' or ':')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_") or "encoder"


def clam_paths(slide_id: str) -> dict[str, str]:
    """Paths in CLAM's feature folder (extract_features_fp.py's --feat_dir), as
    dataset_modules/dataset_generic.py Generic_MIL_Dataset reads them."""
    return {"clam_h5": f"h5_files/{slide_id}.h5", "clam_pt": f"pt_files/{slide_id}.pt"}


def trident_paths(
    slide_id: str, target_magnification: float, patch_size: int, encoder: str
) -> dict[str, str]:
    """Paths in TRIDENT's job folder: patch coordinates (WSI.extract_tissue_coords) and
    patch features (Processor.run_patch_feature_extraction_job: features_<encoder>)."""
    folder = trident_patch_folder(target_magnification, patch_size)
    return {
        "trident_patches": f"{folder}/patches/{slide_id}_patches.h5",
        "trident_features": f"{folder}/features_{folder_safe(encoder)}/{slide_id}.h5",
    }


def write_status(folder: str | os.PathLike, status: Mapping) -> None:
    """The slide's one-row status.tsv (written last: its presence means the folder is done)."""
    write_tsv(pd.DataFrame([dict(status)]), Path(folder) / STATUS_FILE, index=False)


def read_status(folder: str | os.PathLike) -> dict:
    """A staged slide's status row as a dict (missing values as None)."""
    row = read_tsv(Path(folder) / STATUS_FILE).iloc[0]
    return {key: (None if pd.isna(value) else value) for key, value in row.items()}


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` at `target` (no second copy on disk); copy where links fail."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError as err:
        log.info("cannot hard-link %s (%s); copying", source, err)
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)


def dataset_table(
    slide_ids: list[str], slide_patients: Mapping[str, str], outcomes: pd.DataFrame
) -> pd.DataFrame:
    """CLAM's dataset CSV: case_id (patient), slide_id, the split and every endpoint of
    `outcomes` (results/cohort/outcomes.tsv: the endpoints the config declares).

    Generic_MIL_Dataset (dataset_modules/dataset_generic.py) needs case_id and slide_id and
    takes its label from `label_col`. `<endpoint>_censorship` is 1 - event, the column
    name mahmoodlab's survival models use (with the time as survival_months).
    """
    table = pd.DataFrame({
        "case_id": [slide_patients[s] for s in slide_ids],
        "slide_id": list(slide_ids),
    })
    patients = outcomes.loc[table["case_id"]].reset_index(drop=True)
    table["split"] = patients["split"]
    for endpoint in outcome_endpoints(outcomes):
        table[f"{endpoint}_time"] = patients[f"{endpoint}_time"]
        table[f"{endpoint}_event"] = patients[f"{endpoint}_event"].astype(int)
        table[f"{endpoint}_censorship"] = 1 - table[f"{endpoint}_event"]
    return table


def assemble_layouts(
    staged: Mapping[str, str | os.PathLike],
    slide_patients: Mapping[str, str],
    outcomes: pd.DataFrame,
    clam_dir: str | os.PathLike,
    trident_dir: str | os.PathLike,
    excluded_tsv: str | os.PathLike,
) -> dict:
    """Link each exported slide's staged files into CLAM's and TRIDENT's layouts, write
    CLAM's dataset.csv and list excluded slides (slide_id, patient_id, reason)."""
    roots = {"clam": Path(clam_dir), "trident": Path(trident_dir)}
    for root in roots.values():
        root.mkdir(parents=True, exist_ok=True)
    exported, excluded = [], []
    for slide_id, folder in staged.items():
        status = read_status(folder)
        if status["status"] != EXPORTED:
            excluded.append({"slide_id": slide_id, "patient_id": slide_patients[slide_id],
                             "reason": status.get("reason") or "excluded"})
            continue
        for column, name in STAGED_FILES.items():
            link_or_copy(Path(folder) / name, roots[TOOL[column]] / status[column])
        exported.append(slide_id)
    with atomic_write(roots["clam"] / DATASET_CSV) as handle:
        dataset_table(exported, slide_patients, outcomes).to_csv(
            handle, index=False, lineterminator="\n"
        )
    write_tsv(pd.DataFrame(excluded, columns=["slide_id", "patient_id", "reason"]),
              excluded_tsv, index=False)
    log.info("exported %d slides, excluded %d", len(exported), len(excluded))
    return {"exported": exported, "excluded": [row["slide_id"] for row in excluded]}
