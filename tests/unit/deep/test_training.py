"""radpath.deep.training with real torch and MONAI on CPU (tiny networks, 8^3-16^3 cubes):
losses against lifelines and scikit-survival, inner splits, augmentation, learning on
synthetic cubes (and not learning from shuffled outcomes), the leakage audit of a k-fold
run, bit-identical resume after SIGTERM and SIGKILL, and member files."""


import json
import logging
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import torch
from deep_ct_data import (
    ALL_AUGMENTATION,
    CHANNELS,
    TINY,
    sphere_cohort,
    tiny_cohort,
)
from interrupt import signal_when_written

from radpath.deep import cohort as deep_cohort
from radpath.deep import networks
from radpath.deep import training as dc
from radpath.deep.cohort import FIT, HELDOUT, INNER, SYNTHETIC, VALIDATION, check_usage
from radpath.nn import training as nn_training
from radpath.survival.metrics import harrell_c


def test_settings_take_the_config_section_whole_and_refuse_unknown_keys():
    settings = dc.training_settings(
        {"cubes": {"grid": 16}, "threads": 2, "init": "", "gradcam_patients": 8,
         "augmentation": {"elastic": True}, "epochs": "3"}
    )
    assert settings["epochs"] == 3 and settings["augmentation"]["elastic"] is True
    assert settings["augmentation"]["flip"] is True and "cubes" not in settings
    with pytest.raises(ValueError, match="unknown deep_ct settings"):
        dc.training_settings({"epoch": 3})
    with pytest.raises(ValueError, match="loss"):
        dc.training_settings({"loss": "mse"})


def test_cox_loss_is_lifelines_partial_likelihood_at_the_fitted_beta():
    from lifelines import CoxPHFitter

    rng = np.random.default_rng(0)
    x = rng.normal(size=80)
    time_ = rng.exponential(np.exp(-0.8 * x))  # continuous: no ties, Efron = Breslow
    event = (rng.uniform(size=80) < 0.7).astype(int)
    fitter = CoxPHFitter(penalizer=0.0).fit(
        pd.DataFrame({"x": x, "T": time_, "E": event}), "T", "E"
    )
    beta = float(fitter.params_["x"])
    loss = dc.cox_partial_likelihood_loss(torch.tensor(beta * x), time_, event)
    assert -float(loss) * event.sum() == pytest.approx(fitter.log_likelihood_, rel=1e-6)


def test_cox_loss_handles_ties_as_breslow():
    from sksurv.linear_model.coxph import CoxPHOptimizer

    rng = np.random.default_rng(1)
    x = rng.normal(size=60)
    time_ = rng.integers(1, 8, size=60).astype(float)  # many ties, events and censorings
    event = (rng.uniform(size=60) < 0.6).astype(int)
    reference = CoxPHOptimizer(x[:, None], event.astype(bool), time_, np.zeros(1), "breslow")
    beta = 0.7
    ours = dc.cox_partial_likelihood_loss(torch.tensor(beta * x), time_, event)
    # scikit-survival averages over all samples, we over events
    assert float(ours) * event.sum() / len(x) == pytest.approx(
        reference.nlog_likelihood(np.array([beta])), rel=1e-6
    )


def test_a_batch_without_events_gives_zero_loss_with_a_gradient():
    risk = torch.randn(4, requires_grad=True)
    loss = dc.cox_partial_likelihood_loss(risk, [1.0, 2.0, 3.0, 4.0], [0, 0, 0, 0])
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(risk.grad, torch.zeros(4))


def test_landmark_targets_leave_out_and_count_early_censoring():
    time_ = [3.0, 15.0, 5.0, 12.0, 12.0, 20.0]
    event = [1, 1, 0, 1, 0, 0]
    targets, keep, n_left_out = dc.landmark_targets(time_, event, 12.0)
    assert keep.tolist() == [True, True, False, True, True, True]
    assert targets[keep].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert n_left_out == 1
    loss = dc.landmark_loss(torch.zeros(6), targets, keep)
    assert float(loss) == pytest.approx(math.log(2))


