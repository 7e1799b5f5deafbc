"""radpath.synthesis.diffusion (Lung-DDPM) through the real code: the noise schedule against
the reference formulas, a tiny DDPM that learns, RePaint sampling that keeps the known
voxels, bit-identical resume after SIGTERM and SIGKILL, and clear errors for bad settings."""


from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from interrupt import signal_when_written
from synthesis_data import sphere_volumes

from radpath.nn.training import checkpoint_path, list_checkpoints
from radpath.synthesis import diffusion
from radpath.synthesis import layout as layouts
from radpath.synthesis import quality as quality

TINY = {
    "network": "monai_ddpm_unet", "size": 16, "channels": [8, 16],
    "attention_levels": [False, True], "num_res_blocks": 1, "norm_groups": 4,
    "head_channels": 8, "timesteps": 250, "schedule": "cosine", "steps": 200,
    "batch_size": 2, "learning_rate": 2e-3, "ema_decay": 0.99, "precision": "bf16",
    "log_every": 20,
}


def reference_cosine_alphas_cumprod(T: int, s: float = 8e-3) -> np.ndarray:
    """Nichol and Dhariwal (2021), eq. 17, betas clipped at 0.999, in float64."""
    f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
    abar = f / f[0]
    betas = np.clip(1 - abar[1:] / abar[:-1], 0, 0.999)
    return np.cumprod(1 - betas)


def test_noise_schedules_match_the_reference_formulas():
    cosine = diffusion.make_scheduler({"schedule": "cosine", "timesteps": 250})
    np.testing.assert_allclose(cosine.alphas_cumprod.double().numpy(),
                               reference_cosine_alphas_cumprod(250), atol=1e-6)
    linear = diffusion.make_scheduler({"schedule": "linear", "timesteps": 1000})
    betas = np.linspace(1e-4, 2e-2, 1000)
    np.testing.assert_allclose(linear.alphas_cumprod.double().numpy(),
                               np.cumprod(1 - betas), atol=1e-6)
    # forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)
    x0, noise = torch.rand(2, 1, 4, 4, 4) * 2 - 1, torch.randn(2, 1, 4, 4, 4)
    t = torch.tensor([10, 200])
    abar = reference_cosine_alphas_cumprod(250)[t.numpy()]
    expected = (np.sqrt(abar)[:, None, None, None, None] * x0.double().numpy()
                + np.sqrt(1 - abar)[:, None, None, None, None] * noise.double().numpy())
    # (float32 arithmetic on values up to ~3: 1e-5)
    np.testing.assert_allclose(cosine.add_noise(x0, noise, t).numpy(), expected, atol=1e-5)


def test_reverse_step_is_the_ddpm_posterior_and_monais_step_without_respacing():
    scheduler = diffusion.make_scheduler({"schedule": "cosine", "timesteps": 250})
    abar = scheduler.alphas_cumprod
    sample, epsilon = torch.randn(1, 1, 4, 4, 4), torch.randn(1, 1, 4, 4, 4)
    for t in (249, 120, 1):
        generator = torch.Generator().manual_seed(t)
        monai_prev, _ = scheduler.step(epsilon, t, sample, generator=generator)
        noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(t))
        ours = diffusion.reverse_step(abar, epsilon, t, t - 1, sample, noise)
        torch.testing.assert_close(ours, monai_prev, atol=1e-5, rtol=1e-5)
    # respaced: from t to t_prev with beta' = 1 - abar_t / abar_prev (Ho et al. eq. 7)
    t, t_prev = 200, 150
    a_t, a_p = abar[t].double(), abar[t_prev].double()
    beta = 1 - a_t / a_p
    x0 = ((sample.double() - (1 - a_t).sqrt() * epsilon.double()) / a_t.sqrt()).clamp(-1, 1)
    mean = (a_p.sqrt() * beta / (1 - a_t)) * x0 + ((1 - beta).sqrt() * (1 - a_p) / (1 - a_t)
                                                    ) * sample.double()
    torch.testing.assert_close(diffusion.reverse_step(abar, epsilon, t, t_prev, sample, None),
                               mean.float(), atol=1e-6, rtol=1e-6)
    assert diffusion.sampling_timesteps(250, 5) == [249, 187, 124, 62, 0]
    assert diffusion.sampling_timesteps(250, 250) == list(range(249, -1, -1))
    with pytest.raises(ValueError, match="sampling steps"):
        diffusion.sampling_timesteps(250, 300)


@pytest.fixture(scope="module")
def trained():
    volumes, labels = sphere_volumes(12, seed=1)
    return diffusion.train_ddpm(volumes, labels, TINY, 3, patient_ids=[f"P{i}" for i in
                                                                        range(12)],
                                device="cpu")


