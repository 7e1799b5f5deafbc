import os
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from radpath.inputs.runtime import EXCLUSION_PREFIX, exclusion_reason, run_item


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
        from radpath.inputs.io import atomic_write
        from radpath.inputs.runtime import setup_logging
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


@pytest.mark.parametrize("on_error", ["stop", "exclude"])
@pytest.mark.parametrize("error", [
    MemoryError(),
    OSError(5, "Input/output error"),  # a network filesystem hiccup
    RuntimeError("CUDA error: an illegal memory access was encountered"),
    ValueError("CUDA out of memory while allocating the batch"),
], ids=["MemoryError", "OSError", "CUDA", "oom-valueerror"])
def test_resource_failures_fail_the_job_and_exclude_nothing(tmp_path, error, on_error):
    """A transient failure must fail the job (so --retries reruns it), never exclude the item."""
    def job():
        raise error

    outputs = [str(tmp_path / "f.tsv"), str(tmp_path / "f.h5")]
    with pytest.raises(type(error)):
        run_item("S1", "slide_id", job, outputs, on_error)
    assert list(tmp_path.iterdir()) == []


def test_torch_out_of_memory_fails_the_job_and_a_retry_succeeds(tmp_path):
    """torch.OutOfMemoryError is a RuntimeError: it used to be recorded as an exclusion."""
    import torch

    out = tmp_path / "features.h5"
    attempts = []

    def embed_once_out_of_memory():
        attempts.append(1)
        if len(attempts) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        out.write_text("features\n", encoding="utf-8")

    with pytest.raises(torch.OutOfMemoryError):
        run_item("S1", "slide_id", embed_once_out_of_memory, [str(out)], "exclude")
    assert not out.exists()
    run_item("S1", "slide_id", embed_once_out_of_memory, [str(out)], "exclude")  # the retry
    assert exclusion_reason(out) is None and out.read_text(encoding="utf-8") == "features\n"


def test_the_per_patient_job_starts_without_pandas():
    """radpath.cli's radiomics path must not pay pandas' import (a second per patient)."""
    code = "import sys, radpath.cli, radpath.radiomics.features; print('pandas' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, encoding="utf-8", check=True)
    assert result.stdout.strip() == "False"


def test_a_bad_parameter_file_fails_the_job_instead_of_excluding_the_patient(tmp_path):
    from radpath.radiomics.features import load_params

    params = tmp_path / "params.yaml"
    params.write_text("setting: [unclosed\n", encoding="utf-8")
    out = tmp_path / "features.tsv"
    with pytest.raises(ValueError, match="not valid YAML"):
        run_item("P1", "patient_id", lambda: load_params(params), [str(out)], "exclude")
    assert not out.exists()


def test_a_batch_handles_each_item_as_its_own_job(tmp_path):
    """stop: the other items are made, then the job fails naming every bad one; exclude: the
    bad one's outputs record why; a failure that is not the data's fails the job at once."""
    from radpath.inputs.runtime import BatchInputError, run_batch

    made = []

    def item(name, error=None):
        def job():
            if error is not None:
                raise error
            made.append(name)
        return (name, job, [str(tmp_path / f"{name}.h5")], [])

    items = [item("S1", ValueError("slide S1 (s1.svs): unreadable")), item("S2"),
             item("S3", ValueError("slide S3 (s3.svs): no tissue"))]
    with pytest.raises(BatchInputError) as raised:
        run_batch(items, "slide_id", "stop")
    assert str(raised.value).splitlines() == ["slide S1 (s1.svs): unreadable",
                                              "slide S3 (s3.svs): no tissue"]
    assert made == ["S2"]
    run_batch(items, "slide_id", "exclude")
    assert exclusion_reason(tmp_path / "S3.h5") == "slide S3 (s3.svs): no tissue"
    with pytest.raises(MemoryError):
        run_batch([item("S4", MemoryError()), item("S5")], "slide_id", "exclude")
    assert made == ["S2", "S2"]