def test_inner_split_is_stratified_seeded_and_holds_an_event():
    ids = [f"P{i:02d}" for i in range(30)]
    event = [1 if i < 4 else 0 for i in range(30)]
    fit, inner = dc.inner_split(ids, event, 0.2, seed=1)
    assert sorted(fit + inner) == ids and not set(fit) & set(inner)
    assert len(inner) == 6 and sum(event[ids.index(p)] for p in inner) == 1
    reordered = dc.inner_split(ids[::-1], event[::-1], 0.2, seed=1)
    assert reordered == (fit, inner)
    assert dc.inner_split(ids, event, 0.2, seed=2) != (fit, inner)
    _, inner_two_events = dc.inner_split(ids[:12], [1, 1] + [0] * 10, 0.1, seed=0)
    assert sum(p in ("P00", "P01") for p in inner_two_events) == 1


def test_augmentation_is_reproducible_and_moves_all_channels_of_a_sample_alike():
    rng = np.random.default_rng(0)
    content = torch.from_numpy(rng.uniform(size=(6, 1, 12, 12, 12)).astype(np.float32))
    batch = torch.cat([content, content], dim=1)  # a CT channel and a "mask" alike
    augment = dc.CubeAugmentation(ALL_AUGMENTATION, ["ct@25mm", "mask@25mm"])
    first = augment.for_epoch(3, 7)(batch)
    assert torch.equal(first, augment.for_epoch(3, 7)(batch))
    assert not torch.equal(first, augment.for_epoch(3, 8)(batch))
    assert not torch.equal(first, augment.for_epoch(4, 7)(batch))
    # intensity jitter touches the CT channel only: the mask channel is the spatial transform
    # alone, and the CT channel the same transform with a linear intensity change
    spatial_only = dc.CubeAugmentation(ALL_AUGMENTATION | {"intensity": False},
                                       ["ct@25mm", "mask@25mm"]).for_epoch(3, 7)(batch)
    assert torch.equal(first[:, 1], spatial_only[:, 1])
    assert torch.equal(spatial_only[:, 0], spatial_only[:, 1])
    assert not torch.equal(first[:, 0], first[:, 1])
    for ct, mask in zip(first[:, 0], first[:, 1], strict=True):
        a, b = np.polyfit(mask.flatten().numpy(), ct.flatten().numpy(), 1)
        assert torch.allclose(ct, a * mask + b, atol=1e-4)
    assert not torch.equal(spatial_only, batch)  # something moved


def best_by_rule(history: pd.DataFrame) -> int:
    key = history.assign(c=history["inner_cindex"].fillna(-np.inf))
    return int(key.sort_values(["c", "inner_loss", "epoch"],
                               ascending=[False, True, True])["epoch"].iloc[0])


@pytest.fixture(scope="module")
def spheres():
    """676 cubes 16^3 whose risk is the sphere radius: 140 fit, 36 inner, 500 held out."""
    cubes, time_, event, radius = sphere_cohort(676, grid=16, seed=1)
    return cubes, time_, event, radius


LEARN = {"networks": ["resnet10"], "width": 4, "epochs": 4, "batch_size": 16,
         "learning_rate": 3e-3}


FIT_ROWS, INNER_ROWS, HELD_ROWS = np.arange(140), np.arange(140, 176), np.arange(176, 676)


