"""Deep CT at the cohort level: folds, the leakage audit and the block of scores."""

import numpy as np
import pandas as pd
import pytest

from radpath.deep.cohort import (
    FIT,
    HELDOUT,
    INNER,
    SYNTHETIC,
    VALIDATION,
    assign_folds,
    block_scores,
    check_usage,
    fold_table,
    read_folds,
    scoring_fold,
    start_comparison,
    synthetic_comparison,
)
from radpath.inputs.configuration import default_config
from radpath.inputs.io import write_tsv
from radpath.inputs.runtime import write_exclusion
from radpath.survival.metrics import harrell_c


def outcomes(n=30, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"P{i:03d}" for i in range(n)]
    return pd.DataFrame({
        "split": ["validation" if i % 3 == 0 else "train" for i in range(n)],
        "os_time": rng.uniform(1, 60, n), "os_event": (rng.uniform(size=n) < 0.6).astype(int),
    }, index=pd.Index(ids, name="patient_id"))


def test_folds_are_stratified_seeded_and_independent_of_order():
    out = outcomes()
    train = out[out["split"] == "train"]
    folds = assign_folds(list(train.index), train["os_event"], 3, seed=5)
    shuffled = train.sample(frac=1, random_state=1)
    assert assign_folds(list(shuffled.index), shuffled["os_event"], 3, seed=5) == folds
    assert assign_folds(list(train.index), train["os_event"], 3, seed=6) != folds
    events = pd.Series(folds).to_frame("fold").join(train["os_event"])
    per_fold = events.groupby("fold")["os_event"].sum()
    assert per_fold.max() - per_fold.min() <= 1


def test_too_few_events_for_the_folds_is_one_clear_error():
    with pytest.raises(ValueError, match="3 folds need at least 6 training patients and 3 "
                                         "events.*there are 8 training patients with 2 events"):
        assign_folds([f"P{i}" for i in range(8)], [1, 1, 0, 0, 0, 0, 0, 0], 3, seed=0)


def test_fold_table_leaves_validation_and_excluded_patients_out_of_the_folds(tmp_path):
    out = outcomes()
    cubes = {}
    for pid in out.index:
        cubes[pid] = str(tmp_path / f"{pid}.npz")
        if pid == "P001":
            write_exclusion(pid, "patient_id", "patient P001: mask empty", [cubes[pid]])
        else:
            np.savez(cubes[pid], cube=np.zeros(1))
    table = fold_table(out, "os", cubes, 3, seed=1)
    write_tsv(table, tmp_path / "folds.tsv")
    table = read_folds(tmp_path / "folds.tsv")
    assert (table.loc[out.index[out["split"] == "validation"], "fold"] == 0).all()
    assert table.loc["P001", "fold"] == 0 and "mask empty" in table.loc["P001", "excluded"]
    usable_train = table[(table["split"] == "train") & (table["excluded"] == "")]
    assert set(usable_train["fold"]) == {1, 2, 3}


def usage_and_scores(folds: pd.DataFrame):
    """What three correct fold models record: fit on the other folds, score their own."""
    usage, scores = [], []
    train = folds[folds["fold"] > 0]
    validation = folds.index[folds["split"] == "validation"]
    for k in (1, 2, 3):
        rest = list(train.index[train["fold"] != k])
        for i, pid in enumerate(rest):
            usage.append((pid, "net", k, INNER if i % 5 == 0 else FIT))
        for pid in train.index[train["fold"] == k]:
            usage.append((pid, "net", k, HELDOUT))
            scores.append((pid, "net", k, HELDOUT, 0.0, float(k)))
        for pid in validation:
            usage.append((pid, "net", k, VALIDATION))
            scores.append((pid, "net", k, VALIDATION, 0.0, float(k)))
    return (pd.DataFrame(usage, columns=["patient_id", "member", "fold", "role"]),
            pd.DataFrame(scores, columns=["patient_id", "member", "fold", "role", "raw",
                                          "score"]))


@pytest.fixture()
def folds(tmp_path):
    out = outcomes()
    cubes = {pid: str(tmp_path / f"{pid}.npz") for pid in out.index}
    for path in cubes.values():
        np.savez(path, cube=np.zeros(1))
    return fold_table(out, "os", cubes, 3, seed=1)


