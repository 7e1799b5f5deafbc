# Per patient: CT + tumour mask -> pyradiomics features (one row) and QC diagnostics.


rule radiomics:
    input:
        ct=patient_ct,
        mask=patient_mask,
        params=RADIOMICS_PARAMS,
    output:
        features="results/radiomics/{patient}/features.tsv",
        qc="results/radiomics/{patient}/qc.tsv",
    log:
        "logs/radiomics/{patient}.log",
    benchmark:
        "benchmarks/radiomics/{patient}.tsv"
    group:
        "radiomics"
    conda:
        "../envs/radiomics.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
    params:
        mask_label=lambda wildcards: int(PATIENTS.at[wildcards.patient, "mask_label"]),
        ct_cfg=config["ct"],
        on_error=config["on_patient_error"],
    script:
        "../scripts/radiomics_patient.py"
