"""The one way into a job: every rule of the workflow runs `python -m radpath.cli <rule>`
(`python -m radpath.cli --help` lists them), with the rule's settings as one JSON object
(`--settings`, a params value: a changed setting re-runs the rule's jobs) and its log file.
A job can be re-run by hand with the command its log and Snakemake's output show.

- Per-patient, per-slide and per-shard rules (`ct_patient`, `ct_cubes`, `synthesis_sample`,
  `slide_tiles`, `slide_embedding`, `pathosig_assign`, `export_slide`) name their files as
  options: a cohort of thousands runs thousands of them, and a
  `shell:` rule costs Snakemake nothing per job while it builds the DAG (a `script:` rule
  made dry-runs of large cohorts ~1.6x slower). Their functions are below.
- Cohort rules pass their named files and wildcards as one JSON object (`--files`, see
  rules/common.smk `job_files`) to the function of the same name in their stage's `jobs`
  module (COHORT_JOBS), which gets them as `JobFiles`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from radpath.inputs.runtime import run_item, setup_logging

log = logging.getLogger("radpath")

# Cohort rule -> the module whose function of the same name runs it.
COHORT_JOBS = {
    **dict.fromkeys(
        ["cohort_tables", "fit_model", "evaluate", "accuracy", "treatment_benefit",
         "cv_model", "cv_summary", "score_clinical", "score_radiomics_matrix", "score_model"],
        "radpath.survival.jobs"),
    **dict.fromkeys(["radiomics_matrix", "harmonize"], "radpath.radiomics.jobs"),
    **dict.fromkeys(
        ["pathomics_matrices", "pathosig_training_tiles", "pathosig_train", "pathomics_hpc",
         "pathosig_mosaics", "export"], "radpath.pathology.jobs"),
    **dict.fromkeys(
        ["deep_ct_folds", "deep_ct_pretrain", "deep_ct_train", "deep_ct_block",
         "deep_ct_gradcam", "score_deep_ct"], "radpath.deep.jobs"),
    **dict.fromkeys(["synthesis_layouts_qc", "synthesis_train", "synthesis_quality"],
                    "radpath.synthesis.jobs"),
    **dict.fromkeys(["report", "score_report"], "radpath.report.jobs"),
}


class JobFiles(dict):
    """A cohort job's named files (or wildcards, or settings) by attribute or key, as
    Snakemake's `input`, `output`, `params` and `wildcards` give them: `files.risks`,
    `files["risks"]`; a name the rule does not have is an AttributeError."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def cohort_job(args: argparse.Namespace, settings: dict) -> None:
    """Run `args.command`'s function in its stage's jobs module (COHORT_JOBS)."""
    import importlib

    files = json.loads(args.files)
    job = getattr(importlib.import_module(COHORT_JOBS[args.command]), args.command)
    job(JobFiles(files["input"]), JobFiles(files["output"]), JobFiles(settings),
        JobFiles(files["wildcards"]), args.threads)


