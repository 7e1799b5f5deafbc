"""Tests for radpath.survival.selection: each filter, univariate Cox against lifelines, the whole pipeline."""

import copy
import re

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from survival_data import NULL_FORCED, NULL_SELECTION_CFG, null_cohort

from radpath.inputs.configuration import default_config
from radpath.survival import selection as sel

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


def nzv_reference(column: np.ndarray) -> tuple[float, float, int]:
    """caret's nearZeroVar statistics of one column, one np.unique per column (the definition
    the vectorised code must reproduce): freqRatio, unique fraction, distinct values."""
    present = column[~np.isnan(column)]
    _, counts = np.unique(present, return_counts=True)
    if counts.size <= 1:
        return 0.0, counts.size / column.size, counts.size
    top_two = np.sort(counts)[-2:]
    return top_two[1] / top_two[0], counts.size / column.size, counts.size


def test_vectorised_near_zero_variance_statistics_equal_the_per_column_definition():
    rng = np.random.default_rng(11)
    n = 60
    columns = [
        rng.normal(size=n),  # all distinct
        np.round(rng.exponential(1.0, n)),  # counts with ties
        np.r_[np.zeros(50), np.ones(7), 2.0, 3.0, 3.0],  # near constant
        np.ones(n),  # constant
        np.r_[np.full(59, np.nan), 1.0],  # one value present
        np.full(n, np.nan),  # nothing present
        np.r_[np.zeros(30), np.full(30, -0.0)],  # -0.0 equals 0.0
        np.tile([1.0, 2.0, 2.0, np.nan], 15),
    ]
    values = np.column_stack(columns)
    values[rng.random(values.shape) < 0.1] = np.nan
    X = pd.DataFrame(values, columns=[f"c{i}" for i in range(values.shape[1])])
    before = X.copy()
    ratio, unique, distinct = sel._nzv_stats(X.to_numpy(dtype=float))
    for j in range(values.shape[1]):
        assert (ratio[j], unique[j], distinct[j]) == nzv_reference(values[:, j])
    pd.testing.assert_frame_equal(X, before)  # the sort never touches the caller's data
    for freq_ratio, unique_fraction in [(19.0, 0.1), (2.0, 0.5), (1.0, 1.0)]:
        kept, _ = sel.near_zero_variance(X, freq_ratio, unique_fraction)
        expected = [
            name
            for name in X.columns
            if (stats := nzv_reference(X[name].to_numpy()))[2] > 1
            and not (stats[0] > freq_ratio and stats[1] <= unique_fraction)
        ]
        assert kept == expected


# --------------------------------------------------------------------------- correlation


def test_average_ranks_equal_scipy_rankdata_layout_included():
    from scipy.stats import rankdata

    rng = np.random.default_rng(2)
    values = np.column_stack(
        [rng.normal(size=80), rng.integers(0, 5, 80), np.ones(80), rng.integers(0, 2, 80)]
    ).astype(float)
    X = pd.DataFrame(values)
    ranks = sel.average_ranks(X.to_numpy())
    expected = rankdata(X.to_numpy(), axis=0)
    assert np.array_equal(ranks, expected)
    # Same memory layout, so the correlations built from them are bit for bit the same.
    assert ranks.flags["F_CONTIGUOUS"] == expected.flags["F_CONTIGUOUS"]


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


def lifelines_per_sd(x: np.ndarray, time, event) -> pd.Series:
    """coef and se per SD and p of lifelines' Cox model (Efron) on one column."""
    data = pd.DataFrame({"x": x, "t": time, "e": event})
    fitter = CoxPHFitter().fit(data, "t", "e", fit_options={"precision": 1e-10})
    row = fitter.summary.loc["x"]
    sd = x.std(ddof=0)
    return pd.Series({"coef": row["coef"] * sd, "se": row["se(coef)"] * sd, "p": row["p"]})


def newton_steps(values: np.ndarray, time, event, coef: np.ndarray) -> np.ndarray:
    """|score / information| of each standardized column at coef: 0 at the maximum."""
    risk = sel._EfronRiskSets.build(time, event)
    x = np.ascontiguousarray(sel.standardize(values)[risk.order].T)
    _, score, info = sel._efron_terms(x, coef.copy(), x @ risk.event_sorted, risk)
    return np.abs(score / info)


