import os
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from radpath.jobs import EXCLUSION_PREFIX, exclusion_reason, run_item


def failing_job():
    raise ValueError("patient P3: mask masks/P3.nii.gz is empty (label 1 has 0 voxels)\nmore")


def test_stop_mode_raises_the_input_error(tmp_path):
    with pytest.raises(ValueError, match="is empty"):
        run_item("P3", "patient_id", failing_job, [str(tmp_path / "f.tsv")], "stop")
    assert not (tmp_path / "f.tsv").exists()


def test_exclude_mode_records_the_first_line_of_the_reason(tmp_path):
    tsv, h5 = tmp_path / "f.tsv", tmp_path / "f.h5"
    run_item("P3", "patient_id", failing_job, [str(tsv), str(h5)], "exclude")
    record = pd.read_csv(tsv, sep="\t")
    assert record.to_dict("records") == [
        {"patient_id": "P3", "error": "patient P3: mask masks/P3.nii.gz is empty (label 1 has 0 voxels)"}
    ]
    assert h5.read_text(encoding="utf-8").startswith(EXCLUSION_PREFIX)
    assert exclusion_reason(h5).endswith("(label 1 has 0 voxels)")


def test_upstream_exclusion_is_propagated_without_running_the_job(tmp_path):
    upstream = tmp_path / "coords.h5"
    upstream.write_text(f"{EXCLUSION_PREFIX}slide S1: truncated file\n", encoding="utf-8")
    ran = []
    out = tmp_path / "features.h5"
    run_item("S1", "slide_id", lambda: ran.append(1), [str(out)], "exclude", upstream=[str(upstream)])
    assert not ran
    assert exclusion_reason(out) == "slide S1: truncated file"


def test_bugs_are_not_turned_into_exclusions(tmp_path):
    def buggy():
        raise KeyError("a bug, not bad input")

    with pytest.raises(KeyError):
        run_item("P1", "patient_id", buggy, [str(tmp_path / "f.tsv")], "exclude")


def test_sigterm_removes_the_half_written_output(tmp_path):
    """What scancel or a SLURM time limit does to a job: no temporary or partial file stays."""
    target = tmp_path / "out" / "features.tsv"
    log = tmp_path / "job.log"
    script = textwrap.dedent(f"""
        import os, signal
        from radpath.io import atomic_write
        from radpath.jobs import setup_logging
        setup_logging({str(log)!r})
        with atomic_write({str(target)!r}) as handle:
            handle.write("half a row")
            os.kill(os.getpid(), signal.SIGTERM)
            handle.write("never written")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
    assert result.returncode == 128 + signal.SIGTERM
    assert list(target.parent.iterdir()) == []
    assert "terminated by SIGTERM" in log.read_text(encoding="utf-8")
