"""Treatment benefit: risk group x treatment interaction Cox models and their plots."""

import math

import numpy as np
import pandas as pd
import pytest

from radpath.survival import benefit
from radpath_demo.cohort import RiskModel, sample_cohort, treatment_effect


def simulated(n: int, seed: int, log_hr_high: float, log_hr_low: float = 0.0) -> tuple:
    """Risk tables (half train, half validation) and treatment flags with a planted
    treatment effect in patients whose risk is above 0 (the training median, about)."""
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    treated = rng.random(n) < 0.5
    high = risk > 0
    log_hazard = risk + treated * np.where(high, log_hr_high, log_hr_low)
    event_time = rng.exponential(np.exp(-log_hazard))
    censor = rng.exponential(2.0, n)
    ids = [f"P{i:04d}" for i in range(n)]
    table = pd.DataFrame({
        "split": np.where(np.arange(n) % 2 == 0, "train", "validation"),
        "time": np.minimum(event_time, censor),
        "event": (event_time <= censor).astype(int),
        "risk": risk,
    }, index=pd.Index(ids, name="patient_id"))
    return table, pd.Series(treated, index=table.index, name="treated")


def test_planted_benefit_in_the_high_risk_group_is_found():
    risk, treated = simulated(3000, seed=1, log_hr_high=-1.0)
    row = benefit.interaction_row(benefit.benefit_frame(risk, treated, "validation"))
    assert row["note"] == ""
    assert row["hr_treated_high_lo"] < math.exp(-1.0) < row["hr_treated_high_hi"]
    assert row["hr_treated_low_lo"] < 1.0 < row["hr_treated_low_hi"]
    assert row["hr_interaction"] == pytest.approx(row["hr_treated_high"] / row["hr_treated_low"])
    assert row["p_interaction"] < 1e-6
    assert row["n"] == 1500 and sum(row[f"n_{g}"] for g in (
        "low_untreated", "low_treated", "high_untreated", "high_treated")) == 1500


def test_no_interaction_when_the_treatment_helps_everyone_alike():
    risk, treated = simulated(3000, seed=2, log_hr_high=-0.7, log_hr_low=-0.7)
    row = benefit.interaction_row(benefit.benefit_frame(risk, treated, "validation"))
    assert row["p_interaction"] > 0.01
    assert row["hr_treated_low"] < 0.7 and row["hr_treated_high"] < 0.7


def test_hazard_ratios_equal_lifelines_on_the_same_design():
    from lifelines import CoxPHFitter

    risk, treated = simulated(400, seed=3, log_hr_high=-0.8)
    frame = benefit.benefit_frame(risk, treated, "train")
    row = benefit.interaction_row(frame)
    fit = CoxPHFitter().fit(frame, "time", "event")
    assert row["hr_treated_low"] == pytest.approx(math.exp(fit.params_["treated"]))
    assert row["p_interaction"] == pytest.approx(fit.summary.loc["high_x_treated", "p"])


def test_groups_split_at_the_training_median():
    risk, treated = simulated(200, seed=4, log_hr_high=-1.0)
    train_median = np.median(risk.loc[risk["split"] == "train", "risk"])
    frame = benefit.benefit_frame(risk, treated, "validation")
    validation = risk[risk["split"] == "validation"]
    assert (frame["high"] == (validation["risk"] > train_median)).all()
    shifted = risk.copy()
    shifted.loc[shifted["split"] == "validation", "risk"] += 100  # all above the train median
    row = benefit.interaction_row(benefit.benefit_frame(shifted, treated, "validation"))
    assert math.isnan(row.get("p_interaction", math.nan))
    assert row["note"].startswith("no patients low untreated, low treated")


def test_table_has_a_row_per_endpoint_model_and_cohort(tmp_path):
    risk, treated = simulated(300, seed=5, log_hr_high=-1.0)
    table = benefit.treatment_benefit({("os", "a"): risk, ("pfs", "a"): risk}, treated)
    assert list(table.columns) == benefit.COLUMNS
    assert len(table) == 4 and set(table["cohort"]) == {"train", "validation"}
    benefit.plot_benefit(benefit.benefit_frame(risk, treated, "validation"), "t",
                         tmp_path / "km.png", "months", "chemoradiotherapy")
    assert (tmp_path / "km.png").stat().st_size > 1000


def test_treated_flags_compare_text():
    clinical = pd.DataFrame({"crt": ["yes", " yes", "no", "Yes"]}, index=list("abcd"))
    assert list(benefit.treated_flags(clinical, "crt", "yes")) == [True, True, False, False]


def test_demo_plants_a_benefit_for_high_risk_patients():
    """The demo cohort's treatment helps the high-risk patients more, as the analysis finds
    with the true log-hazard as the risk score."""
    z = np.array([-1.5, 0.0, 1.5])
    effect = treatment_effect(z, np.ones(3, bool), RiskModel())
    assert effect[0] > -0.1 and effect[2] < -0.85
    assert (treatment_effect(z, np.zeros(3, bool), RiskModel()) == 0).all()
    cohort = sample_cohort(1200, 3, seed=11)
    ids = cohort.clinical["patient_id"]
    risk = pd.DataFrame({
        "split": np.where(np.arange(len(ids)) % 2 == 0, "train", "validation"),
        "time": cohort.clinical["os_time"].to_numpy(),
        "event": cohort.clinical["os_event"].to_numpy(),
        "risk": cohort.truth["log_hazard"].to_numpy(),
    }, index=pd.Index(ids, name="patient_id"))
    treated = benefit.treated_flags(cohort.clinical.set_index("patient_id"),
                                    "chemoradiotherapy", "yes")
    row = benefit.interaction_row(benefit.benefit_frame(risk, treated, "validation"))
    assert row["hr_treated_high"] < 0.75 < row["hr_treated_low"]
    assert row["p_interaction"] < 0.05


def test_near_separation_gives_unbounded_intervals_not_an_overflow():
    # The high-risk treated arm's only event comes after every other patient's follow-up:
    # its hazard ratio runs off to zero (monotone likelihood), as in a demo run that
    # crashed with OverflowError in math.exp.
    assert benefit._ratio(40.0, 1.0e6)[1:] == (0.0, math.inf)
    rng = np.random.default_rng(0)
    n = 40
    high = np.repeat([0.0, 1.0], n // 2)
    treated = np.tile([0.0, 1.0], n // 2)
    time = rng.uniform(1, 10, n)
    event = np.ones(n, dtype=int)
    arm = (high == 1) & (treated == 1)
    event[arm] = 0
    first = np.flatnonzero(arm)[0]
    time[first], event[first] = 50.0, 1
    frame = pd.DataFrame({"time": time, "event": event, "high": high, "treated": treated})
    frame["high_x_treated"] = frame["high"] * frame["treated"]
    row = benefit.interaction_row(frame)
    assert row["note"] == "near-separation: a confidence interval is unbounded"
    assert row["hr_treated_high_lo"] == 0.0 or math.isinf(row["hr_treated_high_hi"])