def test_the_audit_passes_an_honest_run_and_catches_each_leak(folds):
    usage, _ = usage_and_scores(folds)
    check_usage(usage, folds)
    validation = folds.index[folds["split"] == "validation"][0]
    leaked = pd.concat([usage, pd.DataFrame([(validation, "net", 1, INNER)],
                                            columns=usage.columns)])
    with pytest.raises(AssertionError, match="validation patients used in training"):
        check_usage(leaked, folds)
    heldout = usage[usage["role"] == HELDOUT].iloc[0]
    seen = pd.concat([usage, pd.DataFrame([(heldout["patient_id"], "net", heldout["fold"], FIT)],
                                          columns=usage.columns)])
    with pytest.raises(AssertionError, match="scored patients they trained on"):
        check_usage(seen, folds)
    twice = pd.concat([usage, pd.DataFrame([(heldout["patient_id"], "net", 9, HELDOUT)],
                                           columns=usage.columns)])
    with pytest.raises(AssertionError, match="held out more than once"):
        check_usage(twice, folds)


def test_the_audit_follows_synthetic_copies_to_their_source_patient(folds):
    """A synthetic CT counts as its source patient: a copy of a validation patient in any
    training set, or of a held-out patient in its own fold's, fails, naming both."""
    usage, _ = usage_and_scores(folds)
    usage["source"] = usage["patient_id"]
    check_usage(usage, folds)
    validation = folds.index[folds["split"] == "validation"][0]
    copy = pd.DataFrame([(f"{validation}~synthetic1", "net", 2, SYNTHETIC, validation)],
                        columns=usage.columns)
    with pytest.raises(AssertionError, match=(
            rf"validation patients used in training: {validation}~synthetic1 \(of "
            rf"{validation}\) by net fold 2")):
        check_usage(pd.concat([usage, copy]), folds)
    heldout = usage[usage["role"] == HELDOUT].iloc[0]
    own = pd.DataFrame([(f"{heldout['patient_id']}~synthetic1", "net", heldout["fold"],
                         SYNTHETIC, heldout["patient_id"])], columns=usage.columns)
    with pytest.raises(AssertionError, match=(
            rf"net: fold models scored patients they trained on: {heldout['patient_id']} "
            rf"\(as {heldout['patient_id']}~synthetic1, fold {heldout['fold']}\)")):
        check_usage(pd.concat([usage, own]), folds)
    # A copy of a fit patient in a fold that does not hold it out is what augmentation does.
    fit = usage[(usage["role"] == FIT)].iloc[0]
    fine = pd.DataFrame([(f"{fit['patient_id']}~synthetic1", "net", fit["fold"], SYNTHETIC,
                          fit["patient_id"])], columns=usage.columns)
    check_usage(pd.concat([usage, fine]), folds)
    # Tables written before the source column: the copy's name says its source.
    legacy = pd.concat([usage, copy]).drop(columns="source")
    with pytest.raises(AssertionError, match="validation patients used in training"):
        check_usage(legacy, folds)


def test_block_takes_out_of_fold_scores_for_training_and_one_fold_for_validation(folds):
    """Each model scores with its fold number: a training patient gets its own fold's, a
    validation patient its scoring fold's (drawn from the seed and its ID), not the mean."""
    _, scores = usage_and_scores(folds)
    block = block_scores(scores, folds, seed=11)
    train = folds.index[folds["fold"] > 0]
    assert (block.loc[train, "risk"] == folds.loc[train, "fold"].astype(float)).all()
    validation = folds.index[folds["split"] == "validation"]
    drawn = [float(scoring_fold(pid, 3, 11)) for pid in validation]
    assert block.loc[validation, "risk"].tolist() == drawn
    assert len(set(drawn)) > 1
    assert list(block.index) == list(folds.index)
    other_seed = block_scores(scores, folds, seed=12).loc[validation, "risk"]
    assert other_seed.tolist() != drawn


def test_scoring_folds_depend_on_the_patient_alone_and_share_patients_evenly():
    ids = [f"V{k:04d}" for k in range(3000)]
    folds = [scoring_fold(pid, 5, seed=42) for pid in ids]
    assert folds == [scoring_fold(pid, 5, seed=42) for pid in reversed(ids)][::-1]
    counts = np.bincount(folds, minlength=6)[1:]
    assert counts.min() > 520 and counts.max() < 680  # 600 each, +- 3 SDs


