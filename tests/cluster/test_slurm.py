"""The workflow on a real single-node SLURM cluster (tests/support/slurm.py starts it).

The cluster has no slurmdbd (so `sacct` cannot answer) and finds its slurm.conf only through
SLURM_CONF. It runs the same 20-patient cohort and config as the local run (`local_run`:
every branch at its smallest settings) with the shipped profiles/slurm after the README's
site edits (`site_profile`), and the cancellation tests with tests/cluster/profile, a
variant that polls every 2 s.
"""

from __future__ import annotations

import csv
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from radpath.inputs.configuration import default_config
from radpath.inputs.io import read_tsv
from slurm import SlurmCluster, cancel_all_jobs
from smk import REPO, SNAKEFILE, assert_same_results, run, write_config

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PROFILE = REPO / "tests" / "cluster" / "profile"
SHIPPED_PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
SUBMITTED = re.compile(r"Job (\S+) has been submitted with SLURM jobid (\d+)")
RUN_ID = re.compile(r"SLURM run ID: (\S+)")
# The whole 20-patient workflow on the test's one-node SLURM, deep CT pretraining and its
# random-start twins included, took just over 1800 s on 2 cores (2026-12-02).
RUN_TIMEOUT_S = 3000
# A run whose status command cannot answer must stop before this (it used to hang).
FAIL_FAST_S = 180
# The shipped profile leaves the plugin's status polling at its defaults (first query 40 s
# after a job finishes, 10 s more after each query that finds none done), sized for a busy
# cluster's scheduler. Seconds-long test jobs would spend most of the run waiting for it, so
# the shipped-profile run polls sooner; every request, group and limit stays the profile's.
FAST_POLLING = ("--slurm-init-seconds-before-status-checks", "2",
                "--seconds-between-status-checks", "2")


def site_profile(folder: Path, cluster: SlurmCluster, status_command: str | None = "squeue"
                 ) -> Path:
    """profiles/slurm copied to `folder` with exactly the README's site edits: partition,
    account line deleted (no accounts here), `cores` at most the node's CPUs and, without
    slurmdbd, the status command squeue (None: left at the shipped sacct)."""
    text = SHIPPED_PROFILE.read_text(encoding="utf-8")
    edits = [
        (r'^(  slurm_partition: )"CHANGE_ME"', rf'\g<1>"{cluster.partition}"'),
        (r'^  slurm_account: "CHANGE_ME" .*\n', ""),
        (r"^cores: 8 ", f"cores: {min(8, cluster.node.cpus)} "),
    ]
    if status_command:
        edits.append((r"^(slurm-status-command: )sacct ", rf"\g<1>{status_command} "))
    for pattern, replacement in edits:
        text, n = re.subn(pattern, replacement, text, flags=re.M)
        assert n == 1, f"profiles/slurm changed: update the README's edits and {pattern!r}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(text, encoding="utf-8")
    return folder


def snakemake_command(workdir: Path, config: Path, *extra: str, profile: Path = PROFILE
                      ) -> list[str]:
    return [
        sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE),
        "--directory", str(workdir), "--configfile", str(config),
        "--profile", str(profile), *extra,
    ]


def run_on_cluster(cluster: SlurmCluster, workdir: Path, config: Path, *extra: str, check=True,
                   profile: Path = PROFILE, timeout_s: float = RUN_TIMEOUT_S):
    result = subprocess.run(
        snakemake_command(workdir, config, *extra, profile=profile), env=cluster.env,
        capture_output=True, text=True, encoding="utf-8", timeout=timeout_s,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake on SLURM failed ({result.returncode}):\n{result.stderr[-8000:]}\n"
            f"{cluster.log_tails()}"
        )
    return result


def submitted_job_ids(snakemake_output: str) -> list[str]:
    """SLURM job IDs of every submission, in order, from snakemake's output."""
    return [slurm_id for _, slurm_id in SUBMITTED.findall(snakemake_output)]


