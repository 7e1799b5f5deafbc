# Per slide, one GPU job: tissue mask and tile coordinates, morphology, tile embedding; then
# slide features pooled to patients.
#
# One job rather than a CPU tiling job and a GPU embedding job: tiling and morphology take
# seconds per slide (tissue found on a thumbnail, morphology on a fixed sample of tiles)
# against minutes of embedding, so the GPU waits little, and every slide costs one SLURM
# submission, one Python start-up and one Snakemake job instead of two, which keeps
# dry-runs of large cohorts fast. The price: changing tissue, tile or morphology settings
# re-runs the slide's embedding too.


# Memory of one slide job (MB; times `attempt`): 4000 for the job's process (torch and the
# encoder, tiling, morphology, a batch's activations on CPU, CUDA's host memory on a GPU)
# plus 1000 per DataLoader worker (a process with its own OpenSlide handle and cache and
# PREFETCH_BATCHES batches of tiles). Measured peaks: see profiles/slurm/config.yaml.
SLIDE_MEM_MB = 4000 + 1000 * config["pathology"]["embedding"]["num_workers"]


rule slide_features:
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
        features="results/pathology/{slide}/features.h5",
    log:
        "logs/pathology/{slide}.log",
    benchmark:
        "benchmarks/pathology/{slide}.tsv"
    conda:
        "../envs/pathology.yaml"
    threads: config["pathology"]["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: SLIDE_MEM_MB * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        mpp=slide_mpp,
        settings=settings_json(
            tissue=config["pathology"]["tissue"],
            tiles=config["pathology"]["tiles"],
            morphology=config["pathology"]["morphology"],
            embedding=config["pathology"]["embedding"],
            seed=config["seed"],
            on_error=config["on_patient_error"],
        ),
    shell:
        "python -m radpath.cli slide --slide-id {wildcards.slide} --slide {input.slide:q}"
        " --mpp={params.mpp} --settings {params.settings:q} --coords {output.coords:q}"
        " --thumbnail {output.thumbnail:q} --morphology {output.morphology:q}"
        " --features {output.features:q} --threads {threads} --log {log:q}"


rule pathomics_matrices:
    input:
        features=expand("results/pathology/{slide}/features.h5", slide=SLIDE_IDS),
        morphology=expand("results/pathology/{slide}/morphology.tsv", slide=SLIDE_IDS),
        outcomes="results/cohort/outcomes.tsv",
    output:
        embedding="results/cohort/pathomics_embedding.tsv",
        morphology="results/cohort/pathomics_morphology.tsv",
        excluded="results/cohort/pathomics_excluded.tsv",
        pca="results/cohort/pathomics_embedding_pca.json",
    log:
        "logs/cohort/pathomics_matrices.log",
    conda:
        "../envs/stats.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
    params:
        slide_patients=SLIDE_PATIENTS,
        pooling=config["pathology"]["pooling"],
        pca_components=config["pathology"]["pca_components"],
    script:
        "../scripts/pathomics_matrices.py"
