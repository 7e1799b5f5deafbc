# radpath: CT radiomics + H&E pathomics + clinical data -> survival models and a report.
# Usage: snakemake --profile profiles/local   (or profiles/slurm on a cluster)


from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/radiomics.smk"
include: "rules/cohort.smk"
include: "rules/pathology.smk"
include: "rules/survival.smk"
include: "rules/report.smk"


report: "resources/report/workflow.rst"


rule all:
    default_target: True
    input:
        "results/report/report.html",
        "results/report/cindex.tsv",
