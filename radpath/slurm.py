"""Guards for runs with snakemake-executor-plugin-slurm (2.8) and its slurm-jobstep executor.

Two failure modes of the plugins that no error message explains:

- Status polling. The plugin asks `sacct` (the default whenever `sacct` is on PATH) or
  `squeue` for the state of its jobs. When that command fails, as `sacct` does on a cluster
  without slurmdbd, the plugin drops every submitted job from its watch list without
  reporting it: snakemake waits forever, even for jobs that failed, and Ctrl-C cancels
  nothing. `check_status_command` runs the plugin's query once at the start of a run and
  stops the run with one line naming the fix instead.
- SLURM_CONF. The slurm-jobstep executor starts every job with `srun` from an environment
  with all SLURM_* variables removed, SLURM_CONF too, so on a cluster whose slurm.conf is
  not at the default path that srun fails ("Could not establish a configuration source").
  `keep_slurm_conf` keeps the value under another name and puts slurm_bin/srun, which
  restores it, first on PATH.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path

SHIM_DIR = Path(__file__).resolve().with_name("slurm_bin")
KEPT_CONF_VARIABLE = "RADPATH_SLURM_CONF"
# Plugin 2.8: status queries are at most 180 s apart (max_sleep_time in check_active_jobs)
# and may take up to 60 s (query_job_status). A job that squeue forgets sooner than that
# (slurm.conf's MinJobAge) may never be seen finished.
MAX_STATUS_INTERVAL_S = 180
QUERY_TIMEOUT_S = 60
# The job name the start-up query asks for; no job has it, only the exit status matters.
PROBE_JOB_NAME = "radpath-status-check"


class StatusCommandError(RuntimeError):
    """The status command the plugin would poll with cannot answer on this cluster."""


@dataclass(frozen=True)
class StatusSettings:
    """What decides the plugin's status command (its executor settings and the cluster)."""

    configured: str | None  # slurm-status-command (the plugin's default when not set)
    init_seconds: int  # slurm-init-seconds-before-status-checks
    sacct_on_path: bool
    min_job_age_s: int | None  # MinJobAge from `scontrol show config`; None = unknown


def effective_status_command(settings: StatusSettings) -> str:
    """The command plugin 2.8 really polls with.

    As in check_active_jobs: squeue gives way to sacct when MinJobAge is unknown or below
    3 x init_seconds and sacct is on PATH; sacct gives way to squeue when it is not on PATH.
    """
    command = settings.configured or ("sacct" if settings.sacct_on_path else "squeue")
    too_young = settings.min_job_age_s is None or settings.min_job_age_s < 3 * settings.init_seconds
    if command == "squeue" and too_young and settings.sacct_on_path:
        command = "sacct"
    if command == "sacct" and not settings.sacct_on_path:
        command = "squeue"
    return command


