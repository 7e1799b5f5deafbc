"""The report jobs, one function per rule (`python -m radpath.cli <rule>` calls it): the
run's HTML report and an external cohort's score report.

Each job function takes the rule's files and settings as `python -m radpath.cli` passes
them (radpath.cli.JobFiles: `inputs`, `outputs`, `params`, `wildcards`) and imports
what it needs inside: each rule runs in its own conda environment (envs/*.yaml).
"""

from __future__ import annotations


def report(inputs, outputs, params, wildcards, threads: int) -> None:
    """Render results/report/report.html."""
    from radpath.report.html import render_report

    render_report(
        inputs, params.endpoints, params.models, params.config, outputs.html,
        slides=dict(zip(params.slide_ids, params.thumbnails, strict=True)),
        slide_patients=params.slide_patients,
        synthesis_meta=params.synthesis,
    )


def score_report(inputs, outputs, params, wildcards, threads: int) -> None:
    """The run's evaluation on an external cohort, and its HTML report."""
    import itertools
    from pathlib import Path
    from types import SimpleNamespace

    from radpath.inputs.io import read_json, read_tsv, write_tsv
    from radpath.report.html import render_external_report
    from radpath.survival.metrics import EXTERNAL_CENSORING
    from radpath.survival.modeling import FittedModel
    from radpath.survival.scoring import external_evaluation

    keys = list(itertools.product(params.endpoints, params.models))  # expand() order: endpoints outer

    def by_key(paths, read):
        return {key: read(path) for key, path in zip(keys, paths, strict=True)}

    plot_dirs = {name: Path(getattr(outputs, name)) for name in ("km", "calibration_plots", "decision_plots")}
    for folder in plot_dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    tables = external_evaluation(
        params.cohort, params.endpoints, params.models,
        by_key(inputs.run_risks, lambda path: read_tsv(path, index_col="patient_id")),
        by_key(inputs.risks, lambda path: read_tsv(path, index_col="patient_id")),
        by_key(inputs.models, lambda path: FittedModel.from_dict(read_json(path))),
        params.config["reference_model"], params.config["evaluation"], params.config["seed"],
        params.config["time_unit"],
        {"km": plot_dirs["km"], "calibration": plot_dirs["calibration_plots"],
         "decision_curve": plot_dirs["decision_plots"], "forest": outputs.forest},
        params.config["models"],
        censoring=EXTERNAL_CENSORING,  # the cohort's own follow-up, not the training patients'
    )
    for name, table in tables.items():
        write_tsv(table, getattr(outputs, name), index=False)
    files = SimpleNamespace(
        cindex=outputs.cindex, accuracy=outputs.accuracy, forest=outputs.forest, km=outputs.km,
        calibration_plots=outputs.calibration_plots, decision_plots=outputs.decision_plots,
        outcomes=inputs.outcomes, imputation=inputs.imputation, batches=list(inputs.batches),
        radiomics_excluded=list(inputs.radiomics_excluded),
        pathomics_excluded=list(inputs.pathomics_excluded), template=inputs.template,
    )
    render_external_report(params.cohort, files, params.endpoints, params.models, params.unscored, params.config, outputs.html)
