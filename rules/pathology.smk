# Per slide: tissue mask, tile coordinates and morphology (CPU), tile embedding (GPU); then
# slide features pooled to patients.


rule tile_slide:
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
        "logs/pathology/{slide}_tile.log",
    benchmark:
        "benchmarks/pathology/{slide}_tile.tsv"
    conda:
        "../envs/pathology.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 40 * attempt,
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
        "python -m radpath.cli tile --slide-id {wildcards.slide} --slide {input.slide:q}"
        " --mpp={params.mpp} --settings {params.settings:q} --coords {output.coords:q}"
        " --thumbnail {output.thumbnail:q} --morphology {output.morphology:q} --log {log:q}"


rule embed_tiles:
    input:
        slide=slide_path,
        coords="results/pathology/{slide}/coords.h5",
    output:
        features="results/pathology/{slide}/features.h5",
    log:
        "logs/pathology/{slide}_embed.log",
    benchmark:
        "benchmarks/pathology/{slide}_embed.tsv"
    conda:
        "../envs/pathology.yaml"
    threads: max(1, config["pathology"]["embedding"]["num_workers"])
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: 16000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        mpp=slide_mpp,
        settings=settings_json(
            embedding=config["pathology"]["embedding"],
            tiles=config["pathology"]["tiles"],
            seed=config["seed"],
            on_error=config["on_patient_error"],
        ),
    shell:
        "python -m radpath.cli embed --slide-id {wildcards.slide} --slide {input.slide:q}"
        " --mpp={params.mpp} --settings {params.settings:q} --coords {input.coords:q}"
        " --features {output.features:q} --log {log:q}"


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
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
    params:
        slide_patients=SLIDE_PATIENTS,
        pooling=config["pathology"]["pooling"],
        pca_components=config["pathology"]["pca_components"],
    script:
        "../scripts/pathomics_matrices.py"
