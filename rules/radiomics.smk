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
    # Measured: 250 MB and seconds for a demo CT, 590 MB and 6 s for a 512 x 512 x 300 CT.
    # A bundle of group "radiomics" asks for `cores` times this (profiles/slurm/config.yaml).
    resources:
        mem_mb=lambda wildcards, attempt: 1500 * attempt,
        runtime=lambda wildcards, attempt: 10 * attempt,
    params:
        patient=patient_options,
        settings=settings_json(ct=config["ct"], on_error=config["on_patient_error"]),
    shell:
        "python -m radpath.cli radiomics --patient {wildcards.patient} --ct {input.ct:q}"
        " --mask {input.mask:q} {params.patient:q}"
        " --params {input.params:q}"
        " --settings {params.settings:q} --features {output.features:q} --qc {output.qc:q}"
        " --log {log:q}"
