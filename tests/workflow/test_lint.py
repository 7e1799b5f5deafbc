"""The code stays lint-clean: ruff, snakefmt and snakemake --lint."""

from __future__ import annotations

import importlib
import re
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


RULE = re.compile(r"^(rule|use rule) (\w+)(?: as (\w+))?.*:\n((?:[ \t]+.*\n|\n)*)", re.M)


def test_every_rule_enters_the_library_one_way_by_its_own_name():
    """Every rule with code runs `python -m radpath.cli <its name>` (a `use rule` copy runs
    its base's), never a `script:` or `run:` block, and the verb's function has that name:
    in radpath.cli for per-item jobs, in the stage's jobs module for cohort jobs."""
    import radpath.cli as cli

    verbs = set(cli.build_parser()._subparsers._group_actions[0].choices)
    seen = set()
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for kind, name, _base_alias, body in RULE.findall(smk.read_text(encoding="utf-8")):
            assert not re.search(r"^\s+(script|run|notebook|wrapper):", body, re.M), (smk, name)
            if kind == "use rule":
                continue
            command = re.search(r"python -m radpath\.cli (\w+)", body)
            if not re.search(r"^\s+shell:", body, re.M):
                continue  # a target rule (all, score, synthesis) without a job of its own
            assert command and command.group(1) == name, (smk.name, name)
            seen.add(name)
            if name in cli.COHORT_JOBS:
                module = importlib.import_module(cli.COHORT_JOBS[name])
                assert callable(getattr(module, name)), (module, name)
            else:
                assert callable(getattr(cli, name)), name
    assert seen == verbs, (seen ^ verbs)
