# Synthetic CT (Lung-DDPM study): a 3D DDPM conditioned on the semantic layout (lungs,
# nodule), trained on TRAINING patients only, sampled and judged. `snakemake synthesis`.
#
# 1. the per-patient CT job (rules/radiomics.smk, ct_patient) makes each synthesis patient's
#    layout: lungs (mask label or segmented) and nodule on the CT grid, and CT + layout on
#    the model's size^3 grid; synthesis_layouts_qc tables the lung volumes and flags
#    implausible ones before the model trains.
# 2. synthesis_train (GPU): the DDPM on the "fit" patients (not the held-out ones);
#    checkpoints every checkpoint_every steps, so a killed job resumes.
# 3. synthesis_sample (GPU, per variant x patient x draw): real = a fit patient's own
#    layout, fresh = its nodule moved/scaled, heldout = a held-out patient's layout
#    (reconstruction). Real anatomy outside `region`; written on the source CT's grid.
# 4. synthesis_radiomics (CPU): the run's own radiomics job on every synthetic volume.
# 5. synthesis_quality: voxel metrics, radiomics realism vs the real halves, figure.


rule synthesis_layouts_qc:
    input:
        layouts=expand(
            "results/synthesis/layouts/{patient}.npz", patient=SYNTHESIS_PATIENTS
        ),
    output:
        qc="results/synthesis/layouts_qc.tsv",
    log:
        "logs/synthesis/layouts_qc.log",
    conda:
        "../envs/radiomics.yaml"
    params:
        files=job_files,
        settings=job_settings(
            patients=SYNTHESIS_PATIENTS,
            plausible_lung_ml=SYNTHESIS["plausible_lung_ml"],
        ),
    shell:
        "python -m radpath.cli synthesis_layouts_qc --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"