def test_validation_scores_have_the_out_of_fold_spread_and_a_calibration_slope_of_one():
    """A simulated cohort whose truth is known: hazard exp(x); each of 3 networks x 4 fold
    models scores x plus its own noise (SD 2), standardised. The Cox model is fitted on the
    out-of-fold block; validation patients scored as the block scores them have the same
    spread and a calibration slope of about 1. The mean of all fold models (the old block)
    is narrower and its slope far above 1."""
    from radpath.survival.accuracy import calibration_slope
    from radpath.survival.fit import train_and_predict

    rng = np.random.default_rng(5)
    n_train, n_validation, n_folds, members, horizon = 1500, 3000, 4, ("a", "b", "c"), 3.0
    ids = [f"T{k:04d}" for k in range(n_train)] + [f"V{k:04d}" for k in range(n_validation)]
    x = rng.normal(size=len(ids))
    time = rng.exponential(np.exp(-x))
    censor = rng.uniform(0, 6, len(ids))
    out = pd.DataFrame({"split": ["train"] * n_train + ["validation"] * n_validation,
                        "os_time": np.minimum(time, censor), "os_event": (time <= censor)},
                       index=pd.Index(ids, name="patient_id")).astype({"os_event": int})
    folds = pd.DataFrame({"split": out["split"], "excluded": "",
                          "fold": [k % n_folds + 1 for k in range(n_train)] + [0] * n_validation},
                         index=out.index)
    rows = []
    for member in members:
        for fold in range(1, n_folds + 1):
            score = (x + rng.normal(0, 2, len(ids))) / np.sqrt(5.0)
            held = (folds["fold"] == fold).to_numpy()
            for mask, role in ((held, HELDOUT), (folds["split"] == "validation", VALIDATION)):
                mask = np.asarray(mask)
                rows.append(pd.DataFrame({"patient_id": out.index[mask], "member": member,
                                          "fold": fold, "role": role, "raw": score[mask],
                                          "score": score[mask]}))
    scores = pd.concat(rows, ignore_index=True)
    block = block_scores(scores, folds, seed=3)
    train, validation = out.index[:n_train], out.index[n_train:]
    oof_sd, validation_sd = block.loc[train, "risk"].std(), block.loc[validation, "risk"].std()
    mean_of_all = scores[scores["role"] == VALIDATION].groupby("patient_id")["score"].mean()
    assert abs(validation_sd / oof_sd - 1) < 0.06
    assert mean_of_all.std() / oof_sd < 0.82  # sqrt((1 + 4/12) / (1 + 4/3)) = 0.76 in theory
    cfg = default_config()

    def slope(design: pd.DataFrame) -> float:
        _, risk, _ = train_and_predict(out, design, ["deep_ct:risk"], [], "os",
                                       cfg["selection"], cfg["cox"], optimism_b=0, seed=0)
        part = risk.loc[validation]
        return calibration_slope(part["time"], part["event"], part["risk"], horizon)[0]

    design = block.rename(columns={"risk": "deep_ct:risk"})
    assert abs(slope(design) - 1) < 0.1
    old = design.copy()
    old.loc[validation, "deep_ct:risk"] = mean_of_all[validation].to_numpy()
    assert slope(old) > 1.4  # (1 + 4/3) / (1 + 4/12) = 1.75 in theory


def test_harrell_c_matches_lifelines():
    from lifelines.utils import concordance_index

    rng = np.random.default_rng(3)
    time, event, risk = rng.uniform(1, 10, 50), rng.integers(0, 2, 50), rng.normal(size=50)
    risk[:5] = risk[5]
    assert harrell_c(time, event, risk) == pytest.approx(concordance_index(time, -risk, event))


def test_the_block_leaves_the_random_start_twins_out(folds):
    _, scores = usage_and_scores(folds)
    twin = scores.assign(member="net-random_start", score=-scores["score"])
    block = block_scores(pd.concat([scores, twin]), folds, 0, ["net"])
    assert block.equals(block_scores(scores, folds, 0))


