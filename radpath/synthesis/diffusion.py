"""Mask-conditioned 3D denoising diffusion for synthetic CT (the Lung-DDPM study).

The network sees the noisy CT (HU window scaled to [-1, 1]) concatenated with the one-hot
semantic layout (background, lung, nodule) and predicts the noise; L1 loss on the noise;
an exponential moving average (EMA) of the weights is what samples. Networks come from a
registry of named entries (`NETWORKS`; MONAI's DiffusionModelUNet). The noise schedule
is MONAI's DDPMScheduler (cosine or linear betas); the reverse step is written here
(`reverse_step`) because MONAI's step assumes consecutive timesteps and sampling with fewer
steps than training needs the respaced posterior (Nichol and Dhariwal 2021).

Sampling keeps the known anatomy (RePaint): outside the sampled region the known volume,
noised to the current step, replaces the sample at every step, and the final step takes
it unchanged. Training checkpoints every N steps; every step's randomness comes from
(seed, step) alone, so a resumed run reaches the same weights as an uninterrupted one
(CPU; on CUDA in protocol).

Only numpy, torch, MONAI and radpath.training/io/deep_ct (envs/deep.yaml).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from radpath.inputs.configuration import SYNTHESIS_TRAINING_KEYS
from radpath.nn.training import (
    autocast_dtype,
    backward_step,
    cpu_state,
    derive_seed,
    deterministic,
    exit_on_sigterm,
    find_resumable_checkpoint,
    remove_partial_checkpoints,
    resolve_device,
    save_atomically,
    state_checksum,
    write_checkpoint,
)

log = logging.getLogger(__name__)

MODEL_FORMAT = "radpath-synthesis-ddpm/1"
CHECKPOINT_FORMAT = "radpath-synthesis-checkpoint/1"
LAYOUT_CLASSES = ("background", "lung", "nodule")
N_CLASSES = len(LAYOUT_CLASSES)
LINEAR_BETAS = (1e-4, 2e-2)  # DDPM's linear schedule (Ho et al. 2020)
COSINE_OFFSET = 8e-3  # s of the cosine schedule (Nichol and Dhariwal 2021)


# ------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class DiffusionNetwork:
    name: str
    description: str
    build: Callable[[Mapping], nn.Module]


def _monai_unet(settings: Mapping) -> nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    channels = [int(c) for c in settings["channels"]]
    return DiffusionModelUNet(
        spatial_dims=3,
        in_channels=1 + N_CLASSES,
        out_channels=1,
        num_res_blocks=int(settings["num_res_blocks"]),
        channels=channels,
        attention_levels=[bool(a) for a in settings["attention_levels"]],
        norm_num_groups=int(settings["norm_groups"]),
        num_head_channels=int(settings["head_channels"]),
    )


NETWORKS = {
    "monai_ddpm_unet": DiffusionNetwork(
        "monai_ddpm_unet",
        "MONAI DiffusionModelUNet (3D): residual blocks, self-attention at the levels asked",
        _monai_unet,
    ),
}


def build_network(settings: Mapping, seed: int) -> nn.Module:
    name = settings["network"]
    if name not in NETWORKS:
        raise ValueError(f"unknown synthesis network {name!r}; known: {', '.join(NETWORKS)}")
    if len(settings["channels"]) != len(settings["attention_levels"]):
        raise ValueError("synthesis.channels and synthesis.attention_levels need one entry "
                         f"per level, got {len(settings['channels'])} and "
                         f"{len(settings['attention_levels'])}")
    levels = len(settings["channels"])
    if settings["size"] % 2 ** (levels - 1):
        raise ValueError(f"synthesis.size {settings['size']} must be divisible by "
                         f"{2 ** (levels - 1)} (the UNet halves it {levels - 1} times)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return NETWORKS[name].build(settings)


# ------------------------------------------------------------------------------ schedule


def make_scheduler(settings: Mapping):
    """MONAI's DDPM scheduler with the configured betas (epsilon prediction, x0 clipped)."""
    from monai.networks.schedulers import DDPMScheduler

    if settings["schedule"] == "cosine":
        return DDPMScheduler(num_train_timesteps=int(settings["timesteps"]), schedule="cosine",
                             s=COSINE_OFFSET)
    if settings["schedule"] == "linear":
        return DDPMScheduler(num_train_timesteps=int(settings["timesteps"]),
                             schedule="linear_beta", beta_start=LINEAR_BETAS[0],
                             beta_end=LINEAR_BETAS[1])
    raise ValueError(f"unknown synthesis.schedule {settings['schedule']!r}: cosine | linear")


