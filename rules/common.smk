# Configuration, sample sheets and helpers shared by every rule file.
import json
import os
import sys

from snakemake.logging import logger
from snakemake.settings.types import DeploymentMethod

# The radpath library (radpath/ beside the Snakefile); jobs find it through PYTHONPATH
# (cli.prepare_job_environment below).
sys.path.insert(0, workflow.basedir)

from radpath import cli  # noqa: E402
from radpath import slurm as radpath_slurm  # noqa: E402
from radpath.inputs import cohort, configuration, sheets  # noqa: E402
from radpath.pathology import shards  # noqa: E402

SCHEMAS = os.path.join(workflow.basedir, "config", "schemas")

# Defaults from the schema, unknown keys rejected, every problem named by its key path.
configuration.load_config(config, os.path.join(SCHEMAS, "config.schema.yaml"))


def workflow_file(path):
    """A path from the config: as given if it exists, else relative to the workflow folder."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(workflow.basedir, path)


RADIOMICS_PARAMS = workflow_file(config["radiomics"]["params"])
REPORT_TEMPLATE = os.path.join(
    workflow.basedir, "resources", "report", "report.html.j2"
)


# All sheets validated before any job runs; every bad line of every sheet in one error.
COHORT = sheets.load_cohort(config, SCHEMAS)
PATIENTS = COHORT.patients
CLINICAL = COHORT.clinical
SLIDES = COHORT.slides
PATIENT_IDS = list(PATIENTS.index)


def sheet_lookup(table, column):
    """{row id: value of `column`} of a sheet ({} without the sheet). Input functions use
    plain dicts: they run once per job, thousands of times in a large cohort."""
    return {} if table is None else dict(zip(table.index, table[column]))


PATIENT_CT = sheet_lookup(PATIENTS, "ct")
PATIENT_MASK = sheet_lookup(PATIENTS, "mask")


def patient_sheet_options(patients):
    """Per patient, the radiomics job's options from the sheet (mask label, and the optional
    DICOM columns when given): one lookup per job."""
    return {
        patient: [f"--mask-label={label}"]
        + [
            f"--{column.replace('_', '-')}={row[column]}"
            for column in sheets.PATIENT_DICOM_COLUMNS
            if row[column]
        ]
        for patient, label, row in zip(
            patients.index,
            patients["mask_label"].astype(int),
            patients[list(sheets.PATIENT_DICOM_COLUMNS)].to_dict("records"),
        )
    }


PATIENT_OPTIONS = patient_sheet_options(PATIENTS)

SLIDE_IDS = [] if SLIDES is None else list(SLIDES.index)
SLIDE_PATIENTS = sheet_lookup(SLIDES, "patient_id")
SLIDE_PATH = sheet_lookup(SLIDES, "path")


def slide_mpp_texts(slides):
    """Per slide, the sheet's MPP override as text for the job ('' = read it from the slide)."""
    if slides is None:
        return {}
    return {
        slide: "" if mpp is None or mpp != mpp else repr(float(mpp))
        for slide, mpp in zip(slides.index, slides["mpp"])
    }


SLIDE_MPP = slide_mpp_texts(SLIDES)
SLIDES_PER_JOB = config["pathology"]["slides_per_job"]


def reuse_store(part="", cohort=""):
    """The re-use store of one kind of per-item result (radpath.inputs.reuse), in the run's
    results or an external cohort's (no `part`: the folder of all kinds); "" with config
    reuse: false."""
    if not config["reuse"]:
        return ""
    root = f"results/score/{cohort}/reuse" if cohort else "results/reuse"
    return f"{root}/{part}" if part else root


def run_shard_plan(out_pattern, extra_inputs):
    """The run's slides in shards for a GPU job writing `out_pattern` ({shard}, {slide})
    and reading `extra_inputs` besides the coords (radpath.pathology.shards.shard_plan).
    """
    return shards.shard_plan(
        SLIDE_IDS,
        SLIDES_PER_JOB,
        SLIDE_PATH,
        SLIDE_MPP,
        "results/pathology/{slide}/coords.h5",
        out_pattern,
        extra_inputs,
    )


def shard_folders(plan, folder, slide_ids=None):
    """The output folder of every shard of a plan (radpath.pathology.shards.shard_plan), or
    of the shards holding `slide_ids`."""
    return [
        f"{folder}/{shard}"
        for shard, job in plan.items()
        if slide_ids is None or not job["outputs"].keys().isdisjoint(slide_ids)
    ]


