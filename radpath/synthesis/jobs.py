"""The synthesis rules' entry points, one function per rule (`python -m radpath.cli
<rule>` calls it): DDPM training and the quality checks. The work is
radpath.synthesis.gpu_jobs'.

Each job function takes the rule's files and settings as `python -m radpath.cli` passes
them (radpath.cli.JobFiles: `inputs`, `outputs`, `params`, `wildcards`) and imports
what it needs inside: each rule runs in its own conda environment (envs/*.yaml).
"""

from __future__ import annotations


def synthesis_layouts_qc(inputs, outputs, params, wildcards, threads: int) -> None:
    """Per synthesis patient its lungs (volume, field of view, gap to the nodule), flagged where
    implausible for an adult, before a model trains on them."""
    import logging

    from radpath.inputs.io import write_tsv
    from radpath.synthesis.layout import layouts_qc

    table = layouts_qc(dict(zip(params.patients, inputs.layouts, strict=True)),
                       params.plausible_lung_ml)
    for row in table[table["flag"] != ""].itertuples():
        logging.getLogger(__name__).warning("synthesis layout of patient %s: %s",
                                            row.patient_id, row.flag)
    write_tsv(table, outputs.qc, index=False)


def synthesis_train(inputs, outputs, params, wildcards, threads: int) -> None:
    """The layout-conditioned DDPM on the synthesis patients (GPU)."""
    from radpath.synthesis.gpu_jobs import train_job

    train_job(
        layout_paths=list(params.layouts),
        settings=params.settings,
        seed=params.seed,
        checkpoint_dir=params.checkpoints,
        threads=threads,
        model_out=outputs.model,
        history_out=outputs.history,
        plot_out=outputs.loss_plot,
    )


def synthesis_quality(inputs, outputs, params, wildcards, threads: int) -> None:
    """Voxel metrics of held-out reconstructions and radiomics
    realism (real vs synthetic) in one table, and the real-vs-synthetic figure."""
    from radpath.synthesis.gpu_jobs import quality_job

    quality_job(
        heldout=params.heldout,
        real_features=params.real_features,
        synthetic_features=params.synthetic_features,
        pairs=params.pairs,
        settings=params.settings,
        seed=params.seed,
        quality_out=outputs.quality,
        volumes_out=outputs.volumes,
        ks_out=outputs.ks,
        figure_out=outputs.figure,
    )
