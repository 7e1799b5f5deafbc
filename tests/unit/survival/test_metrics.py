"""Tests for radpath.survival.metrics: concordance against lifelines/sksurv, bootstrap, KM, log-rank, plot."""

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter
from lifelines.statistics import logrank_test as lifelines_logrank
from lifelines.utils import concordance_index
from sksurv.metrics import concordance_index_ipcw
from sksurv.util import Surv

from radpath.survival import metrics as sv


def tied_data(rng, n):
    """Integer times, events and risks so that ties in time and in risk are common."""
    time = rng.integers(1, 12, n).astype(float)
    event = rng.integers(0, 2, n)
    risk = rng.integers(0, 6, n).astype(float)
    return time, event, risk


def exponential_data(rng, n, beta=1.0):
    x = rng.normal(size=n)
    event_time = rng.exponential(np.exp(-beta * x))
    censor_time = rng.exponential(1.5, n)
    return np.minimum(event_time, censor_time), (event_time <= censor_time).astype(int), x


# --------------------------------------------------------------------------- Harrell


@pytest.mark.parametrize("seed", range(8))
def test_harrell_equals_lifelines_with_ties(seed):
    rng = np.random.default_rng(seed)
    time, event, risk = tied_data(rng, int(rng.integers(20, 120)))
    assert sv.harrell_c(time, event, risk) == concordance_index(time, -risk, event)


def test_harrell_equals_lifelines_on_continuous_data():
    time, event, risk = exponential_data(np.random.default_rng(1), 500)
    assert sv.harrell_c(time, event, risk) == concordance_index(time, -risk, event)


def test_harrell_by_hand():
    # Pairs: (A,B) A died first; (A,C) A died first; (B,C) B died at C's censoring time -> comparable;
    # (D, *) D censored first -> not comparable.
    time = [1.0, 2.0, 2.0, 0.5]
    event = [1, 1, 0, 0]
    risk = [3.0, 1.0, 1.0, 9.0]  # A > B, A > C concordant; B == C tie
    assert sv.harrell_c(time, event, risk) == pytest.approx((1 + 1 + 0.5) / 3)


def test_harrell_nan_without_comparable_pairs():
    assert np.isnan(sv.harrell_c([1.0, 2.0, 3.0], [0, 0, 0], [1.0, 2.0, 3.0]))
    assert np.isnan(sv.harrell_c([2.0, 2.0], [1, 1], [1.0, 2.0]))


@pytest.mark.parametrize(
    ("time", "event", "risk", "message"),
    [
        ([1.0, 2.0], [1, 2], [0.0, 1.0], "coded 0"),
        ([1.0, np.nan], [1, 0], [0.0, 1.0], "time has missing"),
        ([1.0, 2.0], [1, 0], [0.0, np.nan], "risk has missing"),
        ([1.0, 2.0], [1, 0], [0.0, 1.0, 2.0], "3 values but there are 2"),
    ],
)
def test_bad_input_is_a_clear_error(time, event, risk, message):
    with pytest.raises(sv.SurvivalDataError, match=message):
        sv.harrell_c(time, event, risk)


# --------------------------------------------------------------------------- Uno


@pytest.mark.parametrize("seed", range(6))
def test_uno_equals_sksurv(seed):
    rng = np.random.default_rng(seed)
    time, event, risk = tied_data(rng, 60)
    train_time, train_event, _ = tied_data(rng, 150)
    tau = sv.choose_tau(time, event, 0.8, train_time, train_event)
    expected = concordance_index_ipcw(
        Surv.from_arrays(train_event.astype(bool), train_time),
        Surv.from_arrays(event.astype(bool), time),
        risk,
        tau=tau,
    )[0]
    assert sv.uno_c(time, event, risk, train_time, train_event, tau) == pytest.approx(
        expected, rel=1e-12
    )


def test_uno_equals_sksurv_without_truncation():
    rng = np.random.default_rng(3)
    train_time, train_event, _ = exponential_data(rng, 300)
    time, event, risk = exponential_data(rng, 100)
    inside = time < train_time.max()
    time, event, risk = time[inside], event[inside], risk[inside]
    expected = concordance_index_ipcw(
        Surv.from_arrays(train_event.astype(bool), train_time),
        Surv.from_arrays(event.astype(bool), time),
        risk,
    )[0]
    assert sv.uno_c(time, event, risk, train_time, train_event, None) == pytest.approx(expected)
    assert 0.6 < expected < 0.9  # the signal is real, so this is not a trivial 0.5


