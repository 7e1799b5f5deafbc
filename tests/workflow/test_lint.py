"""The code stays lint-clean: ruff, snakefmt and snakemake --lint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from placeholders import write_placeholder_cohort
from smk import REPO, SNAKEFILE, write_config

BIN = Path(sys.executable).parent


def check(command: list[str], cwd: Path = REPO) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, encoding="utf-8")
    assert result.returncode == 0, f"{command[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def test_ruff_clean():
    check([str(BIN / "ruff"), "check", "."])


def test_snakefmt_clean():
    check([str(BIN / "snakefmt"), "--check", "Snakefile", "rules/"])


def test_snakemake_lint_clean(tmp_path):
    data = write_placeholder_cohort(tmp_path / "data", n_patients=12, slides_per_patient=1)
    config = write_config(tmp_path / "config.yaml", data)
    out = check([str(BIN / "snakemake"), "--lint", "--snakefile", str(SNAKEFILE),
                 "--configfile", str(config)], cwd=tmp_path)
    assert "Lints for" not in out
