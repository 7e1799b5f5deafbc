"""The deep CT rules' entry points, one function per rule (`python -m radpath.cli <rule>`
calls it): folds, pretraining, fold training, the block and Grad-CAM, and the scoring of an
external cohort. The GPU work is radpath.deep.gpu_jobs'.

Each job function takes the rule's files and settings as `python -m radpath.cli` passes
them (radpath.cli.JobFiles: `inputs`, `outputs`, `params`, `wildcards`) and imports
what it needs inside: each rule runs in its own conda environment (envs/*.yaml).
"""

from __future__ import annotations


def deep_ct_folds(inputs, outputs, params, wildcards, threads: int) -> None:
    """The cross-validation folds of the training patients for one endpoint."""
    from radpath.deep.cohort import fold_table
    from radpath.inputs.io import read_tsv, write_tsv

    outcomes = read_tsv(inputs.outcomes, index_col="patient_id")
    cube_files = {path.rsplit("/", 1)[-1].removesuffix(".npz"): path for path in inputs.cubes}
    table = fold_table(outcomes, wildcards.endpoint, cube_files,
                       params.folds, params.seed)
    write_tsv(table, outputs.folds)


def fold_cube_paths(folds_path: str, folder: str) -> list[str]:
    """The cube file (`folder`/<patient>.npz) of every patient of folds.tsv that has one."""
    from radpath.deep.cohort import read_folds

    folds = read_folds(folds_path)
    return [f"{folder}/{pid}.npz" for pid in folds.index[folds["excluded"] != "no cube file"]]


def deep_ct_pretrain(inputs, outputs, params, wildcards, threads: int) -> None:
    """One network trained on the pretraining cohort, the start of the
    endpoint's fold models (GPU)."""
    from radpath.deep.gpu_jobs import pretrain_job

    pretrain_job(
        endpoint=wildcards.endpoint,
        member=wildcards.member,
        member_spec=params.member,
        settings=params.settings,
        epochs=params.epochs,
        seed=params.seed,
        clinical_path=inputs.clinical[0],
        columns=params.columns,
        cube_paths=list(inputs.cubes),
        checkpoint_dir=params.checkpoints,
        outputs=outputs,
        threads=threads,
    )


def deep_ct_train(inputs, outputs, params, wildcards, threads: int) -> None:
    """One network x one fold of the endpoint's deep CT model (GPU)."""
    from radpath.deep.gpu_jobs import train_fold_job

    train_fold_job(
        endpoint=wildcards.endpoint,
        member=wildcards.member,
        fold=int(wildcards.fold),
        member_spec=params.member,
        settings=params.settings,
        seed=params.seed,
        folds_path=inputs.folds,
        outcomes_path=inputs.outcomes,
        cube_paths=fold_cube_paths(inputs.folds, params.cube_folder),
        init_path=inputs.init[0] if inputs.init else None,
        checkpoint_dir=params.checkpoints,
        outputs=outputs,
        threads=threads,
        synthetic_paths=list(inputs.synthetic),
    )


def deep_ct_block(inputs, outputs, params, wildcards, threads: int) -> None:
    """The endpoint's deep CT scores as a feature block, after the leakage
    audit, with a per-fold training summary and the training curves."""
    import pandas as pd

    from radpath.deep.cohort import (
        block_members,
        block_scores,
        check_usage,
        plot_training_curves,
        read_folds,
        start_comparison,
        synthetic_comparison,
        training_summary,
    )
    from radpath.inputs.io import read_tsv, write_tsv

    endpoint = wildcards.endpoint
    folds = read_folds(inputs.folds)
    outcomes = read_tsv(inputs.outcomes, index_col="patient_id")

    def gather(paths):
        return pd.concat([read_tsv(path) for path in paths], ignore_index=True)

    scores, histories, usage = (
        gather(inputs[name]) for name in ("scores", "history", "usage")
    )
    check_usage(usage, folds)
    write_tsv(block_scores(scores, folds, params.seed, block_members(params.members)),
              outputs.matrix)
    write_tsv(training_summary(histories, usage, scores, outcomes, endpoint),
              outputs.summary, index=False)
    write_tsv(start_comparison(scores, params.members, params.start, outcomes, endpoint, params.bootstrap, params.seed),
              outputs.starts, index=False)
    write_tsv(synthetic_comparison(scores, params.members, outcomes, endpoint, params.bootstrap, params.seed),
              outputs.synthetic, index=False)
    plot_training_curves(histories, endpoint, outputs.curves)


def deep_ct_gradcam(inputs, outputs, params, wildcards, threads: int) -> None:
    """Grad-CAM maps of validation patients, averaged over the ensemble."""
    from radpath.deep.gpu_jobs import gradcam_job

    gradcam_job(
        endpoint=wildcards.endpoint,
        folds_path=inputs.folds,
        cube_paths=fold_cube_paths(inputs.folds, params.cube_folder),
        model_paths=list(inputs.models),
        n_patients=params.n_patients,
        out_dir=outputs.maps,
        threads=threads,
    )


def score_deep_ct(inputs, outputs, params, wildcards, threads: int) -> None:
    """An external cohort's deep CT block from the run's fold models."""
    from radpath.deep.gpu_jobs import score_external_job

    score_external_job(
        members=params.members,
        model_paths=list(inputs.models),
        cube_paths=list(inputs.cubes),
        output=outputs.matrix,
        threads=threads,
        seed=params.seed,
    )