# The train/validation split is decided here, before any job, so a change is announced
# before anything runs (see radpath.inputs.cohort.make_split); rule cohort_tables records it.
SPLIT, _split_warnings = cohort.split_for_run(
    config, CLINICAL, "results/cohort/split.tsv"
)
for _warning in _split_warnings if workflow.is_main_process else []:
    logger.warning(f"radpath: {_warning}")

# Endpoint names, in the order declared (config `endpoints`, normalized by load_config).
ENDPOINTS = list(config["endpoints"])
MODELS = list(config["models"])
# Models whose risk groups the treatment-benefit analysis looks at ([] = all).
TREATMENT = config["treatment"]
TREATMENT_MODELS = TREATMENT["models"] or MODELS

BLOCK_FILES = {
    "radiomics_raw": "results/cohort/radiomics_raw.tsv",
    "radiomics": "results/cohort/radiomics.tsv",
    "pathomics_embedding": "results/cohort/pathomics_embedding.tsv",
    "pathomics_morphology": "results/cohort/pathomics_morphology.tsv",
    "pathomics_hpc": "results/cohort/pathomics_hpc.tsv",
    "deep_ct": "results/cohort/deep_ct_{endpoint}.tsv",  # a score per endpoint
}
DEEP_CT_USED = any("deep_ct" in spec["blocks"] for spec in config["models"].values())
# The deep CT pretraining cohort (config deep_ct.pretrain), validated with the other sheets.
PRETRAIN_PATIENTS = COHORT.pretrain_patients
PRETRAIN_IDS = [] if PRETRAIN_PATIENTS is None else list(PRETRAIN_PATIENTS.index)
CUBE_IMAGE_COLUMNS = config["deep_ct"]["cubes"]["channels"]


def cube_job_images(patients):
    """Per patient, the cube job's images: CT, mask and the extra channels (config
    deep_ct.cubes.channels: sheet columns) by name."""
    columns = ["ct", "mask", *CUBE_IMAGE_COLUMNS]
    return {
        patient: dict(zip(columns, paths))
        for patient, *paths in zip(patients.index, *(patients[c] for c in columns))
    }


# Cube jobs by the folder they write to: the run's patients, the pretraining cohort's.
CUBE_IMAGES = {"deep_ct": cube_job_images(PATIENTS)}
CUBE_OPTIONS = {"deep_ct": PATIENT_OPTIONS}
if PRETRAIN_PATIENTS is not None:
    CUBE_IMAGES["deep_ct_pretrain"] = cube_job_images(PRETRAIN_PATIENTS)
    CUBE_OPTIONS["deep_ct_pretrain"] = patient_sheet_options(PRETRAIN_PATIENTS)


wildcard_constraints:
    patient=sheets.ID_PATTERN,
    slide=sheets.ID_PATTERN,
    shard=sheets.ID_PATTERN,
    endpoint="|".join(ENDPOINTS),
    model=sheets.ID_PATTERN,
    encoder="[A-Za-z0-9][A-Za-z0-9_.-]*",
    member="[A-Za-z0-9][A-Za-z0-9_.-]*",
    cube_set="deep_ct_pretrain",


def patient_images(wildcards):
    """The patient's CT and mask (one input function: each call costs Snakemake per job)."""
    return {
        "ct": PATIENT_CT[wildcards.patient],
        "mask": PATIENT_MASK[wildcards.patient],
    }


def patient_cube_images(wildcards):
    """The cube job's images: CT, mask and the extra channels by column name."""
    return CUBE_IMAGES[wildcards.cube_set][wildcards.patient]


def patient_cube_options(wildcards):
    """The radiomics job's sheet options plus --extra=NAME=PATH per extra channel."""
    images = CUBE_IMAGES[wildcards.cube_set][wildcards.patient]
    return CUBE_OPTIONS[wildcards.cube_set][wildcards.patient] + [
        f"--extra={name}={images[name]}" for name in CUBE_IMAGE_COLUMNS
    ]


def patient_options(wildcards):
    """e.g. ['--mask-label=1'] or ['--mask-label=1', '--ct-series-uid=1.2.3', '--mask-roi=GTV']."""
    return PATIENT_OPTIONS[wildcards.patient]


def slide_path(wildcards):
    return SLIDE_PATH[wildcards.slide]


def slide_mpp(wildcards):
    """The sheet's MPP override as text ('' = read it from the slide)."""
    return SLIDE_MPP[wildcards.slide]


# Per-patient/per-slide jobs are shell commands `python -m radpath.cli ...` (see
# radpath/cli.py for why): radpath comes from this workflow's folder, and
# `python` is the rule's conda environment's with --software-deployment-method conda, else
# the Python running Snakemake, whose packages are radpath's.
cli.prepare_job_environment(
    workflow.basedir,
    use_conda=DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method,
)


