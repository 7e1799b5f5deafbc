# PathoSig: histomorphological phenotype clusters (HPCs) of tiles, as in the SCLC study.
#
# 1. pathosig_training_tiles (CPU): a seeded sample of tiles of the TRAINING patients'
#    slides only (the split is fixed before any job runs).
# 2. pathosig_train (GPU): contrastive clustering (radpath.pathology.contrastive); checkpoints every
#    epoch in results/pathosig/checkpoints, so a killed job resumes where it stopped.
# 3. pathosig_assign (GPU, per shard of slides as the embedding): every tile gets its
#    cluster, one file per slide (results/pathosig/shards/{shard}/{slide}.h5).
# 4. pathomics_hpc (cohort): per-patient cluster proportions, the block `pathomics_hpc`; the
#    signature is a model on it (selection method univariate, see config.yaml).
# 5. pathosig_mosaics: each cluster's most typical training tiles, for the report.
# Nothing here runs unless a model uses the block pathomics_hpc.

PATHOSIG = config["pathology"]["pathosig"]
PATHOSIG_WEIGHTS = encoder_weights(PATHOSIG["backbone"], PATHOSIG["weights"])
# The clustering network's settings (radpath.pathology.contrastive.CLUSTERING_DEFAULTS).
PATHOSIG_NETWORK = {
    **{
        k: v
        for k, v in PATHOSIG.items()
        if k not in ("tiles_per_slide", "mosaic_tiles")
    },
    "weights": (PATHOSIG_WEIGHTS or ["random"])[0],
}
TRAIN_SLIDE_IDS = [s for s in SLIDE_IDS if SPLIT.get(SLIDE_PATIENTS[s]) == "train"]
PATHOSIG_USED = bool(SLIDE_IDS) and any(
    "pathomics_hpc" in spec["blocks"] for spec in config["models"].values()
)
# Memory (MB, times `attempt`) of the GPU jobs: torch, the backbone and a batch of two
# augmented views on the host, 1000 per DataLoader worker.
PATHOSIG_MEM_MB = 4000 + 1000 * PATHOSIG["num_workers"]
# Assignment jobs take the embedding's shards of slides (rules/pathology.smk).
ASSIGNMENT_PLAN = run_shard_plan(
    "results/pathosig/shards/{shard}/{slide}.h5", PATHOSIG_WEIGHTS
)
SLIDE_CLUSTERS = shards.plan_outputs(ASSIGNMENT_PLAN)
ASSIGNMENT_JOB = {
    "network": PATHOSIG_NETWORK,
    "tiles": config["pathology"]["tiles"],
    "on_error": config["on_patient_error"],
}
PATHOSIG_STORE = reuse_store("pathosig")


rule pathosig_training_tiles:
    input:
        coords=expand("results/pathology/{slide}/coords.h5", slide=TRAIN_SLIDE_IDS),
    output:
        tiles="results/pathosig/training_tiles.h5",
    log:
        "logs/pathosig/training_tiles.log",
    conda:
        "../envs/pathology.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        files=job_files,
        settings=job_settings(
            slides=slide_sources(TRAIN_SLIDE_IDS),
            tiles=config["pathology"]["tiles"],
            tiles_per_slide=PATHOSIG["tiles_per_slide"],
            seed=config["seed"],
        ),
    shell:
        "python -m radpath.cli pathosig_training_tiles --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"


rule pathosig_train:
    input:
        tiles="results/pathosig/training_tiles.h5",
        weights=PATHOSIG_WEIGHTS,
    output:
        model="results/pathosig/model.pt",
        history="results/pathosig/training_history.tsv",
    log:
        "logs/pathosig/train.log",
    benchmark:
        "benchmarks/pathosig/train.tsv"
    conda:
        "../envs/pathology.yaml"
    threads: config["pathology"]["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: PATHOSIG_MEM_MB * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
    params:
        files=job_files,
        settings=job_settings(
            network=PATHOSIG_NETWORK,
            seed=config["seed"],
            checkpoints="results/pathosig/checkpoints",
        ),
    shell:
        "python -m radpath.cli pathosig_train --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"


rule pathosig_assign:
    input:
        unpack(lambda wildcards: ASSIGNMENT_PLAN[wildcards.shard]["inputs"]),
        model="results/pathosig/model.pt",
    output:
        clusters=directory("results/pathosig/shards/{shard}"),
    log:
        "logs/pathosig/shards/{shard}.assign.log",
    benchmark:
        "benchmarks/pathosig/shards/{shard}.assign.tsv"
    conda:
        "../envs/pathology.yaml"
    threads: config["pathology"]["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: PATHOSIG_MEM_MB * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        slides=lambda wildcards: ASSIGNMENT_PLAN[wildcards.shard]["slides"],
        settings=settings_json(**ASSIGNMENT_JOB, store=PATHOSIG_STORE),
    shell:
        "python -m radpath.cli pathosig_assign --slides {params.slides:q}"
        " --model {input.model:q} --settings {params.settings:q}"
        " --threads {threads} --log {log:q}"


rule pathomics_hpc:
    input:
        clusters=shard_folders(ASSIGNMENT_PLAN, "results/pathosig/shards"),
    output:
        matrix="results/cohort/pathomics_hpc.tsv",
        slides="results/cohort/pathomics_hpc_slides.tsv",
        excluded="results/cohort/pathomics_hpc_excluded.tsv",
    log:
        "logs/cohort/pathomics_hpc.log",
    conda:
        "../envs/pathology.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
    params:
        files=job_files,
        settings=job_settings(
            slide_patients=SLIDE_PATIENTS,
            slide_clusters=SLIDE_CLUSTERS,
        ),
    shell:
        "python -m radpath.cli pathomics_hpc --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"


rule pathosig_mosaics:
    input:
        clusters=shard_folders(
            ASSIGNMENT_PLAN, "results/pathosig/shards", set(TRAIN_SLIDE_IDS)
        ),
    output:
        mosaics=directory("results/report/pathosig_mosaics"),
        table="results/report/pathosig_mosaics.tsv",
    log:
        "logs/report/pathosig_mosaics.log",
    conda:
        "../envs/pathology.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
    params:
        files=job_files,
        settings=job_settings(
            slides=slide_sources(TRAIN_SLIDE_IDS),
            slide_clusters={s: SLIDE_CLUSTERS[s] for s in TRAIN_SLIDE_IDS},
            tiles=config["pathology"]["tiles"],
            n_clusters=PATHOSIG["n_clusters"],
            n_tiles=PATHOSIG["mosaic_tiles"],
        ),
    shell:
        "python -m radpath.cli pathosig_mosaics --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"
