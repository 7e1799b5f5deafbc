"""Benchmark (run by hand): dry-run time of radpath vs a bare Snakefile of the same shape.

    .venv/bin/python tests/bench/bench_dryrun.py [--sizes 100 1000 5000] [--repeats 1]

Both dry-run the same synthetic sheets (placeholder files, 2 slides per patient). The bare
Snakefile has one job per patient, three per slide and one cohort job (`shell: touch`).
Prints seconds per size and the ratio radpath / bare.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "support"))
sys.path.insert(0, str(REPO))

from placeholders import write_placeholder_cohort  # noqa: E402
from smk import write_config  # noqa: E402

BARE_SNAKEFILE = """
import csv
patients = [r["patient_id"] for r in csv.DictReader(open(config["patients"]), delimiter="\\t")]
slides = [r["slide_id"] for r in csv.DictReader(open(config["slides"]), delimiter="\\t")]

rule all:
    input: "cohort.done"

rule patient:
    output: "p/{patient}.done"
    shell: "touch {output}"

rule slide_a:
    output: "s/{slide}.a"
    shell: "touch {output}"

rule slide_b:
    input: "s/{slide}.a"
    output: "s/{slide}.b"
    shell: "touch {output}"

rule slide_c:
    input: "s/{slide}.a"
    output: "s/{slide}.c"
    shell: "touch {output}"

rule cohort:
    input:
        expand("p/{patient}.done", patient=patients),
        expand("s/{slide}.b", slide=slides),
        expand("s/{slide}.c", slide=slides),
    output: "cohort.done"
    shell: "touch {output}"
"""


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, encoding="utf-8")
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            data = write_placeholder_cohort(work / "data", size, slides_per_patient=2)
            config = write_config(work / "config.yaml", data)
            bare = work / "bare"
            bare.mkdir()
            (bare / "Snakefile").write_text(BARE_SNAKEFILE)
            ours_cmd = [snakemake, "-n", "-q", "--snakefile", str(REPO / "Snakefile"),
                        "--configfile", str(config), "--cores", "1"]
            bare_cmd = [snakemake, "-n", "-q", "--cores", "1", "--config",
                        f"patients={data / 'patients.tsv'}", f"slides={data / 'slides.tsv'}"]
            # Alternate the two so drift in the machine's speed hits both alike; keep the best.
            ours_runs, bare_runs = [], []
            for _ in range(args.repeats):
                ours_runs.append(timed(ours_cmd, work))
                bare_runs.append(timed(bare_cmd, bare))
            ours, bare_s = min(ours_runs), min(bare_runs)
            rows.append((size, ours, bare_s))
            print(f"{size:>6} patients: radpath {ours:7.2f} s   bare {bare_s:7.2f} s   "
                  f"ratio {ours / bare_s:5.2f}", flush=True)
    print("\npatients  slides  radpath_s  bare_s  ratio")
    for size, ours, bare_s in rows:
        print(f"{size:>8}  {2 * size:>6}  {ours:9.2f}  {bare_s:6.2f}  {ours / bare_s:5.2f}")


if __name__ == "__main__":
    main()
