# Per patient, one job reads the CT and tumour mask once and makes what the run uses:
# pyradiomics features (one row) and QC diagnostics; the deep CT cubes (when a model uses the
# block deep_ct); the synthesis layout (when synthesis is enabled; for the synthesis
# patients, the others' layout files record why they have none). One job instead of three
# per patient keeps the DAG small for large cohorts; what a changed setting re-runs is
# decided inside the job: each of the three is re-used from results/reuse/ while its own
# inputs and settings are unchanged (README "Slides in shards", the re-use store).

# What the job makes besides the radiomics features and QC: output name -> file; each is
# also the job's option of that name (--cubes, --layout, --layout-image, --ct-image).
CT_PATIENT_OUTPUTS = {}
if DEEP_CT_USED:
    CT_PATIENT_OUTPUTS["cubes"] = "results/deep_ct/cubes/{patient}.npz"
if SYNTHESIS_USED:
    CT_PATIENT_OUTPUTS |= {
        "layout": "results/synthesis/layouts/{patient}.npz",
        "layout_image": "results/synthesis/layouts/{patient}_layout.nii.gz",
        "ct_image": "results/synthesis/layouts/{patient}_ct.nii.gz",
    }
_synthesis_patients = set(SYNTHESIS_PATIENTS)
# Per patient, the job's options from the sheets (one dict lookup per job).
CT_PATIENT_OPTIONS = {
    patient: PATIENT_OPTIONS[patient]
    + (
        [
            f"--extra={name}={path}"
            for name, path in CUBE_IMAGES["deep_ct"][patient].items()
            if name not in ("ct", "mask")
        ]
        if DEEP_CT_USED
        else []
    )
    + (
        [f"--lung-label={PATIENT_LUNG_LABEL[patient]}"]
        + (
            []
            if patient in _synthesis_patients
            else [
                "--layout-skip=not a synthesis patient (layouts are made for the training "
                "patients the diffusion model uses)"
            ]
        )
        if SYNTHESIS_USED
        else []
    )
    for patient in PATIENT_IDS
}


# The settings of a CT job that makes radiomics features and QC only (synthetic volumes,
# external cohorts: rules/synthesis.smk, rules/score.smk).
RADIOMICS_ONLY_SETTINGS = settings_json(
    ct=config["ct"],
    cubes=None,
    synthesis=None,
    on_error=config["on_patient_error"],
    store="",
)
# Per patient, the CT, mask and, for the cubes, the extra channels.
CT_PATIENT_IMAGES = {
    patient: (
        CUBE_IMAGES["deep_ct"][patient]
        if DEEP_CT_USED
        else {"ct": PATIENT_CT[patient], "mask": PATIENT_MASK[patient]}
    )
    for patient in PATIENT_IDS
}


rule ct_patient:
    input:
        unpack(lambda wildcards: CT_PATIENT_IMAGES[wildcards.patient]),
        params=RADIOMICS_PARAMS,
    output:
        **CT_PATIENT_OUTPUTS,
        features="results/radiomics/{patient}/features.tsv",
        qc="results/radiomics/{patient}/qc.tsv",
    log:
        "logs/ct_patient/{patient}.log",
    benchmark:
        "benchmarks/ct_patient/{patient}.tsv"
    group:
        "ct_patient"
    conda:
        "../envs/radiomics.yaml"
    threads: 1
    # Measured: radiomics 250 MB and seconds for a demo CT, 590 MB and 6 s for a
    # 512 x 512 x 300 CT; the layout's lung segmentation and the cubes add little. A bundle
    # of group "ct_patient" asks for `cores` times this (profiles/slurm/config.yaml).
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 20 * attempt,
    params:
        patient=lambda wildcards: CT_PATIENT_OPTIONS[wildcards.patient],
        # the outputs besides features and QC, each as the job's option of that name
        outputs=lambda wildcards, output: [
            f"--{name.replace('_', '-')}={path}"
            for name, path in output.items()
            if name not in ("features", "qc")
        ],
        settings=settings_json(
            ct=config["ct"],
            cubes=config["deep_ct"]["cubes"] if DEEP_CT_USED else None,
            synthesis=(
                {key: SYNTHESIS[key] for key in SYNTHESIS_LAYOUT_KEYS}
                if SYNTHESIS_USED
                else None
            ),
            on_error=config["on_patient_error"],
            store=reuse_store(),
        ),
    shell:
        "python -m radpath.cli ct_patient --patient {wildcards.patient} --ct {input.ct:q}"
        " --mask {input.mask:q} {params.patient:q} --params {input.params:q}"
        " --settings {params.settings:q} --features {output.features:q} --qc {output.qc:q}"
        " {params.outputs:q} --log {log:q}"
