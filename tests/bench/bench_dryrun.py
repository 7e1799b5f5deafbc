"""Benchmark (run by hand): radpath's dry-run against a bare Snakefile of the same shape.

    .venv/bin/python tests/bench/bench_dryrun.py [--sizes 100 1000 5000] [--repeats 1]
        [--shared ../shared/bench]

radpath: `.venv/bin/snakemake -n --cores 2` in the project root with the shipped config
(config/config.yaml; its deep CT pretraining sheets are the demo's, so demo_data/ must exist:
`make demo`) and `--config patients=... clinical=... slides=...` naming N placeholder patients
with 2 slides each. Bare: the shared bench's bare.Snakefile (../shared/bench next to the
checkout, or --shared; where it is missing, as in a fresh clone, an embedded copy of it): one
job per patient and three per slide, each `touch {output}`, plus the cohort and `all` jobs,
dry-run with `-d` a scratch folder on the same patients and slides. Sheets: the shared
make_sheets.py, else tests/support/placeholders.write_placeholder_cohort (the bare sheets are
its rows with absolute paths); both workflows must get the same patients and slides, 2 slides
per patient, or the script stops.

Every run is a fresh process, radpath and bare alternated --repeats times; its CPU seconds
(user + sys) and peak RSS are the child's own (os.wait4, its waited-for children included).
Prints per size: radpath CPU s, jobs (the `total` line of the dry-run's job stats) and peak
MiB; the same for bare (medians); the ratios of the medians (CPU, RSS); and radpath CPU ms per
patient, overall and per patient added since the previous size (whether it grows with the
cohort).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "bench"
SLIDES_PER_PATIENT = 2

# A copy of ../shared/bench/bare.Snakefile, for checkouts without it.
BARE_SNAKEFILE = """\
import pandas as pd
P = pd.read_csv(config["patients"], sep="\\t", dtype=str).set_index("patient_id", drop=False)
S = pd.read_csv(config["slides"], sep="\\t", dtype=str).set_index("slide_id", drop=False)
wildcard_constraints:
    patient=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    slide=r"[A-Za-z0-9][A-Za-z0-9._-]*",
rule all:
    input: "results/report.tsv"
rule radiomics:
    input: ct=lambda w: P.loc[w.patient, "ct"], mask=lambda w: P.loc[w.patient, "mask"]
    output: "results/radiomics/{patient}.tsv"
    shell: "touch {output}"
rule tissue:
    input: lambda w: S.loc[w.slide, "path"]
    output: "results/slides/{slide}/tissue.png"
    shell: "touch {output}"
rule coords:
    input: "results/slides/{slide}/tissue.png"
    output: "results/slides/{slide}/coords.h5"
    shell: "touch {output}"
rule embed:
    input: "results/slides/{slide}/coords.h5"
    output: "results/slides/{slide}/features.h5"
    resources: gpu=1
    shell: "touch {output}"
rule cohort:
    input: expand("results/radiomics/{p}.tsv", p=P.index), expand("results/slides/{s}/features.h5", s=S.index)
    output: "results/report.tsv"
    shell: "touch {output}"
