# `snakemake score`: this run's frozen pipeline applied to external cohorts (config
# score.cohorts: their own patients, clinical and slides sheets), nothing refitted. Per
# cohort, in results/score/{cohort}/: the per-patient/per-slide jobs of the run (radiomics,
# cubes, tiles, embeddings, PathoSig clusters) on its images; its clinical table, radiomics
# (training medians, the run's ComBat) and pathomics (the run's PCA) matrices and deep CT
# scores (the run's fold networks); every model's risk.tsv; an external-validation report.
# The run's own outputs are inputs: a run that is up to date is not touched.


rule score:
    input:
        score_reports,
    localrule: True


# Per cohort, its slides in shards for the GPU jobs, as the run's (rules/pathology.smk).
SCORE_EMBEDDING, SCORE_ASSIGNMENT = {}, {}
for _cohort in SCORE_COHORTS:
    _slide_shards = (
        list(SCORE_SLIDES[_cohort]),
        SLIDES_PER_JOB,
        SCORE_SLIDE_PATH[_cohort],
        SCORE_SLIDE_MPP[_cohort],
        f"results/score/{_cohort}/pathology/{{slide}}/coords.h5",
    )
    SCORE_EMBEDDING[_cohort] = shards.shard_plan(
        *_slide_shards,
        f"results/score/{_cohort}/pathology/{ENCODER}/shards/{{shard}}/{{slide}}.h5",
        ENCODER_WEIGHTS,
    )
    SCORE_ASSIGNMENT[_cohort] = shards.shard_plan(
        *_slide_shards,
        f"results/score/{_cohort}/pathosig/shards/{{shard}}/{{slide}}.h5",
        PATHOSIG_WEIGHTS,
    )


use rule ct_patient as score_radiomics with:
    input:
        unpack(score_patient_images),
        params=RADIOMICS_PARAMS,
    output:
        features="results/score/{cohort}/radiomics/{patient}/features.tsv",
        qc="results/score/{cohort}/radiomics/{patient}/qc.tsv",
    log:
        "logs/score/{cohort}/radiomics/{patient}.log",
    benchmark:
        "benchmarks/score/{cohort}/radiomics/{patient}.tsv"
    params:
        patient=score_patient_options,
        settings=RADIOMICS_ONLY_SETTINGS,


use rule ct_cubes as score_ct_cubes with:
    input:
        unpack(score_cube_images),
    output:
        cubes="results/score/{cohort}/deep_ct/cubes/{patient}.npz",
    log:
        "logs/score/{cohort}/deep_ct/cubes/{patient}.log",
    benchmark:
        "benchmarks/score/{cohort}/deep_ct/cubes/{patient}.tsv"
    params:
        patient=score_cube_options,


use rule slide_tiles as score_slide_tiles with:
    input:
        slide=score_slide_path,
    output:
        coords="results/score/{cohort}/pathology/{slide}/coords.h5",
        thumbnail="results/score/{cohort}/pathology/{slide}/thumbnail.png",
        morphology="results/score/{cohort}/pathology/{slide}/morphology.tsv",
    log:
        "logs/score/{cohort}/pathology/{slide}.tiles.log",
    benchmark:
        "benchmarks/score/{cohort}/pathology/{slide}.tiles.tsv"
    params:
        mpp=score_slide_mpp,


use rule slide_embedding as score_slide_embedding with:
    input:
        unpack(
            lambda wildcards: SCORE_EMBEDDING[wildcards.cohort][wildcards.shard][
                "inputs"
            ]
        ),
    output:
        features=directory(
            f"results/score/{{cohort}}/pathology/{ENCODER}/shards/{{shard}}"
        ),
    log:
        f"logs/score/{{cohort}}/pathology/{ENCODER}/shards/{{shard}}.log",
    benchmark:
        f"benchmarks/score/{{cohort}}/pathology/{ENCODER}/shards/{{shard}}.tsv"
    params:
        slides=lambda wildcards: SCORE_EMBEDDING[wildcards.cohort][wildcards.shard][
            "slides"
        ],
        settings=lambda wildcards: settings_json(
            **EMBEDDING_JOB,
            store=reuse_store(f"pathology/{ENCODER}", wildcards.cohort),
        ),


