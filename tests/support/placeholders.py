"""Sample sheets with empty placeholder files: enough for dry-runs of any size."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np


def write_placeholder_cohort(
    out: Path,
    n_patients: int,
    slides_per_patient: int = 0,
    seed: int = 0,
    first: int = 1,
    clinical_names: Mapping[str, str] | None = None,
) -> Path:
    """patients.tsv, clinical.tsv (and slides.tsv) with empty CT/mask/slide files.

    `clinical_names` renames clinical.tsv columns, e.g. {"pfs_time": "dfs_months"} (PFS
    times are 0.7 x the OS time).
    """
    rng = np.random.default_rng(seed)
    (out / "ct").mkdir(parents=True, exist_ok=True)
    ids = [f"P{i:05d}" for i in range(first, first + n_patients)]
    patients = ["patient_id\tct\tmask\tscanner"]
    header = ["patient_id", "age", "stage", "os_time", "os_event", "pfs_time", "pfs_event",
              "chemoradiotherapy"]
    clinical = ["\t".join((clinical_names or {}).get(name, name) for name in header)]
    slides = ["slide_id\tpatient_id\tpath"]
    for i, pid in enumerate(ids):
        for suffix in ("ct", "mask"):
            (out / "ct" / f"{pid}_{suffix}.nii.gz").touch()
        patients.append(f"{pid}\tct/{pid}_ct.nii.gz\tct/{pid}_mask.nii.gz\tS{i % 3}")
        os_time = float(rng.uniform(1, 60))
        clinical.append(
            f"{pid}\t{int(rng.integers(40, 85))}\t{['I', 'II', 'III', 'IV'][i % 4]}\t"
            f"{os_time:.2f}\t{int(rng.integers(0, 2))}\t{os_time * 0.7:.2f}\t{int(rng.integers(0, 2))}"
            f"\t{['no', 'yes'][i % 2]}"
        )
        for k in range(slides_per_patient):
            slide = out / "slides" / f"{pid}_S{k}.svs"
            slide.parent.mkdir(exist_ok=True)
            slide.touch()
            slides.append(f"{pid}_S{k}\t{pid}\tslides/{pid}_S{k}.svs")
    for name, lines in (("patients", patients), ("clinical", clinical), ("slides", slides)):
        mode = "w" if first == 1 else "a"
        with open(out / f"{name}.tsv", mode) as handle:
            handle.write("\n".join(lines if first == 1 else lines[1:]) + "\n")
    return out
