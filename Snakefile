# radpath: CT radiomics + H&E pathomics + clinical data -> survival models and a report.
# Usage: snakemake --profile profiles/local   (or profiles/slurm on a cluster)


from snakemake.utils import min_version

min_version("9.0")


# A --configfile replaces the shipped config (it is not merged into it), so what a user's
# config leaves out (a model, a section) stays out; missing keys take the schema's defaults.
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/radiomics.smk"
include: "rules/cohort.smk"
include: "rules/pathology.smk"
include: "rules/pathosig.smk"
include: "rules/deep_ct.smk"
include: "rules/synthesis.smk"
include: "rules/survival.smk"
include: "rules/report.smk"
include: "rules/export.smk"
include: "rules/score.smk"


report: "resources/report/workflow.rst"


rule all:
    default_target: True
    input:
        "results/report/report.html",
        "results/report/cindex.tsv",
