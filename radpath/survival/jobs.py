"""The cohort jobs of the survival stage, one function per rule (`python -m radpath.cli
<rule>` calls it): the cohort tables, model fits, evaluation, accuracy, treatment benefit,
repeated cross-validation and the scoring of external cohorts.

Each job function takes the rule's files and settings as `python -m radpath.cli` passes
them (radpath.cli.JobFiles: `inputs`, `outputs`, `params`, `wildcards`) and imports
what it needs inside: each rule runs in its own conda environment (envs/*.yaml).
"""

from __future__ import annotations


def cohort_tables(inputs, outputs, params, wildcards, threads: int) -> None:
    """Clinical sheet -> outcomes with the split (`<endpoint>_time` and
    `<endpoint>_event` per declared endpoint), encoded covariates."""
    import pandas as pd

    from radpath.inputs import sheets
    from radpath.inputs.cohort import impute_covariates, outcomes_table
    from radpath.inputs.io import write_tsv
    from radpath.survival.modeling import categorical_levels, encode_clinical

    clinical = sheets.load_clinical(
        inputs.clinical, params.schema, params.patient_ids, params.covariates, params.harmonization_covariates,
        params.missing_covariates, endpoints=params.endpoints,
    ).loc[params.patient_ids]
    split = pd.Series(params.split, name="split").loc[clinical.index]
    split.index.name = "patient_id"
    write_tsv(split.to_frame(), outputs.split)
    write_tsv(outcomes_table(clinical, split, params.endpoints), outputs.outcomes)

    train_ids = list(split.index[split == "train"])
    clinical, imputation = impute_covariates(
        clinical, params.covariates, params.harmonization_covariates, train_ids
    )
    write_tsv(imputation, outputs.imputation, index=False)
    # Category levels come from the training patients only; a level that no training patient has
    # is an error naming the patient (encode_clinical).
    levels = categorical_levels(clinical.loc[train_ids], params.covariates)
    encoded = encode_clinical(clinical, params.covariates, levels)
    encoded.index.name = "patient_id"
    write_tsv(encoded, outputs.clinical)
    # ComBat covariates stay raw: the harmonization module encodes them itself.
    write_tsv(clinical[list(params.harmonization_covariates)], outputs.batch_covariates)


def score_clinical(inputs, outputs, params, wildcards, threads: int) -> None:
    """An external cohort's outcomes and covariates, filled with the run's
    training fill values and encoded with its training levels."""
    from radpath.inputs import sheets
    from radpath.inputs.io import read_tsv, write_tsv
    from radpath.survival.scoring import external_clinical

    clinical = sheets.load_clinical(
        inputs.clinical, params.schema, params.patient_ids, params.covariates,
        params.harmonization_covariates, params.missing_covariates, endpoints=params.endpoints,
    ).loc[params.patient_ids]
    outcomes, encoded, batch_covariates, filled = external_clinical(
        clinical, params.covariates, params.endpoints, read_tsv(inputs.imputation),
        list(read_tsv(inputs.run_clinical, index_col="patient_id").columns),
        params.harmonization_covariates,
    )
    write_tsv(outcomes, outputs.outcomes)
    write_tsv(encoded, outputs.clinical)
    write_tsv(batch_covariates, outputs.batch_covariates)
    write_tsv(filled, outputs.imputation, index=False)


def score_radiomics_matrix(inputs, outputs, params, wildcards, threads: int) -> None:
    """An external cohort's radiomics rows -> its raw matrix, and
    the matrix harmonized with the run's training medians and ComBat estimates; patients
    missing some of the run's features are excluded or imputed (radiomics.missing_features)."""
    import pandas as pd

    from radpath.inputs.cohort import assemble_rows
    from radpath.inputs.io import read_json, read_tsv, write_tsv
    from radpath.inputs.sheets import read_sheet
    from radpath.radiomics.harmonize import ComBatModel
    from radpath.radiomics.missing import external_missing
    from radpath.survival.scoring import (
        external_harmonized,
        require_run_features,
        training_medians,
    )

    assembled, excluded = assemble_rows(inputs.features, "patient_id")
    run_raw = read_tsv(inputs.run_matrix, index_col="patient_id")
    run_split = read_tsv(inputs.run_split, index_col="patient_id")["split"]
    batch_covariates = read_tsv(inputs.batch_covariates, index_col="patient_id")
    patients = read_sheet(inputs.patients, "patients").set_index("patient_id")
    combat = ComBatModel.from_dict(read_json(inputs.combat))
    require_run_features(assembled, combat.features)
    raw, missing, incomplete = external_missing(assembled, combat.features,
                                                params.missing_features)
    harmonized, treatment = external_harmonized(
        raw, training_medians(run_raw, run_split), combat,
        patients[params.batch_column], batch_covariates if len(batch_covariates.columns) else None,
        params.unseen_batches,
    )
    write_tsv(raw, outputs.raw)
    write_tsv(harmonized, outputs.harmonized)
    write_tsv(pd.concat([excluded, incomplete]), outputs.excluded)
    write_tsv(missing, outputs.missing, index=False)
    write_tsv(treatment, outputs.batches, index=False)