def test_vectorised_univariate_cox_equals_lifelines_column_by_column():
    """Many kinds of columns at once (skewed, binary, counts, informative) with ties of every
    size between events and with censorings: each column as lifelines fits it alone."""
    rng = np.random.default_rng(21)
    n = 160
    time = rng.integers(1, 20, n).astype(float)  # ~8 patients per time: tied events
    event = (rng.random(n) < 0.6).astype(int)
    X = pd.DataFrame(
        {
            "normal": rng.normal(size=n),
            "skewed": rng.lognormal(0, 1.2, n),
            "binary": rng.integers(0, 2, n).astype(float),
            "counts": rng.poisson(2.0, n).astype(float),
            "informative": -0.3 * time + rng.normal(size=n),
            "large_scale": 1e4 * rng.normal(size=n) + 5e5,
        }
    )
    table = sel.univariate_cox(X, time, event).set_index("feature")
    assert table["converged"].all()
    for name in X.columns:
        reference = lifelines_per_sd(X[name].to_numpy(), time, event)
        # lifelines stops within ~1e-6 SE of the maximum (it is 1e-6 relative off for the
        # near-zero coef of "skewed", whatever its precision); ours is at it (see below).
        tolerance = {"abs": 1e-6 * reference["se"], "rel": 1e-6}
        assert table.at[name, "coef"] == pytest.approx(reference["coef"], **tolerance), name
        assert table.at[name, "se"] == pytest.approx(reference["se"], rel=1e-6), name
        assert table.at[name, "p"] == pytest.approx(reference["p"], rel=1e-6), name
    assert newton_steps(X.to_numpy(), time, event, table["coef"].to_numpy()).max() < 1e-12


def test_univariate_cox_at_large_n_converges_to_the_maximum_in_few_evaluations(monkeypatch):
    """3,000 patients (|loglik| ~ 14,000): under the former absolute tolerance (1e-12) on the
    log-likelihood, rounding made columns look worse, their steps were halved 30 times and they
    were declared converged ~5e-8 (per SD) short of the maximum, after 81 evaluations of all 40
    columns. With the tolerance relative to |loglik| each column stops at the maximum (the
    Newton step from its estimate is at rounding level), after few evaluations, most of them
    on the columns still iterating only."""
    rng = np.random.default_rng(5)
    n, p = 3000, 40
    latent = rng.normal(size=n)
    values = np.exp(0.5 * (latent[:, None] + rng.normal(size=(n, p))))
    X = pd.DataFrame(values, columns=[f"f{i:02d}" for i in range(p)])
    time, event = survival_outcome(rng, 0.5 * latent, censor_scale=2.0)
    time = time.round(3)  # ties too
    evaluated = []
    real_terms = sel._efron_terms

    def counting_terms(x, *args):
        evaluated.append(x.shape[0])
        return real_terms(x, *args)

    monkeypatch.setattr(sel, "_efron_terms", counting_terms)
    table = sel.univariate_cox(X, time, event)
    monkeypatch.undo()
    assert table["converged"].all()
    assert len(evaluated) <= 10 and sum(evaluated) <= 8 * p
    # The estimates are the maximum: one more Newton step would not move them.
    assert newton_steps(values, time, event, table["coef"].to_numpy()).max() < 1e-12
    for name in ["f00", "f17"]:
        reference = lifelines_per_sd(X[name].to_numpy(), time, event)
        row = table.set_index("feature").loc[name]
        assert row["coef"] == pytest.approx(reference["coef"], rel=1e-6)
        assert row["p"] == pytest.approx(reference["p"], rel=1e-6)


