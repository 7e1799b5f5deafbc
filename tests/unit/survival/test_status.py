"""Models without a result of their own (radpath.survival.status), through the real fit and
evaluation: a block of pure noise whose selection keeps nothing gives a constant risk
(`empty`), and clinical covariates plus that block give the clinical model again (`same as
clinical`). Neither gets a C-index, a CI, a comparison, a forest-plot row or a decision curve.
"""

import numpy as np
import pandas as pd
import pytest

from radpath.inputs.configuration import default_config
from radpath.inputs.io import write_tsv
from radpath.survival.evaluation import endpoint_accuracy, evaluate_endpoint, km_plots
from radpath.survival.fit import load_design, train_and_predict
from radpath.survival.plots import forest_rows, plot_forest
from radpath.survival.selection import where_emptied
from radpath.survival.status import EMPTY, OK, endpoint_statuses

SPECS = {
    "clinical": {"clinical": True, "blocks": []},
    "noise": {"clinical": False, "blocks": ["noise"]},
    "clinical_noise": {"clinical": True, "blocks": ["noise"]},
    "signal": {"clinical": False, "blocks": ["signal"]},
}
EVALUATION = {**default_config()["evaluation"], "bootstrap": 200, "horizons": [12, 24]}
C_COLUMNS = ["harrell_c", "harrell_lo", "harrell_hi", "uno_c", "uno_lo", "uno_hi"]
DELTA_COLUMNS = ["delta_harrell", "delta_lo", "delta_hi", "delta_p"]