def score_model(inputs, outputs, params, wildcards, threads: int) -> None:
    """One frozen model of the run applied to an external cohort."""
    from radpath.inputs.io import read_json, read_tsv, write_tsv
    from radpath.survival.fit import load_design
    from radpath.survival.modeling import FittedModel
    from radpath.survival.scoring import score_patients

    spec = params.spec
    outcomes, design, _, _ = load_design(
        inputs.outcomes,
        inputs.clinical if spec["clinical"] else None,
        dict(zip(spec["blocks"], inputs.blocks, strict=True)),
    )
    risk = score_patients(
        FittedModel.from_dict(read_json(inputs.model)), design, outcomes,
        wildcards.endpoint, params.horizons,
        read_tsv(inputs.run_risk, index_col="patient_id"),
    )
    write_tsv(risk, outputs.risk)


def fit_model(inputs, outputs, params, wildcards, threads: int) -> None:
    """Fit one model for one endpoint on training patients; risk for all."""
    from radpath.inputs.io import write_json, write_tsv
    from radpath.survival.fit import load_design, train_and_predict

    spec = params.spec
    block_paths = dict(zip(spec["blocks"], inputs.blocks, strict=True))
    outcomes, design, forced, candidates = load_design(
        inputs.outcomes,
        inputs.clinical if spec["clinical"] else None,
        block_paths,
    )
    model, risk, optimism = train_and_predict(
        outcomes, design, forced, candidates, wildcards.endpoint,
        params.selection, params.cox, params.optimism_bootstrap, params.seed, threads=threads,
        horizons=params.horizons,
    )
    write_json(model.to_dict(), outputs.model)
    write_tsv(model.coefficients, outputs.coefficients, index=False)
    write_tsv(model.selection_log, outputs.selection, index=False)
    write_tsv(risk, outputs.risk)
    write_json(optimism, outputs.optimism)


def evaluate(inputs, outputs, params, wildcards, threads: int) -> None:
    """C-index table over all models (with each model's status), KM plots, forest plot."""
    import itertools
    from pathlib import Path

    import pandas as pd

    from radpath.inputs.io import read_json, read_tsv, write_tsv
    from radpath.survival.evaluation import evaluate_endpoint, km_plots
    from radpath.survival.plots import plot_forest
    from radpath.survival.status import endpoint_statuses

    km_dir = Path(outputs.km)
    km_dir.mkdir(parents=True, exist_ok=True)
    # Inputs come in expand() order: endpoints outer, models inner.
    keys = list(itertools.product(params.endpoints, params.models))
    risk_files = dict(zip(keys, inputs.risks, strict=True))
    optimism_files = dict(zip(keys, inputs.optimism, strict=True))
    model_files = dict(zip(keys, inputs.models, strict=True))
    tables = []
    for endpoint in params.endpoints:
        risks = {m: read_tsv(risk_files[endpoint, m], index_col="patient_id") for m in params.models}
        optimism = {m: read_json(optimism_files[endpoint, m]) for m in params.models}
        features = {m: read_json(model_files[endpoint, m])["features"] for m in params.models}
        statuses = endpoint_statuses(features, params.specs, risks)
        table = evaluate_endpoint(endpoint, risks, optimism, params.reference, params.evaluation,
                                  params.seed, statuses)
        logrank = km_plots(endpoint, risks, statuses, params.time_unit, km_dir)
        table["logrank_p"] = [
            logrank[m] if cohort == "validation" else float("nan")
            for m, cohort in zip(table["model"], table["cohort"], strict=True)
        ]
        tables.append(table)
    cindex = pd.concat(tables, ignore_index=True)
    write_tsv(cindex, outputs.cindex, index=False)
    plot_forest(cindex[cindex["cohort"] == "validation"], outputs.forest,
                "Validation C-index by model")