def test_a_tiny_ddpm_learns_the_noise(trained):
    loss = trained.history["loss"].to_numpy()
    assert len(loss) == TINY["steps"] // TINY["log_every"]
    assert loss[-3:].mean() < 0.5 * loss[0], loss  # L1 of pure guessing is ~0.8
    assert trained.fit_ids == [f"P{i}" for i in range(12)]


def test_sampling_keeps_known_voxels_and_is_deterministic(trained, tmp_path):
    volumes, labels = sphere_volumes(1, seed=9)
    region = layouts.region_mask(labels[0], (1.0, 1.0, 1.0), "nodule", 2.0)
    assert 0 < region.mean() < 0.5
    kwargs = {"steps": 10, "seed": 5, "device": "cpu"}
    first = diffusion.sample_volume(trained, labels[0], volumes[0], region, **kwargs)
    again = diffusion.sample_volume(trained, labels[0], volumes[0], region, **kwargs)
    other = diffusion.sample_volume(trained, labels[0], volumes[0], region,
                                    **kwargs | {"seed": 6})
    assert first.shape == (16, 16, 16) and first.dtype == np.float32
    np.testing.assert_array_equal(first[~region], volumes[0][~region])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[region], other[region])
    assert np.abs(first).max() <= 1.0 + 1e-6
    # the saved model samples the same volume
    diffusion.save_model(tmp_path / "model.pt", trained)
    loaded = diffusion.load_model(tmp_path / "model.pt")
    assert loaded.weights_sha256 == trained.weights_sha256
    np.testing.assert_array_equal(
        diffusion.sample_volume(loaded, labels[0], volumes[0], region, **kwargs), first)
    # the model draws the nodule the layout asks for: brighter inside it than in the lung
    full = diffusion.sample_volume(trained, labels[0], volumes[0], np.ones_like(region),
                                   steps=50, seed=1, device="cpu")
    assert full[labels[0] == 2].mean() > full[labels[0] == 1].mean() + 0.5


RESUME = TINY | {"size": 8, "steps": 240, "log_every": 10}


RESUME_SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
from synthesis_data import sphere_volumes
from radpath.synthesis import diffusion
volumes, labels = sphere_volumes(6, size=8, seed=2)
diffusion.train_ddpm(volumes, labels, json.loads(sys.argv[3]), 4, patient_ids=list("abcdef"),
                     checkpoint_dir=sys.argv[1], checkpoint_every=int(sys.argv[2]),
                     device="cpu")
"""


def run_and_kill(folder, repo, sig, after_step: int) -> int:
    process = subprocess.Popen(
        [sys.executable, "-c", RESUME_SCRIPT, str(folder), "20", json.dumps(RESUME)],
        env=os.environ | {"PYTHONPATH": os.pathsep.join(
            [str(repo), str(repo / "tests" / "support")])}, stderr=subprocess.PIPE)
    return signal_when_written(process, checkpoint_path(folder, after_step), sig, 180)


def test_a_killed_training_resumes_to_the_same_weights(tmp_path, repo):
    torch.set_num_threads(1)
    volumes, labels = sphere_volumes(6, size=8, seed=2)

    def train(folder=None):
        return diffusion.train_ddpm(volumes, labels, RESUME, 4, patient_ids=list("abcdef"),
                                    checkpoint_dir=folder, checkpoint_every=20, device="cpu")

    reference = train()
    for sig, after, status in ((signal.SIGTERM, 20, 128 + signal.SIGTERM),
                               (signal.SIGKILL, 40, -signal.SIGKILL)):
        folder = tmp_path / sig.name
        assert run_and_kill(folder, repo, sig, after) == status
        done = [step for step, _ in list_checkpoints(folder)]
        assert after <= max(done) < RESUME["steps"], done
        resumed = train(folder)
        assert resumed.resumed_from == max(done)
        for key, value in reference.ema_state.items():
            assert torch.equal(value, resumed.ema_state[key]), (sig.name, key)
        pd.testing.assert_frame_equal(resumed.history[["step", "loss"]],
                                      reference.history[["step", "loss"]])
        assert not list(folder.glob(".tmp-*"))


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="unknown synthesis network"):
        diffusion.build_network(TINY | {"network": "nope"}, 0)
    with pytest.raises(ValueError, match="size 18 must be divisible by 4"):
        diffusion.build_network(TINY | {"size": 18, "channels": [8, 8, 8],
                                        "attention_levels": [False] * 3}, 0)
    with pytest.raises(ValueError, match="one entry per level"):
        diffusion.build_network(TINY | {"attention_levels": [False]}, 0)
    volumes, labels = sphere_volumes(2)
    with pytest.raises(ValueError, match="must be \\(N, 8, 8, 8\\)"):
        diffusion.train_ddpm(volumes, labels, TINY | {"size": 8}, 0, patient_ids=["a", "b"])
    assert json.dumps(layouts.window_to_unit(np.array([-2000.0, 400.0]), (-1000, 400)
                                               ).tolist()) == "[-1.0, 1.0]"
