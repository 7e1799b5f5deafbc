# Survival models: one job per endpoint x model, then one evaluation over all models.


rule fit_model:
    input:
        outcomes="results/cohort/outcomes.tsv",
        clinical="results/cohort/clinical.tsv",
        blocks=model_block_files,
    output:
        model="results/models/{endpoint}/{model}/model.json",
        coefficients="results/models/{endpoint}/{model}/coefficients.tsv",
        selection="results/models/{endpoint}/{model}/selection.tsv",
        risk="results/models/{endpoint}/{model}/risk.tsv",
        optimism="results/models/{endpoint}/{model}/optimism.json",
    log:
        "logs/models/{endpoint}_{model}.log",
    benchmark:
        "benchmarks/models/{endpoint}_{model}.tsv"
    conda:
        "../envs/stats.yaml"
    # The optimism bootstrap refits its resamples in this many processes, BLAS at one thread
    # each; the results do not depend on it. Snakemake caps it at --cores.
    threads: config["evaluation"]["threads"]
    # Measured (tests/bench/bench_fit.py, 5,000 patients x 1,200 features): 0.8 GB for the
    # job's process and 0.8 GB per worker; under 0.4 GB each at 1,000 patients.
    resources:
        mem_mb=lambda wildcards, attempt, threads: (1000 + 1000 * threads) * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        files=job_files,
        settings=lambda wildcards: job_settings(
            spec=config["models"][wildcards.model],
            selection=configuration.model_selection(config, wildcards.model),
            cox=config["cox"],
            optimism_bootstrap=config["evaluation"]["optimism_bootstrap"],
            horizons=config["evaluation"]["horizons"],
            seed=config["seed"],
        ),
    shell:
        "python -m radpath.cli fit_model --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"


rule evaluate:
    input:
        risks=all_model_risks(),
        optimism=expand(
            "results/models/{endpoint}/{model}/optimism.json",
            endpoint=ENDPOINTS,
            model=MODELS,
        ),
        # Each model's final features: a model that kept none gets a status, not a C-index.
        models=expand(
            "results/models/{endpoint}/{model}/model.json",
            endpoint=ENDPOINTS,
            model=MODELS,
        ),
    output:
        cindex=report(
            "results/report/cindex.tsv",
            caption="../resources/report/cindex.rst",
            category="Performance",
        ),
        km=report(
            directory("results/report/km"),
            patterns=["{endpoint}_{model}.png"],
            caption="../resources/report/km.rst",
            category="Kaplan-Meier",
        ),
        forest=report(
            "results/report/forest.png",
            caption="../resources/report/forest.rst",
            category="Performance",
        ),
    log:
        "logs/report/evaluate.log",
    conda:
        "../envs/stats.yaml"
    resources:
        mem_mb=4000,
    params:
        files=job_files,
        settings=job_settings(
            endpoints=ENDPOINTS,
            models=MODELS,
            specs={model: config["models"][model] for model in MODELS},
            reference=config["reference_model"],
            evaluation=config["evaluation"],
            seed=config["seed"],
            time_unit=config["time_unit"],
        ),
    shell:
        "python -m radpath.cli evaluate --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"


# Absolute risk on validation patients: time-dependent AUC, Brier scores, calibration, net
# benefit at the configured horizons, from each model's risk and Breslow baseline hazard.
rule accuracy:
    input:
        risks=all_model_risks(),
        models=expand(
            "results/models/{endpoint}/{model}/model.json",
            endpoint=ENDPOINTS,
            model=MODELS,
        ),
    output:
        accuracy="results/report/accuracy.tsv",
        calibration="results/report/calibration.tsv",
        decision_curve="results/report/decision_curve.tsv",
        calibration_plots=report(
            directory("results/report/calibration"),
            patterns=["{endpoint}_{model}.png"],
            caption="../resources/report/calibration.rst",
            category="Calibration",
        ),
        decision_plots=report(
            directory("results/report/decision_curve"),
            patterns=["{endpoint}.png"],
            caption="../resources/report/decision_curve.rst",
            category="Decision curves",
        ),
    log:
        "logs/report/accuracy.log",
    conda:
        "../envs/stats.yaml"
    resources:
        mem_mb=4000,
    params:
        files=job_files,
        settings=job_settings(
            endpoints=ENDPOINTS,
            models=MODELS,
            specs={model: config["models"][model] for model in MODELS},
            reference=config["reference_model"],
            evaluation=config["evaluation"],
            seed=config["seed"],
            time_unit=config["time_unit"],
        ),
    shell:
        "python -m radpath.cli accuracy --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"


