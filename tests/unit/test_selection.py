"""Tests for radpath.selection: each filter, univariate Cox against lifelines, the whole pipeline."""

import copy

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter

from radpath import selection as sel
from radpath.defaults import default_config

# The sparser 1se rule keeps these planted-signal tests strict.
SELECTION_CFG = {**default_config()["selection"], "alpha_rule": "1se"}


def survival_outcome(rng, linear_predictor, censor_scale=3.0):
    n = linear_predictor.size
    event_time = rng.exponential(np.exp(-linear_predictor))
    censor_time = rng.exponential(censor_scale, n)
    return np.minimum(event_time, censor_time), (event_time <= censor_time).astype(int)


@pytest.fixture(scope="module")
def planted():
    """n=150, 3 informative columns among 200 (others pure noise)."""
    rng = np.random.default_rng(2024)
    X = pd.DataFrame(rng.normal(size=(150, 200)), columns=[f"f{i:03d}" for i in range(200)])
    informative = ["f010", "f020", "f030"]
    lp = X["f010"] + X["f020"] - X["f030"]
    time, event = survival_outcome(rng, lp.to_numpy())
    return X, time, event, informative


# --------------------------------------------------------------------------- near-zero variance


def test_near_zero_variance_drops_constant_and_near_constant():
    n = 40
    rng = np.random.default_rng(0)
    X = pd.DataFrame(
        {
            "constant": np.ones(n),
            "near_constant": np.r_[np.zeros(39), 1.0],  # ratio 39 > 19, 2/40 unique <= 0.1
            "balanced_binary": np.tile([0.0, 1.0], 20),  # ratio 1: kept although few values
            "ratio_19": np.r_[np.zeros(38), 1.0, 1.0],  # ratio exactly 19 is not > 19: kept
            "continuous": rng.normal(size=n),
            "rare_but_many_values": np.r_[np.zeros(20), rng.normal(size=20)],  # 21/40 unique
        }
    )
    kept, row = sel.near_zero_variance(X, freq_ratio=19.0, unique_fraction=0.1)
    assert kept == ["balanced_binary", "ratio_19", "continuous", "rare_but_many_values"]
    assert (row["step"], row["n_in"], row["n_out"]) == ("near_zero_variance", 6, 4)
    assert row["note"] == "1 constant, 1 near-zero variance"


# --------------------------------------------------------------------------- correlation


def test_correlation_prune_drops_one_of_a_duplicated_pair():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 60))
    X = pd.DataFrame({"a": a, "a_scaled": 3 * a + 1, "b": b, "a_exp": np.exp(a)})
    kept, row = sel.correlation_prune(X, 0.9)
    # a, a_scaled and a_exp are perfectly rank-correlated: the first one is kept.
    assert kept == ["a", "b"]
    assert row["n_out"] == 2


def test_correlation_prune_drops_the_member_more_correlated_with_the_rest():
    rng = np.random.default_rng(3)
    z, u, v = rng.normal(size=(3, 300))
    X = pd.DataFrame({"hub": z + 0.25 * u, "x": z, "y": u + 0.3 * v})
    corr = sel.spearman_abs(X.to_numpy())
    assert corr[0, 1] > 0.9 and corr[0, 2] > corr[1, 2]  # hub is the more redundant one
    kept, _ = sel.correlation_prune(X, 0.9)
    assert kept == ["x", "y"]


# --------------------------------------------------------------------------- univariate Cox


def test_univariate_cox_equals_lifelines_with_tied_times():
    rng = np.random.default_rng(5)
    n = 100
    X = pd.DataFrame(rng.normal(size=(n, 4)), columns=["a", "b", "c", "d"])
    time = rng.integers(1, 15, n).astype(float)  # many ties: Efron matters
    event = rng.integers(0, 2, n)
    X["a"] += 1.5 * (time < 6)
    X["d"] = rng.integers(0, 3, n).astype(float)
    table = sel.univariate_cox(X, time, event).set_index("feature")
    assert table["converged"].all()
    for name in X.columns:
        data = pd.DataFrame({"x": X[name], "t": time, "e": event})
        fitter = CoxPHFitter().fit(data, "t", "e", fit_options={"precision": 1e-10})
        reference = fitter.summary.loc["x"]
        sd = X[name].std(ddof=0)
        assert table.at[name, "coef"] == pytest.approx(reference["coef"] * sd, rel=1e-6)
        assert table.at[name, "se"] == pytest.approx(reference["se(coef)"] * sd, rel=1e-6)
        assert table.at[name, "p"] == pytest.approx(reference["p"], rel=1e-6)
    assert table.at["a", "p"] < 0.01


