"""radpath.slurm: the start-up check of the SLURM status command and the srun wrapper."""

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from radpath import slurm
from radpath.slurm import StatusSettings, effective_status_command, status_problem

NO_ACCOUNTING = (1, "Slurm accounting storage is disabled")


def settings(configured=None, init_seconds=40, sacct_on_path=True, min_job_age_s=300):
    return StatusSettings(configured, init_seconds, sacct_on_path, min_job_age_s)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (settings(), "sacct"),  # the plugin's default whenever sacct is on PATH
        (settings(sacct_on_path=False), "squeue"),
        (settings("squeue"), "squeue"),
        (settings("squeue", min_job_age_s=100), "sacct"),  # below 3 x 40 s: plugin uses sacct
        (settings("squeue", min_job_age_s=None), "sacct"),  # MinJobAge unknown: sacct too
        (settings("squeue", init_seconds=1, min_job_age_s=100), "squeue"),
        (settings("squeue", min_job_age_s=100, sacct_on_path=False), "squeue"),
        (settings("sacct", sacct_on_path=False), "squeue"),
    ],
)
def test_effective_status_command_follows_the_plugin(status, expected):
    assert effective_status_command(status) == expected


def answers(**results):
    """A fake `query(command)`: exit 0 unless `results` says otherwise; records the calls."""
    calls = []

    def query(command):
        calls.append(command)
        return results.get(command, (0, ""))

    query.calls = calls
    return query


def test_sacct_without_accounting_stops_the_run_with_one_line_naming_the_fix():
    query = answers(sacct=NO_ACCOUNTING)
    problem = status_problem(settings(min_job_age_s=86400), query)
    assert query.calls == ["sacct"]
    assert "\n" not in problem
    assert "`sacct` fails" in problem and "Slurm accounting storage is disabled" in problem
    assert "slurm-status-command: squeue" in problem and "MinJobAge, 86400 s" in problem
    short = status_problem(settings(min_job_age_s=60), answers(sacct=NO_ACCOUNTING))
    assert "slurm-status-command: squeue" in short and "only if" in short and "60 s" in short


def test_working_status_commands_pass():
    assert status_problem(settings(), answers()) is None
    query = answers(sacct=NO_ACCOUNTING)
    assert status_problem(settings("squeue", min_job_age_s=86400), query) is None
    assert query.calls == ["squeue"]


def test_squeue_overridden_by_the_plugin_is_explained():
    problem = status_problem(settings("squeue", min_job_age_s=60), answers(sacct=NO_ACCOUNTING))
    assert "instead of the configured squeue" in problem and "MinJobAge (60 s)" in problem
    assert "slurm-status-command: squeue" not in problem


def test_failing_squeue_is_reported_too():
    problem = status_problem(settings(sacct_on_path=False), answers(squeue=(1, "boom")))
    assert "`squeue` fails" in problem and "boom" in problem


def test_short_min_job_age_with_squeue_warns():
    assert slurm.squeue_warning(settings("squeue", init_seconds=1, min_job_age_s=100))
    assert slurm.squeue_warning(settings("squeue", min_job_age_s=86400)) is None
    assert slurm.squeue_warning(settings(min_job_age_s=100)) is None  # sacct polls


def test_run_query_reports_exit_status_and_first_error_line(tmp_path):
    assert slurm.run_query(["sh", "-c", "echo; echo first >&2; echo second >&2; exit 3"]) == (
        3, "first")
    assert slurm.run_query([str(tmp_path / "missing")])[0] == 127
    assert slurm.run_query(["sleep", "5"], timeout_s=0.2)[0] == 124


def fake_workflow(name="slurm", main=True, **executor_settings):
    return SimpleNamespace(
        executor_plugin=SimpleNamespace(name=name),
        is_main_process=main,
        executor_settings=SimpleNamespace(**executor_settings),
    )


@pytest.mark.parametrize("workflow", [
    fake_workflow(name="local"), fake_workflow(main=False), SimpleNamespace(executor_plugin=None),
])
def test_check_does_nothing_outside_the_main_process_of_a_slurm_run(workflow, monkeypatch):
    monkeypatch.setattr(slurm, "run_query", lambda argv: pytest.fail("queried SLURM"))
    slurm.check_status_command(workflow)


def fake_sacct(tmp_path, monkeypatch, script: str) -> None:
    """Put a `sacct` (and a failing `scontrol`) first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {"sacct": script, "scontrol": "exit 1"}.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_check_runs_the_plugins_sacct_query(tmp_path, monkeypatch):
    fake_sacct(tmp_path, monkeypatch,
               'echo "$@" > "$(dirname "$0")/args"; echo "Slurm accounting storage is disabled" >&2; '
               "exit 1")
    with pytest.raises(slurm.StatusCommandError, match="accounting storage is disabled"):
        slurm.check_status_command(fake_workflow(status_command="sacct"))
    args = (tmp_path / "bin" / "args").read_text(encoding="utf-8").split()
    assert args[:2] == ["-X", "--parsable2"] and args[-2:] == ["--name", slurm.PROBE_JOB_NAME]


def test_keep_slurm_conf_puts_the_wrapper_first_once(tmp_path):
    environ = {"SLURM_CONF": "/site/slurm.conf", "PATH": f"/usr/bin{os.pathsep}{tmp_path}"}
    assert slurm.keep_slurm_conf(environ, shim_dir=tmp_path)
    assert slurm.keep_slurm_conf(environ, shim_dir=tmp_path)
    assert environ["RADPATH_SLURM_CONF"] == "/site/slurm.conf"
    assert environ["PATH"].split(os.pathsep) == [str(tmp_path), "/usr/bin"]
    untouched = {"PATH": "/usr/bin"}
    assert not slurm.keep_slurm_conf(untouched, shim_dir=tmp_path)
    assert untouched == {"PATH": "/usr/bin"}


def test_srun_wrapper_restores_slurm_conf_for_the_real_srun(tmp_path):
    """The jobstep executor runs `srun` without SLURM_* variables: the wrapper puts
    SLURM_CONF back and runs the next srun on PATH with the same arguments."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "srun").write_text('#!/bin/sh\necho "SLURM_CONF=$SLURM_CONF args=$*"\n',
                               encoding="utf-8")
    (real / "srun").chmod(0o755)
    environ = {"SLURM_CONF": "/site/slurm.conf", "PATH": f"{real}{os.pathsep}/usr/bin:/bin"}
    slurm.keep_slurm_conf(environ)
    step_env = {k: v for k, v in environ.items() if not k.startswith("SLURM_")}  # as jobstep
    done = subprocess.run("srun -n1 'a b'", shell=True, env=step_env, capture_output=True,
                          text=True, encoding="utf-8", check=True)
    assert done.stdout.strip() == "SLURM_CONF=/site/slurm.conf args=-n1 a b"
    assert Path(slurm.SHIM_DIR, "srun").stat().st_mode & 0o111, "the wrapper is executable"