use rule pathosig_assign as score_pathosig_assign with:
    input:
        unpack(
            lambda wildcards: SCORE_ASSIGNMENT[wildcards.cohort][wildcards.shard][
                "inputs"
            ]
        ),
        model="results/pathosig/model.pt",
    output:
        clusters=directory("results/score/{cohort}/pathosig/shards/{shard}"),
    log:
        "logs/score/{cohort}/pathosig/shards/{shard}.assign.log",
    benchmark:
        "benchmarks/score/{cohort}/pathosig/shards/{shard}.assign.tsv"
    params:
        slides=lambda wildcards: SCORE_ASSIGNMENT[wildcards.cohort][wildcards.shard][
            "slides"
        ],
        settings=lambda wildcards: settings_json(
            **ASSIGNMENT_JOB,
            store=reuse_store("pathosig", wildcards.cohort),
        ),


rule score_clinical:
    input:
        clinical=lambda wildcards: SCORE["cohorts"][wildcards.cohort]["clinical"],
        imputation="results/cohort/imputation.tsv",
        run_clinical="results/cohort/clinical.tsv",
    output:
        outcomes="results/score/{cohort}/cohort/outcomes.tsv",
        clinical="results/score/{cohort}/cohort/clinical.tsv",
        batch_covariates="results/score/{cohort}/cohort/harmonization_covariates.tsv",
        imputation="results/score/{cohort}/cohort/imputation.tsv",
    log:
        "logs/score/{cohort}/clinical.log",
    conda:
        "../envs/stats.yaml"
    params:
        files=job_files,
        settings=lambda wildcards: job_settings(
            patient_ids=SCORE_PATIENT_IDS[wildcards.cohort],
            covariates=config["covariates"],
            harmonization_covariates=config["harmonization"]["covariates"],
            missing_covariates=config["missing_covariates"],
            endpoints=config["endpoints"],
            schema=os.path.join(SCHEMAS, "clinical.schema.yaml"),
        ),
    shell:
        "python -m radpath.cli score_clinical --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"


rule score_radiomics_matrix:
    input:
        features=score_cohort_files(
            "results/score/{cohort}/radiomics/{patient}/features.tsv"
        ),
        run_matrix="results/cohort/radiomics_raw.tsv",
        run_split="results/cohort/split.tsv",
        combat="results/cohort/harmonization/radiomics_combat.json",
        batch_covariates="results/score/{cohort}/cohort/harmonization_covariates.tsv",
        patients=lambda wildcards: SCORE["cohorts"][wildcards.cohort]["patients"],
    output:
        raw="results/score/{cohort}/cohort/radiomics_raw.tsv",
        harmonized="results/score/{cohort}/cohort/radiomics.tsv",
        excluded="results/score/{cohort}/cohort/radiomics_excluded.tsv",
        missing="results/score/{cohort}/cohort/radiomics_missing.tsv",
        batches="results/score/{cohort}/cohort/harmonization_batches.tsv",
    log:
        "logs/score/{cohort}/radiomics_matrix.log",
    conda:
        "../envs/stats.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
    params:
        files=job_files,
        settings=job_settings(
            batch_column=config["harmonization"]["batch_column"],
            unseen_batches=SCORE["unseen_batches"],
            missing_features=config["radiomics"]["missing_features"],
        ),
    shell:
        "python -m radpath.cli score_radiomics_matrix --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"


use rule pathomics_matrices as score_pathomics_matrices with:
    input:
        features=lambda wildcards: shard_folders(
            SCORE_EMBEDDING[wildcards.cohort],
            f"results/score/{wildcards.cohort}/pathology/{ENCODER}/shards",
        ),
        frozen_pca="results/cohort/pathomics_embedding_pca.json",
    output:
        embedding="results/score/{cohort}/cohort/pathomics_embedding.tsv",
        morphology="results/score/{cohort}/cohort/pathomics_morphology.tsv",
        excluded="results/score/{cohort}/cohort/pathomics_excluded.tsv",
        encoder="results/score/{cohort}/cohort/pathomics_encoder.json",
    log:
        "logs/score/{cohort}/pathomics_matrices.log",
    params:
        files=job_files,
        settings=lambda wildcards: job_settings(
            slide_patients=SCORE_SLIDES[wildcards.cohort],
            slide_features=shards.plan_outputs(SCORE_EMBEDDING[wildcards.cohort]),
            slide_morphology={
                slide: f"results/score/{wildcards.cohort}/pathology/{slide}/morphology.tsv"
                for slide in SCORE_SLIDES[wildcards.cohort]
            },
        ),