def test_univariate_cox_flags_monotone_likelihood_and_screen_drops_it():
    rng = np.random.default_rng(6)
    time = rng.permutation(np.arange(1.0, 41.0))
    event = np.ones(40, dtype=int)
    X = pd.DataFrame({"separating": -time, "constant": np.ones(40), "noise": rng.normal(size=40)})
    table = sel.univariate_cox(X, time, event).set_index("feature")
    assert not table.at["separating", "converged"] and np.isnan(table.at["separating", "p"])
    assert not table.at["constant", "converged"]
    assert table.at["noise", "converged"]
    kept, row, _ = sel.univariate_screen(X, time, event, p_max=1.0, max_features=10)
    assert kept == ["noise"]
    assert "2 did not converge" in row["note"]


def test_univariate_screen_keeps_smallest_p_up_to_the_cap(planted):
    X, time, event, informative = planted
    kept, row, table = sel.univariate_screen(X, time, event, p_max=0.1, max_features=5)
    assert len(kept) == 5 and set(informative) <= set(kept)
    p = table.set_index("feature")["p"]
    assert p[kept].is_monotonic_increasing
    assert p.drop(kept).min() >= p[kept].max()
    assert row["n_in"] == 200


# --------------------------------------------------------------------------- pipeline


def test_planted_signal_is_recovered(planted):
    X, time, event, informative = planted
    result = sel.select_features(X, time, event, SELECTION_CFG, forced=[], seed=1)
    assert set(result.selected[:3]) == set(informative)
    assert len(result.selected) <= SELECTION_CFG["max_features"]
    assert result.alpha > 0
    assert result.log["step"].tolist() == [
        "forced", "near_zero_variance", "correlation", "univariate_cox", "penalized_cox",
        "max_features",
    ]  # fmt: skip
    assert (result.log["n_out"] <= result.log["n_in"]).all()
    # The final selection is read at the chosen alpha, not the weakest penalty of the path.
    chosen = result.cv.loc[result.cv["alpha"] == result.alpha, "n_nonzero"].item()
    assert result.log.set_index("step").at["penalized_cox", "n_out"] == chosen
    assert chosen < result.cv["n_nonzero"].max()


def test_selection_is_reproducible_for_a_seed(planted):
    X, time, event, _ = planted
    first = sel.select_features(X, time, event, SELECTION_CFG, [], seed=7)
    again = sel.select_features(X, time, event, SELECTION_CFG, [], seed=7)
    assert first.selected == again.selected and first.alpha == again.alpha
    pd.testing.assert_frame_equal(first.cv, again.cv)
    other = sel.select_features(X, time, event, SELECTION_CFG, [], seed=8)
    assert not np.allclose(first.cv["cv_deviance"], other.cv["cv_deviance"])


def test_min_rule_penalizes_no_more_than_1se(planted):
    X, time, event, _ = planted
    cfg = copy.deepcopy(SELECTION_CFG)
    cfg["alpha_rule"] = "min"
    at_min = sel.select_features(X, time, event, cfg, [], seed=1)
    at_1se = sel.select_features(X, time, event, SELECTION_CFG, [], seed=1)
    assert at_min.alpha <= at_1se.alpha
    assert (
        at_min.cv["cv_deviance"].min()
        == at_min.cv.loc[at_min.cv["alpha"] == at_min.alpha, "cv_deviance"].item()
    )
    cfg["alpha_rule"] = "best"
    with pytest.raises(sel.SelectionError, match="alpha_rule"):
        sel.select_features(X, time, event, cfg, [], seed=1)