"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000],
                        help="patients per cohort (2 slides each)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each workflow per size")
    parser.add_argument("--shared", type=Path, default=SHARED,
                        help="folder of bare.Snakefile and make_sheets.py (default "
                             "../shared/bench next to the checkout)")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- sheets


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def write_tsv(path: Path, header: list[str], rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, header, delimiter="\t", extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_sheets(shared: Path, n: int, out: Path) -> tuple[dict[str, Path], str]:
    """radpath's patients/clinical/slides sheets and bare's patients/slides sheets of n
    placeholder patients x 2 slides, and which writer made them."""
    make_sheets = shared / "make_sheets.py"
    if make_sheets.is_file():
        subprocess.run([sys.executable, str(make_sheets), str(n), str(out)], check=True)
        names = {key: f"{key}_{n}.tsv" for key in ("patients", "clinical", "slides",
                                                   "bare_patients", "bare_slides")}
        return {key: out / name for key, name in names.items()}, str(make_sheets)
    sys.path.insert(0, str(REPO / "tests" / "support"))
    from placeholders import write_placeholder_cohort

    data = write_placeholder_cohort(out / "cohort", n, slides_per_patient=SLIDES_PER_PATIENT)

    def absolute(rows: list[dict[str, str]], columns: tuple[str, ...]) -> list[dict[str, str]]:
        return [{**row, **{c: str((data / row[c]).resolve()) for c in columns}} for row in rows]

    sheets = {key: data / f"{key}.tsv" for key in ("patients", "clinical", "slides")}
    sheets["bare_patients"] = write_tsv(
        out / "bare_patients.tsv", ["patient_id", "ct", "mask"],
        absolute(read_tsv(sheets["patients"]), ("ct", "mask")))
    sheets["bare_slides"] = write_tsv(
        out / "bare_slides.tsv", ["slide_id", "patient_id", "path"],
        absolute(read_tsv(sheets["slides"]), ("path",)))
    return sheets, "tests/support/placeholders.py"


def check_same_cohort(sheets: dict[str, Path], n: int) -> None:
    """Stop unless radpath and bare get the same n patients and the same slides, 2 each."""
    patients = [row["patient_id"] for row in read_tsv(sheets["patients"])]
    clinical = [row["patient_id"] for row in read_tsv(sheets["clinical"])]
    bare_patients = [row["patient_id"] for row in read_tsv(sheets["bare_patients"])]
    slides = {row["slide_id"]: row["patient_id"] for row in read_tsv(sheets["slides"])}
    bare_slides = {row["slide_id"]: row["patient_id"] for row in read_tsv(sheets["bare_slides"])}
    per_patient = {p: 0 for p in patients}
    for patient in slides.values():
        per_patient[patient] = per_patient.get(patient, 0) + 1
    problems = []
    if len(patients) != n or len(set(patients)) != n:
        problems.append(f"radpath's patients sheet has {len(set(patients))} patients, not {n}")
    if set(clinical) != set(patients):
        problems.append("the clinical sheet's patients differ from the patients sheet's")
    if set(bare_patients) != set(patients):
        problems.append("bare's patients differ from radpath's")
    if bare_slides != slides:
        problems.append("bare's slides (or their patients) differ from radpath's")
    if set(per_patient.values()) != {SLIDES_PER_PATIENT}:
        problems.append(f"not {SLIDES_PER_PATIENT} slides for every patient")
    if problems:
        raise SystemExit("sheets: " + "; ".join(problems))


# ------------------------------------------------------------------------------- runs


def total_jobs(text: str) -> int | None:
    """The `total` line of a dry-run's job stats (0 when there is nothing to do)."""
    match = re.search(r"^total\s+(\d+)\s*$", text, re.MULTILINE)
    if match:
        return int(match.group(1))
    return 0 if "Nothing to be done" in text else None


def run_measured(command: list[str], cwd: Path, log: Path) -> dict:
    """Run a fresh process; its own CPU seconds, peak RSS (os.wait4), wall seconds, jobs."""
    with open(log, "w", encoding="utf-8") as handle:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    text = log.read_text(encoding="utf-8", errors="replace")
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {process.returncode}):\n"
                         f"{text[-3000:]}")
    return {"cpu": usage.ru_utime + usage.ru_stime, "rss_mib": usage.ru_maxrss / 1024,
            "wall": wall, "jobs": total_jobs(text)}


def jobs(result: dict) -> str:
    return "?" if result["jobs"] is None else str(result["jobs"])


