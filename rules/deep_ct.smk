# Deep CT models (EMV-3D-CNN and PCNSL studies): 3D CNNs on concentric cubes around the
# lesion, one risk score per endpoint, the block `deep_ct` of the Cox models.
#
# 1. ct_cubes (CPU, per patient): cubes centred on the mask centroid (radpath.deep.cubes),
#    for the run's patients and those of the pretraining cohort (deep_ct.pretrain).
# 2. deep_ct_folds (per endpoint): k folds of the TRAINING patients, stratified on the event.
# 3. deep_ct_pretrain (GPU, per endpoint x network, with deep_ct.pretrain): trains on the
#    whole pretraining cohort (the epoch chosen on an inner part of it); every fold starts
#    from it.
# 4. deep_ct_train (GPU, per endpoint x network x fold): trains on the other folds, picks
#    the epoch on an inner part of them, scores its held-out fold and the validation
#    patients; checkpoints every epoch, so a killed job resumes.
# 5. deep_ct_block (per endpoint): out-of-fold scores for training patients, one fold
#    model per network (drawn per patient) for validation patients, the same kind of
#    predictor -> results/cohort/deep_ct_{endpoint}.tsv; and
#    validation C of the pretrained start against the random-start twins.
# 6. deep_ct_gradcam (GPU, per endpoint): attention maps of validation patients, one per
#    cube scale, on the cube's grid and the CT's, with their ratio to the tumour's share.
# Nothing here runs unless a model uses the block deep_ct.

DEEP_CT = config["deep_ct"]
DEEP_CT_MEMBERS = configuration.deep_ct_members(DEEP_CT)
# What a training job's results depend on (not threads, Grad-CAM or the start's source).
DEEP_CT_TRAINING = configuration.deep_ct_training_settings(DEEP_CT)
# The members whose scores form the block (not the random-start twins).
DEEP_CT_BLOCK_MEMBERS = [
    m for m, spec in DEEP_CT_MEMBERS.items() if not spec["compares"]
]
DEEP_CT_FOLDS = list(range(1, DEEP_CT["folds"] + 1))
DEEP_CT_PRETRAIN = DEEP_CT["pretrain"]
DEEP_CT_PRETRAIN_COLUMNS = (
    configuration.pretrain_endpoints(config) if PRETRAIN_PATIENTS is not None else {}
)
DEEP_CT_PRETRAIN_SHEET = (
    [] if PRETRAIN_PATIENTS is None else [DEEP_CT_PRETRAIN["clinical"]]
)
# Memory (MB, times `attempt`) of a training job: torch and MONAI, every patient's cubes in
# memory (float16) and a batch of activations.
DEEP_CT_MEM_MB = 4000
# Training and Grad-CAM jobs read the cubes of the patients in folds.tsv, whose job
# (deep_ct_folds) takes every cube as input: one edge per cube in the DAG, not one per
# cube and job (12 training jobs x 1,000 patients made dry-runs slow).
DEEP_CT_CUBES = "results/deep_ct/cubes"


rule ct_cubes:
    input:
        unpack(patient_cube_images),
    output:
        cubes="results/{cube_set}/cubes/{patient}.npz",
    log:
        "logs/{cube_set}/cubes/{patient}.log",
    benchmark:
        "benchmarks/{cube_set}/cubes/{patient}.tsv"
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
        "python -m radpath.cli ct_cubes --patient {wildcards.patient} --ct {input.ct:q}"
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
        files=job_files,
        settings=job_settings(
            folds=DEEP_CT["folds"],
            seed=config["seed"],
        ),
    shell:
        "python -m radpath.cli deep_ct_folds --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"


rule deep_ct_pretrain:
    input:
        clinical=DEEP_CT_PRETRAIN_SHEET,
        cubes=expand(
            "results/deep_ct_pretrain/cubes/{patient}.npz", patient=PRETRAIN_IDS
        ),
    output:
        model="results/deep_ct_pretrain/{endpoint}/{member}/model.pt",
        history="results/deep_ct_pretrain/{endpoint}/{member}/history.tsv",
        usage="results/deep_ct_pretrain/{endpoint}/{member}/usage.tsv",
    log:
        "logs/deep_ct_pretrain/{endpoint}/{member}.log",
    benchmark:
        "benchmarks/deep_ct_pretrain/{endpoint}/{member}.tsv"
    conda:
        "../envs/deep.yaml"
    threads: DEEP_CT["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: DEEP_CT_MEM_MB * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
    params:
        files=job_files,
        settings=lambda wildcards: job_settings(
            member=DEEP_CT_MEMBERS[wildcards.member],
            settings=DEEP_CT_TRAINING,
            epochs=DEEP_CT_PRETRAIN["epochs"],
            seed=config["seed"],
            columns=DEEP_CT_PRETRAIN_COLUMNS[wildcards.endpoint],
            checkpoints=deep_ct_pretrain_checkpoints(wildcards),
        ),
    shell:
        "python -m radpath.cli deep_ct_pretrain --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"


rule deep_ct_train:
    input:
        folds="results/deep_ct/{endpoint}/folds.tsv",
        outcomes="results/cohort/outcomes.tsv",
        init=deep_ct_start_file,
        synthetic=deep_ct_synthetic_cubes,
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
        files=job_files,
        settings=lambda wildcards: job_settings(
            member=DEEP_CT_MEMBERS[wildcards.member],
            settings=DEEP_CT_TRAINING,
            seed=config["seed"],
            checkpoints=deep_ct_checkpoints(wildcards),
            cube_folder=DEEP_CT_CUBES,
        ),
    shell:
        "python -m radpath.cli deep_ct_train --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"


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
        starts="results/deep_ct/{endpoint}/starts.tsv",
        synthetic="results/deep_ct/{endpoint}/synthetic.tsv",
        curves="results/report/deep_ct/{endpoint}_training.png",
    log:
        "logs/deep_ct/{endpoint}/block.log",
    conda:
        "../envs/stats.yaml"
    params:
        files=job_files,
        settings=job_settings(
            members=DEEP_CT_MEMBERS,
            start=configuration.deep_ct_start(DEEP_CT),
            bootstrap=config["evaluation"]["bootstrap"],
            seed=config["seed"],
        ),
    shell:
        "python -m radpath.cli deep_ct_block --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"


rule deep_ct_gradcam:
    input:
        folds="results/deep_ct/{endpoint}/folds.tsv",
        models=deep_ct_member_files("model.pt", DEEP_CT_BLOCK_MEMBERS),
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
        files=job_files,
        settings=job_settings(
            n_patients=DEEP_CT["gradcam_patients"],
            cube_folder=DEEP_CT_CUBES,
        ),
    shell:
        "python -m radpath.cli deep_ct_gradcam --files {params.files:q}"
        " --settings {params.settings:q} --threads {threads} --log {log:q}"