def accuracy(inputs, outputs, params, wildcards, threads: int) -> None:
    """Validation time-dependent AUC, Brier scores, calibration and decision curves."""
    import itertools
    from pathlib import Path

    import pandas as pd

    from radpath.inputs.io import read_json, read_tsv, write_tsv
    from radpath.survival.evaluation import endpoint_accuracy
    from radpath.survival.modeling import FittedModel
    from radpath.survival.status import endpoint_statuses

    ev = params.evaluation
    # Inputs come in expand() order: endpoints outer, models inner.
    keys = list(itertools.product(params.endpoints, params.models))
    risk_files = dict(zip(keys, inputs.risks, strict=True))
    model_files = dict(zip(keys, inputs.models, strict=True))
    calibration_dir, decision_dir = Path(outputs.calibration_plots), Path(
        outputs.decision_plots)
    calibration_dir.mkdir(parents=True, exist_ok=True)
    decision_dir.mkdir(parents=True, exist_ok=True)
    tables = {"accuracy": [], "calibration": [], "decision_curve": []}
    for endpoint in params.endpoints:
        risks = {m: read_tsv(risk_files[endpoint, m], index_col="patient_id") for m in params.models}
        fitted = {m: FittedModel.from_dict(read_json(model_files[endpoint, m])) for m in params.models}
        baselines = {m: (f.baseline_time, f.baseline_cumhaz) for m, f in fitted.items()}
        statuses = endpoint_statuses({m: f.features for m, f in fitted.items()}, params.specs,
                                     risks)
        accuracy, calibration, decision = endpoint_accuracy(
            endpoint, risks, baselines, ev, params.seed, params.time_unit, "validation", calibration_dir,
            decision_dir / f"{endpoint}.png", params.reference, statuses)
        tables["accuracy"].append(accuracy)
        tables["calibration"].append(calibration)
        tables["decision_curve"].append(decision)
    for name, parts in tables.items():
        write_tsv(pd.concat(parts, ignore_index=True), getattr(outputs, name), index=False)


def treatment_benefit(inputs, outputs, params, wildcards, threads: int) -> None:
    """Risk groups x treatment, per endpoint and model."""
    from pathlib import Path

    from radpath.inputs.io import read_tsv, write_tsv
    from radpath.survival.benefit import (
        benefit_frame,
        plot_benefit,
        treated_flags,
        treatment_benefit,
    )

    keys = [(endpoint, model) for endpoint in params.endpoints for model in params.models]
    risks = {key: read_tsv(path, index_col="patient_id")
             for key, path in zip(keys, inputs.risks, strict=True)}
    clinical = read_tsv(inputs.clinical, index_col="patient_id")
    treated = treated_flags(clinical, params.treatment["column"], params.treatment["treated"])
    table = treatment_benefit(risks, treated)
    plots = Path(outputs.plots)
    plots.mkdir(parents=True, exist_ok=True)
    for (endpoint, model), risk in risks.items():
        p_interaction = table.set_index(["endpoint", "model", "cohort"]).at[
            (endpoint, model, "validation"), "p_interaction"]
        title = (f"{endpoint.upper()} - {model} (validation): interaction p = "
                 + ("n/a" if p_interaction != p_interaction else f"{p_interaction:.3g}"))
        plot_benefit(benefit_frame(risk, treated, "validation"), title,
                     plots / f"{endpoint}_{model}.png", params.time_unit, params.treatment["column"])
    write_tsv(table, outputs.table, index=False)


def cv_model(inputs, outputs, params, wildcards, threads: int) -> None:
    """Repeated stratified k-fold CV of one model's whole pipeline, one
    endpoint, on all patients (validation.method: repeated_cv)."""
    from radpath.inputs import sheets
    from radpath.inputs.io import read_tsv, write_tsv
    from radpath.survival.repeated_cv import CohortInputs, cross_validate

    outcomes = read_tsv(inputs.outcomes, index_col="patient_id")
    clinical = sheets.load_clinical(
        inputs.clinical, params.schema, list(outcomes.index), params.covariates,
        params.harmonization["covariates"], params.missing_covariates, endpoints=params.endpoints,
    ).loc[outcomes.index]
    patients = sheets.read_sheet(inputs.patients, "patients").set_index("patient_id")
    inputs = CohortInputs(
        outcomes=outcomes,
        clinical=clinical,
        blocks={block: read_tsv(path, index_col="patient_id")
                for block, path in zip(params.spec["blocks"], inputs.blocks, strict=True)},
        batch=patients[params.harmonization["batch_column"]],
    )
    table = cross_validate(
        inputs, params.spec, wildcards.endpoint, params.covariates, params.harmonization, params.selection,
        params.cox, params.validation["folds"], params.validation["repeats"], params.seed, params.pca_components,
    )
    write_tsv(table, outputs.folds, index=False)


def cv_summary(inputs, outputs, params, wildcards, threads: int) -> None:
    """The repeated-CV results of every cross-validated model and a plot."""
    import itertools

    import pandas as pd

    from radpath.inputs.io import read_tsv, write_tsv
    from radpath.survival.plots import plot_repeated_cv
    from radpath.survival.repeated_cv import summarize

    keys = list(itertools.product(params.endpoints, params.models))  # expand() order: endpoints outer
    folds = {key: read_tsv(path) for key, path in zip(keys, inputs.folds, strict=True)}
    table = pd.DataFrame([summarize(endpoint, model, folds[endpoint, model])
                          for endpoint, model in keys])
    write_tsv(table, outputs.table, index=False)
    plot_repeated_cv(folds, params.folds, params.repeats, outputs.plot)
