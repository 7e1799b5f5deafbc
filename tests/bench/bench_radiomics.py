"""Seconds per patient: plain pyradiomics vs radpath's extract_patient vs the Snakemake job.

Run by hand (pytest does not collect it):

    .venv/bin/python tests/bench/bench_radiomics.py [--repeats 3] [--threads 1]

The case is a realistic chest CT: 256 x 256 x 80 voxels at 0.8 x 0.8 x 2.5 mm with a
textured 35 mm lesion, int16 NIfTI, extracted with config/pyradiomics_ct.yaml and the `ct`
section of config/config.yaml (resampling to 1 mm). (a) and (b) include reading the files;
(b) also writes the two TSVs. (c) runs rule `radiomics` for the case in a scratch
workdir (skipped without a Snakefile) and also reports the job's own benchmark seconds.
"""

from __future__ import annotations

import argparse
import math
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
sys.path.insert(0, str(REPO / "scripts"))

from radiomics.featureextractor import RadiomicsFeatureExtractor  # noqa: E402

from radpath.ct import CTSettings, prepare_case  # noqa: E402
from radpath.radiomics import extract_patient, load_params, pyradiomics_reference_params  # noqa: E402

PARAMS = REPO / "config" / "pyradiomics_ct.yaml"
SHAPE = (80, 256, 256)  # z, y, x
SPACING = (0.8, 0.8, 2.5)  # x, y, z mm
LESION_DIAMETER_MM = 35.0
PATIENT = "BENCH01"
SNAKEMAKE_TARGET = "results/radiomics/{patient_id}/features.tsv"  # rule radiomics
SNAKEMAKE_BENCHMARK = "benchmarks/radiomics/{patient_id}.tsv"


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


def seconds(run: Callable[[], object], repeats: int) -> list[float]:
    run()  # warm-up: imports, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def snakemake_job(folder: Path, ct: Path, mask: Path, config: dict) -> Callable[[], float]:
    """A callable that forces and runs the radiomics job for PATIENT in a scratch workdir.

    It returns the job's own seconds from Snakemake's `benchmark:` file.
    """
    sheet = folder / "patients.tsv"
    sheet.write_text(f"patient_id\tct\tmask\tmask_label\tscanner\n{PATIENT}\t{ct}\t{mask}\t1\tA\n")
    clinical = folder / "clinical.tsv"
    clinical.write_text(
        "patient_id\tos_time\tos_event\tpfs_time\tpfs_event\tage\tstage\n"
        f"{PATIENT}\t12.0\t1\t6.0\t1\t60\tI\n"
    )
    workdir = folder / "snakemake"
    workdir.mkdir()
    target = SNAKEMAKE_TARGET.format(patient_id=PATIENT)
    command = [
        str(Path(sys.executable).with_name("snakemake")),
        "--snakefile", str(REPO / "Snakefile"),
        "--configfile", str(REPO / "config" / "config.yaml"),
        "--directory", str(workdir),
        "--workflow-profile", "none",
        "--cores", "1",
        "--forcerun", target,
        "--config", f"patients={sheet}", f"clinical={clinical}",
        "--", target,
    ]  # fmt: skip

    def run() -> float:
        done = subprocess.run(command, capture_output=True, text=True, encoding="utf-8")
        if done.returncode != 0:
            raise RuntimeError("snakemake failed:\n" + done.stderr[-3000:])
        benchmark = workdir / SNAKEMAKE_BENCHMARK.format(patient_id=PATIENT)
        return float(benchmark.read_text(encoding="utf-8").splitlines()[1].split("\t")[0])

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=0, help="SimpleITK threads (0 = its default)"
    )
    args = parser.parse_args()
    if args.threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    ct_cfg = config["ct"]
    params = load_params(PARAMS)
    reference = pyradiomics_reference_params(params, ct_cfg["resample_spacing"], 1)
    folder = Path(tempfile.mkdtemp(prefix="bench_radiomics_"))
    try:
        ct, mask = write_case(folder)
        out = folder / "out"

        def plain() -> dict:
            return RadiomicsFeatureExtractor(reference).execute(str(ct), str(mask))

        def ours() -> tuple:
            return extract_patient(
                PATIENT, ct, mask, 1, ct_cfg, PARAMS, out / "f.tsv", out / "qc.tsv"
            )

        settings = CTSettings.from_config(ct_cfg)
        rows = {
            "(a) pyradiomics execute(ct, mask)": seconds(plain, args.repeats),
            "(b) radpath extract_patient": seconds(ours, args.repeats),
            "    of which prepare_case (CT crop)": seconds(
                lambda: prepare_case(ct, mask, 1, settings, PATIENT), args.repeats
            ),
            "    prepare_case without the CT crop": seconds(
                lambda: prepare_case(ct, mask, 1, settings, PATIENT, crop=False), args.repeats
            ),
        }
        job_seconds = []
        if (REPO / "Snakefile").exists():
            job = snakemake_job(folder, ct, mask, config)
            rows["(c) snakemake command (startup + job)"] = seconds(
                lambda: job_seconds.append(job()), args.repeats
            )
            rows["    of which the job (its benchmark: s)"] = job_seconds[1:]

        features, qc = ours()
        expected = {k: float(v) for k, v in plain().items() if not k.startswith("diagnostics_")}
        same = list(features) == list(expected) and all(
            features[k] == v or (math.isnan(v) and math.isnan(features[k]))
            for k, v in expected.items()
        )
        print(
            f"case: CT {SHAPE[2]}x{SHAPE[1]}x{SHAPE[0]} at {SPACING} mm, {LESION_DIAMETER_MM:g} mm lesion "
            f"({qc['radpath_roi_voxels_native']} voxels native, {qc['radpath_roi_voxels']} at "
            f"{qc['radpath_resample_spacing']} mm), {len(features)} features; "
            f"SimpleITK threads {sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}, "
            f"repeats {args.repeats}"
        )
        print(f"radpath features identical to plain pyradiomics: {same}")
        base = statistics.median(rows["(a) pyradiomics execute(ct, mask)"])
        print(f"{'variant':<40}{'median s':>10}{'min s':>10}{'vs (a)':>10}")
        for name, times in rows.items():
            median = statistics.median(times)
            overhead = f"{100 * (median / base - 1):+.0f}%" if name.startswith("(") else ""
            print(f"{name:<40}{median:>10.3f}{min(times):>10.3f}{overhead:>10}")
        if not job_seconds:
            print(f"{'(c) snakemake job':<40}skipped: no Snakefile")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