def prepare_job_environment(repo_dir: str, use_conda: bool) -> None:
    """Make `python -m radpath.cli` work in the shell jobs Snakemake starts from this process.

    radpath comes from the workflow's folder (`repo_dir`); `python` is the rule's conda
    environment's when conda is used, otherwise the interpreter running Snakemake (whose
    packages are radpath's), even when its environment was never activated.
    """
    paths = [repo_dir, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    if not use_conda:
        bin_dir = os.path.dirname(sys.executable)
        path = os.environ.get("PATH", os.defpath).split(os.pathsep)
        if path[:1] != [bin_dir]:
            os.environ["PATH"] = os.pathsep.join([bin_dir, *path])


def optional_float(text: str) -> float | None:
    return float(text) if text.strip() else None


def patient_images(args: argparse.Namespace, settings: dict) -> dict:
    """The CT and mask arguments the per-patient CT commands share (see `add_patient_images`)."""
    return {
        "patient_id": args.patient,
        "ct_path": args.ct,
        "mask_path": args.mask,
        "mask_label": args.mask_label,
        "ct_cfg": settings["ct"],
        "ct_series_uid": args.ct_series_uid,
        "mask_roi": args.mask_roi,
        "mask_segment": args.mask_segment,
    }


def extra_image(text: str) -> tuple[str, str]:
    """--extra NAME=PATH -> (NAME, PATH)."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name.strip(), path


def extra_images(args: argparse.Namespace) -> dict[str, str]:
    """The --extra images by name; a name given twice is a settings error."""
    from radpath.deep.cubes import CubeSettingsError

    extras = dict(args.extra)
    if len(extras) != len(args.extra):
        raise CubeSettingsError(f"--extra names repeated: {[name for name, _ in args.extra]}")
    return extras


def ct_cubes(args: argparse.Namespace, settings: dict) -> None:
    """CT + mask (+ extra images on the CT grid) -> the patient's cubes.npz."""
    from radpath.deep.cubes import extract_cubes

    extras = extra_images(args)
    run_item(
        args.patient,
        "patient_id",
        lambda: extract_cubes(
            **patient_images(args, settings),
            cube_cfg=settings["cubes"],
            out_path=args.cubes,
            extra_images=extras,
        ),
        [args.cubes],
        settings["on_error"],
        upstream=args.upstream,
    )


def ct_patient(args: argparse.Namespace, settings: dict) -> None:
    """The per-patient CT job: CT and mask read once -> radiomics features and QC, and, when
    the run uses them, the deep CT cubes (--cubes) and the synthesis layout (--layout ...).

    Each of the three is made as in a job of its own (`run_batch`: on_error applies to each;
    with "stop" the job fails after the others are made), and re-used from the store when
    its inputs and settings are unchanged (radpath.inputs.reuse), so that a changed cube
    setting does not re-extract the radiomics features.
    """
    from radpath.deep.cubes import extract_cubes
    from radpath.inputs.reuse import reuse_key, reuse_or_make
    from radpath.inputs.runtime import run_batch, write_exclusion
    from radpath.radiomics.features import extract_patient
    from radpath.synthesis.prepare import layout_job

    images = patient_images(args, settings)
    identity = {"options": [args.mask_label, args.ct_series_uid, args.mask_roi,
                            args.mask_segment], "ct": settings["ct"]}
    parts = []

    def add(name: str, outputs: list[str], make, part_settings: dict, inputs: list[str]) -> None:
        store = f"{settings['store']}/{name}" if settings.get("store") else None
        key = reuse_key({**identity, name: part_settings}, [args.ct, args.mask, *inputs])
        parts.append((args.patient, lambda: reuse_or_make(store, args.patient, key, outputs, make),
                      outputs, args.upstream))

    add("radiomics", [args.features, args.qc],
        lambda: extract_patient(**images, params_path=args.params, features_out=args.features,
                                qc_out=args.qc),
        {}, [args.params])
    if args.cubes:
        extras = extra_images(args)
        add("cubes", [args.cubes],
            lambda: extract_cubes(**images, cube_cfg=settings["cubes"], out_path=args.cubes,
                                  extra_images=extras),
            {"cubes": settings["cubes"], "extra": sorted(extras)}, list(extras.values()))
    layout_outputs = [args.layout, args.layout_image, args.ct_image]
    if args.layout and args.layout_skip:
        write_exclusion(args.patient, "patient_id", args.layout_skip, layout_outputs)
    elif args.layout:
        add("layouts", layout_outputs,
            lambda: layout_job(images=images, lung_label=args.lung_label,
                               settings=settings["synthesis"], npz_out=args.layout,
                               layout_out=args.layout_image, ct_out=args.ct_image),
            {"synthesis": settings["synthesis"], "lung_label": args.lung_label}, [])
    run_batch(parts, "patient_id", settings["on_error"])


def synthesis_sample(args: argparse.Namespace, settings: dict) -> None:
    """One synthetic CT for a (variant, patient, draw)."""
    from radpath.synthesis.gpu_jobs import sample_job

    outputs = [args.image, args.mask, args.layout_out]
    run_item(
        args.patient,
        "patient_id",
        lambda: sample_job(
            patient=args.patient, ct_path=args.ct,
            layout_npz=args.layout, layout_image=args.layout_image, model_path=args.model,
            variant=args.variant, draw=args.draw, settings=settings["synthesis"],
            seed=settings["seed"], threads=args.threads, outputs=outputs,
        ),
        outputs,
        settings["on_error"],
    )


def slide_tiles(args: argparse.Namespace, settings: dict) -> None:
    """Tissue mask, tile coordinates and thumbnail; morphology (CPU, no torch).

    With on_error "exclude", a slide whose tiling fails is excluded from all its outputs
    (and from its embedding job, which finds the exclusion in coords.h5); a morphology
    failure leaves the embedding alone.
    """
    from radpath.pathology.morphology import morphology_features
    from radpath.pathology.wsi import tile_slide

    run_item(
        args.slide_id,
        "slide_id",
        lambda: tile_slide(
            args.slide, args.slide_id, settings["tissue"], settings["tiles"], settings["seed"],
            args.coords, args.thumbnail, mpp_override=args.mpp,
        ),
        [args.coords, args.thumbnail],
        settings["on_error"],
    )
    run_item(
        args.slide_id,
        "slide_id",
        lambda: morphology_features(
            args.slide, args.slide_id, args.coords, settings["morphology"], settings["tiles"],
            settings["seed"], args.morphology, mpp_override=args.mpp,
        ),
        [args.morphology],
        settings["on_error"],
        upstream=[args.coords],
    )


def log_slurm_gpu() -> None:
    """Which GPU SLURM gave this job, for the log."""
    if "SLURM_JOB_ID" in os.environ:
        log.info(
            "SLURM job %s: SLURM_JOB_GPUS=%s CUDA_VISIBLE_DEVICES=%s",
            os.environ["SLURM_JOB_ID"], os.environ.get("SLURM_JOB_GPUS", ""),
            os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        )


def slide_embedding(args: argparse.Namespace, settings: dict) -> None:
    """A shard of slides: every tile of each slide's coords.h5 through the configured encoder
    -> the slide's features.h5 (GPU if any); the encoder is built once per job."""
    from radpath.pathology.embedding import embed_slides

    log_slurm_gpu()
    embed_slides(
        json.loads(args.slides), settings["embedding"], settings["tiles"], settings["on_error"],
        seed=settings["seed"], threads=args.threads, store=settings["store"] or None,
    )


def pathosig_assign(args: argparse.Namespace, settings: dict) -> None:
    """A shard of slides: every tile of each slide's coords.h5 -> its PathoSig phenotype
    cluster (GPU if any); the model is loaded once per job."""
    from radpath.pathology.contrastive import assign_slides

    log_slurm_gpu()
    assign_slides(
        json.loads(args.slides), args.model, settings["network"], settings["tiles"],
        settings["on_error"], threads=args.threads, store=settings["store"] or None,
    )


def stage_encoder_weights(args: argparse.Namespace, settings: dict) -> None:
    """The hub's weights of an encoder -> a local safetensors file (login node, once)."""
    from radpath.pathology.encoders import stage_hub_weights

    provenance = stage_hub_weights(settings["encoder"], args.weights, settings["timm_kwargs"])
    log.info("staged weights: %s", provenance)


def export_slide(args: argparse.Namespace, settings: dict) -> None:
    """features.h5 -> float32 CLAM and TRIDENT files in the slide's staging folder (rule
    export_slide); a slide excluded upstream gets only a status row saying why."""
    from radpath.pathology.export import export_slide as stage_slide

    status = stage_slide(args.slide_id, args.features, args.out,
                         trident_encoder=settings.get("trident_encoder", ""))
    log.info("export status: %s", status)


def add_patient_images(sub: argparse.ArgumentParser) -> None:
    """A per-patient CT command's patient, CT and mask options (read by `patient_images`)."""
    sub.add_argument("--patient", required=True)
    sub.add_argument("--ct", required=True)
    sub.add_argument("--mask", required=True)
    sub.add_argument("--mask-label", type=int, required=True)
    sub.add_argument("--ct-series-uid", default="",
                     help="SeriesInstanceUID to read from a DICOM CT folder ('' = the one CT series)")
    sub.add_argument("--mask-roi", default="", help="RTSTRUCT ROI name ('' = the only ROI)")
    sub.add_argument("--mask-segment", default="",
                     help="DICOM-SEG segment number or label ('' = the only segment)")
    sub.add_argument("--upstream", action="append", default=[],
                     help="an input an earlier job may have marked as excluded (the patient "
                          "stays excluded); repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m radpath.cli", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, job, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.set_defaults(job=job)
        sub.add_argument("--settings", required=True, help="JSON object of the rule's settings")
        sub.add_argument("--log", required=True, help="log file of this job")
        return sub

    sub = command("ct_patient", ct_patient,
                  "CT + mask -> radiomics features and QC (+ deep CT cubes, synthesis layout)")
    add_patient_images(sub)
    sub.add_argument("--params", required=True, help="pyradiomics parameter file")
    sub.add_argument("--features", required=True)
    sub.add_argument("--qc", required=True)
    sub.add_argument("--cubes", default="", help="the cubes .npz to write ('' = none)")
    sub.add_argument("--extra", type=extra_image, action="append", default=[],
                     metavar="NAME=PATH",
                     help="an extra image registered to the CT (deep_ct.cubes.channels); repeatable")
    sub.add_argument("--layout", default="", help="the layout .npz to write ('' = none)")
    sub.add_argument("--layout-image", default="", help="the layout on the CT grid (NIfTI)")
    sub.add_argument("--ct-image", default="", help="the CT as read (NIfTI)")
    sub.add_argument("--lung-label", default="",
                     help="label of the lungs in the mask file ('' = segment them)")
    sub.add_argument("--layout-skip", default="",
                     help="why this patient gets no layout (recorded in the layout files)")

    sub = command("synthesis_sample", synthesis_sample,
                  "DDPM + layout -> one synthetic CT on the source CT's grid")
    sub.add_argument("--patient", required=True)
    sub.add_argument("--ct", required=True, help="the layout job's NIfTI copy of the CT")
    sub.add_argument("--layout", required=True)
    sub.add_argument("--layout-image", required=True)
    sub.add_argument("--model", required=True)
    sub.add_argument("--variant", choices=["real", "fresh", "heldout"], required=True)
    sub.add_argument("--draw", type=int, required=True)
    sub.add_argument("--threads", type=int, required=True)
    for output in ("--image", "--mask", "--layout-out"):
        sub.add_argument(output, required=True)

    sub = command("ct_cubes", ct_cubes,
                  "CT + mask (+ registered images) -> the patient's concentric cubes (.npz)")
    add_patient_images(sub)
    sub.add_argument("--extra", type=extra_image, action="append", default=[],
                     metavar="NAME=PATH",
                     help="an extra image registered to the CT (deep_ct.cubes.channels); repeatable")
    sub.add_argument("--cubes", required=True, help="the .npz file to write")

    sub = command("slide_tiles", slide_tiles,
                  "slide -> coords.h5, thumbnail.png, morphology.tsv")
    sub.add_argument("--slide-id", required=True)
    sub.add_argument("--slide", required=True)
    sub.add_argument("--mpp", type=optional_float, default=None,
                     help="microns per pixel override ('' = from the slide)")
    for output in ("--coords", "--thumbnail", "--morphology"):
        sub.add_argument(output, required=True)

    slides_help = ("JSON list of the shard's slides: {slide_id, slide, mpp (null = from the "
                   "slide), coords, out}")
    threads_help = ("CPUs of this job (the rule's threads): DataLoader workers plus torch "
                    "threads, whatever OMP_NUM_THREADS says")
    sub = command("slide_embedding", slide_embedding,
                  "a shard of slides: slide + coords.h5 -> features .h5 per slide")
    sub.add_argument("--slides", required=True, help=slides_help)
    sub.add_argument("--threads", type=int, required=True, help=threads_help)

    sub = command("pathosig_assign", pathosig_assign,
                  "a shard of slides: slide + coords.h5 + PathoSig model -> clusters .h5 per slide")
    sub.add_argument("--slides", required=True, help=slides_help)
    sub.add_argument("--threads", type=int, required=True, help=threads_help)
    sub.add_argument("--model", required=True, help="results/pathosig/model.pt")

    sub = command("stage_encoder_weights", stage_encoder_weights,
                  "hub weights of an encoder -> a local safetensors file (needs network)")
    sub.add_argument("--weights", required=True, help="the safetensors file to write")

    sub = command("export_slide", export_slide,
                  "features.h5 -> float32 CLAM/TRIDENT files in a staging folder")
    sub.add_argument("--slide-id", required=True)
    sub.add_argument("--features", required=True, help="the slide's features.h5")
    sub.add_argument("--out", required=True, help="the slide's staging folder")

    for name, module in COHORT_JOBS.items():
        sub = command(name, cohort_job, f"cohort job ({module}.{name})")
        sub.add_argument("--files", required=True,
                         help="JSON object: the rule's named input and output files, wildcards")
        sub.add_argument("--threads", type=int, default=1, help="CPUs of this job")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args.log)
    args.job(args, json.loads(args.settings))


if __name__ == "__main__":
    main()