def cohort_files(folder, seed=0, n=80, n_train=56, n_noise=10):
    """Age and one feature of the block `signal` shorten survival; the block `noise` is pure
    noise (with seed 0 the univariable filter keeps none of its 10 columns)."""
    rng = np.random.default_rng(seed)
    ids = pd.Index([f"P{i:03d}" for i in range(n)], name="patient_id")
    age, signal = rng.normal(60, 10, n), rng.normal(size=n)
    event_time = rng.exponential(24 * np.exp(-(0.08 * (age - 60) + signal)))
    censor_time = rng.uniform(6, 60, n)
    tables = {
        "outcomes": pd.DataFrame({"split": ["train"] * n_train + ["validation"] * (n - n_train),
                                  "os_time": np.minimum(event_time, censor_time).round(2),
                                  "os_event": (event_time <= censor_time).astype(int)},
                                 index=ids),
        "clinical": pd.DataFrame({"age": age.round(1)}, index=ids),
        "noise": pd.DataFrame(rng.normal(size=(n, n_noise)), index=ids,
                              columns=[f"n{j}" for j in range(n_noise)]),
        "signal": pd.DataFrame({"s0": signal, "s1": rng.normal(size=n)}, index=ids),
    }  # fmt: skip
    for name, table in tables.items():
        write_tsv(table, folder / f"{name}.tsv")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Every model of SPECS fitted as the fit_model job does (training patients only)."""
    folder = tmp_path_factory.mktemp("cohort")
    cohort_files(folder)
    models, risks = {}, {}
    for name, spec in SPECS.items():
        outcomes, design, forced, candidates = load_design(
            folder / "outcomes.tsv", folder / "clinical.tsv" if spec["clinical"] else None,
            {block: folder / f"{block}.tsv" for block in spec["blocks"]})
        models[name], risks[name], _ = train_and_predict(
            outcomes, design, forced, candidates, "os", default_config()["selection"],
            {"penalizer": 0.01}, 0, seed=0)
    statuses = endpoint_statuses({m: f.features for m, f in models.items()}, SPECS, risks)
    return models, risks, statuses


@pytest.fixture(scope="module")
def cindex(fitted):
    models, risks, statuses = fitted
    optimism = dict.fromkeys(SPECS, {"B": 0, "B_used": 0, "B_failed": 0, "failures": {}})
    return evaluate_endpoint("os", risks, optimism, "clinical", EVALUATION, 7, statuses)


def test_noise_block_gives_an_empty_model_and_the_clinical_model_again(fitted):
    models, _, statuses = fitted
    assert models["noise"].features == []
    assert models["clinical_noise"].features == models["clinical"].features == ["age"]
    assert statuses == {"clinical": OK, "noise": EMPTY,
                        "clinical_noise": "same as clinical: clinical", "signal": OK}
    # The step that lost the block's columns, with the counts it recorded.
    for name in ("noise", "clinical_noise"):
        counts = models[name].selection_by_block
        noise = counts[counts["block"] == "noise"].set_index("step")
        assert noise["n_in"].iloc[0] == 10
        assert where_emptied(counts) == {
            "noise": {"step": "univariate_cox", "n_in": 10, "n_out": 0}}
    counts = models["clinical_noise"].selection_by_block.set_index(["block", "step"])
    assert counts.loc[("clinical", "forced"), ["n_in", "n_out"]].tolist() == [1, 1]
    assert where_emptied(models["signal"].selection_by_block) == {}


def test_models_without_features_get_no_c_index_ci_or_difference(cindex):
    table = cindex.set_index(["model", "cohort"])
    for model, status in (("noise", EMPTY), ("clinical_noise", "same as clinical: clinical")):
        for cohort in ("train", "validation"):
            row = table.loc[(model, cohort)]
            assert row["status"] == status
            assert row[C_COLUMNS + DELTA_COLUMNS].isna().all(), (model, cohort)
            assert row["n"] > 0 and row["events"] > 0
    signal = table.loc[("signal", "validation")]
    assert signal["status"] == OK
    assert signal[C_COLUMNS + DELTA_COLUMNS].notna().all()
    assert signal["harrell_lo"] < signal["harrell_c"] < signal["harrell_hi"]


def test_models_with_features_keep_their_numbers(fitted, cindex):
    _, risks, _ = fitted
    optimism = dict.fromkeys(SPECS, {"B": 0, "B_used": 0, "B_failed": 0, "failures": {}})
    unmarked = evaluate_endpoint("os", risks, optimism, "clinical", EVALUATION, 7)
    assert (unmarked["status"] == OK).all()
    kept = cindex["status"] == OK
    pd.testing.assert_frame_equal(cindex[kept], unmarked[kept])
    # What the status replaces: the constant risk's C of 0.5 with a CI of [0.5, 0.5].
    noise = unmarked.set_index(["model", "cohort"]).loc[("noise", "validation")]
    assert noise[["harrell_c", "harrell_lo", "harrell_hi"]].tolist() == [0.5, 0.5, 0.5]


def test_forest_plot_leaves_them_out_and_names_them(cindex, tmp_path):
    validation = cindex[cindex["cohort"] == "validation"]
    shown, left_out = forest_rows(validation)
    assert set(shown["model"]) == {"clinical", "signal"}
    assert dict(zip(left_out["model"], left_out["status"], strict=True)) == {
        "noise": EMPTY, "clinical_noise": "same as clinical: clinical"}
    plot_forest(validation, tmp_path / "forest.png", "Validation C-index by model")
    assert (tmp_path / "forest.png").stat().st_size > 0


def test_constant_risk_has_no_kaplan_meier_plot(fitted, tmp_path):
    _, risks, statuses = fitted
    p_values = km_plots("os", risks, statuses, "months", tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "os_clinical.png", "os_clinical_noise.png", "os_signal.png"]
    assert np.isnan(p_values["noise"]) and np.isnan(p_values["clinical_noise"])
    assert np.isfinite(p_values["signal"])


def test_accuracy_and_decision_curves_leave_them_out(fitted, tmp_path):
    models, risks, statuses = fitted
    baselines = {m: (f.baseline_time, f.baseline_cumhaz) for m, f in models.items()}
    accuracy, calibration, decision = endpoint_accuracy(
        "os", risks, baselines, EVALUATION, 7, "months", "validation", tmp_path,
        tmp_path / "decision.png", "clinical", statuses)
    rows = accuracy.set_index("model")
    assert rows.loc["noise", "status"].tolist() == [EMPTY, EMPTY]
    assert rows.loc[["noise", "clinical_noise"], ["auc", "auc_lo", "auc_hi", "ipa"]].isna().all(
        axis=None)
    assert rows.loc["signal", "auc"].notna().any()
    assert set(calibration["model"]) <= {"clinical", "signal"}
    assert set(decision["model"]) == {"clinical", "signal", "treat all", "treat none"}
    assert (tmp_path / "decision.png").exists() and (tmp_path / "os_noise.png").exists()


def test_accuracy_with_no_evaluable_horizon_writes_tables_and_plots(fitted, tmp_path):
    """Horizons past every follow-up (a small cohort): no calibration group at all, yet the
    job writes its tables and plots (an empty calibration table once lost its columns when
    the models without a result were filtered out)."""
    models, risks, statuses = fitted
    baselines = {m: (f.baseline_time, f.baseline_cumhaz) for m, f in models.items()}
    late = {**EVALUATION, "horizons": [500, 600], "decision_horizon": 12}
    accuracy, calibration, _ = endpoint_accuracy(
        "os", risks, baselines, late, 7, "months", "validation", tmp_path,
        tmp_path / "decision.png", "clinical", statuses)
    assert calibration.empty and "model" in calibration.columns
    assert accuracy["note"].notna().all() and accuracy["auc"].isna().all()
    assert (tmp_path / "os_signal.png").exists()
