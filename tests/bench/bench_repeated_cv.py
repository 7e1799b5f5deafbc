"""Benchmark (run by hand): one cv_model job (validation.method: repeated_cv) on synthetic
cohorts of growing size.

    .venv/bin/python tests/bench/bench_repeated_cv.py [--sizes 100 300] [--features 1200]
        [--folds 5] [--repeats 20]

Each size makes a cohort (age, a three-level stage, radiomics-like features of which two
carry signal, two scanners with a location and scale effect) and runs radpath.survival.repeated_cv's
cross_validate for the model clinical_radiomics (ComBat, selection with config.yaml's
settings and Cox refitted in every fold), BLAS at one thread as in the job. Prints per size:
fits, failed fits, mean C, CPU and wall seconds, seconds per fit and the peak RSS.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # before numpy: one BLAS thread, as in the job
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from radpath.survival.repeated_cv import CohortInputs, cross_validate, summarize  # noqa: E402


def cohort(n: int, n_features: int, seed: int = 42) -> CohortInputs:
    rng = np.random.default_rng(seed)
    ids = pd.Index([f"P{i:05d}" for i in range(n)], name="patient_id")
    hazard = rng.normal(size=n)
    time_ = rng.exponential(30 * np.exp(-0.8 * hazard)) + 0.1
    censor = rng.uniform(12, 72, n)
    outcomes = pd.DataFrame({"split": "train", "os_time": np.minimum(time_, censor),
                             "os_event": (time_ <= censor).astype(int)}, index=ids)
    clinical = pd.DataFrame({"age": rng.integers(40, 85, n).astype(str),
                             "stage": rng.choice(["I", "II", "III"], n)}, index=ids)
    latent = rng.normal(size=(n, 40))
    features = latent[:, rng.integers(0, 40, n_features)] + rng.normal(scale=0.5, size=(n, n_features))
    features[:, 0] += hazard
    features[:, 1] -= 0.5 * hazard
    scanner = np.where(rng.random(n) < 0.5, "A", "B")
    features = np.exp(0.3 * features) * np.where(scanner == "A", 1.0, 1.4)[:, None] + (scanner == "A")[:, None]
    raw = pd.DataFrame(features, index=ids, columns=[f"f{j:04d}" for j in range(n_features)])
    return CohortInputs(outcomes, clinical, {"radiomics": raw}, pd.Series(scanner, index=ids))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--features", type=int, default=1200)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    covariates = config["covariates"]
    harmonization = {**config["harmonization"], "covariates": ["age"]}
    spec = {"clinical": True, "blocks": ["radiomics"]}
    print("patients\tfits\tfailed\tmean_c\tcpu_s\twall_s\ts_per_fit\tpeak_rss_mb")
    for n in args.sizes:
        inputs = cohort(n, args.features)
        cpu, wall = time.process_time(), time.perf_counter()
        table = cross_validate(inputs, spec, "os", covariates, harmonization,
                               config["selection"], config["cox"], args.folds, args.repeats, 42)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        s = summarize("os", "clinical_radiomics", table)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{n}\t{s['fits']}\t{s['failed']}\t{s['mean_c']:.3f}\t{cpu:.0f}\t{wall:.0f}\t"
              f"{wall / s['fits']:.2f}\t{rss:.0f}", flush=True)


if __name__ == "__main__":
    main()