def test_uno_rejects_times_beyond_training_follow_up():
    with pytest.raises(sv.SurvivalDataError, match="after the last training time"):
        sv.uno_c([1.0, 20.0], [1, 1], [1.0, 0.0], [1.0, 5.0, 6.0], [1, 0, 1], None)


def test_choose_tau_quantile_and_clipping():
    time = np.arange(1.0, 11.0)
    event = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1, 0])
    assert sv.choose_tau(time, event, 0.5) == pytest.approx(5.5)
    # Training censoring KM becomes zero at 6 (last training patient censored): tau must stay < 6.
    train_time, train_event = np.array([1.0, 2.0, 4.0, 5.0, 6.0]), np.array([1, 0, 1, 1, 0])
    tau = sv.choose_tau(time, event, 0.9, train_time, train_event)
    assert tau == 5.0
    assert sv.censoring_survival(train_time, train_event, [tau])[0] > 0
    # A low quantile is raised just past the first event so that one event counts.
    late = np.array([1.0, 1.0, 1.0, 1.0, 2.0, 3.0])
    assert sv.choose_tau(late, np.array([0, 0, 0, 1, 1, 0]), 0.1) == 2.0
    with pytest.raises(sv.SurvivalDataError, match="no events"):
        sv.choose_tau(time, np.zeros(10, dtype=int), 0.8)


# --------------------------------------------------------------------------- bootstrap


@pytest.fixture(scope="module")
def validation_set():
    rng = np.random.default_rng(11)
    train_time, train_event, _ = exponential_data(rng, 200)
    time, event, x = exponential_data(rng, 120)
    noise = rng.normal(size=time.size)
    tau = sv.choose_tau(time, event, 0.8, train_time, train_event)
    risks = {"signal": x, "noise": noise, "mixed": x + noise}
    return time, event, risks, train_time, train_event, tau


def run_bootstrap(validation_set, seed=5, B=300, reference="noise"):
    time, event, risks, train_time, train_event, tau = validation_set
    return sv.bootstrap_cindex(
        time, event, risks, B, seed, reference, train_time, train_event, tau
    ).set_index("model")


def test_bootstrap_is_deterministic_and_ci_contains_point(validation_set):
    first = run_bootstrap(validation_set, seed=5)
    pd.testing.assert_frame_equal(first, run_bootstrap(validation_set, seed=5))
    assert not first.equals(run_bootstrap(validation_set, seed=6))
    for stat in ("harrell", "uno"):
        point, lo, hi = first[f"{stat}_c"], first[f"{stat}_lo"], first[f"{stat}_hi"]
        assert ((lo <= point) & (point <= hi)).all()
        assert ((hi - lo) > 0.02).all()
    time, event, risks, train_time, train_event, tau = validation_set
    assert first.at["signal", "harrell_c"] == sv.harrell_c(time, event, risks["signal"])
    assert first.at["signal", "uno_c"] == sv.uno_c(
        time, event, risks["signal"], train_time, train_event, tau
    )
    assert (first["n_boot"] == 300).all() and (first["n_skipped"] == 0).all()


def test_bootstrap_signal_beats_noise_and_noise_is_near_half(validation_set):
    table = run_bootstrap(validation_set)
    assert table.at["signal", "harrell_c"] > 0.65
    assert table.at["signal", "delta_lo"] > 0
    assert table.at["signal", "delta_p"] < 0.05
    assert table.at["noise", "harrell_lo"] < 0.5 < table.at["noise", "harrell_hi"]


def test_paired_delta_of_a_model_with_itself_is_zero(validation_set):
    table = run_bootstrap(validation_set, reference="signal")
    assert table.loc["signal", ["delta_harrell", "delta_lo", "delta_hi"]].tolist() == [0, 0, 0]
    assert table.at["signal", "delta_p"] == 1.0
    assert table.at["signal", "delta_uno"] == 0.0
    point = table.at["noise", "harrell_c"] - table.at["signal", "harrell_c"]
    assert table.at["noise", "delta_harrell"] == pytest.approx(point)


