"""Survival statistics and models: concordance, bootstrap intervals, Kaplan-Meier and
log-rank (metrics); feature selection (selection); the Cox pipeline fitted on training
patients (modeling) and one model's job (fit); the evaluation tables and figures
(evaluation, plots) and which models have a result of their own to report (status),
time-dependent accuracy, calibration and decision curves (accuracy),
treatment benefit (benefit), repeated cross-validation (repeated_cv), and frozen models
applied to external cohorts (scoring).

Imports: radpath.inputs, radpath.radiomics (ComBat, also refitted per fold) and
radpath.pathology.matrices (the embedding PCA, refitted per fold).
"""