use rule pathomics_hpc as score_pathomics_hpc with:
    input:
        clusters=lambda wildcards: shard_folders(
            SCORE_ASSIGNMENT[wildcards.cohort],
            f"results/score/{wildcards.cohort}/pathosig/shards",
        ),
    output:
        matrix="results/score/{cohort}/cohort/pathomics_hpc.tsv",
        slides="results/score/{cohort}/cohort/pathomics_hpc_slides.tsv",
        excluded="results/score/{cohort}/cohort/pathomics_hpc_excluded.tsv",
    log:
        "logs/score/{cohort}/pathomics_hpc.log",
    params:
        files=job_files,
        settings=lambda wildcards: job_settings(
            slide_patients=SCORE_SLIDES[wildcards.cohort],
            slide_clusters=shards.plan_outputs(SCORE_ASSIGNMENT[wildcards.cohort]),
        ),


rule score_deep_ct:
    input:
        cubes=score_cohort_files("results/score/{cohort}/deep_ct/cubes/{patient}.npz"),
        models=deep_ct_member_files("model.pt", DEEP_CT_BLOCK_MEMBERS),
    output:
        matrix="results/score/{cohort}/cohort/deep_ct_{endpoint}.tsv",
    log:
        "logs/score/{cohort}/deep_ct_{endpoint}.log",
    conda:
        "../envs/deep.yaml"
    threads: DEEP_CT["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: DEEP_CT_MEM_MB * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        files=job_files,
        settings=job_settings(
            members=DEEP_CT_MEMBERS,
            seed=config["seed"],
        ),
    shell:
        "python -m radpath.cli score_deep_ct --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"


rule score_model:
    input:
        outcomes="results/score/{cohort}/cohort/outcomes.tsv",
        clinical="results/score/{cohort}/cohort/clinical.tsv",
        blocks=score_model_block_files,
        model="results/models/{endpoint}/{model}/model.json",
        run_risk="results/models/{endpoint}/{model}/risk.tsv",
    output:
        risk="results/score/{cohort}/models/{endpoint}/{model}/risk.tsv",
    log:
        "logs/score/{cohort}/models/{endpoint}_{model}.log",
    conda:
        "../envs/stats.yaml"
    params:
        files=job_files,
        settings=lambda wildcards: job_settings(
            spec=config["models"][wildcards.model],
            horizons=config["evaluation"]["horizons"],
        ),
    shell:
        "python -m radpath.cli score_model --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"


rule score_report:
    input:
        risks=score_cohort_models(
            "results/score/{cohort}/models/{endpoint}/{model}/risk.tsv"
        ),
        run_risks=score_cohort_models("results/models/{endpoint}/{model}/risk.tsv"),
        models=score_cohort_models("results/models/{endpoint}/{model}/model.json"),
        outcomes="results/score/{cohort}/cohort/outcomes.tsv",
        imputation="results/score/{cohort}/cohort/imputation.tsv",
        batches=score_cohort_block_outputs(
            ["radiomics"], "results/score/{cohort}/cohort/harmonization_batches.tsv"
        ),
        radiomics_excluded=score_cohort_block_outputs(
            ["radiomics", "radiomics_raw"],
            "results/score/{cohort}/cohort/radiomics_excluded.tsv",
        ),
        pathomics_excluded=score_cohort_block_outputs(
            ["pathomics_embedding", "pathomics_morphology"],
            "results/score/{cohort}/cohort/pathomics_excluded.tsv",
        ),
        template=os.path.join(workflow.basedir, "resources", "report", "score.html.j2"),
    output:
        html="results/score/{cohort}/report.html",
        cindex="results/score/{cohort}/cindex.tsv",
        accuracy="results/score/{cohort}/accuracy.tsv",
        calibration="results/score/{cohort}/calibration.tsv",
        decision_curve="results/score/{cohort}/decision_curve.tsv",
        forest="results/score/{cohort}/forest.png",
        km=directory("results/score/{cohort}/km"),
        calibration_plots=directory("results/score/{cohort}/calibration"),
        decision_plots=directory("results/score/{cohort}/decision_curve"),
    log:
        "logs/score/{cohort}/report.log",
    conda:
        "../envs/stats.yaml"
    resources:
        mem_mb=4000,
    params:
        files=job_files,
        settings=lambda wildcards: job_settings(
            cohort=wildcards.cohort,
            endpoints=ENDPOINTS,
            models=SCORE_MODELS[wildcards.cohort],
            unscored=SCORE_UNSCORED[wildcards.cohort],
            config=config,
        ),
    shell:
        "python -m radpath.cli score_report --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"