def test_a_network_learns_lesion_size_and_keeps_the_best_inner_epoch(spheres):
    cubes, time_, event, radius = spheres
    trained = dc.train_member(cubes, time_, event, FIT_ROWS, INNER_ROWS, LEARN, 0,
                              network="resnet10", channels=CHANNELS, device="cpu")
    raw = dc.score(trained, cubes[HELD_ROWS], device="cpu")
    heldout_c = harrell_c(time_[HELD_ROWS], event[HELD_ROWS], raw)
    oracle_c = harrell_c(time_[HELD_ROWS], event[HELD_ROWS], radius[HELD_ROWS])
    assert heldout_c > 0.7, (heldout_c, oracle_c)
    history = trained.history
    assert list(history.columns) == ["epoch", "train_loss", "inner_loss", "inner_cindex",
                                     "learning_rate", "seconds", "best"]
    assert trained.best_epoch == best_by_rule(history)
    assert history.loc[history["best"], "epoch"].tolist() == [trained.best_epoch]
    assert history["learning_rate"].is_monotonic_decreasing  # cosine schedule
    assert history["learning_rate"].iloc[0] == LEARN["learning_rate"]
    # standardisation: the fit patients' scores have mean 0 and SD 1
    fit_scores = dc.standardised_score(trained, cubes[FIT_ROWS], device="cpu")
    assert fit_scores.mean() == pytest.approx(0.0, abs=1e-9)
    assert fit_scores.std(ddof=1) == pytest.approx(1.0)
    assert trained.fit_ids == [str(i) for i in FIT_ROWS]
    assert trained.inner_ids == [str(i) for i in INNER_ROWS]


def test_shuffled_outcomes_give_a_heldout_c_near_one_half(spheres):
    cubes, time_, event, _ = spheres
    order = np.random.default_rng(11).permutation(len(time_))
    time_, event = time_[order], event[order]
    trained = dc.train_member(cubes, time_, event, FIT_ROWS, INNER_ROWS, LEARN, 0,
                              network="resnet10", channels=CHANNELS, device="cpu")
    raw = dc.score(trained, cubes[HELD_ROWS], device="cpu")
    assert abs(harrell_c(time_[HELD_ROWS], event[HELD_ROWS], raw) - 0.5) < 0.12


def test_the_optimizer_trains_the_returned_network():
    """PCNSL's bug: an optimizer bound to a model that was never used."""
    cubes, time_, event = tiny_cohort()
    settings = dc.training_settings(TINY)
    model = networks.build_network("resnet10", 2, 4, seed=0)
    optimizer, _ = dc.make_optimizer(model, settings)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.parameters()}

    trained = dc.train_member(cubes, time_, event, np.arange(16), np.arange(16, 24), TINY, 0,
                              network="resnet10", channels=CHANNELS, device="cpu")
    initial = networks.build_network("resnet10", 2, 4,
                               seed=nn_training.derive_seed(0, "init", "resnet10")).state_dict()
    for key, value in initial.items():
        if value.is_floating_point() and not key.endswith("running_var"):
            assert not torch.equal(value, trained.state_dict[key]), key


def test_the_same_seed_gives_the_same_weights_on_cpu():
    cubes, time_, event = tiny_cohort()
    settings = TINY | {"augmentation": ALL_AUGMENTATION}
    runs = [dc.train_member(cubes, time_, event, np.arange(16), np.arange(16, 24), settings,
                            seed, network="resnet10", channels=CHANNELS, device="cpu")
            for seed in (4, 4, 5)]
    same, other = runs[1].state_dict, runs[2].state_dict
    assert all(torch.equal(v, same[k]) for k, v in runs[0].state_dict.items())
    assert not all(torch.equal(v, other[k]) for k, v in runs[0].state_dict.items())