def job_files(wildcards, input, output):
    """A cohort job's named input and output files and its wildcards, as the JSON of
    `python -m radpath.cli <rule> --files` (radpath.cli.JobFiles): lists stay lists."""

    def named(files):
        return {
            name: list(value) if isinstance(value, list) else value
            for name, value in files.items()
        }

    return json.dumps(
        {
            "input": named(input),
            "output": named(output),
            "wildcards": dict(wildcards.items()),
        }
    )


def job_settings(**settings):
    """A cohort job's settings as the JSON of `python -m radpath.cli <rule> --settings`, in
    the given order (the order of a dict can matter, e.g. slides in input order)."""
    return json.dumps(settings)


def settings_json(**settings):
    """A rule's settings as one JSON text for `python -m radpath.cli --settings` (a params
    value, so changing any of them re-runs the rule's jobs)."""
    return json.dumps(settings, sort_keys=True)


# Which encoder each `stage_encoder_weights` job stages, with its timm arguments.
ENCODER_TIMM_KWARGS = {
    config["pathology"]["pathosig"]["backbone"]: config["pathology"]["pathosig"][
        "timm_kwargs"
    ],
    config["pathology"]["embedding"]["encoder"]: config["pathology"]["embedding"][
        "timm_kwargs"
    ],
}


def encoder_weights(encoder, weights):
    """An encoder's weights file as a list for a rule's input: none for random weights
    (tests and the demo), the file `stage_encoder_weights` fills from the model hub once
    (jobs never download), or a local file."""
    if weights == "random":
        return []
    if weights == "hub":
        return [
            os.path.join(
                config["pathology"]["embedding"]["weights_dir"],
                f"{encoder}.safetensors",
            )
        ]
    return [weights]


def slide_sources(slide_ids):
    """{slide: {path, mpp}} for cohort jobs that read slides (mpp None = from the slide)."""
    return {
        s: {"path": SLIDE_PATH[s], "mpp": float(SLIDE_MPP[s]) if SLIDE_MPP[s] else None}
        for s in slide_ids
    }


def model_block_files(wildcards):
    return [
        BLOCK_FILES[block].format(endpoint=wildcards.endpoint)
        for block in config["models"][wildcards.model]["blocks"]
    ]


def deep_ct_checkpoints(wildcards):
    """A training job's checkpoint folder (removed when the job has finished)."""
    return os.path.join(
        "results",
        "deep_ct",
        wildcards.endpoint,
        wildcards.member,
        f"fold{wildcards.fold}",
        "checkpoints",
    )


def deep_ct_member_files(name, members=None):
    """An input function: `name` of every network x fold of the endpoint's deep CT model
    (`members`: those members only; default all, random-start twins included)."""

    def files(wildcards):
        return expand(
            "results/deep_ct/{endpoint}/{member}/fold{fold}/{name}",
            endpoint=wildcards.endpoint,
            member=DEEP_CT_MEMBERS if members is None else members,  # rules/deep_ct.smk
            fold=DEEP_CT_FOLDS,
            name=name,
        )

    return files


def deep_ct_start_file(wildcards):
    """The weights a training job starts from: its endpoint's pretrained network, the
    config's checkpoint, or none (a random start, also for the random-start twins)."""
    spec = DEEP_CT_MEMBERS[wildcards.member]
    if spec["start"] == "pretrain":
        # a twin without synthetic CTs starts from the network it twins: one pretraining
        pretrained = spec["compares"] or wildcards.member
        return [f"results/deep_ct_pretrain/{wildcards.endpoint}/{pretrained}/model.pt"]
    start = spec["start"]
    return [DEEP_CT["init"]] if start == "init" else []


def deep_ct_synthetic_cubes(wildcards):
    """A member trained with synthetic CTs: the cubes of every `real` synthetic volume (made
    from training patients' layouts; the job keeps each fold's fit patients' only)."""
    if not DEEP_CT_MEMBERS[wildcards.member].get("synthetic"):
        return []
    return [
        f"results/synthesis/cubes/real/{patient}/draw{draw}.npz"
        for variant, patient, draw in SYNTHESIS_PLAN["samples"]
        if variant == "real"
    ]


def deep_ct_pretrain_usage():
    """Each pretrained network's usage.tsv (none without deep_ct.pretrain)."""
    if not DEEP_CT_USED or PRETRAIN_PATIENTS is None:
        return []
    return expand(
        "results/deep_ct_pretrain/{endpoint}/{member}/usage.tsv",
        endpoint=ENDPOINTS,
        member=DEEP_CT_BLOCK_MEMBERS,  # rules/deep_ct.smk
    )