# Who benefits from treatment (config `treatment`): each model's risk groups x treatment.
rule treatment_benefit:
    input:
        risks=expand(
            "results/models/{endpoint}/{model}/risk.tsv",
            endpoint=ENDPOINTS,
            model=TREATMENT_MODELS,
        ),
        clinical=config["clinical"],
    output:
        table="results/report/treatment_benefit.tsv",
        plots=directory("results/report/treatment_benefit"),
    log:
        "logs/report/treatment_benefit.log",
    conda:
        "../envs/stats.yaml"
    params:
        files=job_files,
        settings=job_settings(
            endpoints=ENDPOINTS,
            models=TREATMENT_MODELS,
            treatment=config["treatment"],
            time_unit=config["time_unit"],
        ),
    shell:
        "python -m radpath.cli treatment_benefit --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"


# validation.method: repeated_cv: every model's whole pipeline refitted in each fold of
# repeated stratified k-fold CV on all patients (models with network blocks excluded).
VALIDATION = config["validation"]
CV_MODELS, CV_SKIPPED = configuration.cross_validated_models(
    {m: config["models"][m] for m in MODELS}
)
# The raw inputs each fold refits from (the embedding before its PCA).
CV_BLOCK_FILES = {
    "radiomics_raw": "results/cohort/radiomics_raw.tsv",
    "radiomics": "results/cohort/radiomics_raw.tsv",
    "pathomics_embedding": "results/cohort/pathomics_pooled.tsv",
    "pathomics_morphology": "results/cohort/pathomics_morphology.tsv",
}


rule cv_model:
    input:
        outcomes="results/cohort/outcomes.tsv",
        clinical=config["clinical"],
        patients=config["patients"],
        blocks=lambda wildcards: [
            CV_BLOCK_FILES[b] for b in config["models"][wildcards.model]["blocks"]
        ],
    output:
        folds="results/cv/{endpoint}/{model}/folds.tsv",
    log:
        "logs/cv/{endpoint}_{model}.log",
    benchmark:
        "benchmarks/cv/{endpoint}_{model}.tsv"
    conda:
        "../envs/stats.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
    params:
        files=job_files,
        settings=lambda wildcards: job_settings(
            spec=config["models"][wildcards.model],
            selection=configuration.model_selection(config, wildcards.model),
            cox=config["cox"],
            covariates=config["covariates"],
            harmonization=config["harmonization"],
            missing_covariates=config["missing_covariates"],
            endpoints=config["endpoints"],
            schema=os.path.join(SCHEMAS, "clinical.schema.yaml"),
            validation=VALIDATION,
            pca_components=config["pathology"]["pca_components"],
            seed=config["seed"],
        ),
    shell:
        "python -m radpath.cli cv_model --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"


rule cv_summary:
    input:
        folds=expand(
            "results/cv/{endpoint}/{model}/folds.tsv",
            endpoint=ENDPOINTS,
            model=CV_MODELS,
        ),
    output:
        table="results/report/repeated_cv.tsv",
        plot="results/report/repeated_cv.png",
    log:
        "logs/report/repeated_cv.log",
    conda:
        "../envs/stats.yaml"
    params:
        files=job_files,
        settings=job_settings(
            endpoints=ENDPOINTS,
            models=CV_MODELS,
            folds=VALIDATION["folds"],
            repeats=VALIDATION["repeats"],
        ),
    shell:
        "python -m radpath.cli cv_summary --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"
