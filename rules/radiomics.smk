# Per patient: CT + tumour mask -> pyradiomics features (one row) and QC diagnostics.


rule radiomics:
    input:
        unpack(patient_images),
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
        mask_label=patient_mask_label,
        settings=settings_json(ct=config["ct"], on_error=config["on_patient_error"]),
    shell:
        "python -m radpath.cli radiomics --patient {wildcards.patient} --ct {input.ct:q}"
        " --mask {input.mask:q} --mask-label {params.mask_label} --params {input.params:q}"
        " --settings {params.settings:q} --features {output.features:q} --qc {output.qc:q}"
        " --log {log:q}"