def sampling_timesteps(timesteps: int, steps: int) -> list[int]:
    """`steps` timesteps from T-1 down to 0, evenly spaced (distinct, descending)."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"sampling steps must be 1..{timesteps}, got {steps}")
    picked = np.unique(np.round(np.linspace(0, timesteps - 1, steps)).astype(int))
    return [int(t) for t in picked[::-1]]


def reverse_step(alphas_cumprod: torch.Tensor, epsilon: torch.Tensor, t: int, t_prev: int,
                 sample: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """x_{t_prev} from x_t and the predicted noise: the DDPM posterior with the respaced beta
    1 - abar_t / abar_prev (t_prev = -1: the last step, abar_prev = 1, no noise). The
    predicted x0 is clipped to [-1, 1] as in DDPM."""
    abar_t = alphas_cumprod[t]
    abar_prev = alphas_cumprod[t_prev] if t_prev >= 0 else torch.ones_like(abar_t)
    beta = 1 - abar_t / abar_prev
    x0 = ((sample - (1 - abar_t).sqrt() * epsilon) / abar_t.sqrt()).clamp(-1, 1)
    mean = (abar_prev.sqrt() * beta / (1 - abar_t)) * x0 + (
        (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar_t)
    ) * sample
    if t_prev < 0 or noise is None:
        return mean
    variance = ((1 - abar_prev) / (1 - abar_t) * beta).clamp(min=1e-20)
    return mean + variance.sqrt() * noise


# ------------------------------------------------------------------------------ data


def one_hot_layout(layout: torch.Tensor) -> torch.Tensor:
    """(B, S, S, S) integer classes -> (B, N_CLASSES, S, S, S) float."""
    return F.one_hot(layout.long(), N_CLASSES).permute(0, 4, 1, 2, 3).float()


def check_volumes(volumes: np.ndarray, layouts: np.ndarray, size: int) -> None:
    if volumes.ndim != 4 or volumes.shape[1:] != (size,) * 3:
        raise ValueError(f"volumes must be (N, {size}, {size}, {size}), got {volumes.shape}")
    if layouts.shape != volumes.shape:
        raise ValueError(f"layouts {layouts.shape} differ from volumes {volumes.shape}")
    if len(volumes) == 0:
        raise ValueError("no training volumes")
    if layouts.min() < 0 or layouts.max() >= N_CLASSES:
        raise ValueError(f"layout classes must be 0..{N_CLASSES - 1}")


def data_digest(volumes: np.ndarray, layouts: np.ndarray, ids: Sequence[str]) -> str:
    digest = hashlib.sha256(json.dumps(list(ids)).encode())
    digest.update(np.ascontiguousarray(volumes, dtype=np.float16).tobytes())
    digest.update(np.ascontiguousarray(layouts, dtype=np.uint8).tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------ training


TRAINING_KEYS = SYNTHESIS_TRAINING_KEYS


@dataclass
class TrainedDiffusion:
    settings: dict
    seed: int
    ema_state: dict[str, torch.Tensor]
    history: pd.DataFrame
    fit_ids: list[str]
    fingerprint: str
    resumed_from: int = 0

    @property
    def weights_sha256(self) -> str:
        return state_checksum(self.ema_state)

    def model(self, device: str | torch.device = "cpu") -> nn.Module:
        network = build_network(self.settings, seed=0)
        network.load_state_dict(self.ema_state, strict=True)
        return network.to(device).eval()


def _update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach(), 1 - decay)
        for e, b in zip(ema.buffers(), model.buffers(), strict=True):
            e.copy_(b)


def _ema_decay(decay: float, step: int) -> float:
    """The EMA decay at `step`: warmed up as (1 + step) / (10 + step), at most `decay`."""
    return min(decay, (1 + step) / (10 + step))


def step_batch(seed: int, step: int, n: int, batch_size: int, timesteps: int, size: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows, timesteps and noise of one training step, from (seed, step) only."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "ddpm-step", step))
    rows = torch.randint(n, (batch_size,), generator=generator)
    t = torch.randint(timesteps, (batch_size,), generator=generator)
    noise = torch.randn((batch_size, 1, size, size, size), generator=generator)
    return rows, t, noise


def train_ddpm(
    volumes: np.ndarray,
    layouts: np.ndarray,
    settings: Mapping,
    seed: int,
    *,
    patient_ids: Sequence[str],
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    device: str | torch.device | None = None,
    progress: Callable[[dict], None] | None = None,
) -> TrainedDiffusion:
    """Train the denoiser on `volumes` (N, S, S, S) in [-1, 1] with `layouts` (N, S, S, S)
    classes 0..2 for settings["steps"] steps. With `checkpoint_dir`, a checkpoint every
    `checkpoint_every` steps (and at the end) that a rerun resumes from (same fingerprint:
    settings, seed, patients, data). SIGTERM (without another handler) raises SystemExit."""
    settings = {key: settings[key] for key in TRAINING_KEYS}
    size = int(settings["size"])
    volumes = np.asarray(volumes, dtype=np.float16)
    layouts = np.asarray(layouts, dtype=np.uint8)
    check_volumes(volumes, layouts, size)
    ids = [str(p) for p in patient_ids]
    if len(ids) != len(volumes):
        raise ValueError(f"{len(ids)} patient IDs for {len(volumes)} volumes")
    device = resolve_device(device)
    model = build_network(settings, seed=derive_seed(seed, "ddpm-init")).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(settings["learning_rate"]),
                                  weight_decay=0.0)
    dtype = autocast_dtype(settings["precision"], device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    scheduler = make_scheduler(settings)
    fingerprint = hashlib.sha256(json.dumps(
        [settings, int(seed), data_digest(volumes, layouts, ids), MODEL_FORMAT], sort_keys=True
    ).encode()).hexdigest()
    steps, log_every = int(settings["steps"]), max(1, int(settings["log_every"]))
    history: list[dict] = []
    window: list[float] = []
    resumed_from = 0
    if checkpoint_dir is not None:
        remove_partial_checkpoints(checkpoint_dir)
        found = find_resumable_checkpoint(
            checkpoint_dir, fingerprint, steps, checkpoint_format=CHECKPOINT_FORMAT,
            kind="synthesis", logger=log,
            other_inputs="other settings, patients, volumes or seed: not resumed, training "
            "starts over (it will be removed)",
            too_many_epochs="has more steps than the %d asked for, ignored",
        )
        if found is not None:
            checkpoint = found[1]
            resumed_from = int(checkpoint["epoch"])
            model.load_state_dict(checkpoint["model"], strict=True)
            ema.load_state_dict(checkpoint["ema"], strict=True)
            optimizer.load_state_dict(checkpoint["optimizer"])
            scaler.load_state_dict(checkpoint["scaler"])
            history = [dict(row) for row in checkpoint["history"]]
            window = [float(v) for v in checkpoint["window"]]
            log.info("synthesis: resuming after step %d from %s", resumed_from, found[0])
            del checkpoint, found

    volumes_t = torch.from_numpy(volumes)
    layouts_t = torch.from_numpy(layouts)
    alphas = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    log.info("synthesis: %s, %d volumes of %d^3, steps %d..%d, batch %d, on %s (%s)",
             settings["network"], len(ids), size, resumed_from + 1, steps,
             settings["batch_size"], device, str(dtype).removeprefix("torch."))
    model.train()
    started = perf_counter()
    with deterministic(device), exit_on_sigterm():
        for step in range(resumed_from + 1, steps + 1):
            rows, t, noise = step_batch(seed, step, len(ids), int(settings["batch_size"]),
                                        int(settings["timesteps"]), size)
            x0 = volumes_t[rows].unsqueeze(1).to(device, torch.float32)
            condition = one_hot_layout(layouts_t[rows]).to(device)
            noise, t = noise.to(device), t.to(device)
            abar = alphas[t].view(-1, 1, 1, 1, 1)
            noisy = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                predicted = model(torch.cat([noisy, condition], dim=1), timesteps=t)
            loss = F.l1_loss(predicted.float(), noise)
            backward_step(loss, optimizer, scaler)
            _update_ema(ema, model, _ema_decay(float(settings["ema_decay"]), step))
            window.append(float(loss.detach()))
            if step % log_every == 0 or step == steps:
                row = {"step": step, "loss": float(np.mean(window)),
                       "learning_rate": float(settings["learning_rate"]),
                       "seconds": perf_counter() - started}
                history.append(row)
                window = []
                started = perf_counter()
                log.info("synthesis step %d/%d: L1 noise loss %.4f", step, steps, row["loss"])
                if progress is not None:
                    progress(dict(row))
            if checkpoint_dir is not None and (
                step == steps or (checkpoint_every and step % checkpoint_every == 0)
            ):
                write_checkpoint(checkpoint_dir, step, {
                    "format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "epoch": step,
                    "model": cpu_state(model), "ema": cpu_state(ema),
                    "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                    "history": history, "window": window,
                })
    return TrainedDiffusion(
        settings=dict(settings), seed=int(seed), ema_state=cpu_state(ema),
        history=pd.DataFrame(history, columns=["step", "loss", "learning_rate", "seconds"]),
        fit_ids=ids, fingerprint=fingerprint, resumed_from=resumed_from,
    )


def save_model(path: str | os.PathLike, trained: TrainedDiffusion, meta: Mapping | None = None
               ) -> Path:
    payload = {
        "format": MODEL_FORMAT,
        "settings": json.loads(json.dumps(trained.settings)),
        "seed": trained.seed,
        "ema_state": trained.ema_state,
        "history": json.loads(trained.history.to_json(orient="records")),
        "fit_ids": list(trained.fit_ids),
        "fingerprint": trained.fingerprint,
        "resumed_from": int(trained.resumed_from),
        "weights_sha256": trained.weights_sha256,
        "meta": json.loads(json.dumps(dict(meta or {}))),
    }
    return save_atomically(payload, path)


def load_model(path: str | os.PathLike) -> TrainedDiffusion:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a radpath synthesis model ({MODEL_FORMAT})")
    trained = TrainedDiffusion(
        settings=dict(payload["settings"]), seed=int(payload["seed"]),
        ema_state=dict(payload["ema_state"]), history=pd.DataFrame(payload["history"]),
        fit_ids=list(payload["fit_ids"]), fingerprint=payload["fingerprint"],
        resumed_from=int(payload["resumed_from"]),
    )
    if trained.weights_sha256 != payload["weights_sha256"]:
        raise ValueError(f"{path}: weights do not match their recorded SHA-256")
    return trained


# ------------------------------------------------------------------------------ sampling


@torch.no_grad()
def sample_volume(
    trained: TrainedDiffusion | nn.Module,
    layout: np.ndarray,
    known: np.ndarray,
    region: np.ndarray,
    *,
    steps: int,
    seed: int,
    settings: Mapping | None = None,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """One (S, S, S) volume in [-1, 1] for `layout` (S, S, S classes): inside `region`
    (bool) drawn by the model, outside equal to `known` (in [-1, 1]) exactly, with the known
    part noised to every step's level (RePaint). Deterministic for a seed (noise drawn on
    the CPU)."""
    device = resolve_device(device)
    if isinstance(trained, TrainedDiffusion):
        settings, model = trained.settings, trained.model(device)
    else:
        model = trained.to(device).eval()
    shape = tuple(np.shape(layout))
    if np.shape(known) != shape or np.shape(region) != shape:
        raise ValueError(f"layout {shape}, known {np.shape(known)} and region "
                         f"{np.shape(region)} must have one shape")
    alphas = make_scheduler(settings).alphas_cumprod.to(device=device, dtype=torch.float32)
    dtype = autocast_dtype(settings["precision"], device)
    generator = torch.Generator().manual_seed(int(seed))
    condition = one_hot_layout(torch.as_tensor(np.asarray(layout))[None]).to(device)
    known_t = torch.as_tensor(np.asarray(known, np.float32))[None, None].to(device)
    inside = torch.as_tensor(np.asarray(region, bool))[None, None].to(device)
    x = torch.randn((1, 1, *shape), generator=generator).to(device)
    timesteps = sampling_timesteps(int(settings["timesteps"]), int(steps))
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            epsilon = model(torch.cat([x, condition], dim=1),
                            timesteps=torch.full((1,), t, device=device)).float()
        noise = torch.randn(x.shape, generator=generator).to(device) if t_prev >= 0 else None
        drawn = reverse_step(alphas, epsilon, t, t_prev, x, noise)
        if t_prev >= 0:
            abar = alphas[t_prev]
            known_noise = torch.randn(x.shape, generator=generator).to(device)
            known_now = abar.sqrt() * known_t + (1 - abar).sqrt() * known_noise
        else:
            known_now = known_t
        x = torch.where(inside, drawn, known_now)
    return x[0, 0].float().cpu().numpy()