def test_forced_columns_are_kept_first_and_not_filtered(planted):
    X, time, event, informative = planted
    X = X.assign(age=np.random.default_rng(0).normal(60, 10, len(X)), copy_of_age=0.0)
    X["copy_of_age"] = X["age"]  # a candidate identical to a forced column
    forced = ["age", "f199"]  # forced columns with no signal at all
    result = sel.select_features(X, time, event, SELECTION_CFG, forced, seed=1)
    assert result.selected[:2] == forced
    # alpha in the CV table is on Coxnet's scale even with unpenalized columns present.
    chosen = result.cv.loc[result.cv["alpha"] == result.alpha, "n_nonzero"].item()
    assert result.log.set_index("step").at["penalized_cox", "n_out"] == chosen
    assert set(informative) <= set(result.selected)
    assert len(result.selected) <= len(forced) + SELECTION_CFG["max_features"]


def test_constant_forced_column_is_dropped_with_a_note(planted):
    X, time, event, _ = planted
    X = X.assign(stage_iv=0.0)
    result = sel.select_features(X, time, event, SELECTION_CFG, ["stage_iv"], seed=1)
    assert "stage_iv" not in result.selected
    assert "stage_iv" in result.log.set_index("step").at["forced", "note"]


def test_nothing_survives_gives_empty_selection():
    rng = np.random.default_rng(0)
    time, event = survival_outcome(rng, np.zeros(50))
    X = pd.DataFrame({"c1": np.ones(50), "c2": np.zeros(50)})
    result = sel.select_features(X, time, event, SELECTION_CFG, [], seed=0)
    assert result.selected == [] and result.alpha is None
    assert "empty selection" in result.log["note"].iloc[-1]


def test_missing_values_are_rejected(planted):
    X, time, event, _ = planted
    X = X.copy()
    X.iloc[3, 5] = np.nan
    with pytest.raises(sel.SelectionError, match="missing values in columns \\['f005'\\]"):
        sel.select_features(X, time, event, SELECTION_CFG, [], seed=0)


def test_breslow_loglik_equals_lifelines_on_untied_data():
    rng = np.random.default_rng(12)
    x = rng.normal(size=80)
    time, event = survival_outcome(rng, x)
    fitter = CoxPHFitter().fit(pd.DataFrame({"x": x, "t": time, "e": event}), "t", "e")
    eta = fitter.params_["x"] * x
    assert sel.breslow_loglik(eta[:, None], time, event)[0] == pytest.approx(
        fitter.log_likelihood_, rel=1e-8
    )


def test_fold_alphas_give_the_same_penalty_per_candidate_whatever_the_number_of_candidates():
    """Coxnet rescales penalty factors to sum to the number of columns; a fold that screened in a
    different number of candidates must still penalize each candidate the same."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5))  # 2 forced + 3 candidates
    time, event = survival_outcome(rng, x[:, 0] + x[:, 2])
    y = sel._surv(time, event)
    unit = np.array([0.3, 0.1, 0.03])
    few = sel._coxnet(1.0, np.r_[0, 0, 1, 1, 1.0], alphas=sel._effective_alphas(unit, 2, 3))
    # Three extra candidates too small to ever enter the model at these alphas.
    x_more = np.c_[x, 1e-3 * rng.normal(size=(120, 3))]
    more = sel._coxnet(
        1.0, np.r_[0, 0, 1, 1, 1, 1, 1, 1.0], alphas=sel._effective_alphas(unit, 2, 6)
    )
    coef_few = few.fit(x, y).coef_
    coef_more = more.fit(x_more, y).coef_
    assert (coef_more[5:] == 0).all()
    np.testing.assert_allclose(coef_more[:5], coef_few, rtol=1e-6, atol=1e-9)
    assert (coef_few[2:] != 0).any()  # candidates do enter: not a trivial all-zero path


def test_fold_cox_on_forced_columns_survives_constant_and_separated_columns():
    from radpath.selection import _unpenalized_cox

    rng = np.random.default_rng(3)
    n = 12
    time = rng.exponential(10, n) + 0.1
    event = np.ones(n, dtype=int)
    separated = (time < np.median(time)).astype(float)  # perfectly predicts the order
    x = np.column_stack([rng.normal(size=n), np.zeros(n), separated])
    beta = _unpenalized_cox(x, time, event)
    assert beta[1] == 0.0  # a level absent from this fold
    assert np.all(np.isfinite(beta)) and beta[2] > 0