def run_query(argv: list[str], timeout_s: float = QUERY_TIMEOUT_S) -> tuple[int, str]:
    """(exit status, first line of stderr) of one status query; 127 when it is not found."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, encoding="utf-8", errors="replace",
            timeout=timeout_s, check=False,
        )
    except FileNotFoundError:
        return 127, f"{argv[0]}: command not found"
    except subprocess.TimeoutExpired:
        return 124, f"no answer within {timeout_s:.0f} s"
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    return done.returncode, lines[0] if lines else ""


def status_problem(
    settings: StatusSettings, query: Callable[[str], tuple[int, str]]
) -> str | None:
    """One line saying why the plugin's status polling would hang, or None if it works.

    `query(command)` runs the plugin's status query with 'sacct' or 'squeue' once.
    """
    command = effective_status_command(settings)
    status, error = query(command)
    if status == 0:
        return None
    failed = f"radpath: `{command}` fails here (exit {status}{': ' + error if error else ''})"
    hang = (
        "snakemake-executor-plugin-slurm polls job states with it and would lose track of "
        "every job (the run hangs, Ctrl-C cancels nothing)."
    )
    if command == "squeue":
        return f"{failed}; {hang} Check that SLURM works here (`squeue --me`)."
    age, minimum = settings.min_job_age_s, MAX_STATUS_INTERVAL_S
    if settings.configured == "squeue":
        fix = (
            f"It is used instead of the configured squeue because MinJobAge ({age} s) is "
            f"below 3 x slurm-init-seconds-before-status-checks; ask your admins for slurmdbd "
            f"accounting or a MinJobAge of at least {minimum} s."
        )
    elif age is not None and age >= minimum:
        fix = (
            f"Fix: `slurm-status-command: squeue` in your profile (reliable here: slurm.conf's "
            f"MinJobAge, {age} s, is at least {minimum} s)."
        )
    else:
        fix = (
            f"Fix: `slurm-status-command: squeue` in your profile, reliable only if slurm.conf's "
            f"MinJobAge (here {'unknown' if age is None else f'{age} s'}) is at least "
            f"{minimum} s: ask your admins."
        )
    return f"{failed}; it needs slurmdbd accounting. {hang} {fix}"


def squeue_warning(settings: StatusSettings) -> str | None:
    """A warning when squeue may forget finished jobs before the plugin asks again."""
    age = settings.min_job_age_s
    if effective_status_command(settings) == "squeue" and age is not None:
        if age < MAX_STATUS_INTERVAL_S:
            return (
                f"radpath: status command squeue with MinJobAge={age} s: a job that ends "
                f"while the plugin waits up to {MAX_STATUS_INTERVAL_S} s between queries may "
                "be forgotten by squeue and then waited for forever; ask for a longer MinJobAge."
            )
    return None


def check_status_command(workflow) -> None:
    """Stop a run with the slurm executor whose status polling would hang (see module doc).

    Call it from an `onstart:` handler: that runs only in the main snakemake process (jobs
    get --no-hooks), never in a dry-run, and after the executor plugin is chosen.
    """
    plugin = getattr(workflow, "executor_plugin", None)
    if plugin is None or plugin.name != "slurm" or not workflow.is_main_process:
        return
    from snakemake_executor_plugin_slurm.job_status_query import (
        get_min_job_age,
        query_job_status_sacct,
        query_job_status_squeue,
    )

    executor_settings = workflow.executor_settings
    settings = StatusSettings(
        configured=getattr(executor_settings, "status_command", None),
        init_seconds=getattr(executor_settings, "init_seconds_before_status_checks", None) or 40,
        sacct_on_path=shutil.which("sacct") is not None,
        min_job_age_s=get_min_job_age(),
    )
    builders = {"sacct": query_job_status_sacct, "squeue": query_job_status_squeue}

    def query(command: str) -> tuple[int, str]:
        return run_query(shlex.split(builders[command](PROBE_JOB_NAME)))

    problem = status_problem(settings, query)
    if problem:
        raise StatusCommandError(problem)
    warning = squeue_warning(settings)
    if warning:
        from snakemake.logging import logger

        logger.warning(warning)


def keep_slurm_conf(
    environ: MutableMapping[str, str] = os.environ, shim_dir: Path = SHIM_DIR
) -> bool:
    """Make the slurm-jobstep executor's `srun` see SLURM_CONF (see module doc).

    With SLURM_CONF set, store it as RADPATH_SLURM_CONF (the jobstep keeps non-SLURM
    variables and PATH) and put `shim_dir` first on PATH: its `srun` restores SLURM_CONF
    and runs the next srun on PATH. Without SLURM_CONF, change nothing. True if set up.
    """
    conf = environ.get("SLURM_CONF")
    if not conf:
        return False
    environ[KEPT_CONF_VARIABLE] = conf
    path = [entry for entry in environ.get("PATH", os.defpath).split(os.pathsep)
            if entry != str(shim_dir)]
    environ["PATH"] = os.pathsep.join([str(shim_dir), *path])
    return True
