# Per slide: a tiling job (tissue mask, tile coordinates, thumbnail, morphology); per shard
# of slides an embedding job (GPU) for the configured encoder, one features file per slide
# (results/pathology/{encoder}/shards/{shard}/{slide}.h5); then slide features pooled to
# patients.
#
# Tiling does not depend on the encoder: its outputs live in results/pathology/{slide}/,
# the embeddings in results/pathology/{encoder}/, so a second encoder re-uses the
# tiles and keeps the first one's features for comparison. Tiling needs no GPU and takes
# seconds to a minute: on SLURM the tiling jobs of group "slide_tiles" are bundled like the
# per-patient CT jobs (profiles/slurm group-components), and only the embedding asks for a GPU.

EMBEDDING = config["pathology"]["embedding"]
ENCODER = EMBEDDING["encoder"]
ENCODER_WEIGHTS = encoder_weights(ENCODER, EMBEDDING["weights"])
if SLIDE_IDS and not ENCODER_WEIGHTS and workflow.is_main_process:
    logger.warning(
        f"radpath: pathology.embedding.weights is 'random': the {ENCODER} tile features "
        "come from an untrained network and mean nothing (fine for tests and the demo, "
        "never for a study); the report says so. Set weights to hub or a local file."
    )

# Memory of an embedding job (MB; times `attempt`): 4000 for the job's process (torch and
# the encoder, a batch's activations on CPU, CUDA's host memory on a GPU) plus 1000 per
# DataLoader worker (a process with its own OpenSlide handle and cache and
# PREFETCH_BATCHES batches of tiles), plus, for the large ViTs, their fp32 weights twice
# while they load (file and model; from parameter counts, not measured). Measured peaks:
# see profiles/slurm/config.yaml.
LARGE_ENCODER_MB = {"uni": 2500, "uni2_h": 5500, "gigapath": 9000}
SLIDE_MEM_MB = 4000 + 1000 * EMBEDDING["num_workers"] + LARGE_ENCODER_MB.get(ENCODER, 0)

# GPU jobs take a shard of slides each (config pathology.slides_per_job, radpath.pathology.shards):
# the model is loaded once per shard, each slide keeps its own output file.
EMBEDDING_PLAN = run_shard_plan(
    f"results/pathology/{ENCODER}/shards/{{shard}}/{{slide}}.h5", ENCODER_WEIGHTS
)
# Each slide's features file, inside its shard's folder.
SLIDE_FEATURES = shards.plan_outputs(EMBEDDING_PLAN)
EMBEDDING_JOB = {
    "tiles": config["pathology"]["tiles"],
    "embedding": {**EMBEDDING, "weights": (ENCODER_WEIGHTS or ["random"])[0]},
    "seed": config["seed"],
    "on_error": config["on_patient_error"],
}
EMBEDDING_STORE = reuse_store(f"pathology/{ENCODER}")


rule slide_tiles:
    input:
        slide=slide_path,
    output:
        coords="results/pathology/{slide}/coords.h5",
        thumbnail=report(
            "results/pathology/{slide}/thumbnail.png",
            caption="../resources/report/thumbnail.rst",
            category="Slide QC",
        ),
        morphology="results/pathology/{slide}/morphology.tsv",
    log:
        "logs/pathology/{slide}.tiles.log",
    benchmark:
        "benchmarks/pathology/{slide}.tiles.tsv"
    group:
        "slide_tiles"
    conda:
        "../envs/pathology.yaml"
    threads: 1
    # No torch: peaks of 0.22-0.26 GB measured (demo slides and a 20000 x 16000 px one).
    resources:
        mem_mb=lambda wildcards, attempt: 1000 * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
    params:
        mpp=slide_mpp,
        settings=settings_json(
            tissue=config["pathology"]["tissue"],
            tiles=config["pathology"]["tiles"],
            morphology=config["pathology"]["morphology"],
            seed=config["seed"],
            on_error=config["on_patient_error"],
        ),
    shell:
        "python -m radpath.cli slide_tiles --slide-id {wildcards.slide}"
        " --slide {input.slide:q} --mpp={params.mpp} --settings {params.settings:q}"
        " --coords {output.coords:q} --thumbnail {output.thumbnail:q}"
        " --morphology {output.morphology:q} --log {log:q}"


rule slide_embedding:
    input:
        unpack(lambda wildcards: EMBEDDING_PLAN[wildcards.shard]["inputs"]),
    output:
        features=directory(f"results/pathology/{ENCODER}/shards/{{shard}}"),
    log:
        f"logs/pathology/{ENCODER}/shards/{{shard}}.log",
    benchmark:
        f"benchmarks/pathology/{ENCODER}/shards/{{shard}}.tsv"
    conda:
        "../envs/pathology.yaml"
    threads: config["pathology"]["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: SLIDE_MEM_MB * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
    params:
        slides=lambda wildcards: EMBEDDING_PLAN[wildcards.shard]["slides"],
        settings=settings_json(**EMBEDDING_JOB, store=EMBEDDING_STORE),
    shell:
        "python -m radpath.cli slide_embedding --slides {params.slides:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"


# Once, on a machine with network (a login node): the hub's weights of an encoder (the
# embedding's, or PathoSig's backbone) into weights_dir, as safetensors. Only with
# `weights: hub`; a local rule, so it never runs on a compute node. Gated models (UNI,
# UNI2-h, Prov-GigaPath) need `huggingface-cli login` with an account that accepted their
# terms first.
rule stage_encoder_weights:
    output:
        weights=os.path.join(EMBEDDING["weights_dir"], "{encoder}.safetensors"),
    log:
        "logs/pathology/stage_weights_{encoder}.log",
    localrule: True
    conda:
        "../envs/pathology.yaml"
    params:
        settings=lambda wildcards: settings_json(
            encoder=wildcards.encoder,
            timm_kwargs=ENCODER_TIMM_KWARGS[wildcards.encoder],
        ),
    shell:
        "python -m radpath.cli stage_encoder_weights --weights {output.weights:q}"
        " --settings {params.settings:q} --log {log:q}"


rule pathomics_matrices:
    input:
        # each slide's morphology.tsv comes from its tiling job, before its shard's job
        features=shard_folders(EMBEDDING_PLAN, f"results/pathology/{ENCODER}/shards"),
        outcomes="results/cohort/outcomes.tsv",
    output:
        embedding="results/cohort/pathomics_embedding.tsv",
        morphology="results/cohort/pathomics_morphology.tsv",
        excluded="results/cohort/pathomics_excluded.tsv",
        pca="results/cohort/pathomics_embedding_pca.json",
        encoder="results/cohort/pathomics_encoder.json",
        pooled="results/cohort/pathomics_pooled.tsv",
    log:
        "logs/cohort/pathomics_matrices.log",
    conda:
        "../envs/stats.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
    params:
        files=job_files,
        settings=job_settings(
            slide_patients=SLIDE_PATIENTS,
            slide_features=SLIDE_FEATURES,
            slide_morphology={
                slide: f"results/pathology/{slide}/morphology.tsv"
                for slide in SLIDE_IDS
            },
            pooling=config["pathology"]["pooling"],
            pca_components=config["pathology"]["pca_components"],
        ),
    shell:
        "python -m radpath.cli pathomics_matrices --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"
