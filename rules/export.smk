# Tile features for CLAM and TRIDENT (`snakemake export`; not part of `all`).
#
# One short job per slide converts its features file (float16) into float32 CLAM and TRIDENT
# files in a staging folder; one cohort job links (hard links) them into the two tools'
# folder layouts under results/export/{clam,trident}, writes CLAM's dataset CSV and lists
# excluded slides. The per-slide jobs cannot write the layouts themselves: Snakemake
# outputs cannot be optional, and an excluded slide must leave no file in a layout.

# Settings of the export (constants for now): the encoder name in TRIDENT's
# features_<encoder> folder, "" = the encoder radpath embedded with.
EXPORT_SETTINGS = {"trident_encoder": ""}


rule export_slide:
    input:
        shard=lambda wildcards: os.path.dirname(SLIDE_FEATURES[wildcards.slide]),
    output:
        staged=directory("results/export/slides/{slide}"),
    log:
        "logs/export/{slide}.log",
    benchmark:
        "benchmarks/export/{slide}.tsv"
    group:
        "export"
    conda:
        "../envs/pathology.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 15 * attempt,
    params:
        features=lambda wildcards: SLIDE_FEATURES[wildcards.slide],
        settings=settings_json(**EXPORT_SETTINGS),
    shell:
        "python -m radpath.cli export_slide --slide-id {wildcards.slide}"
        " --features {params.features:q} --out {output.staged:q}"
        " --settings {params.settings:q} --log {log:q}"


rule export:
    input:
        staged=expand("results/export/slides/{slide}", slide=SLIDE_IDS),
        outcomes="results/cohort/outcomes.tsv",
    output:
        clam=directory("results/export/clam"),
        trident=directory("results/export/trident"),
        excluded="results/export/excluded.tsv",
    log:
        "logs/export/export.log",
    conda:
        "../envs/stats.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
    params:
        files=job_files,
        settings=job_settings(
            slide_patients=SLIDE_PATIENTS,
        ),
    shell:
        "python -m radpath.cli export --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"