def test_start_comparison_reports_both_starts_on_the_same_validation_patients(tmp_path):
    """The pretrained start scores validation patients by their outcome, its random-start
    twin at random: the table shows the first clearly better, paired against the second."""
    out = outcomes(n=150)
    cubes = {pid: str(tmp_path / f"{pid}.npz") for pid in out.index}
    for path in cubes.values():
        np.savez(path, cube=np.zeros(1))
    _, scores = usage_and_scores(fold_table(out, "os", cubes, 3, seed=1))
    rng = np.random.default_rng(3)
    good = -out.loc[scores["patient_id"], "os_time"].to_numpy()  # risk = minus the time
    pretrained = scores.assign(score=good)
    twin = scores.assign(member="net-random_start", score=rng.normal(size=len(scores)))
    members = {"net": {"compares": None}, "net-random_start": {"compares": "net"}}
    table = start_comparison(pd.concat([pretrained, twin]), members, "pretrain", out, "os",
                             B=200, seed=1)
    assert list(table["start"]) == ["pretrained on another cohort", "random start"]
    validation = out[out["split"] == "validation"]
    assert (table["n_validation"] == len(validation)).all()
    assert (table["events_validation"] == validation["os_event"].sum()).all()
    first, second = table.iloc[0], table.iloc[1]
    assert first["validation_c"] == pytest.approx(
        harrell_c(validation["os_time"], validation["os_event"], -validation["os_time"]))
    assert first["validation_lo"] <= first["validation_c"] <= first["validation_hi"]
    assert first["difference"] == pytest.approx(first["validation_c"] - second["validation_c"])
    assert first["difference_lo"] > 0
    assert np.isnan(second["difference"])  # the reference
    assert first["training_oof_c"] > 0.9 and first["members"] == "net"
    # Without twins (compare_random_start off): one row, no difference.
    alone = start_comparison(pretrained, {"net": {"compares": None}}, "pretrain", out, "os",
                             B=50, seed=1)
    assert len(alone) == 1 and np.isnan(alone["difference"].iloc[0])


def test_synthetic_comparison_pairs_the_block_with_its_twins_without_synthetic_cts(tmp_path):
    out = outcomes(n=120)
    cubes = {pid: str(tmp_path / f"{pid}.npz") for pid in out.index}
    for path in cubes.values():
        np.savez(path, cube=np.zeros(1))
    _, scores = usage_and_scores(fold_table(out, "os", cubes, 3, seed=1))
    good = scores.assign(score=-out.loc[scores["patient_id"], "os_time"].to_numpy())
    twin = scores.assign(member="net-without_synthetic",
                         score=np.random.default_rng(1).normal(size=len(scores)))
    members = {"net": {"compares": None, "synthetic": True},
               "net-without_synthetic": {"compares": "net", "twin": "without_synthetic"}}
    table = synthetic_comparison(pd.concat([good, twin]), members, out, "os", B=100, seed=1)
    assert list(table["variant"]) == ["with synthetic CTs", "without synthetic CTs"]
    assert table["difference"].iloc[0] > 0 and np.isnan(table["difference"].iloc[1])
    # the random-start comparison leaves these twins out, and no twins: an empty table
    starts = start_comparison(pd.concat([good, twin]), members, "random", out, "os", B=50,
                              seed=1)
    assert list(starts["start"]) == ["random start"]
    assert synthetic_comparison(good, {"net": {"compares": None}}, out, "os", B=50,
                                seed=1).empty


def test_four_folds_of_forty_are_equal_in_size_and_events_and_nine_patients_too_few():
    ids = [f"P{i:03d}" for i in range(40)]
    event = [i % 3 == 0 for i in range(40)]
    folds = assign_folds(ids, event, 4, seed=5)
    shuffled = np.random.default_rng(0).permutation(40)
    assert assign_folds([ids[i] for i in shuffled], [event[i] for i in shuffled], 4, 5) == folds
    assert assign_folds(ids, event, 4, seed=6) != folds
    per_fold = pd.Series(folds).groupby(pd.Series(folds)).size()
    assert sorted(per_fold.index) == [1, 2, 3, 4] and per_fold.min() == 10
    events_per_fold = pd.Series(event, index=ids).groupby(pd.Series(folds)).sum()
    assert events_per_fold.max() - events_per_fold.min() <= 1
    with pytest.raises(ValueError, match="9 training patients with 3 events"):
        assign_folds(ids[:9], event[:9], 4, seed=5)


FIT_ROWS, INNER_ROWS, HELD_ROWS = np.arange(140), np.arange(140, 176), np.arange(176, 676)
