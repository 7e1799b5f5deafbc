# Deep CT models (EMV-3D-CNN and PCNSL studies): 3D CNNs on concentric cubes around the
# lesion, one risk score per endpoint, the block `deep_ct` of the Cox models.
#
# 1. ct_cubes (CPU, per patient): cubes centred on the mask centroid (radpath.ct_cubes).
# 2. deep_ct_folds (per endpoint): k folds of the TRAINING patients, stratified on the event.
# 3. deep_ct_train (GPU, per endpoint x network x fold): trains on the other folds, picks
#    the epoch on an inner part of them, scores its held-out fold and the validation
#    patients; checkpoints every epoch, so a killed job resumes.
# 4. deep_ct_block (per endpoint): out-of-fold scores for training patients, the mean of
#    all fold models for validation patients -> results/cohort/deep_ct_{endpoint}.tsv.
# 5. deep_ct_gradcam (GPU, per endpoint): Grad-CAM maps of validation patients.
# Nothing here runs unless a model uses the block deep_ct.

DEEP_CT = config["deep_ct"]
DEEP_CT_MEMBERS = configuration.deep_ct_members(DEEP_CT)
DEEP_CT_FOLDS = list(range(1, DEEP_CT["folds"] + 1))
DEEP_CT_INIT = [DEEP_CT["init"]] if DEEP_CT["init"] else []
# Memory (MB, times `attempt`) of a training job: torch and MONAI, every patient's cubes in
# memory (float16) and a batch of activations.
DEEP_CT_MEM_MB = 4000


rule ct_cubes:
    input:
        unpack(patient_cube_images),
    output:
        cubes="results/deep_ct/cubes/{patient}.npz",
    log:
        "logs/deep_ct/cubes/{patient}.log",
    benchmark:
        "benchmarks/deep_ct/cubes/{patient}.tsv"
    group:
        "ct_cubes"
    conda:
        "../envs/radiomics.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 1500 * attempt,
        runtime=lambda wildcards, attempt: 10 * attempt,
    params:
        patient=patient_cube_options,
        settings=settings_json(
            ct=config["ct"],
            cubes=DEEP_CT["cubes"],
            on_error=config["on_patient_error"],
        ),
    shell:
        "python -m radpath.cli ct-cubes --patient {wildcards.patient} --ct {input.ct:q}"
        " --mask {input.mask:q} {params.patient:q}"
        " --settings {params.settings:q} --cubes {output.cubes:q} --log {log:q}"


rule deep_ct_folds:
    input:
        outcomes="results/cohort/outcomes.tsv",
        cubes=expand("results/deep_ct/cubes/{patient}.npz", patient=PATIENT_IDS),
    output:
        folds="results/deep_ct/{endpoint}/folds.tsv",
    log:
        "logs/deep_ct/{endpoint}/folds.log",
    conda:
        "../envs/stats.yaml"
    params:
        folds=DEEP_CT["folds"],
        seed=config["seed"],
    script:
        "../scripts/deep_ct_folds.py"


rule deep_ct_train:
    input:
        folds="results/deep_ct/{endpoint}/folds.tsv",
        outcomes="results/cohort/outcomes.tsv",
        cubes=expand("results/deep_ct/cubes/{patient}.npz", patient=PATIENT_IDS),
        init=DEEP_CT_INIT,
    output:
        model="results/deep_ct/{endpoint}/{member}/fold{fold}/model.pt",
        history="results/deep_ct/{endpoint}/{member}/fold{fold}/history.tsv",
        scores="results/deep_ct/{endpoint}/{member}/fold{fold}/scores.tsv",
        usage="results/deep_ct/{endpoint}/{member}/fold{fold}/usage.tsv",
    log:
        "logs/deep_ct/{endpoint}/{member}_fold{fold}.log",
    benchmark:
        "benchmarks/deep_ct/{endpoint}/{member}_fold{fold}.tsv"
    wildcard_constraints:
        fold=r"\d+",
    conda:
        "../envs/deep.yaml"
    threads: DEEP_CT["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: DEEP_CT_MEM_MB * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
    params:
        member=lambda wildcards: DEEP_CT_MEMBERS[wildcards.member],
        settings=DEEP_CT,
        seed=config["seed"],
        checkpoints=deep_ct_checkpoints,
    script:
        "../scripts/deep_ct_train.py"


rule deep_ct_block:
    input:
        folds="results/deep_ct/{endpoint}/folds.tsv",
        outcomes="results/cohort/outcomes.tsv",
        scores=deep_ct_member_files("scores.tsv"),
        history=deep_ct_member_files("history.tsv"),
        usage=deep_ct_member_files("usage.tsv"),
    output:
        matrix="results/cohort/deep_ct_{endpoint}.tsv",
        summary="results/deep_ct/{endpoint}/training_summary.tsv",
        curves="results/report/deep_ct/{endpoint}_training.png",
    log:
        "logs/deep_ct/{endpoint}/block.log",
    conda:
        "../envs/stats.yaml"
    params:
        members=list(DEEP_CT_MEMBERS),
        folds=DEEP_CT_FOLDS,
    script:
        "../scripts/deep_ct_block.py"


rule deep_ct_gradcam:
    input:
        folds="results/deep_ct/{endpoint}/folds.tsv",
        cubes=expand("results/deep_ct/cubes/{patient}.npz", patient=PATIENT_IDS),
        models=deep_ct_member_files("model.pt"),
    output:
        maps=directory("results/deep_ct/{endpoint}/gradcam"),
    log:
        "logs/deep_ct/{endpoint}/gradcam.log",
    conda:
        "../envs/deep.yaml"
    threads: DEEP_CT["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: DEEP_CT_MEM_MB * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        n_patients=DEEP_CT["gradcam_patients"],
    script:
        "../scripts/deep_ct_gradcam.py"
