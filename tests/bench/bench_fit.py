"""Benchmark (run by hand): one fit_model job on synthetic cohort matrices of growing size.

    .venv/bin/python tests/bench/bench_fit.py [--sizes 40 200 1000 5000] [--B 50] [--threads 1]
        [--save DIR] [--library OTHER/CHECKOUT] [--config FILE] [--cpu-limit SECONDS]

Each size writes the cohort matrices a run would (results/cohort/outcomes.tsv, clinical.tsv
with age and a one-hot stage, radiomics.tsv with 1,200 skewed, correlated radiomics-like
features of which a few carry signal; split by the workflow's seeded hash, 30% validation)
and runs the job's code (radpath.survival.fit.load_design and train_and_predict, model
clinical_radiomics, endpoint os, config.yaml's selection and cox settings, optimism bootstrap
B) in a fresh process with BLAS pinned to one thread, as in the job. Prints per size: training
patients and events, CPU seconds of the first fit and of the whole job (the process and its
workers), wall seconds, peak RSS of the job's process and the largest worker's.

``--threads`` is the job's threads (the optimism refits run in that many worker processes;
code without the parameter runs them in one). ``--save DIR`` also writes the job's outputs per size (DIR/n<size>/model.json, ...) to
compare two versions of the code; ``--library`` imports radpath from another checkout (e.g. a
snapshot of the code before a change). ``--cpu-limit`` stops a size after that many CPU
seconds and reports it unfinished.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
N_FEATURES = 1200
N_LATENT = 40
N_FAMILIES = 300
SEED = 42
VALIDATION_FRACTION = 0.3
BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def write_cohort(folder: Path, n: int, seed: int = SEED) -> dict[str, Path]:
    """outcomes.tsv, clinical.tsv and radiomics.tsv as the cohort rules write them."""
    import numpy as np
    import pandas as pd

    from radpath.inputs.cohort import split_draw
    from radpath_demo.cohort import patient_ids

    rng = np.random.default_rng(seed + n)
    ids = pd.Index(patient_ids(n), name="patient_id")
    age = rng.normal(63, 9, n).round()
    stage = rng.choice(["I", "II", "III", "IV"], n, p=[0.3, 0.3, 0.3, 0.1])
    clinical = pd.DataFrame({"age": age}, index=ids)
    for level in ("II", "III", "IV"):
        clinical[f"stage[{level}]"] = (stage == level).astype(float)

    # Families of filtered variants of one base feature, as pyradiomics' image types give.
    latent = rng.normal(size=(n, N_LATENT))
    loadings = rng.normal(size=(N_LATENT, N_FAMILIES)) * (rng.random((N_LATENT, N_FAMILIES)) < 0.2)
    base = latent @ loadings / np.sqrt(np.maximum((loadings**2).sum(axis=0), 1e-12))
    base += rng.normal(size=(n, N_FAMILIES)) * rng.uniform(0.3, 1.2, N_FAMILIES)
    family = rng.integers(0, N_FAMILIES, N_FEATURES)
    noise = rng.normal(size=(n, N_FEATURES)) * rng.uniform(0.1, 1.0, N_FEATURES)
    values = np.exp(0.5 * (base[:, family] + noise)) * rng.lognormal(0, 2, N_FEATURES)
    discrete = rng.choice(N_FEATURES, 40, replace=False)  # counts, some mostly zero
    scale = rng.uniform(0.05, 5.0, discrete.size)
    values[:, discrete] = np.floor(values[:, discrete] / values[:, discrete].mean(axis=0) * scale)
    names = [f"original_feature_{i:04d}" for i in range(N_FEATURES)]
    radiomics = pd.DataFrame(values, index=ids, columns=names)

    stage_effect = np.select([stage == "II", stage == "III", stage == "IV"], [0.3, 0.7, 1.2], 0.0)
    lp = stage_effect + 0.02 * (age - 63) + 0.45 * latent[:, 0] - 0.35 * latent[:, 1]
    outcomes = pd.DataFrame(index=ids)
    outcomes["split"] = [
        "validation" if split_draw(pid, seed) < VALIDATION_FRACTION else "train" for pid in ids
    ]
    for endpoint, scale in (("os", 120.0), ("pfs", 80.0)):
        event_time = rng.exponential(scale * np.exp(-lp))
        censor_time = rng.uniform(6.0, 48.0, n)
        outcomes[f"{endpoint}_time"] = np.minimum(event_time, censor_time).round(2) + 0.01
        outcomes[f"{endpoint}_event"] = (event_time <= censor_time).astype(int)

    paths = {name: folder / f"{name}.tsv" for name in ("outcomes", "clinical", "radiomics")}
    outcomes.to_csv(paths["outcomes"], sep="\t", lineterminator="\n")
    clinical.to_csv(paths["clinical"], sep="\t", lineterminator="\n")
    radiomics.to_csv(paths["radiomics"], sep="\t", lineterminator="\n")
    return paths


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def stop_workers() -> None:
    """Join joblib's reusable worker processes, if any, so that their CPU time and memory are
    counted (RUSAGE_CHILDREN covers children that have exited)."""
    reusable = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(reusable, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True)


def run_job(folder: Path, B: int, threads: int, save: Path | None, config_path: str) -> dict:
    """The fit_model job on the cohort in folder (in this process); timings as a dict."""
    import inspect

    import yaml

    from radpath.inputs.io import write_json, write_tsv
    from radpath.survival import fit as survival_fit

    with open(config_path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    marks = {}
    real_optimism = survival_fit.optimism_corrected_c

    def marked_optimism(*args, **kwargs):
        marks["optimism_cpu"] = cpu_seconds()  # the first fit is done
        return real_optimism(*args, **kwargs)

    survival_fit.optimism_corrected_c = marked_optimism
    started_cpu, started_wall = cpu_seconds(), time.perf_counter()
    outcomes, design, forced, candidates = survival_fit.load_design(
        str(folder / "outcomes.tsv"), str(folder / "clinical.tsv"),
        {"radiomics": str(folder / "radiomics.tsv")},
    )  # fmt: skip
    loaded_cpu = cpu_seconds()
    extra = {}
    if "threads" in inspect.signature(survival_fit.train_and_predict).parameters:
        extra["threads"] = threads
    model, risk, optimism = survival_fit.train_and_predict(
        outcomes, design, forced, candidates, "os", config["selection"], config["cox"], B,
        config["seed"], **extra,
    )  # fmt: skip
    stop_workers()
    wall = time.perf_counter() - started_wall
    cpu = cpu_seconds() - started_cpu
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        write_json(model.to_dict(), save / "model.json")
        write_tsv(model.coefficients, save / "coefficients.tsv", index=False)
        write_tsv(model.selection_log, save / "selection.tsv", index=False)
        write_tsv(risk, save / "risk.tsv")
        write_json(optimism, save / "optimism.json")
    train_part = outcomes["split"] == "train"
    return {
        "train": int(train_part.sum()),
        "events": int(outcomes.loc[train_part, "os_event"].sum()),
        "first_fit_cpu_s": marks.get("optimism_cpu", loaded_cpu + cpu) - loaded_cpu,
        "cpu_s": cpu,
        "wall_s": wall,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "B_used": optimism.get("B_used"),
        "selected": len(model.features),
    }


def child_main(args: argparse.Namespace) -> None:
    """One size in this (fresh) process: write the cohort, run the job, print JSON."""
    sys.path.insert(0, str(Path(args.library).resolve()))
    with tempfile.TemporaryDirectory(prefix="bench_fit_") as tmp:
        folder = Path(tmp)
        write_cohort(folder, args.child)
        save = Path(args.save) / f"n{args.child}" if args.save else None
        result = run_job(folder, args.B, args.threads, save, args.config)
    print("RESULT " + json.dumps(result), flush=True)


def run_size(args: argparse.Namespace, size: int) -> dict:
    """Run one size in a child process with BLAS pinned to one thread."""
    env = {**os.environ, **dict.fromkeys(BLAS_ENV, "1")}
    command = [sys.executable, __file__, "--child", str(size), "--B", str(args.B),
               "--threads", str(args.threads), "--library", args.library, "--config", args.config]  # fmt: skip
    if args.save:
        command += ["--save", args.save]

    def limit_cpu() -> None:
        if args.cpu_limit:
            resource.setrlimit(resource.RLIMIT_CPU, (args.cpu_limit, args.cpu_limit + 5))

    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, encoding="utf-8",
                          preexec_fn=limit_cpu)  # fmt: skip
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    if args.cpu_limit and done.returncode != 0:
        return {"unfinished": f"stopped after {args.cpu_limit} CPU s "
                f"({time.perf_counter() - start:.0f} s wall)"}  # fmt: skip
    raise SystemExit(f"size {size} failed (rc {done.returncode}):\n{done.stderr[-3000:]}")


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text(encoding="utf-8").split()[:3])
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[40, 200, 1000, 5000])
    parser.add_argument("--B", type=int, default=50, help="optimism bootstrap resamples")
    parser.add_argument("--threads", type=int, default=1, help="the job's threads")
    parser.add_argument("--save", default="", help="write each size's job outputs here")
    parser.add_argument("--library", default=str(REPO), help="checkout whose radpath to import")
    parser.add_argument(
        "--config",
        default=str(REPO / "config" / "config.yaml"),
        help="selection, cox and seed from this config file",
    )
    parser.add_argument("--cpu-limit", type=int, default=0, help="CPU s per size (0 = none)")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return
    print(f"{os.cpu_count()} CPUs, load average {load_average()}; B={args.B}, "
          f"threads={args.threads}, radpath from {args.library}", flush=True)  # fmt: skip
    header = (f"{'patients':>8} {'train':>6} {'events':>6} {'first fit CPU s':>15} "
              f"{'job CPU s':>10} {'wall s':>8} {'peak MB':>8} {'worker MB':>9} {'B_used':>6}")  # fmt: skip
    print(header, flush=True)
    for size in args.sizes:
        r = run_size(args, size)
        if "unfinished" in r:
            print(f"{size:>8} {r['unfinished']}", flush=True)
            continue
        print(f"{size:>8} {r['train']:>6} {r['events']:>6} {r['first_fit_cpu_s']:>15.1f} "
              f"{r['cpu_s']:>10.1f} {r['wall_s']:>8.1f} {r['peak_mb']:>8.0f} "
              f"{r['worker_peak_mb']:>9.0f} {r['B_used']!s:>6}   load {load_average()}",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