def test_a_k_fold_run_never_scores_a_patient_with_a_model_that_saw_it(tmp_path):
    cubes, time_, event = tiny_cohort(n=48, grid=8, seed=2)
    ids = [f"P{i:02d}" for i in range(48)]
    validation = ids[36:]
    training = ids[:36]
    folds = deep_cohort.assign_folds(training, event[:36], 3, seed=9)
    results = [
        dc.train_fold(cubes, ids, time_, event, folds, fold, TINY | {"epochs": 1}, 9,
                      member="resnet10", network="resnet10", channels=CHANNELS,
                      validation_ids=validation, device="cpu")
        for fold in (1, 2, 3)
    ]
    usage = pd.concat([r.usage for r in results], ignore_index=True)
    scores = pd.concat([r.scores for r in results], ignore_index=True)
    for result in results:
        fold = int(result.usage["fold"].iloc[0])
        seen = set(result.trained.fit_ids) | set(result.trained.inner_ids)
        held = set(result.scores.loc[result.scores["role"] == HELDOUT, "patient_id"])
        assert held == {p for p in training if folds[p] == fold}
        assert not seen & held and not seen & set(validation)
        assert seen | held == set(training)
        roles = result.usage.groupby("role")["patient_id"].apply(set)
        assert roles[FIT] == set(result.trained.fit_ids)
        assert roles[INNER] == set(result.trained.inner_ids)
        assert roles[VALIDATION] == set(validation)
        history = result.history
        assert (history["member"] == "resnet10").all() and (history["fold"] == fold).all()
    heldout = scores[scores["role"] == HELDOUT]
    assert sorted(heldout["patient_id"]) == sorted(training)  # each exactly once
    for _, row in heldout.iterrows():
        trained_on = usage[(usage["fold"] == row["fold"]) & usage["role"].isin([FIT, INNER])]
        assert row["patient_id"] not in set(trained_on["patient_id"])
    assert set(usage.loc[usage["role"].isin([FIT, INNER]), "patient_id"]).isdisjoint(validation)
    assert (scores[scores["role"] == VALIDATION].groupby("patient_id").size() == 3).all()
    table = pd.DataFrame({"split": ["train"] * 36 + ["validation"] * 12,
                          "fold": [folds.get(p, 0) for p in ids]}, index=ids)
    check_usage(usage, table)  # the workflow's own audit agrees

    with pytest.raises(ValueError, match="validation patients in training folds"):
        dc.train_fold(cubes, ids, time_, event, folds, 1, TINY, 9, member="m",
                      network="resnet10", channels=CHANNELS, validation_ids=[training[0]])


def test_synthetic_cts_join_only_the_folds_that_fit_their_patient():
    cubes, time_, event = tiny_cohort(n=30, grid=8, seed=3)
    ids = [f"P{i:02d}" for i in range(30)]
    training, validation = ids[:24], ids[24:]
    folds = deep_cohort.assign_folds(training, event[:24], 3, seed=2)
    rng = np.random.default_rng(0)
    # synthetic CTs of every training patient, and one of a validation patient (never used)
    synthetic = {p: rng.normal(size=(2, *cubes.shape[1:])).astype(cubes.dtype)
                 for p in training + validation[:1]}
    for fold in (1, 2):
        result = dc.train_fold(cubes, ids, time_, event, folds, fold, TINY | {"epochs": 1}, 9,
                               member="m", network="resnet10", channels=CHANNELS,
                               validation_ids=validation, device="cpu",
                               synthetic_cubes=synthetic)
        roles = result.usage.groupby("role")["patient_id"].apply(set)
        fit = roles[FIT]
        assert roles[SYNTHETIC] == {f"{p}~synthetic{k}" for p in fit for k in (1, 2)}
        copies = result.usage[result.usage["role"] == SYNTHETIC]
        assert (copies["source"] == copies["patient_id"].str.split("~").str[0]).all()
        real = result.usage[result.usage["role"] != SYNTHETIC]
        assert (real["source"] == real["patient_id"]).all()
        assert fit == {p for p in result.trained.fit_ids if "~" not in p}
        assert not any("~" in p for p in result.scores["patient_id"])
        assert not any("~" in p for p in result.trained.inner_ids)
        assert len(result.trained.fit_ids) == 3 * len(fit)  # each fit patient + 2 synthetic
    without = dc.train_fold(cubes, ids, time_, event, folds, 1, TINY | {"epochs": 1}, 9,
                            member="m", network="resnet10", channels=CHANNELS,
                            validation_ids=validation, device="cpu")
    assert SYNTHETIC not in set(without.usage["role"])