def rule_submissions(snakemake_output: str, rule: str) -> list[str]:
    """SLURM job IDs of the submissions of one rule (the plugin's log path names the rule)."""
    return re.findall(rf"submitted with SLURM jobid (\d+) \(log: [^)]*/rule_{rule}/", snakemake_output)


def group_submissions(snakemake_output: str, group: str) -> list[str]:
    """SLURM job IDs of the bundles of one job group (the plugin's log path names it)."""
    return re.findall(rf"submitted with SLURM jobid (\d+) \(log: [^)]*/group_{group}",
                      snakemake_output)


# Rules that ask for a GPU: tile embedding, PathoSig's clustering training and assignment,
# deep CT pretraining, training and Grad-CAM.
GPU_RULES = {"slide_embedding", "pathosig_train", "pathosig_assign", "deep_ct_pretrain",
             "deep_ct_train", "deep_ct_gradcam", "synthesis_train", "synthesis_sample"}


def job_record(cluster: SlurmCluster, job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (the cluster keeps finished jobs: MinJobAge=86400)."""
    line = cluster.run("scontrol", "show", "job", "--oneliner", job_id).stdout
    return dict(re.findall(r"(\w[\w/:]*)=(\S*)", line))


def planned_job_counts(snakemake_output: str) -> dict[str, int]:
    """The 'Job stats' table snakemake prints before running: rule -> number of jobs."""
    table = snakemake_output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def profile_value(profile: Path, *keys: str):
    value = yaml.safe_load((profile / "config.yaml").read_text(encoding="utf-8"))
    for key in keys:
        value = value[key]
    return value


def first_slide(cohort: Path) -> str:
    with open(cohort / "slides.tsv", encoding="utf-8") as handle:
        return next(csv.DictReader(handle, delimiter="\t"))["slide_id"]


@pytest.fixture(scope="module")
def cluster_run(slurm_cluster, local_run, tmp_path_factory):
    """The whole workflow on SLURM with the local run's config (same cohort, same seed),
    through the shipped profile after the README's site edits."""
    _, config = local_run
    workdir = tmp_path_factory.mktemp("slurm_run")
    profile = site_profile(workdir / "profile", slurm_cluster)
    started = time.monotonic()
    result = run_on_cluster(slurm_cluster, workdir, config, *FAST_POLLING, profile=profile)
    print(f"shipped-profile run on SLURM: {time.monotonic() - started:.0f} s")
    return workdir, profile, config, result.stdout + result.stderr


def test_every_job_ran_through_slurm(slurm_cluster, cluster_run):
    workdir, profile, _, output = cluster_run
    planned = planned_job_counts(output)
    # `all` has no action and stays local; the per-patient CT and slide tiling jobs are bundled
    # by group-components.
    planned.pop("all")
    bundled = {group: planned.pop(group) for group in ("ct_patient", "slide_tiles", "ct_cubes")}
    expected = sum(planned.values()) + sum(
        math.ceil(n_jobs / int(profile_value(profile, "group-components", group)))
        for group, n_jobs in bundled.items()
    )

    job_ids = submitted_job_ids(output)
    assert len(job_ids) == len(set(job_ids)) == expected, output[-4000:]
    records = {job_id: job_record(slurm_cluster, job_id) for job_id in job_ids}
    assert {r["JobState"] for r in records.values()} == {"COMPLETED"}

    by_rule: dict[str, list[dict]] = {}
    for record in records.values():
        rule = re.sub(r"^rule_|_wildcards_.*$", "", record["Comment"])
        by_rule.setdefault(rule, []).append(record)
    assert len(by_rule["slide_embedding"]) == planned["slide_embedding"]
    assert len(by_rule["pathosig_assign"]) == planned["pathosig_assign"] > 0
    # One deep CT training job per endpoint x network x fold (2 x 1 x 3), from the pretrained
    # start (no random-start twins here), and as many twins without synthetic CTs; one
    # pretraining job per endpoint x network.
    assert len(by_rule["deep_ct_train"]) == planned["deep_ct_train"] == 12
    assert len(by_rule["deep_ct_pretrain"]) == planned["deep_ct_pretrain"] == 2
    for rule, rule_records in by_rule.items():
        for record in rule_records:
            assert gpus_requested(record) == (1 if rule in GPU_RULES else 0), (rule, record)
            assert record["Partition"] == slurm_cluster.partition
    # ... and SLURM allocated one of the node's GPUs to each (the job's environment says so).
    slide_logs = list((workdir / "logs/pathology/resnet50_trunc/shards").glob("*.log"))
    assert len(slide_logs) == planned["slide_embedding"]
    for slide_log in slide_logs:
        assert re.search(r"CUDA_VISIBLE_DEVICES=\d+",
                         slide_log.read_text(encoding="utf-8")), slide_log


def memory_mb(record: dict[str, str]) -> int:
    """The job's memory request in MB (`MinMemoryNode=4000M`, or `G`)."""
    value = record["MinMemoryNode"]
    return int(float(value[:-1]) * (1024 if value.endswith("G") else 1))


def minutes(time_limit: str) -> int:
    """A SLURM time limit ([D-]HH:MM:SS) in minutes."""
    days, _, clock = time_limit.rpartition("-")
    hours, mins, _ = map(int, clock.split(":"))
    return (int(days or 0) * 24 + hours) * 60 + mins


def test_requests_follow_the_rules_and_fit_the_node(slurm_cluster, cluster_run):
    """An embedding job asks for pathology.threads CPUs and the memory its DataLoader
    workers need, a GPU, and a tiling bundle no GPU; a CT bundle for `cores` CPUs, `cores` x the per-patient memory and the
    runtime of its rounds; nothing asks for more than the node has (else it pends forever)."""
    workdir, profile, config, output = cluster_run
    run_config = yaml.safe_load(config.read_text(encoding="utf-8"))
    cores = int(profile_value(profile, "cores"))
    bundle = int(profile_value(profile, "group-components", "ct_patient"))
    records = [job_record(slurm_cluster, job_id) for job_id in submitted_job_ids(output)]
    slides = [job_record(slurm_cluster, i) for i in rule_submissions(output, "slide_embedding")]
    bundles = [job_record(slurm_cluster, i) for i in group_submissions(output, "ct_patient")]
    tilings = [job_record(slurm_cluster, i) for i in group_submissions(output, "slide_tiles")]
    assert slides and bundles and tilings, output[-4000:]
    assert not any(gpus_requested(record) for record in tilings)

    workers = run_config["pathology"]["embedding"]["num_workers"]
    for record in slides:
        assert int(record["NumCPUs"]) == run_config["pathology"]["threads"]
        assert memory_mb(record) == 4000 + 1000 * workers
    for record in bundles:  # 10 patients, `cores` at a time: ceil(10 / cores) rounds
        assert int(record["NumCPUs"]) == cores
        assert memory_mb(record) == cores * 2000
        assert minutes(record["TimeLimit"]) == math.ceil(bundle / cores) * 20
    for record in records:
        assert int(record["NumCPUs"]) <= slurm_cluster.node.cpus, record
        assert memory_mb(record) <= slurm_cluster.node.real_memory_mb, record
    threads = run_config["pathology"]["threads"]
    for slide_log in (workdir / "logs/pathology/resnet50_trunc/shards").glob("*.log"):
        assert (f"{threads} CPUs: {workers} DataLoader workers, {threads - workers} torch threads"
                in slide_log.read_text(encoding="utf-8")), slide_log


def gpus_requested(record: dict[str, str]) -> int:
    """GPUs a job asked for (--gpus lands in TresPerJob as gres:gpu:N or gres/gpu:N)."""
    requests = ",".join(record.get(k, "") for k in ("TresPerJob", "TresPerNode", "TresPerTask"))
    match = re.search(r"gres[:/]gpu(?::[\w.-]+)?[:=](\d+)", requests)
    return int(match.group(1)) if match else 0


def test_cluster_results_match_local_run(local_run, cluster_run):
    local_workdir, _ = local_run
    workdir = cluster_run[0]
    assert (workdir / "results/report/report.html").stat().st_size > 10_000
    assert_same_results(local_workdir, workdir)


def wait_for(what: str, condition, timeout_s: float, process: subprocess.Popen):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if process.poll() is not None:
            raise AssertionError(f"snakemake ended before {what}:\n{process.stderr.read()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return value


def running_job(cluster: SlurmCluster, comment_prefix: str) -> str | None:
    result = cluster.run("squeue", "--noheader", "--states=RUNNING", "--format=%i|%k")
    for line in result.stdout.splitlines():
        job_id, comment = line.split("|", 1)
        if comment.startswith(comment_prefix):
            return job_id
    return None


@pytest.mark.parametrize("recovery", ["next_invocation", "retries"])
def test_cancelled_embedding_job_is_rerun(slurm_cluster, small_cohort, tmp_path, recovery):
    """scancel the embedding job mid-run: no partial features file is ever taken as
    complete, and the job is re-run on the next invocation or by --retries."""
    slide = first_slide(small_cohort)
    # A slower encoder and more tiles than the defaults, so the job is still embedding when
    # it is cancelled (resnet50_trunc embeds the demo slide's tiles in about a second).
    pathology = default_config()["pathology"]
    encoder = "vit_base_patch16_224"
    pathology["embedding"] = {**pathology["embedding"], "encoder": encoder}
    pathology["tiles"] = {**pathology["tiles"], "min_tissue_fraction": 0.2}
    pathology["slides_per_job"] = 1  # a GPU job of its own: its shard is named by the slide
    config = write_config(tmp_path / "config.yaml", small_cohort, pathology=pathology)
    shard = f"results/pathology/{encoder}/shards/{slide}"
    target = f"{shard}/{slide}.h5"
    log = tmp_path / "logs" / "pathology" / encoder / "shards" / f"{slide}.log"
    extra = [shard, *(["--retries", "1"] if recovery == "retries" else [])]

    process = subprocess.Popen(
        snakemake_command(tmp_path, config, *extra), env=slurm_cluster.env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
    )
    try:
        job_id = wait_for(
            "the embedding job to run",
            lambda: running_job(slurm_cluster, f"rule_slide_embedding_wildcards_{slide}"),
            300, process,
        )
        wait_for("embedding to start", lambda: log.exists() and ": embedding " in log.read_text(
            encoding="utf-8"), 120, process)
        slurm_cluster.run("scancel", job_id)
        output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
        cancel_all_jobs(slurm_cluster)

    assert job_id in submitted_job_ids(output)
    if recovery == "next_invocation":
        assert process.returncode != 0, output[-4000:]
        slide_dir = tmp_path / shard
        survivors = list(slide_dir.iterdir()) if slide_dir.exists() else []
        assert not survivors, "a cancelled job's output must not survive"
        second = run_on_cluster(slurm_cluster, tmp_path, config, shard)
        output = second.stdout + second.stderr
        assert len(rule_submissions(output, "slide_embedding")) == 1, "the next run re-runs it"
        assert not group_submissions(output, "slide_tiles"), "the tiles are kept"
    else:
        assert process.returncode == 0, output[-4000:]
        assert len(rule_submissions(output, "slide_embedding")) == 2, "--retries resubmits it"

    leftovers = list((tmp_path / shard).glob(".tmp-*"))
    assert not leftovers, "SIGTERM from scancel removes the half-written temporary file"
    local_workdir = tmp_path / "local"  # the same slide computed without SLURM
    local_workdir.mkdir()
    run(local_workdir, config, shard)
    with h5py.File(tmp_path / target) as rerun, h5py.File(local_workdir / target) as local:
        np.testing.assert_array_equal(rerun["coords"][:], local["coords"][:])
        np.testing.assert_allclose(rerun["features"][:], local["features"][:], atol=1e-5)


def active_jobs_named(cluster: SlurmCluster, name: str) -> list[str]:
    """IDs of the jobs called `name` that are still pending or running."""
    result = cluster.run("squeue", "--noheader", "--format=%i", f"--name={name}",
                         "--states=PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED")
    return result.stdout.split()


def test_sacct_without_accounting_stops_the_run_at_once(slurm_cluster, small_cohort, tmp_path):
    """The shipped status command (sacct) on a cluster without slurmdbd: the run stops before
    it submits anything, with one line naming the fix, instead of losing track of its jobs."""
    profile = site_profile(tmp_path / "profile", slurm_cluster, status_command=None)
    config = write_config(tmp_path / "config.yaml", small_cohort)
    started = time.monotonic()
    try:
        result = run_on_cluster(slurm_cluster, tmp_path, config, check=False, profile=profile,
                                timeout_s=FAIL_FAST_S)
    finally:
        cancel_all_jobs(slurm_cluster)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-4000:]
    assert time.monotonic() - started < FAIL_FAST_S
    assert not submitted_job_ids(output), "nothing may be submitted"
    [line] = [line for line in output.splitlines() if line.startswith("radpath: `sacct` fails")]
    assert "Slurm accounting storage is disabled" in line
    assert "slurm-status-command: squeue" in line and "MinJobAge, 86400 s" in line


def test_readme_command_cancels_what_a_killed_run_left_queued(slurm_cluster, small_cohort,
                                                              tmp_path):
    """A run killed outright (a lost login session; Ctrl-C would cancel its jobs itself)
    leaves its jobs queued; `scancel --name=<SLURM run ID>` from the README cancels them."""
    profile = site_profile(tmp_path / "profile", slurm_cluster)
    config = write_config(tmp_path / "config.yaml", small_cohort)
    process = subprocess.Popen(
        snakemake_command(tmp_path, config, "--until", "ct_patient", profile=profile),
        env=slurm_cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        encoding="utf-8",
    )
    lines: list[str] = []
    try:
        for line in process.stdout:
            lines.append(line)
            if SUBMITTED.search(line) and len(submitted_job_ids("".join(lines))) == 2:
                break
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        output = "".join(lines)
        [run_id] = RUN_ID.findall(output)
        assert run_id.startswith("radpath_")
        assert active_jobs_named(slurm_cluster, run_id), "the killed run's jobs stay queued"
        slurm_cluster.run("scancel", f"--name={run_id}")
        deadline = time.monotonic() + 60
        while active_jobs_named(slurm_cluster, run_id) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not active_jobs_named(slurm_cluster, run_id)
    finally:
        if process.poll() is None:
            process.kill()
        cancel_all_jobs(slurm_cluster)


# The local run's own checks. Here, in this file, because `make test`'s workers take whole
# files (--dist loadfile): the run is built once, for the comparison and for this test.
def test_synthetic_cts_join_only_each_folds_fit_patients(local_run):
    """deep_ct.synthetic_augmentation (the 20-patient run): a fold model fits the synthetic
    CTs of its own fit patients only; the twins without them train on the same real
    patients; the report compares both."""
    workdir, _ = local_run
    samples = sorted((workdir / "results/synthesis/samples").glob("real/*/draw*_ct.nii.gz"))
    sources = {p.parts[-2] for p in samples}
    assert sources
    for endpoint in ("os", "pfs"):
        base = workdir / "results/deep_ct" / endpoint
        for k in (1, 2, 3):
            usage = read_tsv(base / f"resnet10/fold{k}/usage.tsv")
            fit = set(usage["patient_id"][usage["role"].isin(["fit", "left_out"])])
            synthetic = usage["patient_id"][usage["role"] == "synthetic"]
            assert {p.split("~")[0] for p in synthetic} == fit & sources
            twin = read_tsv(base / f"resnet10-without_synthetic/fold{k}/usage.tsv")
            assert "synthetic" not in set(twin["role"])
            assert twin[["patient_id", "role"]].equals(
                usage[usage["role"] != "synthetic"][["patient_id", "role"]].reset_index(
                    drop=True))
        compared = read_tsv(base / "synthetic.tsv")
        assert list(compared["variant"]) == ["with synthetic CTs", "without synthetic CTs"]
        assert compared["validation_c"].between(0, 1).all()
    html = (workdir / "results/report/report.html").read_text(encoding="utf-8")
    assert "What synthetic CTs changed." in html
