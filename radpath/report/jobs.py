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

    p = params
    render_report(
        inputs, p.endpoints, p.models, p.config, outputs.html,
        slides=dict(zip(p.slide_ids, inputs.thumbnails, strict=True)),
        slide_patients=p.slide_patients,
        synthesis_meta=p.synthesis,
    )


def score_report(inputs, outputs, params, wildcards, threads: int) -> None:
    """The run's evaluation on an external cohort, and its HTML report."""
    import itertools
    from pathlib import Path
    from types import SimpleNamespace

    from radpath.inputs.io import read_json, read_tsv, write_tsv
    from radpath.report.html import render_external_report
    from radpath.survival.modeling import FittedModel
    from radpath.survival.scoring import external_evaluation

    p = params
    out = outputs
    keys = list(itertools.product(p.endpoints, p.models))  # expand() order: endpoints outer


    def by_key(paths, read):
        return {key: read(path) for key, path in zip(keys, paths, strict=True)}


    plot_dirs = {name: Path(getattr(out, name)) for name in ("km", "calibration_plots", "decision_plots")}
    for folder in plot_dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    tables = external_evaluation(
        p.cohort, p.endpoints, p.models,
        by_key(inputs.run_risks, lambda path: read_tsv(path, index_col="patient_id")),
        by_key(inputs.risks, lambda path: read_tsv(path, index_col="patient_id")),
        by_key(inputs.models, lambda path: FittedModel.from_dict(read_json(path))),
        p.config["reference_model"], p.config["evaluation"], p.config["seed"],
        p.config["time_unit"],
        {"km": plot_dirs["km"], "calibration": plot_dirs["calibration_plots"],
         "decision_curve": plot_dirs["decision_plots"], "forest": out.forest},
    )
    for name, table in tables.items():
        write_tsv(table, getattr(out, name), index=False)
    inp = inputs
    files = SimpleNamespace(
        cindex=out.cindex, accuracy=out.accuracy, forest=out.forest, km=out.km,
        calibration_plots=out.calibration_plots, decision_plots=out.decision_plots,
        outcomes=inp.outcomes, imputation=inp.imputation, batches=list(inp.batches),
        radiomics_excluded=list(inp.radiomics_excluded),
        pathomics_excluded=list(inp.pathomics_excluded), template=inp.template,
    )
    render_external_report(p.cohort, files, p.endpoints, p.models, p.unscored, p.config, out.html)
