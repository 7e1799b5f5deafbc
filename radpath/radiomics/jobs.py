"""The cohort jobs of the radiomics stage, one function per rule (`python -m radpath.cli
<rule>` calls it): the radiomics matrix and ComBat harmonization of a feature block.

Each job function takes the rule's files and settings as `python -m radpath.cli` passes
them (radpath.cli.JobFiles: `inputs`, `outputs`, `params`, `wildcards`) and imports
what it needs inside: each rule runs in its own conda environment (envs/*.yaml).
"""

from __future__ import annotations


def radiomics_matrix(inputs, outputs, params, wildcards, threads: int) -> None:
    """Per-patient radiomics rows -> cohort matrix, QC, exclusions, and the features missing
    for some patients handled by radiomics.missing_features (radpath.radiomics.missing)."""
    from pathlib import Path

    import pandas as pd

    from radpath.inputs.cohort import assemble_rows
    from radpath.inputs.io import read_tsv, write_tsv
    from radpath.radiomics.missing import handle_missing_features, per_patient_summary

    assembled, excluded = assemble_rows(inputs.features, "patient_id")
    split = read_tsv(inputs.split, index_col="patient_id")["split"]
    matrix, missing = handle_missing_features(assembled, params.missing_features, split)
    qc = pd.concat([read_tsv(Path(p).with_name("qc.tsv"), index_col="patient_id")
                    for p in inputs.features], sort=False)
    summary = per_patient_summary(missing, assembled.columns, assembled.index)
    qc = qc.join(summary)
    write_tsv(matrix, outputs.matrix)
    write_tsv(qc, outputs.qc)
    write_tsv(excluded, outputs.excluded)
    write_tsv(missing, outputs.missing, index=False)


def harmonize(inputs, outputs, params, wildcards, threads: int) -> None:
    """ComBat (fit on train, apply to validation) and batch-effect diagnostics."""
    from radpath.inputs.io import read_tsv, write_json, write_tsv
    from radpath.inputs.sheets import read_sheet
    from radpath.radiomics.harmonize import harmonize_block, pca_by_batch, plot_pca_by_batch

    cfg = params.harmonization
    features = read_tsv(inputs.matrix, index_col="patient_id")
    outcomes = read_tsv(inputs.outcomes, index_col="patient_id")
    batch_covariates = read_tsv(inputs.batch_covariates, index_col="patient_id")
    patients = read_sheet(inputs.patients, "patients").set_index("patient_id")

    covariates = batch_covariates if len(batch_covariates.columns) else None
    batch = patients[cfg["batch_column"]]
    harmonized, model, tests = harmonize_block(
        features, outcomes["split"], batch, covariates, cfg
    )
    write_tsv(harmonized, outputs.matrix)
    write_json(model.to_dict(), outputs.model)
    write_tsv(tests, outputs.batch_tests)
    plot_pca_by_batch(
        pca_by_batch(features.loc[harmonized.index, harmonized.columns]),
        pca_by_batch(harmonized),
        batch.loc[harmonized.index].astype(str),
        outputs.pca,
    )
