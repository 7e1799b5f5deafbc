"""The finished run of the shipped demo (`make demo`), for the workflow tests that only need
a finished run's outputs.

`.ci/run` runs `make demo` before `make test`, so there the tests read the checkout's own
run, once a dry-run has confirmed that nothing in it would be re-run (same code, same
config). Elsewhere (a fresh `make test`, or a run that is out of date) the demo is written
and run once per session in a temporary folder, with the shipped config and `make demo`'s
options. Tests never write into the run: those that add jobs work on `writable_copy`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from smk import REPO, dry_run, run

CONFIG = REPO / "config" / "config.yaml"
# `make demo` without a GPU: the GPU rules run CORES at a time with one thread each
# (Makefile, DEMO_OPTIONS and DEMO_THREADS); they change the schedule, not the results.
DEMO_OPTIONS = ("--resources", "gpu=2", "--set-threads", "fit_model=1", "slide_embedding=1",
                "pathosig_assign=1", "deep_ct_pretrain=1", "deep_ct_train=1",
                "deep_ct_gradcam=1")
# What a run reads besides its config: the demo cohort and the pyradiomics parameters.
INPUTS = ("demo_data", "config", "resources")


@dataclass(frozen=True)
class FinishedRun:
    workdir: Path
    config: Path

    def settings(self) -> dict:
        return yaml.safe_load(self.config.read_text(encoding="utf-8"))

    def writable_copy(self, dest: Path) -> FinishedRun:
        """The run's results, logs and Snakemake metadata copied to `dest` (its inputs
        linked), so that a test can add jobs to it without touching the original."""
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("results", "logs", "benchmarks", ".snakemake/metadata"):
            if (self.workdir / name).exists():
                shutil.copytree(self.workdir / name, dest / name, symlinks=True)
        for name in INPUTS:
            (dest / name).symlink_to((self.workdir / name).resolve())
        return FinishedRun(dest, self.config)


def is_finished(workdir: Path, config: Path) -> bool:
    return (workdir / "results/report/report.html").is_file() and dry_run(workdir, config) == []


def finished_demo(scratch: Path) -> FinishedRun:
    """The checkout's demo run when it is complete and current, else a fresh one in
    `scratch`."""
    if is_finished(REPO, CONFIG):
        return FinishedRun(REPO, CONFIG)
    scratch.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "radpath_demo", "--config", str(CONFIG),
                    "--out-dir", str(scratch / "demo_data")], check=True, capture_output=True,
                   cwd=REPO)
    for name in INPUTS[1:]:
        (scratch / name).symlink_to(REPO / name)
    run(scratch, CONFIG, *DEMO_OPTIONS)
    return FinishedRun(scratch, CONFIG)