def test_landmark_training_leaves_early_censored_fit_patients_out():
    cubes, time_, event = tiny_cohort(n=36, grid=8, seed=4)
    ids = [f"P{i:02d}" for i in range(36)]
    landmark = float(np.median(time_))
    folds = deep_cohort.assign_folds(ids, event, 3, seed=1)
    result = dc.train_fold(cubes, ids, time_, event, folds, 2,
                           TINY | {"loss": "landmark", "landmark_time": landmark, "epochs": 1},
                           1, member="resnet10", network="resnet10", channels=CHANNELS,
                           device="cpu")
    early = {p for p, t, e in zip(ids, time_, event, strict=True) if not e and t < landmark}
    left_out = set(result.usage.loc[result.usage["role"] == "left_out", "patient_id"])
    assert left_out and left_out == early & set(result.trained.fit_ids)
    assert left_out == set(result.trained.landmark_left_out_ids)
    assert np.isfinite(result.history["inner_loss"]).all()


RESUME_SETTINGS = {"networks": ["resnet10"], "width": 4, "epochs": 5, "batch_size": 8,
                   "learning_rate": 1e-2, "augmentation": ALL_AUGMENTATION}


RESUME_SCRIPT = """
import json, sys
import torch
from deep_ct_data import CHANNELS, sphere_cohort
from radpath.deep import training as dc
torch.set_num_threads(1)
cubes, time_, event, _ = sphere_cohort(64, grid=16, seed=3)
dc.train_member(cubes, time_, event, list(range(48)), list(range(48, 64)),
                json.loads(sys.argv[1]), 7, network="resnet10", channels=CHANNELS,
                checkpoint_dir=sys.argv[2], device="cpu")
"""


