"""Seconds per patient: plain pyradiomics vs radpath's extract_patient vs the Snakemake job.

Run by hand (pytest does not collect it):

    .venv/bin/python tests/bench/bench_radiomics.py [--case realistic|demo] [--repeats 3]
        [--threads 1] [--demo-patients 3]

The realistic case is a chest CT: 256 x 256 x 80 voxels at 0.8 x 0.8 x 2.5 mm with a
textured 35 mm lesion, int16 NIfTI; the demo cases are the first patients of the demo
cohort as `make demo` draws it from config.yaml. Both are extracted with
config/pyradiomics_ct.yaml and the `ct` section of config/config.yaml (resampling to 1 mm). (a) and (b) include reading the files;
(b) also writes the two TSVs. (c) runs rule `radiomics` for the case in a scratch
workdir (skipped without a Snakefile) and also reports the job's own benchmark seconds.
(d) and (e) are fresh processes, start-up included, with BLAS at one thread as in the job:
(d) plain pyradiomics (import, read the parameter file, execute), (e) the job's own command
(`python -m radpath.cli ct_patient ...`, radiomics only); their ratio is the job's cost over plain pyradiomics.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import yaml
from scipy import ndimage

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from radiomics.featureextractor import RadiomicsFeatureExtractor  # noqa: E402

from radpath.inputs.ct import CTSettings, prepare_case  # noqa: E402
from radpath.radiomics.features import (
    extract_patient,
    load_params,
    pyradiomics_reference_params,
)  # noqa: E402
from radpath_demo import cohort as demo_cohort  # noqa: E402

PARAMS = REPO / "config" / "pyradiomics_ct.yaml"
SHAPE = (80, 256, 256)  # z, y, x
SPACING = (0.8, 0.8, 2.5)  # x, y, z mm
LESION_DIAMETER_MM = 35.0
PATIENT = "BENCH01"
SNAKEMAKE_TARGET = "results/radiomics/{patient_id}/features.tsv"  # rule radiomics
SNAKEMAKE_BENCHMARK = "benchmarks/radiomics/{patient_id}.tsv"
PLAIN_PROCESS = (
    "import sys, yaml\n"
    "from radiomics.featureextractor import RadiomicsFeatureExtractor\n"
    "with open(sys.argv[1], encoding='utf-8') as handle:\n"
    "    params = yaml.safe_load(handle)\n"
    "RadiomicsFeatureExtractor(params).execute(sys.argv[2], sys.argv[3])\n"
)


def write_case(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Lung-like background with vessels-ish noise and a textured lesion; int16 HU."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(SHAPE, dtype=np.float32)
    centre = np.array(SHAPE) / 2
    radius = np.sqrt(
        ((x - centre[2]) * SPACING[0]) ** 2
        + ((y - centre[1]) * SPACING[1] / 1.15) ** 2
        + ((z - centre[0]) * SPACING[2]) ** 2
    )
    lesion = radius <= LESION_DIAMETER_MM / 2 / 1.07
    hu = -820 + 60 * ndimage.gaussian_filter(rng.normal(size=SHAPE), 1.5) * 4
    texture = ndimage.gaussian_filter(rng.normal(size=SHAPE), 2.0) * 120
    hu[lesion] = 35 + texture[lesion] - 200 * (radius[lesion] < 5)  # necrotic core
    hu = ndimage.gaussian_filter(hu, (0.4, 0.8, 0.8)) + rng.normal(0, 15, SHAPE)
    ct = sitk.GetImageFromArray(np.clip(np.round(hu), -1024, 3071).astype(np.int16))
    ct.SetSpacing(SPACING)
    ct.SetOrigin((-102.4, -102.4, -100.0))
    mask = sitk.GetImageFromArray(lesion.astype(np.uint8))
    mask.CopyInformation(ct)
    paths = folder / "ct.nii.gz", folder / "mask.nii.gz"
    sitk.WriteImage(ct, str(paths[0]))
    sitk.WriteImage(mask, str(paths[1]))
    return paths


def write_demo_cases(folder: Path, n: int, demo_cfg: dict, seed: int) -> list[tuple]:
    """The first n patients of the demo cohort as `make demo` draws it (config's demo section
    and seed): (patient, ct, mask, mask label)."""
    cohort = demo_cohort.sample_cohort(demo_cfg["n_patients"], demo_cfg["n_scanners"], seed)
    cases = []
    rows = cohort.patients_sheet.head(n).iterrows()
    for patient, (_, row) in zip(cohort.patients[:n], rows, strict=True):
        ct, labels = demo_cohort.patient_images(patient)
        paths = [folder / f"{row['patient_id']}_{kind}.nii.gz" for kind in ("ct", "mask")]
        demo_cohort.write_image(ct, patient.grid, paths[0])
        demo_cohort.write_image(labels, patient.grid, paths[1])
        cases.append((row["patient_id"], *paths, int(row["mask_label"])))
    return cases


def seconds(run: Callable[[], object], repeats: int) -> list[float]:
    run()  # warm-up: imports, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def process_seconds(command: list[str], env: dict, repeats: int) -> tuple[list[float], list[float]]:
    """(CPU seconds, wall seconds) of each of `repeats` runs of command, after a warm-up run."""
    cpu, wall = [], []
    for i in range(repeats + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, encoding="utf-8")
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(f"{command[:3]} failed:\n{done.stderr[-3000:]}")
        if i:
            cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            wall.append(elapsed)
    return cpu, wall


def fresh_processes(
    folder: Path,
    patient: str,
    ct: Path,
    mask: Path,
    label: int,
    reference: dict,
    ct_cfg: dict,
    args: argparse.Namespace,
) -> dict[str, tuple[list, list]]:
    """(d) plain pyradiomics and (e) the radiomics job's command, each a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}  # fmt: skip
    if args.threads:
        env["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    reference_file = folder / "reference_params.yaml"
    reference_file.write_text(yaml.safe_dump(reference), encoding="utf-8")
    plain = [sys.executable, "-c", PLAIN_PROCESS, str(reference_file), str(ct), str(mask)]
    out = folder / "job"
    job = [sys.executable, "-m", "radpath.cli", "ct_patient", "--patient", patient,
           "--ct", str(ct), "--mask", str(mask), "--mask-label", str(label),
           "--params", str(PARAMS), "--settings", json.dumps({"ct": ct_cfg, "on_error": "stop"}),
           "--features", str(out / "features.tsv"), "--qc", str(out / "qc.tsv"),
           "--log", str(out / "job.log")]  # fmt: skip
    return {
        "(d) plain pyradiomics, fresh process": process_seconds(plain, env, args.repeats),
        "(e) radpath job command, fresh process": process_seconds(job, env, args.repeats),
    }


def snakemake_job(
    folder: Path, ct: Path, mask: Path, config: dict, label: int = 1
) -> Callable[[], float]:
    """A callable that forces and runs the radiomics job for PATIENT in a scratch workdir.

    It returns the job's own seconds from Snakemake's `benchmark:` file.
    """
    # A second patient (same images) because the sheets must give a train and a validation part.
    sheet = folder / "patients.tsv"
    sheet.write_text(
        "patient_id\tct\tmask\tmask_label\tscanner\n"
        f"{PATIENT}\t{ct}\t{mask}\t{label}\tA\nOTHER\t{ct}\t{mask}\t{label}\tA\n",
        encoding="utf-8",
    )
    clinical = folder / "clinical.tsv"
    clinical.write_text(
        "patient_id\tos_time\tos_event\tpfs_time\tpfs_event\tage\tstage\tsplit\n"
        f"{PATIENT}\t12.0\t1\t6.0\t1\t60\tI\ttrain\nOTHER\t9.0\t1\t5.0\t1\t70\tI\tvalidation\n",
        encoding="utf-8",
    )
    # A whole config file: no slides ("" cannot be given with --config), so no pathomics models.
    config_file = folder / "config.yaml"
    models = {
        name: spec
        for name, spec in config["models"].items()
        if not any(block.startswith("pathomics") for block in spec["blocks"])
    }
    run_config = {
        **config,
        "patients": str(sheet),
        "clinical": str(clinical),
        "slides": "",
        "models": models,
    }
    config_file.write_text(yaml.safe_dump(run_config), encoding="utf-8")
    workdir = folder / "snakemake"
    workdir.mkdir()
    target = SNAKEMAKE_TARGET.format(patient_id=PATIENT)
    command = [
        str(Path(sys.executable).with_name("snakemake")),
        "--snakefile", str(REPO / "Snakefile"),
        "--configfile", str(config_file),
        "--directory", str(workdir),
        "--workflow-profile", "none",
        "--cores", "1",
        "--forcerun", target,
        "--", target,
    ]  # fmt: skip

    def run() -> float:
        done = subprocess.run(command, capture_output=True, text=True, encoding="utf-8")
        if done.returncode != 0:
            raise RuntimeError("snakemake failed:\n" + done.stderr[-3000:])
        benchmark = workdir / SNAKEMAKE_BENCHMARK.format(patient_id=PATIENT)
        return float(benchmark.read_text(encoding="utf-8").splitlines()[1].split("\t")[0])

    return run


def bench_case(folder: Path, case: tuple, config: dict, args: argparse.Namespace) -> None:
    """Every variant on one case (patient, ct, mask, mask label); prints one table."""
    patient, ct, mask, label = case
    ct_cfg = config["ct"]
    params = load_params(PARAMS)
    reference = pyradiomics_reference_params(params, ct_cfg["resample_spacing"], label)
    out = folder / "out"

    def plain() -> dict:
        return RadiomicsFeatureExtractor(reference).execute(str(ct), str(mask))

    def ours() -> tuple:
        return extract_patient(
            patient, ct, mask, label, ct_cfg, PARAMS, out / "f.tsv", out / "qc.tsv"
        )

    settings = CTSettings.from_config(ct_cfg)
    rows = {
        "(a) pyradiomics execute(ct, mask)": seconds(plain, args.repeats),
        "(b) radpath extract_patient": seconds(ours, args.repeats),
        "    of which prepare_case (CT crop)": seconds(
            lambda: prepare_case(ct, mask, label, settings, patient), args.repeats
        ),
        "    prepare_case without the CT crop": seconds(
            lambda: prepare_case(ct, mask, label, settings, patient, crop=False), args.repeats
        ),
    }
    job_seconds = []
    if (REPO / "Snakefile").exists() and not args.no_snakemake:
        job = snakemake_job(folder, ct, mask, config, label)
        rows["(c) snakemake command (startup + job)"] = seconds(
            lambda: job_seconds.append(job()), args.repeats
        )
        rows["    of which the job (its benchmark: s)"] = job_seconds[1:]
    processes = fresh_processes(folder, patient, ct, mask, label, reference, ct_cfg, args)

    features, qc = ours()
    expected = {k: float(v) for k, v in plain().items() if not k.startswith("diagnostics_")}
    same = list(features) == list(expected) and all(
        features[k] == v or (math.isnan(v) and math.isnan(features[k])) for k, v in expected.items()
    )
    size = "x".join(str(s) for s in sitk.ReadImage(str(ct)).GetSize())
    print(
        f"\ncase {patient}: CT {size} voxels, ROI {qc['radpath_roi_voxels_native']} voxels native, "
        f"{qc['radpath_roi_voxels']} at {qc['radpath_resample_spacing']} mm; {len(features)} "
        f"features; SimpleITK threads {sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}, "
        f"repeats {args.repeats}"
    )
    print(f"radpath features identical to plain pyradiomics: {same}")
    base = statistics.median(rows["(a) pyradiomics execute(ct, mask)"])
    print(f"{'variant':<42}{'median s':>10}{'min s':>10}{'vs (a)':>10}")
    for name, times in rows.items():
        median = statistics.median(times)
        overhead = f"{100 * (median / base - 1):+.0f}%" if name.startswith("(") else ""
        print(f"{name:<42}{median:>10.3f}{min(times):>10.3f}{overhead:>10}")
    if "(c) snakemake command (startup + job)" not in rows:
        print(f"{'(c) snakemake job':<42}skipped")
    print(f"{'fresh processes, start-up included':<42}{'CPU s':>10}{'wall s':>10}{'vs (d)':>10}")
    plain_cpu = statistics.median(processes["(d) plain pyradiomics, fresh process"][0])
    for name, (cpu, wall) in processes.items():
        ratio = statistics.median(cpu) / plain_cpu
        print(f"{name:<42}{statistics.median(cpu):>10.3f}{statistics.median(wall):>10.3f}"
              f"{ratio:>9.2f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["realistic", "demo"], default="realistic")
    parser.add_argument("--demo-patients", type=int, default=3, help="demo cases to run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=0, help="SimpleITK threads (0 = its default)"
    )
    parser.add_argument("--no-snakemake", action="store_true", help="skip (c)")
    args = parser.parse_args()
    if args.threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    folder = Path(tempfile.mkdtemp(prefix="bench_radiomics_"))
    try:
        if args.case == "realistic":
            cases = [(PATIENT, *write_case(folder), 1)]
        else:
            cases = write_demo_cases(folder, args.demo_patients, config["demo"], config["seed"])
        for case in cases:
            case_folder = folder / case[0]
            case_folder.mkdir()
            bench_case(case_folder, case, config, args)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