def deep_ct_pretrain_checkpoints(wildcards):
    """A pretraining job's checkpoint folder (removed when the job has finished)."""
    return os.path.join(
        "results",
        "deep_ct_pretrain",
        wildcards.endpoint,
        wildcards.member,
        "checkpoints",
    )


def all_model_risks():
    return expand(
        "results/models/{endpoint}/{model}/risk.tsv", endpoint=ENDPOINTS, model=MODELS
    )


# SLURM (radpath/slurm.py): the `srun` that starts each job keeps SLURM_CONF, and a
# run whose job status queries cannot work (`sacct` without slurmdbd) stops before it submits.
radpath_slurm.keep_slurm_conf()


onstart:
    radpath_slurm.check_status_command(workflow)


# External cohorts of `snakemake score` (rules/score.smk): their sheets, checked like the
# run's, and per cohort the lookups of its per-patient and per-slide jobs.
SCORE = config["score"]
SCORE_COHORTS = sheets.load_external_cohorts(config, SCHEMAS)
_overlap = [
    problem
    for name, external in SCORE_COHORTS.items()
    for problem in sheets.training_overlap(external.patients, PATIENTS, SPLIT, name)
]
if _overlap:
    raise sheets.SheetError("\n".join(_overlap))
SCORE_PATIENT_IDS = {c: list(e.patients.index) for c, e in SCORE_COHORTS.items()}
SCORE_CT = {c: sheet_lookup(e.patients, "ct") for c, e in SCORE_COHORTS.items()}
SCORE_MASK = {c: sheet_lookup(e.patients, "mask") for c, e in SCORE_COHORTS.items()}
SCORE_OPTIONS = {c: patient_sheet_options(e.patients) for c, e in SCORE_COHORTS.items()}
SCORE_CUBES = {c: cube_job_images(e.patients) for c, e in SCORE_COHORTS.items()}
SCORE_SLIDES = {
    c: sheet_lookup(e.slides, "patient_id") for c, e in SCORE_COHORTS.items()
}
SCORE_SLIDE_PATH = {c: sheet_lookup(e.slides, "path") for c, e in SCORE_COHORTS.items()}
SCORE_SLIDE_MPP = {c: slide_mpp_texts(e.slides) for c, e in SCORE_COHORTS.items()}
# Per cohort: the models it is scored with, and why the others are not.
SCORE_MODELS, SCORE_UNSCORED = {}, {}
for _name, _external in SCORE_COHORTS.items():
    SCORE_MODELS[_name], SCORE_UNSCORED[_name] = configuration.scorable_models(
        {m: config["models"][m] for m in MODELS}, _external.slides is not None
    )
    if config["reference_model"] not in SCORE_MODELS[_name]:
        raise sheets.SheetError(
            f"score.cohorts.{_name}: the reference model {config['reference_model']} "
            f"cannot be scored ({SCORE_UNSCORED[_name].get(config['reference_model'])})"
        )
SCORE_BLOCK_FILES = {
    block: path.replace("results/cohort/", "results/score/{cohort}/cohort/")
    for block, path in BLOCK_FILES.items()
}


wildcard_constraints:
    cohort="|".join(SCORE_COHORTS) or "(?!)",


def score_patient_images(wildcards):
    return {
        "ct": SCORE_CT[wildcards.cohort][wildcards.patient],
        "mask": SCORE_MASK[wildcards.cohort][wildcards.patient],
    }


def score_patient_options(wildcards):
    return SCORE_OPTIONS[wildcards.cohort][wildcards.patient]


def score_cube_images(wildcards):
    return SCORE_CUBES[wildcards.cohort][wildcards.patient]


def score_cube_options(wildcards):
    images = SCORE_CUBES[wildcards.cohort][wildcards.patient]
    return SCORE_OPTIONS[wildcards.cohort][wildcards.patient] + [
        f"--extra={name}={images[name]}" for name in CUBE_IMAGE_COLUMNS
    ]


def score_slide_path(wildcards):
    return SCORE_SLIDE_PATH[wildcards.cohort][wildcards.slide]


def score_slide_mpp(wildcards):
    return SCORE_SLIDE_MPP[wildcards.cohort][wildcards.slide]


def score_cohort_files(pattern):
    """An input function: `pattern` for every patient or slide of the cohort."""

    def files(wildcards):
        key = "slide" if "{slide}" in pattern else "patient"
        items = (SCORE_SLIDES if key == "slide" else SCORE_PATIENT_IDS)[
            wildcards.cohort
        ]
        return expand(pattern, cohort=wildcards.cohort, **{key: list(items)})

    return files