def check_demo_pretraining() -> None:
    """The shipped config's deep CT pretraining sheets (the demo's) must exist."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    pretrain = (config.get("deep_ct") or {}).get("pretrain") or {}
    missing = [p for p in (pretrain.get("patients"), pretrain.get("clinical"))
               if p and not (REPO / p).exists()]
    if missing:
        raise SystemExit(f"the shipped config's pretraining sheets are missing ({', '.join(missing)}):"
                         " run `make demo` (or link an existing demo_data/) first")


def main(argv=None) -> None:
    args = parse_args(argv)
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    check_demo_pretraining()
    shared_bare = args.shared / "bare.Snakefile"
    if (REPO / "results").exists():
        print(f"note: {REPO / 'results'} exists: its outputs count as done in radpath's "
              "dry-run", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if shared_bare.is_file():
            bare_snakefile, bare_source = shared_bare, str(shared_bare)
        else:
            bare_snakefile = work / "bare.Snakefile"
            bare_snakefile.write_text(BARE_SNAKEFILE, encoding="utf-8")
            bare_source = f"embedded copy ({shared_bare} missing)"
        for size in args.sizes:
            out = work / f"n{size}"
            out.mkdir()
            sheets, sheet_source = write_sheets(args.shared, size, out)
            check_same_cohort(sheets, size)
            bare_dir = out / "bare"
            bare_dir.mkdir()
            commands = {
                "radpath": [snakemake, "-n", "--cores", "2", "--config",
                            f"patients={sheets['patients']}", f"clinical={sheets['clinical']}",
                            f"slides={sheets['slides']}"],
                "bare": [snakemake, "-s", str(bare_snakefile), "-n", "--cores", "2",
                         "-d", str(bare_dir), "--config", f"patients={sheets['bare_patients']}",
                         f"slides={sheets['bare_slides']}"],
            }
            if size == args.sizes[0]:
                print(f"bare Snakefile: {bare_source}\nsheets: {sheet_source}", flush=True)
            runs = {who: [] for who in commands}
            for repeat in range(args.repeats):  # alternated: drift hits both alike
                for who, command in commands.items():
                    run = run_measured(command, REPO, out / f"{who}_{repeat}.log")
                    runs[who].append(run)
                    print(f"{size:>6} patients, {who:7s} run {repeat + 1}: {run['cpu']:7.2f} CPU s "
                          f"({run['wall']:6.2f} s wall), {run['rss_mib']:6.0f} MiB peak, "
                          f"{run['jobs']} jobs", flush=True)
            expected_bare = 1 + size + 3 * SLIDES_PER_PATIENT * size + 1
            if runs["bare"][0]["jobs"] != expected_bare:
                print(f"note: bare has {runs['bare'][0]['jobs']} jobs, expected {expected_bare}")
            rows.append((size, {who: {key: statistics.median(r[key] for r in kept)
                                      for key in ("cpu", "rss_mib", "wall")}
                                | {"jobs": kept[0]["jobs"]} for who, kept in runs.items()}))

    print(f"\nmedians of {args.repeats} run(s) per workflow; CPU = user + sys of the snakemake "
          "process and its children")
    print(f"{'patients':>8} {'slides':>6} | {'radpath CPU s':>13} {'jobs':>6} {'peak MiB':>8} | "
          f"{'bare CPU s':>10} {'jobs':>6} {'peak MiB':>8} | {'CPU ratio':>9} {'RSS ratio':>9} | "
          f"{'radpath ms/patient':>18} {'per added patient':>17}")
    previous = None
    for size, result in rows:
        ours, bare = result["radpath"], result["bare"]
        per_patient = 1000 * ours["cpu"] / size
        added = (f"{1000 * (ours['cpu'] - previous[1]) / (size - previous[0]):17.1f}"
                 if previous and size != previous[0] else f"{'-':>17}")
        print(f"{size:8d} {SLIDES_PER_PATIENT * size:6d} | {ours['cpu']:13.2f} {jobs(ours):>6} "
              f"{ours['rss_mib']:8.0f} | {bare['cpu']:10.2f} {jobs(bare):>6} "
              f"{bare['rss_mib']:8.0f} | {ours['cpu'] / bare['cpu']:9.2f} "
              f"{ours['rss_mib'] / bare['rss_mib']:9.2f} | {per_patient:18.1f} {added}")
        previous = (size, ours["cpu"])


if __name__ == "__main__":
    main()
