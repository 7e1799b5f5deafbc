# Configuration, sample sheets and helpers shared by every rule file.
import os
import sys

from snakemake.utils import validate

# The radpath library; jobs' `script:`s find it too, as Snakemake puts a script's folder on
# its sys.path.
sys.path.insert(0, os.path.join(workflow.basedir, "scripts"))

from radpath import sheets  # noqa: E402

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

if config["slides"]:
    SLIDES = sheets.load_slides(
        config["slides"], os.path.join(SCHEMAS, "slides.schema.yaml"), PATIENT_IDS
    )
else:
    SLIDES = None
SLIDE_IDS = [] if SLIDES is None else list(SLIDES.index)
SLIDE_PATIENTS = {} if SLIDES is None else dict(zip(SLIDES.index, SLIDES["patient_id"]))

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


def patient_ct(wildcards):
    return PATIENTS.at[wildcards.patient, "ct"]


def patient_mask(wildcards):
    return PATIENTS.at[wildcards.patient, "mask"]


def slide_path(wildcards):
    return SLIDES.at[wildcards.slide, "path"]


def slide_mpp(wildcards):
    mpp = SLIDES.at[wildcards.slide, "mpp"]
    return None if mpp is None or mpp != mpp else float(mpp)


def model_block_files(wildcards):
    return [BLOCK_FILES[block] for block in config["models"][wildcards.model]["blocks"]]


def all_model_risks():
    return expand(
        "results/models/{endpoint}/{model}/risk.tsv", endpoint=ENDPOINTS, model=MODELS
    )
