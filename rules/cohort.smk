# Cohort: split and outcomes, per-patient rows -> matrices, ComBat harmonization.


rule cohort_tables:
    input:
        clinical=config["clinical"],
        patients=config["patients"],
    output:
        split="results/cohort/split.tsv",
        outcomes="results/cohort/outcomes.tsv",
        clinical="results/cohort/clinical.tsv",
        imputation="results/cohort/imputation.tsv",
        batch_covariates="results/cohort/harmonization_covariates.tsv",
    log:
        "logs/cohort/cohort_tables.log",
    conda:
        "../envs/stats.yaml"
    params:
        files=job_files,
        settings=job_settings(
            patient_ids=PATIENT_IDS,
            split=SPLIT,
            covariates=config["covariates"],
            harmonization_covariates=config["harmonization"]["covariates"],
            missing_covariates=config["missing_covariates"],
            endpoints=config["endpoints"],
            schema=os.path.join(SCHEMAS, "clinical.schema.yaml"),
        ),
    shell:
        "python -m radpath.cli cohort_tables --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"


rule radiomics_matrix:
    input:
        # each features.tsv has its qc.tsv beside it, from the same job (one input per
        # patient: every input costs the DAG of a large cohort)
        features=expand("results/radiomics/{patient}/features.tsv", patient=PATIENT_IDS),
        split="results/cohort/split.tsv",
    output:
        matrix="results/cohort/radiomics_raw.tsv",
        qc="results/cohort/radiomics_qc.tsv",
        excluded="results/cohort/radiomics_excluded.tsv",
        missing="results/cohort/radiomics_missing.tsv",
    log:
        "logs/cohort/radiomics_matrix.log",
    conda:
        "../envs/stats.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
    params:
        files=job_files,
        settings=job_settings(
            missing_features=config["radiomics"]["missing_features"],
        ),
    shell:
        "python -m radpath.cli radiomics_matrix --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"


rule harmonize:
    input:
        matrix="results/cohort/{block}_raw.tsv",
        outcomes="results/cohort/outcomes.tsv",
        batch_covariates="results/cohort/harmonization_covariates.tsv",
        patients=config["patients"],
    output:
        matrix="results/cohort/{block}.tsv",
        model="results/cohort/harmonization/{block}_combat.json",
        batch_tests="results/cohort/harmonization/{block}_batch_tests.tsv",
        pca=report(
            "results/cohort/harmonization/{block}_pca.png",
            caption="../resources/report/harmonization.rst",
            category="Harmonization",
        ),
    log:
        "logs/cohort/harmonize_{block}.log",
    wildcard_constraints:
        block="radiomics",
    conda:
        "../envs/stats.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
    params:
        files=job_files,
        settings=job_settings(
            harmonization=config["harmonization"],
        ),
    shell:
        "python -m radpath.cli harmonize --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"
