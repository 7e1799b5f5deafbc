# One self-contained HTML report for clinicians and reviewers.


rule report:
    input:
        cindex="results/report/cindex.tsv",
        forest="results/report/forest.png",
        km="results/report/km",
        accuracy="results/report/accuracy.tsv",
        calibration_plots="results/report/calibration",
        decision_plots="results/report/decision_curve",
        outcomes="results/cohort/outcomes.tsv",
        imputation="results/cohort/imputation.tsv",
        excluded="results/cohort/radiomics_excluded.tsv",
        radiomics_missing="results/cohort/radiomics_missing.tsv",
        batch_tests="results/cohort/harmonization/radiomics_batch_tests.tsv",
        pca="results/cohort/harmonization/radiomics_pca.png",
        coefficients=expand(
            "results/models/{endpoint}/{model}/coefficients.tsv",
            endpoint=ENDPOINTS,
            model=MODELS,
        ),
        models=expand(
            "results/models/{endpoint}/{model}/model.json",
            endpoint=ENDPOINTS,
            model=MODELS,
        ),
        selection=expand(
            "results/models/{endpoint}/{model}/selection.tsv",
            endpoint=ENDPOINTS,
            model=MODELS,
        ),
        pathomics_excluded=(
            ["results/cohort/pathomics_excluded.tsv"] if SLIDE_IDS else []
        ),
        pathomics_encoder=(
            ["results/cohort/pathomics_encoder.json"] if SLIDE_IDS else []
        ),
        pathosig_mosaics=(["results/report/pathosig_mosaics"] if PATHOSIG_USED else []),
        pathosig_mosaics_table=(
            ["results/report/pathosig_mosaics.tsv"] if PATHOSIG_USED else []
        ),
        pathosig_history=(
            ["results/pathosig/training_history.tsv"] if PATHOSIG_USED else []
        ),
        deep_ct_summary=(
            expand(
                "results/deep_ct/{endpoint}/training_summary.tsv", endpoint=ENDPOINTS
            )
            if DEEP_CT_USED
            else []
        ),
        deep_ct_curves=(
            expand(
                "results/report/deep_ct/{endpoint}_training.png", endpoint=ENDPOINTS
            )
            if DEEP_CT_USED
            else []
        ),
        deep_ct_gradcam=(
            expand("results/deep_ct/{endpoint}/gradcam", endpoint=ENDPOINTS)
            if DEEP_CT_USED
            else []
        ),
        deep_ct_starts=(
            expand("results/deep_ct/{endpoint}/starts.tsv", endpoint=ENDPOINTS)
            if DEEP_CT_USED
            else []
        ),
        deep_ct_synthetic=(
            expand("results/deep_ct/{endpoint}/synthetic.tsv", endpoint=ENDPOINTS)
            if DEEP_CT_USED
            else []
        ),
        deep_ct_pretrain_usage=deep_ct_pretrain_usage(),
        treatment_benefit=(
            ["results/report/treatment_benefit.tsv"] if TREATMENT["column"] else []
        ),
        treatment_plots=(
            ["results/report/treatment_benefit"] if TREATMENT["column"] else []
        ),
        repeated_cv=(
            ["results/report/repeated_cv.tsv", "results/report/repeated_cv.png"]
            if VALIDATION["method"] == "repeated_cv"
            else []
        ),
        synthesis_quality=(["results/synthesis/quality.tsv"] if SYNTHESIS_USED else []),
        synthesis_figure=(
            ["results/report/synthesis/real_vs_synthetic.png"]
            if SYNTHESIS_USED
            else []
        ),
        synthesis_loss=(
            ["results/report/synthesis/training_loss.png"] if SYNTHESIS_USED else []
        ),
        synthesis_layouts_qc=(
            ["results/synthesis/layouts_qc.tsv"] if SYNTHESIS_USED else []
        ),
        template=REPORT_TEMPLATE,
    output:
        html=report(
            "results/report/report.html",
            caption="../resources/report/html.rst",
            category="Report",
        ),
    log:
        "logs/report/report.log",
    conda:
        "../envs/stats.yaml"
    params:
        files=job_files,
        settings=job_settings(
            endpoints=ENDPOINTS,
            models=MODELS,
            slide_ids=SLIDE_IDS,
            # made by the slides' tiling jobs, before pathomics_excluded.tsv
            thumbnails=[
                f"results/pathology/{slide}/thumbnail.png" for slide in SLIDE_IDS
            ],
            slide_patients=SLIDE_PATIENTS,
            # Not `score`: scoring external cohorts leaves the run's own report as it is.
            config={key: value for key, value in config.items() if key != "score"},
            synthesis=SYNTHESIS_REPORT,
        ),
    shell:
        "python -m radpath.cli report --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"