rule synthesis_train:
    input:
        # the synthesis patients' layouts, checked (and flagged in its log) before the
        # model trains on the fit patients' ones (params: one input, not one per patient)
        layouts_qc="results/synthesis/layouts_qc.tsv",
    output:
        model="results/synthesis/model.pt",
        history="results/synthesis/training_history.tsv",
        loss_plot="results/report/synthesis/training_loss.png",
    log:
        "logs/synthesis/train.log",
    benchmark:
        "benchmarks/synthesis/train.tsv"
    conda:
        "../envs/deep.yaml"
    threads: SYNTHESIS["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 1440 * attempt,
    params:
        files=job_files,
        settings=job_settings(
            settings={
                key: SYNTHESIS[key]
                for key in (*configuration.SYNTHESIS_TRAINING_KEYS, "checkpoint_every")
            },
            seed=config["seed"],
            checkpoints="results/synthesis/checkpoints",
            layouts=[
                f"results/synthesis/layouts/{patient}.npz"
                for patient in SYNTHESIS_PLAN["fit"]
            ],
        ),
    shell:
        "python -m radpath.cli synthesis_train --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"


rule synthesis_sample:
    input:
        ct="results/synthesis/layouts/{patient}_ct.nii.gz",
        layout="results/synthesis/layouts/{patient}.npz",
        layout_image="results/synthesis/layouts/{patient}_layout.nii.gz",
        model="results/synthesis/model.pt",
    output:
        image="results/synthesis/samples/{variant}/{patient}/draw{draw}_ct.nii.gz",
        mask="results/synthesis/samples/{variant}/{patient}/draw{draw}_mask.nii.gz",
        layout="results/synthesis/samples/{variant}/{patient}/draw{draw}_layout.nii.gz",
    log:
        "logs/synthesis/samples/{variant}/{patient}_draw{draw}.log",
    benchmark:
        "benchmarks/synthesis/samples/{variant}/{patient}_draw{draw}.tsv"
    wildcard_constraints:
        variant="real|fresh|heldout",
        draw=r"\d+",
    conda:
        "../envs/deep.yaml"
    threads: SYNTHESIS["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: 6000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        settings=settings_json(
            synthesis={key: SYNTHESIS[key] for key in SYNTHESIS_SAMPLE_KEYS},
            seed=config["seed"],
            on_error=config["on_patient_error"],
        ),
    shell:
        "python -m radpath.cli synthesis_sample --patient {wildcards.patient}"
        " --ct {input.ct:q}"
        " --layout {input.layout:q} --layout-image {input.layout_image:q}"
        " --model {input.model:q} --variant {wildcards.variant} --draw {wildcards.draw}"
        " --threads {threads} --settings {params.settings:q} --image {output.image:q}"
        " --mask {output.mask:q} --layout-out {output.layout:q} --log {log:q}"


# The run's radiomics (the per-patient CT job: same extractor, parameters and CT settings) on
# a synthetic volume, nothing else made.
use rule ct_patient as synthesis_radiomics with:
    input:
        ct="results/synthesis/samples/{variant}/{patient}/draw{draw}_ct.nii.gz",
        mask="results/synthesis/samples/{variant}/{patient}/draw{draw}_mask.nii.gz",
        params=RADIOMICS_PARAMS,
    output:
        features="results/synthesis/radiomics/{variant}/{patient}/draw{draw}/features.tsv",
        qc="results/synthesis/radiomics/{variant}/{patient}/draw{draw}/qc.tsv",
    log:
        "logs/synthesis/radiomics/{variant}/{patient}_draw{draw}.log",
    benchmark:
        "benchmarks/synthesis/radiomics/{variant}/{patient}_draw{draw}.tsv"
    wildcard_constraints:
        variant="real|fresh|heldout",
        draw=r"\d+",
    # Not bundled with the run's CT jobs: these become ready one by one.
    group:
        "synthesis_radiomics"
    params:
        patient=lambda wildcards, input: ["--mask-label=1", f"--upstream={input.ct}"],
        settings=RADIOMICS_ONLY_SETTINGS,


use rule ct_cubes as synthesis_ct_cubes with:
    input:
        ct="results/synthesis/samples/{variant}/{patient}/draw{draw}_ct.nii.gz",
        mask="results/synthesis/samples/{variant}/{patient}/draw{draw}_mask.nii.gz",
    output:
        cubes="results/synthesis/cubes/{variant}/{patient}/draw{draw}.npz",
    log:
        "logs/synthesis/cubes/{variant}/{patient}_draw{draw}.log",
    benchmark:
        "benchmarks/synthesis/cubes/{variant}/{patient}_draw{draw}.tsv"
    wildcard_constraints:
        variant="real",
        draw=r"\d+",
    group:
        "synthesis_ct_cubes"
    params:
        patient=lambda wildcards, input: ["--mask-label=1", f"--upstream={input.ct}"],


rule synthesis_quality:
    input:
        samples=synthesis_sample_files("ct.nii.gz"),
        layouts=synthesis_sample_files("layout.nii.gz"),
        synthetic=[
            f"results/synthesis/radiomics/{v}/{p}/draw{d}/features.tsv"
            for v, p, d in SYNTHESIS_PLAN["samples"]
            if v == "real"
        ],
        # the real features and CTs (params) come from the synthesis patients' CT jobs
        layouts_qc="results/synthesis/layouts_qc.tsv",
    output:
        quality="results/synthesis/quality.tsv",
        volumes="results/synthesis/heldout_voxels.tsv",
        ks="results/synthesis/feature_ks.tsv",
        figure="results/report/synthesis/real_vs_synthetic.png",
    log:
        "logs/synthesis/quality.log",
    conda:
        "../envs/deep.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
    params:
        files=job_files,
        settings=job_settings(
            **synthesis_quality_params(),
            settings={"window": SYNTHESIS["window"]},
            seed=config["seed"],
        ),
    shell:
        "python -m radpath.cli synthesis_quality --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"


rule synthesis:
    input:
        "results/synthesis/quality.tsv",
        "results/synthesis/layouts_qc.tsv",
        "results/report/synthesis/training_loss.png",
        "results/report/synthesis/real_vs_synthetic.png",
        synthesis_sample_files("ct.nii.gz"),