def score_model_block_files(wildcards):
    return [
        SCORE_BLOCK_FILES[block].format(
            cohort=wildcards.cohort, endpoint=wildcards.endpoint
        )
        for block in config["models"][wildcards.model]["blocks"]
    ]


def score_cohort_models(name):
    """An input function: `name` of every model the cohort is scored with (endpoints outer)."""

    def files(wildcards):
        return expand(
            name,
            cohort=wildcards.cohort,
            endpoint=ENDPOINTS,
            model=SCORE_MODELS[wildcards.cohort],
        )

    return files


def score_cohort_block_outputs(blocks, path):
    """An input function: [path] when a model the cohort is scored with uses one of
    `blocks`."""

    def files(wildcards):
        used = any(
            set(blocks) & set(config["models"][m]["blocks"])
            for m in SCORE_MODELS[wildcards.cohort]
        )
        return [path.format(cohort=wildcards.cohort)] if used else []

    return files


def score_reports(wildcards):
    if not SCORE_COHORTS:
        raise ValueError(
            "radpath: config score.cohorts is empty: name the external cohorts to score, "
            "e.g. score: {cohorts: {hospital_b: {patients: ..., clinical: ...}}}"
        )
    return expand("results/score/{cohort}/report.html", cohort=SCORE_COHORTS)


# Synthetic CT (rules/synthesis.smk): the patients and jobs of the branch.
SYNTHESIS = config["synthesis"]
SYNTHESIS_USED = SYNTHESIS["enabled"]
SYNTHESIS_PLAN = configuration.synthesis_plan(
    [p for p in PATIENT_IDS if SPLIT.get(p) == "train"], SYNTHESIS, config["seed"]
)
SYNTHESIS_PATIENTS = SYNTHESIS_PLAN["fit"] + SYNTHESIS_PLAN["heldout"]
SYNTHESIS_LAYOUT_KEYS = ("field_of_view", "edge_mm", "size", "window", "lungs")
SYNTHESIS_SAMPLE_KEYS = (
    "window",
    "region",
    "margin_mm",
    "fresh",
    "sampling_steps",
)
PATIENT_LUNG_LABEL = sheet_lookup(PATIENTS, "lung_label")
_labelled = sum(bool(PATIENT_LUNG_LABEL[p]) for p in SYNTHESIS_PATIENTS)
# What the report says of the synthesis patients.
SYNTHESIS_REPORT = {
    "n_fit": len(SYNTHESIS_PLAN["fit"]),
    "n_heldout": len(SYNTHESIS_PLAN["heldout"]),
    "lungs_source": f"{_labelled} patients from the mask's lung label, "
    f"{len(SYNTHESIS_PATIENTS) - _labelled} segmented from the CT "
    "(threshold, connected components, closing, hole filling)",
}


def synthesis_sample_files(suffix, samples=None):
    return [
        f"results/synthesis/samples/{variant}/{patient}/draw{draw}_{suffix}"
        for variant, patient, draw in (samples or SYNTHESIS_PLAN["samples"])
    ]


def synthesis_quality_params():
    """What rule synthesis_quality reads, by patient and volume."""
    samples = SYNTHESIS_PLAN["samples"]
    sample = "results/synthesis/samples/{}/{}/draw{}_{}"

    def ct(patient):
        return {
            "patient": patient,
            "ct": f"results/synthesis/layouts/{patient}_ct.nii.gz",
        }

    heldout = [
        ct(p)
        | {
            "draw": d,
            "synthetic": sample.format(v, p, d, "ct.nii.gz"),
            "layout": sample.format(v, p, d, "layout.nii.gz"),
        }
        for v, p, d in samples
        if v == "heldout"
    ]
    own = sorted({p for v, p, _ in samples if v == "real"})
    return {
        "heldout": heldout,
        "real_features": {
            p: f"results/radiomics/{p}/features.tsv" for p in SYNTHESIS_PLAN["fit"]
        },
        "synthetic_features": {
            f"{p} draw {d}": f"results/synthesis/radiomics/{v}/{p}/draw{d}/features.tsv"
            for v, p, d in samples
            if v == "real"
        },
        "pairs": [
            ct(p)
            | {
                "label": f"{p} ({v})",
                "synthetic": sample.format(v, p, d, "ct.nii.gz"),
                "layout": sample.format(v, p, d, "layout.nii.gz"),
            }
            for v, p, d in samples
            if d == 1
        ][: SYNTHESIS["figure_pairs"]],
    }
