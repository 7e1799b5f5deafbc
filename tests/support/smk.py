"""Run Snakemake in-process through snakemake.api (dry-runs and small real runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from snakemake.api import SnakemakeApi
from snakemake.settings.types import (
    ConfigSettings,
    DAGSettings,
    OutputSettings,
    ResourceSettings,
)

from radpath.inputs.configuration import default_config

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "Snakefile"
# Bootstrap sizes small enough for tests; everything else is config/config.yaml's default.
FAST_STATS = {"evaluation": {"bootstrap": 200, "optimism_bootstrap": 5}}


def write_config(path: Path, cohort_dir: Path, with_deep_ct: bool = False,
                 with_synthesis: bool = False, **overrides) -> Path:
    """A complete config for a cohort folder written by the demo generator. The deep CT
    models and the synthesis branch train networks (a minute or more per run on 2 CPUs):
    only runs that look at them (`with_deep_ct=True`, `with_synthesis=True`) keep them.
    Each override updates that section's keys, except `models`, which replaces them all."""
    config = default_config()
    config["synthesis"]["enabled"] = with_synthesis
    if not with_deep_ct:
        config["models"] = {name: spec for name, spec in config["models"].items()
                            if "deep_ct" not in spec["blocks"]}
    config["patients"] = str(cohort_dir / "patients.tsv")
    config["clinical"] = str(cohort_dir / "clinical.tsv")
    slides = cohort_dir / "slides.tsv"
    if slides.exists():
        config["slides"] = str(slides)
    else:
        config["slides"] = ""
        config["models"] = {
            name: spec for name, spec in config["models"].items()
            if not any(block.startswith("pathomics") for block in spec["blocks"])
        }
    config["radiomics"]["params"] = str(REPO / "config" / "pyradiomics_ct.yaml")
    # The deep CT pretraining cohort: the cohort folder's pretrain/ sheets when it has them.
    pretrain = cohort_dir / "pretrain"
    has_pretrain = with_deep_ct and (pretrain / "patients.tsv").exists()
    config["deep_ct"]["pretrain"] = {
        **config["deep_ct"]["pretrain"],
        "patients": str(pretrain / "patients.tsv") if has_pretrain else "",
        "clinical": str(pretrain / "clinical.tsv") if has_pretrain else "",
    }
    for key, value in overrides.items():
        # A section's keys are updated; `models` is the whole set of models to fit.
        if key != "models" and isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def execute(workdir: Path, configfile: Path, dag_settings: DAGSettings, **execute) -> None:
    """Build the DAG in-process and execute it (`pseudo_executor` dryrun or touch)."""
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(configfiles=[configfile]),
            snakefile=SNAKEFILE,
            workdir=workdir,
        )
        workflow.dag(dag_settings=dag_settings).execute_workflow(**execute)


def dry_run(workdir: Path, configfile: Path, targets=(), forcerun=()) -> list[str]:
    """Files the workflow would (re)build, as a sorted list of paths relative to workdir."""
    updated: list[str] = []
    settings = DAGSettings(targets=set(targets), forcerun=set(forcerun))
    execute(workdir, configfile, settings, pseudo_executor="dryrun", updated_files=updated)
    return sorted(str(f) for f in updated)


def run(workdir: Path, configfile: Path, *extra: str, cores: int = 2, check=True, env=None):
    """A real run in a subprocess (the same command line a user types); `env` adds to the
    environment."""
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE),
        "--directory", str(workdir), "--configfile", str(configfile),
        "--cores", str(cores), "--profile", str(REPO / "profiles" / "local"), *extra,
    ]
    result = subprocess.run(command, capture_output=True, text=True, encoding="utf-8",
                            env=None if env is None else {**os.environ, **env})
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
        )
    return result


RESULT_TABLES = (
    "results/report/cindex.tsv",
    "results/report/accuracy.tsv",
    "results/report/calibration.tsv",
    "results/report/decision_curve.tsv",
    "results/cohort/radiomics.tsv",
    "results/cohort/pathomics_embedding.tsv",
    "results/cohort/pathomics_morphology.tsv",
)


def assert_same_results(expected: Path, actual: Path) -> None:
    """Two runs of the same config agree: cohort matrices, C-index table, every risk table."""
    risks = sorted(p.relative_to(expected) for p in expected.glob("results/models/*/*/risk.tsv"))
    assert risks, f"no risk tables under {expected}"
    for name in [*RESULT_TABLES, *map(str, risks)]:
        want = (expected / name).read_text(encoding="utf-8")
        assert (actual / name).read_text(encoding="utf-8") == want, f"{name} differs"


def touch_all(workdir: Path, configfile: Path) -> None:
    """Make every output exist and be up to date without computing it.

    Snakemake's touch mode only touches existing files, so the planned outputs are first
    created empty (folders for suffix-less directory outputs), then touched in DAG order,
    which also records Snakemake's metadata as a real run would.
    """
    for name in dry_run(workdir, configfile):
        path = workdir / name
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:
            path.mkdir(parents=True, exist_ok=True)
    execute(workdir, configfile, DAGSettings(), pseudo_executor="touch")


def slide_output(workdir: Path, folder: str, slide_id: str) -> Path:
    """A slide's file in its shard's folder under `folder` (the GPU jobs write one file per
    slide into the folder of the shard of slides they embed or assign, rules/pathology.smk)."""
    found = list((Path(workdir) / folder).glob(f"*/{slide_id}.h5"))
    assert len(found) == 1, (folder, slide_id, found)
    return found[0]