@pytest.mark.parametrize("seed", range(10))
def test_monotone_likelihood_is_never_converged_whatever_the_rounding(seed):
    """Columns without a finite estimate (all their patients censored, or one patient censored
    early): their likelihood flattens as coef -> -inf. Where the iterations stop then depends
    on rounding (the former code called the early-censored column converged, p = 1.0, for
    seed 6); the information per event (~1e-13 there) says the likelihood is flat: not
    converged, p NaN, whatever the seed. Ordinary columns next to them are unaffected."""
    rng = np.random.default_rng(seed)
    n = 300
    time = rng.exponential(10, n).round(1) + 0.1
    event = (rng.random(n) < 0.5).astype(int)
    censored = np.flatnonzero(event == 0)
    never_event = np.zeros(n)
    never_event[rng.choice(censored, 10, replace=False)] = 1
    single_censored = np.zeros(n)
    single_censored[censored[np.argsort(time[censored])[len(censored) // 4]]] = 1
    X = pd.DataFrame({"never_event": never_event, "single_censored": single_censored})
    X["noise"] = rng.normal(size=n)
    table = sel.univariate_cox(X, time, event).set_index("feature")
    assert not table.loc[["never_event", "single_censored"], "converged"].any()
    assert table.loc[["never_event", "single_censored"], "p"].isna().all()
    assert table.at["noise", "converged"]
    assert table.at["noise", "p"] == pytest.approx(
        lifelines_per_sd(X["noise"].to_numpy(), time, event)["p"], rel=1e-6
    )


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
    # What each step kept, as many as its log row says.
    assert list(result.kept) == result.log["step"].tolist()
    assert [len(kept) for kept in result.kept.values()] == result.log["n_out"].tolist()
    # The final selection is read at the chosen alpha, not the weakest penalty of the path.
    chosen = result.cv.loc[result.cv["alpha"] == result.alpha, "n_nonzero"].item()
    assert result.log.set_index("step").at["penalized_cox", "n_out"] == chosen
    assert chosen < result.cv["n_nonzero"].max()


def test_kept_columns_are_counted_per_block_and_the_emptying_step_named():
    forced = ["age", "stage[II]", "deep_ct:score"]
    candidates = ["radiomics:a", "radiomics:b", "pathomics:c"]
    kept = {"forced": ["age", "deep_ct:score"],
            "near_zero_variance": candidates,
            "correlation": ["radiomics:a", "pathomics:c"],
            "univariate_cox": ["radiomics:a"], "penalized_cox": ["radiomics:a"],
            "max_features": ["radiomics:a"],
            "cox_refit": ["age", "deep_ct:score"]}  # the refit fell back to the forced columns
    counts = sel.counts_by_block(forced, candidates, kept)
    table = {(r.block, r.step): (r.n_in, r.n_out) for r in counts.itertuples()}
    assert table == {
        ("clinical", "forced"): (2, 1), ("clinical", "cox_refit"): (1, 1),
        ("deep_ct", "forced"): (1, 1), ("deep_ct", "cox_refit"): (1, 1),
        ("radiomics", "near_zero_variance"): (2, 2), ("radiomics", "correlation"): (2, 1),
        ("radiomics", "univariate_cox"): (1, 1), ("radiomics", "penalized_cox"): (1, 1),
        ("radiomics", "max_features"): (1, 1), ("radiomics", "cox_refit"): (1, 0),
        ("pathomics", "near_zero_variance"): (1, 1), ("pathomics", "correlation"): (1, 1),
        ("pathomics", "univariate_cox"): (1, 0), ("pathomics", "penalized_cox"): (0, 0),
        ("pathomics", "max_features"): (0, 0), ("pathomics", "cox_refit"): (0, 0),
    }
    assert sel.where_emptied(counts) == {
        "radiomics": {"step": "cox_refit", "n_in": 1, "n_out": 0},
        "pathomics": {"step": "univariate_cox", "n_in": 1, "n_out": 0},
    }


def test_univariate_method_refits_every_screened_feature_without_a_penalty(planted):
    """PathoSig's signature: features with univariate p below the threshold, no Coxnet."""
    X, time, event, informative = planted
    cfg = {**SELECTION_CFG, "method": "univariate", "univariate_p": 1e-4, "max_features": 8}
    kept, _, table = sel.univariate_screen(X, time, event, p_max=1e-4, max_features=50)
    result = sel.select_features(X, time, event, cfg, forced=[], seed=1)
    assert result.selected == kept and set(informative) <= set(kept)
    assert result.alpha is None and result.cv.empty
    log = result.log.set_index("step")
    assert "skipped (method univariate" in log.at["penalized_cox", "note"]
    capped = sel.select_features(X, time, event, {**cfg, "max_features": 2}, [], seed=1)
    assert capped.selected == kept[:2]  # the smallest p first


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
    from radpath.survival.selection import _unpenalized_cox

    rng = np.random.default_rng(3)
    n = 12
    time = rng.exponential(10, n) + 0.1
    event = np.ones(n, dtype=int)
    separated = (time < np.median(time)).astype(float)  # perfectly predicts the order
    x = np.column_stack([rng.normal(size=n), np.zeros(n), separated])
    beta = _unpenalized_cox(x, time, event)
    assert beta[1] == 0.0  # a level absent from this fold
    assert np.all(np.isfinite(beta)) and beta[2] > 0


# --------------------------------------------------------------------------- Coxnet failures


WEIGHTS_TOO_LARGE = "Coxnet failed (Numerical error, because weights are too large)"


def null_selection(cohort_seed: int, permutation_seed: int, with_forced: bool):
    """select_features (NULL_SELECTION_CFG) on null_cohort with permuted outcomes."""
    X, time, event = null_cohort(cohort_seed)
    perm = np.random.default_rng(permutation_seed).permutation(len(X))
    forced = NULL_FORCED if with_forced else []
    Z = pd.DataFrame(sel.standardize(X.to_numpy(dtype=float)), columns=X.columns)
    Z = Z if with_forced else Z.drop(columns=NULL_FORCED)
    result = sel.select_features(Z, time[perm], event[perm], NULL_SELECTION_CFG, forced, seed=42)
    return result, forced


def penalized_note(result) -> str:
    return result.log.set_index("step").at["penalized_cox", "note"]


def test_path_cuts_drop_a_decade_at_a_time_from_the_weak_end():
    assert sel._path_cuts(50, 4.0) == [37, 25, 13]  # alpha_min_ratio 1e-4 -> 1e-3, 1e-2, 1e-1
    assert sel._path_cuts(50, 2.0) == [25]  # 'auto' with n <= p: 1e-2 -> 1e-1
    assert sel._path_cuts(47, 46 * 4 / 49) == [37, 25, 13]  # a path Coxnet ended early
    assert sel._path_cuts(1, 4.0) == [] and sel._path_cuts(50, 0.5) == []


def test_full_path_that_fails_at_weak_penalties_is_cut_short_on_the_same_grid():
    """Null outcomes, no forced columns: the default path (down to 1e-4 * alpha_max) overflows;
    the path down to ~1e-3 fits and keeps the default grid's alphas."""
    result, _ = null_selection(0, 0, with_forced=False)
    note = penalized_note(result)
    assert f"{WEIGHTS_TOO_LARGE} on: 50/50 alphas; fitted on: 37/50 alphas" in note
    assert "alpha_min_ratio 0.00115" in note
    ratios = result.cv["alpha"].to_numpy() / result.cv["alpha"].iloc[0]
    np.testing.assert_allclose(ratios, 10 ** (-4 * np.arange(37) / 49), rtol=1e-10)
    assert result.alpha in set(result.cv["alpha"])


def test_fold_that_fails_at_weak_penalties_makes_them_ineligible():
    result, forced = null_selection(0, 24, with_forced=True)
    note = penalized_note(result)
    assert "; fold " in note and "weaker alphas not eligible" in note
    assert result.selected[:4] == forced
    cv = result.cv
    assert cv["complete"].any() and not cv["complete"].iloc[-1]
    assert cv.loc[cv["alpha"] == result.alpha, "complete"].item()


def test_fold_with_diverging_forced_columns_is_refitted_with_them_orthonormalized():
    result, _ = null_selection(1, 17, with_forced=True)
    note = penalized_note(result)
    # Coxnet fails at every alpha of the fold (the strongest too), then fits the whole path.
    fold = r"fold \d: Coxnet .* on: (\d+)/\1 alphas; fitted on: \1/\1 alphas, forced ortho"
    assert re.search(fold, note)
    assert "not eligible" not in note  # the whole path fitted: no alpha lost


@pytest.mark.parametrize(
    ("cohort_seed", "permutation_seed", "reason"),
    [
        (0, 7, f"{WEIGHTS_TOO_LARGE} on every attempt: 50/50 alphas; 50/50 alphas, forced"),
        (0, 4, "no alpha had a finite CV deviance in every fold; no candidate kept; fold "),
    ],
    ids=["full_path", "fold"],
)
def test_path_that_fails_on_every_attempt_gives_an_empty_selection(
    cohort_seed, permutation_seed, reason
):
    """The forced columns alone have no finite Cox fit (the rare stage separates), so every
    penalty fails: the model keeps the forced columns only, with the reason in the log."""
    result, forced = null_selection(cohort_seed, permutation_seed, with_forced=True)
    assert result.selected == forced and result.alpha is None
    assert reason in penalized_note(result)
    # The last attempt: the shortest path (down to 0.1 * alpha_max), forced orthonormalized.
    last = r"13/\d+ alphas( \(alpha_min_ratio 0\.105\))?, forced orthonormalized"
    last += r"(; no candidate kept)?$"
    assert re.search(last, penalized_note(result))
    assert "empty selection" in result.log["note"].iloc[-1]


def test_orthonormalized_forced_columns_give_the_same_path():
    """On data Coxnet fits either way, the reparametrization gives the same path (up to the
    solver's tolerance, tightened here: alpha_max comes from an iterative fit too)."""
    rng = np.random.default_rng(8)
    n = 120
    stage = rng.integers(0, 4, n)
    forced = np.column_stack([rng.normal(size=n)] + [(stage == k).astype(float) for k in (1, 2, 3)])
    x = sel.standardize(np.column_stack([forced, rng.normal(size=(n, 6))]))
    time, event = survival_outcome(rng, x[:, 0] + 0.8 * x[:, 4])
    y = sel._surv(time, event)
    kwargs = {"n_alphas": 20, "alpha_min_ratio": 0.01, "tol": 1e-12}
    plain = sel._fit_attempts(x, y, 4, 1.0, [("plain", False, False, kwargs)])
    rotated = sel._fit_attempts(x, y, 4, 1.0, [("rotated", True, False, kwargs)])
    np.testing.assert_allclose(rotated.alphas, plain.alphas, rtol=1e-6)
    np.testing.assert_allclose(rotated.coef[4:], plain.coef[4:], atol=1e-6)
    lp_plain, lp_rotated = x @ plain.coef, x @ rotated.coef
    centred = [lp - lp.mean(axis=0) for lp in (lp_plain, lp_rotated)]
    np.testing.assert_allclose(centred[1], centred[0], atol=1e-5)
    assert (plain.coef[4:] != 0).any()


def test_fallback_order_is_deterministic_and_keeps_the_default_grid(monkeypatch):
    """Paths that 'fail' (patched) until 25 alphas: tried in the documented order, and the
    fitted path is the default path's first 25 alphas."""
    rng = np.random.default_rng(9)
    x = sel.standardize(rng.normal(size=(100, 8)))
    time, event = survival_outcome(rng, x[:, 2] - x[:, 5])
    y = sel._surv(time, event)
    default = sel.coxnet_path(x, y, 2, 1.0, 50)
    assert default.note == "" and default.alphas.size > 25
    real_fit, tried = sel._fit_quietly, []

    def failing_fit(model, design, target):
        tried.append((model.n_alphas, design is x))
        if model.n_alphas > 25:
            raise ArithmeticError("Numerical error, because weights are too large. Consider ...")
        return real_fit(model, design, target)

    monkeypatch.setattr(sel, "_fit_quietly", failing_fit)
    cut = sel.coxnet_path(x, y, 2, 1.0, 50)
    assert tried == [(50, True), (50, False), (37, True), (37, False), (25, True)]
    assert cut.cut and cut.note.endswith("fitted on: 25/50 alphas (alpha_min_ratio 0.011)")
    np.testing.assert_allclose(cut.alphas, default.alphas[:25], rtol=1e-12)
    np.testing.assert_allclose(cut.coef, default.coef[:, :25], atol=1e-8)


def test_fold_cox_on_forced_columns_that_cannot_be_fitted_returns_none(monkeypatch):
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError

    def diverge(self, *args, **kwargs):
        raise ConvergenceError("delta contains nan value(s). Convergence halted.")

    monkeypatch.setattr(CoxPHFitter, "fit", diverge)
    rng = np.random.default_rng(4)
    x, time, event = rng.normal(size=(20, 2)), rng.exponential(1.0, 20), np.ones(20, dtype=int)
    assert sel._unpenalized_cox(x, time, event) is None
    train = np.arange(15)
    lp, _, note = sel._fold_linear_predictors(x, time, event, train, 2, [], np.ones(3), 1.0)
    assert np.isnan(lp).all() and "failed, also with a ridge penalty" in note