def test_missing_reference_gives_nan_deltas(validation_set):
    table = run_bootstrap(validation_set, reference="not_a_model")
    assert table["delta_harrell"].isna().all()


def test_bootstrap_replicate_equals_c_on_resampled_patients():
    rng = np.random.default_rng(2)
    time, event, risk = tied_data(rng, 40)
    train_time, train_event, _ = tied_data(rng, 100)
    tau = sv.choose_tau(time, event, 0.8, train_time, train_event)
    B = 20
    idx = np.random.default_rng(9).integers(0, 40, size=(B, 40))
    counts = sv.bootstrap_counts(40, B, np.random.default_rng(9))
    harrell = sv.bootstrap_harrell(time, event, risk, counts)
    uno = sv.bootstrap_uno(time, event, risk, counts, train_time, train_event, tau)
    for b in range(B):
        i = idx[b]
        assert harrell[b] == pytest.approx(sv.harrell_c(time[i], event[i], risk[i]), rel=1e-12)
        assert uno[b] == pytest.approx(
            sv.uno_c(time[i], event[i], risk[i], train_time, train_event, tau), rel=1e-12
        )


def test_shuffled_outcome_gives_c_near_half():
    rng = np.random.default_rng(4)
    time, event, x = exponential_data(rng, 400)
    shuffled = rng.permutation(x)
    table = sv.bootstrap_cindex(time, event, {"shuffled": shuffled}, 200, 1).iloc[0]
    assert abs(table["harrell_c"] - 0.5) < 0.05
    assert table["harrell_lo"] < 0.5 < table["harrell_hi"]
    assert np.isnan(table["uno_c"])


def test_resamples_without_comparable_pairs_are_skipped():
    time = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    event = np.array([1, 0, 0, 0, 0, 0])
    table = sv.bootstrap_cindex(time, event, {"m": -time}, 200, 0).iloc[0]
    assert table["n_skipped"] > 0
    assert table["n_boot"] + table["n_skipped"] == 200
    assert table["harrell_lo"] == table["harrell_hi"] == 1.0


# --------------------------------------------------------------------------- KM, log-rank, groups, plot


def test_kaplan_meier_equals_lifelines():
    rng = np.random.default_rng(7)
    time, event, _ = tied_data(rng, 80)
    km = sv.kaplan_meier(time, event)
    fitter = KaplanMeierFitter().fit(time, event)
    expected = fitter.survival_function_at_times(km["time"]).to_numpy()
    np.testing.assert_allclose(km["survival"], expected, rtol=1e-12)
    at_risk = fitter.event_table.loc[km["time"].iloc[1:], "at_risk"].to_numpy()
    np.testing.assert_array_equal(km["at_risk"].iloc[1:], at_risk)
    assert km.iloc[0].tolist()[:3] == [0.0, 1.0, 80.0]


def test_logrank_equals_lifelines_and_detects_difference():
    rng = np.random.default_rng(8)
    time, event, x = exponential_data(rng, 150, beta=1.5)
    groups = sv.risk_groups(x, np.median(x))
    statistic, p = sv.logrank_test(time, event, groups)
    high = groups == "high"
    expected = lifelines_logrank(time[high], time[~high], event[high], event[~high])
    assert statistic == pytest.approx(expected.test_statistic, rel=1e-10)
    assert p == pytest.approx(expected.p_value, rel=1e-8)
    assert p < 0.001
    assert all(np.isnan(sv.logrank_test(time, event, np.full(150, "low"))))


def test_risk_groups_split_strictly_above_threshold():
    groups = sv.risk_groups([0.1, 0.5, 0.9, 0.5], 0.5)
    assert groups.tolist() == ["low", "low", "high", "low"]


def test_plot_km_by_group_writes_png_atomically(tmp_path):
    rng = np.random.default_rng(9)
    time, event, x = exponential_data(rng, 60)
    path = tmp_path / "plots" / "km.png"
    sv.plot_km_by_group(time, event, sv.risk_groups(x, 0.0), "OS by risk group", path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000
    assert [p.name for p in path.parent.iterdir()] == ["km.png"]
