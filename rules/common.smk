# Configuration, sample sheets and helpers shared by every rule file.
import json
import os
import sys

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

# The radpath library; jobs' `script:`s find it too, as Snakemake puts a script's folder on
# its sys.path.
sys.path.insert(0, os.path.join(workflow.basedir, "scripts"))

from radpath import cli, sheets  # noqa: E402

SCHEMAS = os.path.join(workflow.basedir, "config", "schemas")


validate(config, os.path.join(SCHEMAS, "config.schema.yaml"))


def workflow_file(path):
    """A path from the config: as given if it exists, else relative to the workflow folder."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(workflow.basedir, path)


RADIOMICS_PARAMS = workflow_file(config["radiomics"]["params"])
REPORT_TEMPLATE = os.path.join(
    workflow.basedir, "resources", "report", "report.html.j2"
)


PATIENTS = sheets.load_patients(
    config["patients"], os.path.join(SCHEMAS, "patients.schema.yaml")
)
CLINICAL = sheets.load_clinical(
    config["clinical"],
    os.path.join(SCHEMAS, "clinical.schema.yaml"),
    list(PATIENTS.index),
    config["covariates"],
    config["harmonization"]["covariates"],
)
if config["harmonization"]["batch_column"] not in PATIENTS.columns:
    raise sheets.SheetError(
        f"{config['patients']}: harmonization batch column "
        f"'{config['harmonization']['batch_column']}' is not a column of the patients sheet"
    )
PATIENT_IDS = list(PATIENTS.index)
# Plain dicts: input functions run once per job, thousands of times in a large cohort.
PATIENT_CT = dict(zip(PATIENTS.index, PATIENTS["ct"]))
PATIENT_MASK = dict(zip(PATIENTS.index, PATIENTS["mask"]))
PATIENT_MASK_LABEL = dict(zip(PATIENTS.index, PATIENTS["mask_label"].astype(int)))

if config["slides"]:
    SLIDES = sheets.load_slides(
        config["slides"], os.path.join(SCHEMAS, "slides.schema.yaml"), PATIENT_IDS
    )
else:
    SLIDES = None
SLIDE_IDS = [] if SLIDES is None else list(SLIDES.index)
SLIDE_PATIENTS = {} if SLIDES is None else dict(zip(SLIDES.index, SLIDES["patient_id"]))
SLIDE_PATH = {} if SLIDES is None else dict(zip(SLIDES.index, SLIDES["path"]))
SLIDE_MPP = (
    {}
    if SLIDES is None
    else {
        slide: "" if mpp is None or mpp != mpp else repr(float(mpp))
        for slide, mpp in zip(SLIDES.index, SLIDES["mpp"])
    }
)

ENDPOINTS = config["endpoints"]
MODELS = list(config["models"])
if config["reference_model"] not in MODELS:
    raise ValueError(
        f"config: reference_model '{config['reference_model']}' is not one of the models {MODELS}"
    )

BLOCK_FILES = {
    "radiomics_raw": "results/cohort/radiomics_raw.tsv",
    "radiomics": "results/cohort/radiomics.tsv",
    "pathomics_embedding": "results/cohort/pathomics_embedding.tsv",
    "pathomics_morphology": "results/cohort/pathomics_morphology.tsv",
}
PATHOLOGY_BLOCKS = {"pathomics_embedding", "pathomics_morphology"}
for _name, _spec in config["models"].items():
    if SLIDES is None and PATHOLOGY_BLOCKS & set(_spec["blocks"]):
        raise ValueError(
            f"config: model '{_name}' uses pathomics blocks but no slides sheet is set "
            "(set `slides:` or remove the model)"
        )


wildcard_constraints:
    patient=sheets.ID_PATTERN,
    slide=sheets.ID_PATTERN,
    endpoint="|".join(ENDPOINTS),
    model=sheets.ID_PATTERN,


def patient_images(wildcards):
    """The patient's CT and mask (one input function: each call costs Snakemake per job)."""
    return {
        "ct": PATIENT_CT[wildcards.patient],
        "mask": PATIENT_MASK[wildcards.patient],
    }


def patient_mask_label(wildcards):
    return PATIENT_MASK_LABEL[wildcards.patient]


def slide_path(wildcards):
    return SLIDE_PATH[wildcards.slide]


def slide_mpp(wildcards):
    """The sheet's MPP override as text ('' = read it from the slide)."""
    return SLIDE_MPP[wildcards.slide]


# Per-patient/per-slide jobs are shell commands `python -m radpath.cli ...` (see
# scripts/radpath/cli.py for why): radpath comes from this workflow's scripts/ folder, and
# `python` is the rule's conda environment's with --software-deployment-method conda, else
# the Python running Snakemake, whose packages are radpath's.
cli.prepare_job_environment(
    os.path.join(workflow.basedir, "scripts"),
    use_conda=DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method,
)


def settings_json(**settings):
    """A rule's settings as one JSON text for `python -m radpath.cli --settings` (a params
    value, so changing any of them re-runs the rule's jobs)."""
    return json.dumps(settings, sort_keys=True)


def model_block_files(wildcards):
    return [BLOCK_FILES[block] for block in config["models"][wildcards.model]["blocks"]]


def all_model_risks():
    return expand(
        "results/models/{endpoint}/{model}/risk.tsv", endpoint=ENDPOINTS, model=MODELS
    )