def run_and_kill(checkpoint_dir, repo, sig, after_epoch: int) -> int:
    """Start a training in a subprocess and send `sig` once `after_epoch`'s checkpoint
    exists (mid-run: later epochs are not written yet); its exit status."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join(
        [str(repo), str(repo / "tests" / "support")])}
    process = subprocess.Popen(
        [sys.executable, "-c", RESUME_SCRIPT, json.dumps(RESUME_SETTINGS), str(checkpoint_dir)],
        env=env, stderr=subprocess.PIPE,
    )
    return signal_when_written(process, nn_training.checkpoint_path(checkpoint_dir, after_epoch),
                               sig, 120)


def test_a_killed_training_resumes_to_the_same_weights(tmp_path, repo):
    cubes, time_, event, _ = sphere_cohort(64, grid=16, seed=3)

    def train(checkpoint_dir=None):
        return dc.train_member(cubes, time_, event, list(range(48)), list(range(48, 64)),
                               RESUME_SETTINGS, 7, network="resnet10", channels=CHANNELS,
                               checkpoint_dir=checkpoint_dir, device="cpu")

    reference = train()
    for sig, after_epoch, status in ((signal.SIGTERM, 1, 128 + signal.SIGTERM),
                                     (signal.SIGKILL, 2, -signal.SIGKILL)):
        folder = tmp_path / sig.name
        assert run_and_kill(folder, repo, sig, after_epoch) == status
        done = [epoch for epoch, _ in nn_training.list_checkpoints(folder)]
        assert max(done) < RESUME_SETTINGS["epochs"], "killed after the end"
        resumed = train(folder)
        assert resumed.resumed_from == max(done) >= after_epoch
        assert resumed.state_dict.keys() == reference.state_dict.keys()
        for key, value in reference.state_dict.items():
            assert torch.equal(value, resumed.state_dict[key]), (sig.name, key)
        columns = ["epoch", "train_loss", "inner_loss", "inner_cindex", "learning_rate", "best"]
        pd.testing.assert_frame_equal(resumed.history[columns], reference.history[columns])
        assert (resumed.mean, resumed.sd, resumed.best_epoch) == (
            reference.mean, reference.sd, reference.best_epoch)
        assert not list(folder.glob(".tmp-*"))
        finished = train(folder)  # a finished run resumes without training
        assert finished.resumed_from == RESUME_SETTINGS["epochs"]


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path, caplog):
    cubes, time_, event = tiny_cohort()
    args = (cubes, time_, event, np.arange(16), np.arange(16, 24))
    kwargs = {"network": "resnet10", "channels": CHANNELS, "checkpoint_dir": tmp_path,
              "device": "cpu"}
    dc.train_member(*args, TINY, 0, **kwargs)
    assert [e for e, _ in nn_training.list_checkpoints(tmp_path)] == [2, 1]
    with caplog.at_level(logging.WARNING, logger="radpath.deep.training"):
        other = dc.train_member(*args, TINY | {"learning_rate": 5e-3}, 0, **kwargs)
    assert other.resumed_from == 0
    assert "other settings" in caplog.text
    again = dc.train_member(*args, TINY | {"learning_rate": 5e-3}, 0, **kwargs)
    assert again.resumed_from == 2


def test_a_member_round_trips_and_scores_identically(tmp_path):
    cubes, time_, event = tiny_cohort()
    trained = dc.train_member(cubes, time_, event, np.arange(16), np.arange(16, 24), TINY, 0,
                              network="resnet10", channels=CHANNELS,
                              patient_ids=[f"P{i}" for i in range(24)], device="cpu")
    path = dc.save_member(tmp_path / "member.pt", trained, {"endpoint": "os"})
    loaded = dc.load_member(path)
    np.testing.assert_array_equal(dc.score(loaded, cubes, device="cpu"),
                                  dc.score(trained, cubes, device="cpu"))
    assert (loaded.mean, loaded.sd, loaded.best_epoch) == (trained.mean, trained.sd,
                                                          trained.best_epoch)
    assert loaded.fit_ids == [f"P{i}" for i in range(16)] and loaded.meta["endpoint"] == "os"
    assert loaded.channels == CHANNELS and loaded.settings == trained.settings
    pd.testing.assert_frame_equal(loaded.history, trained.history, check_dtype=False)

    # a member file (or its state in .pt / .safetensors) starts another training
    init = networks.load_init_checkpoint(path, "resnet10", 2, 4)
    assert all(torch.equal(v, trained.state_dict[k]) for k, v in init.items())
    safetensors.torch.save_file(trained.state_dict, tmp_path / "member.safetensors")
    from_safetensors = networks.load_init_checkpoint(tmp_path / "member.safetensors", "resnet10", 2, 4)
    assert from_safetensors.keys() == init.keys()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in trained.state_dict.items()}}
    torch.save(wrapped, tmp_path / "wrapped.pth")
    assert networks.load_init_checkpoint(tmp_path / "wrapped.pth", "resnet10", 2, 4).keys() == init.keys()
    started = dc.train_member(cubes, time_, event, np.arange(16), np.arange(16, 24),
                              TINY | {"epochs": 1}, 0, network="resnet10", channels=CHANNELS,
                              init_state=init, device="cpu")
    assert started.fingerprint != trained.fingerprint


@pytest.mark.parametrize("n, sizes", [(9, [9]), (17, [8, 9]), (16, [8, 8]), (10, [8, 2]),
                                      (5, [5]), (1, [1])])
def test_epoch_batches_cover_every_row_once_and_never_leave_a_batch_of_one(n, sizes):
    """A last batch of one joins the batch before it (9 rows in batches of 8 crashed, and
    with three or more batches the row was merged into the wrong batch)."""
    generator = dc.epoch_generator(7, 1)
    batches = dc.epoch_batches(np.arange(n) + 100, 8, generator)
    assert [len(b) for b in batches] == sizes
    assert sorted(np.concatenate(batches)) == list(range(100, 100 + n))
