"""Deep CT models (EMV-3D-CNN and PCNSL studies): 3D CNNs that turn a patient's concentric
CT cubes (C, G, G, G) into one risk score, trained honestly on training patients only.

Protocol of one fold model ("member", `train_fold`; rules/deep_ct.smk runs one per
endpoint x network x fold): the training patients outside fold f are split (`inner_split`,
stratified on the event) into a fit part, on which the network is trained, and an inner
part, on which it is evaluated after every epoch. The epoch kept is the one with the highest
Harrell's C on the inner part (ties: lower inner loss, then the earlier epoch); nothing else
(not fold f, never a validation patient) is looked at for that choice -- unlike EMV-3D-CNN,
which chose checkpoints on its test set. The kept model then scores fold f and the validation
patients.

Scores. A member's raw outputs are standardised with the mean and SD (ddof 1) of its raw
outputs on its own fit patients (eval mode, no augmentation): every score is in "SDs of the
training fit's scores", so members of different networks, views and folds are on one scale.
A training patient's block value is its out-of-fold member's standardised score (averaged
over networks / per-scale views, each of which has exactly one member that never saw that
patient); a validation patient's is the mean of all members' standardised scores
(radpath.deep.cohort.block_scores).

Training (`train_member`): AdamW on the network that is actually trained (PCNSL built its
optimizer on a model it never used), learning rate annealed per epoch on a cosine from
`learning_rate` to 1% of it over `epochs`; batches from a per-epoch shuffle of the fit
patients; MONAI augmentations per sample, seeded by (seed, epoch). Mixed precision (bf16
autocast) on CUDA only, the CPU computes in fp32, with deterministic algorithms: the same
seed and settings give the same weights, bit for bit. A checkpoint is written atomically after
every epoch (model, optimizer, scheduler, RNG, history, best epoch so far, and a fingerprint
of settings, patients, cubes and seed); a run finds the newest checkpoint of the same
fingerprint and resumes from it, ending with the weights an uninterrupted run has (on CPU,
bit for bit). Every random choice of an epoch derives from (seed, epoch), never from state
that a kill would lose.

The checkpoint helpers are radpath.nn.training's, shared with radpath.pathology.contrastive (which
cannot be imported here: it pulls h5py, torchvision and openslide, which envs/deep.yaml does
not have).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from radpath.deep.cohort import (
    FIT,
    HELDOUT,
    INNER,
    LEFT_OUT,
    SYNTHETIC,
    VALIDATION,
)
from radpath.deep.networks import (
    MEMBER_FORMAT,
    build_network,
    check_state_fits,
    network_entry,
)
from radpath.inputs.configuration import DEEP_CT_CONFIG_ONLY_KEYS
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
from radpath.survival.metrics import harrell_c

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "radpath-deep-ct-checkpoint/1"
MIN_LR_FRACTION = 0.01  # the cosine schedule ends at 1% of the learning rate
EVAL_BATCH_SIZE = 32

# ---------------------------------------------------------------------------- settings

DEFAULTS: dict = {
    "networks": ["resnet18"],
    "width": 64,
    "view": "channels",  # channels: all scales stacked | per_scale: a member per scale (EMV)
    "loss": "cox",  # cox | landmark
    "landmark_time": 12.0,
    "folds": 5,
    "inner_fraction": 0.2,
    "epochs": 40,
    "batch_size": 16,
    "learning_rate": 1e-3,
    "weight_decay": 1e-4,
    "augmentation": {
        "flip": True, "rotate90": True, "affine": True, "intensity": True, "elastic": False,
    },
    "precision": "bf16",  # autocast on CUDA; the CPU computes in fp32
}
# Keys of the config section deep_ct that are not training settings (ignored here).
CONFIG_ONLY_KEYS = DEEP_CT_CONFIG_ONLY_KEYS
# Settings that choose members or patients, not how one member trains (the fingerprint
# holds the member's network and patient IDs instead).
MEMBER_KEYS = ("networks", "view", "folds", "inner_fraction")
VIEWS = ("channels", "per_scale")
LOSSES = ("cox", "landmark")
PRECISIONS = ("fp32", "bf16", "fp16")


def training_settings(settings: Mapping | None = None) -> dict:
    """DEFAULTS updated with `settings` (the config section deep_ct may be passed whole:
    CONFIG_ONLY_KEYS are dropped), as plain JSON types; unknown keys or values raise."""
    settings = {k: v for k, v in dict(settings or {}).items() if k not in CONFIG_ONLY_KEYS}
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown deep_ct settings {unknown}: known are {sorted(DEFAULTS)}")
    augmentation = dict(DEFAULTS["augmentation"]) | dict(settings.pop("augmentation", None) or {})
    unknown = sorted(set(augmentation) - set(DEFAULTS["augmentation"]))
    if unknown:
        raise ValueError(f"unknown deep_ct augmentation {unknown}: known are "
                         f"{sorted(DEFAULTS['augmentation'])}")
    merged = copy.deepcopy(DEFAULTS) | settings
    merged["augmentation"] = {k: bool(v) for k, v in augmentation.items()}
    merged["networks"] = [str(n) for n in merged["networks"]]
    for name in merged["networks"]:
        network_entry(name)
    for key in ("width", "folds", "epochs", "batch_size"):
        merged[key] = int(merged[key])
    for key in ("landmark_time", "inner_fraction", "learning_rate", "weight_decay"):
        merged[key] = float(merged[key])
    for key, allowed in (("view", VIEWS), ("loss", LOSSES), ("precision", PRECISIONS)):
        if merged[key] not in allowed:
            raise ValueError(f"deep_ct.{key} {merged[key]!r}: one of {' | '.join(allowed)}")
    if merged["batch_size"] < 2 or merged["epochs"] < 1 or merged["width"] < 2:
        raise ValueError("deep_ct: batch_size must be >= 2, epochs >= 1 and width >= 2")
    if not 0 < merged["inner_fraction"] < 1:
        raise ValueError(f"deep_ct.inner_fraction must be in (0, 1), got "
                         f"{merged['inner_fraction']}")
    return json.loads(json.dumps(merged))  # plain types only: stored in weights_only files


def is_mask_channel(name: str) -> bool:
    """Whether a cube channel holds a mask ("mask", "mask@50mm"): no intensity jitter."""
    return str(name).split("@", 1)[0].lower() == "mask"


# ---------------------------------------------------------------------------- losses


def cox_partial_likelihood_loss(risk: torch.Tensor, time, event) -> torch.Tensor:
    """Negative log Cox partial likelihood of `risk` (linear predictor, higher = earlier
    event), Breslow's handling of ties (everyone with time >= t_i is at risk at t_i), the
    mean over events. A batch without events gives 0 (connected to the graph)."""
    risk = risk.reshape(-1)
    if risk.dtype not in (torch.float32, torch.float64):
        risk = risk.float()
    time = torch.as_tensor(np.asarray(time, dtype=np.float64) if not torch.is_tensor(time)
                           else time, device=risk.device).reshape(-1).to(torch.float64)
    event = torch.as_tensor(np.asarray(event) if not torch.is_tensor(event) else event,
                            device=risk.device).reshape(-1).bool()
    if not bool(event.any()):
        return risk.sum() * 0.0
    at_risk = time[None, :] >= time[:, None]  # row i: who is at risk at time_i
    masked = risk[None, :].expand(len(risk), -1).masked_fill(~at_risk, float("-inf"))
    log_denominator = torch.logsumexp(masked, dim=1)
    return -(risk - log_denominator)[event].mean()


def landmark_targets(time, event, landmark: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(targets float32, keep bool, n_left_out) of the landmark loss: an event at or before
    `landmark` is 1; follow-up beyond it (or censoring exactly at it: event-free through the
    landmark) is 0; censoring before the landmark is left out (keep False) and counted."""
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event).astype(bool)
    positive = event & (time <= landmark)
    negative = (time > landmark) | (~event & (time >= landmark))
    keep = positive | negative
    return positive.astype(np.float32), keep, int((~keep).sum())


def landmark_loss(risk: torch.Tensor, targets, keep) -> torch.Tensor:
    """Binary cross-entropy with logits on the kept patients; 0 (with grad) if none."""
    risk = risk.reshape(-1).float()
    keep = torch.as_tensor(keep, device=risk.device).reshape(-1).bool()
    targets = torch.as_tensor(targets, device=risk.device).reshape(-1).float()
    if not bool(keep.any()):
        return risk.sum() * 0.0
    return F.binary_cross_entropy_with_logits(risk[keep], targets[keep])


# ---------------------------------------------------------------------------- splits


def inner_split(patient_ids: Sequence[str], event: Sequence[int], fraction: float, seed: int
                ) -> tuple[list[str], list[str]]:
    """(fit IDs, inner IDs), both sorted: about `fraction` of the patients with and of those
    without an event go to the inner part (at least one event when there are two or more;
    never all of a group), seeded and independent of the input order."""
    if not 0 < fraction < 1:
        raise ValueError(f"inner fraction must be in (0, 1), got {fraction}")
    ids = np.asarray(patient_ids, dtype=str)
    events = np.asarray(event).astype(int)
    if len(set(ids)) != len(ids):
        raise ValueError("inner_split: patient IDs repeat")
    order = np.argsort(ids, kind="stable")
    ids, events = ids[order], events[order]
    rng = np.random.default_rng(derive_seed(seed, "inner_split"))
    inner: list[str] = []
    for group in (1, 0):
        members = ids[events == group]
        chosen = rng.permutation(len(members))
        k = int(round(fraction * len(members)))
        if group == 1 and k == 0 and len(members) >= 2:
            k = 1
        k = min(k, max(len(members) - 1, 0))
        inner += [str(members[i]) for i in chosen[:k]]
    if not inner:
        raise ValueError(f"inner_split: {len(ids)} patients ({int(events.sum())} events) are "
                         f"too few for an inner part of {fraction:g}")
    inner_set = set(inner)
    return [str(i) for i in ids if i not in inner_set], sorted(inner)


# ---------------------------------------------------------------------------- augmentation

# Fixed slots of the augmentation's transforms: each gets its own seed from (seed, epoch,
# slot), so turning one augmentation off does not change the others' draws.
_SLOTS = {
    "flip0": 0, "flip1": 1, "flip2": 2, "rot01": 3, "rot02": 4, "rot12": 5, "affine": 6,
    "elastic": 7, "scale": 8, "shift": 9,
}


@contextlib.contextmanager
def _plain_tensors() -> Iterator[None]:
    """MONAI transforms return plain torch tensors inside (no MetaTensor bookkeeping)."""
    from monai.data import get_track_meta, set_track_meta

    previous = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(previous)


class CubeAugmentation:
    """Per-sample MONAI augmentation of cube batches on their device.

    Spatial (same transform for every channel of a sample, masks included): RandFlip on each
    axis (p 0.5), RandRotate90 in each plane (p 0.5, 1-3 quarter turns), RandAffine (p 0.5,
    rotations up to 10 degrees per axis, scaling +-10%, border padding, bilinear), optional
    Rand3DElastic (p 0.3, displacements of 1-4 voxels). Intensity, on non-mask channels only
    (one draw per sample for all of them): RandScaleIntensity (p 0.5, x(1 +- 0.1)) and
    RandShiftIntensity (p 0.5, +- 0.05: 70 HU of the default window). `for_epoch(seed,
    epoch, device)` gives the epoch's augmenter; its random draws depend on (seed, epoch) and
    the order of the samples only.
    """

    def __init__(self, augmentation: Mapping[str, bool], channels: Sequence[str]):
        self.options = {k: bool(augmentation.get(k, False)) for k in DEFAULTS["augmentation"]}
        self.image_channels = [i for i, name in enumerate(channels) if not is_mask_channel(name)]
        self.n_channels = len(channels)

    @property
    def active(self) -> bool:
        return any(self.options.values())

    def for_epoch(self, seed: int, epoch: int, device: torch.device | str = "cpu"
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
        from monai.transforms import (
            Rand3DElastic,
            RandAffine,
            RandFlip,
            RandRotate90,
            RandScaleIntensity,
            RandShiftIntensity,
        )

        device = torch.device(device)
        spatial, intensity = [], []
        options = self.options
        if options["flip"]:
            spatial += [("flip0", RandFlip(prob=0.5, spatial_axis=0)),
                        ("flip1", RandFlip(prob=0.5, spatial_axis=1)),
                        ("flip2", RandFlip(prob=0.5, spatial_axis=2))]
        if options["rotate90"]:
            spatial += [(f"rot{a}{b}", RandRotate90(prob=0.5, max_k=3, spatial_axes=(a, b)))
                        for a, b in ((0, 1), (0, 2), (1, 2))]
        if options["affine"]:
            spatial.append(("affine", RandAffine(
                prob=0.5, rotate_range=(math.radians(10),) * 3, scale_range=(0.1,) * 3,
                mode="bilinear", padding_mode="border", device=device,
            )))
        if options["elastic"]:
            spatial.append(("elastic", Rand3DElastic(
                sigma_range=(3.0, 5.0), magnitude_range=(60.0, 120.0), prob=0.3,
                mode="bilinear", padding_mode="border", device=device,
            )))
        if options["intensity"] and self.image_channels:
            intensity += [("scale", RandScaleIntensity(factors=0.1, prob=0.5)),
                          ("shift", RandShiftIntensity(offsets=0.05, prob=0.5))]
        for slot, transform in spatial + intensity:
            transform.set_random_state(seed=derive_seed(seed, "augment", epoch, _SLOTS[slot]))
        image = list(self.image_channels)
        n_channels = self.n_channels

        def augment(batch: torch.Tensor) -> torch.Tensor:
            if batch.ndim != 5 or batch.shape[1] != n_channels:
                raise ValueError(f"augmentation: expected (B, {n_channels}, G, G, G), got "
                                 f"{tuple(batch.shape)}")
            out = []
            with _plain_tensors():
                for sample in batch.float():
                    x = sample
                    for _, transform in spatial:
                        x = torch.as_tensor(transform(x))
                    if intensity:
                        x = x.clone()
                        part = x[image]
                        for _, transform in intensity:
                            part = torch.as_tensor(transform(part))
                        x[image] = part.to(x.dtype)
                    out.append(x.to(batch.device, torch.float32))
            return torch.stack(out).contiguous()

        return augment


# ---------------------------------------------------------------------------- training


@dataclass
class TrainedMember:
    """One trained network (fold member). state_dict: the chosen epoch's weights (CPU);
    history: epoch, train_loss, inner_loss, inner_cindex, learning_rate, seconds, best;
    mean/sd: the standardisation of its raw outputs on the fit patients; fit_ids/inner_ids:
    whom it was trained / early-stopped on; n_landmark_left_out: fit patients censored
    before the landmark (no loss term; 0 for the Cox loss)."""

    network: str
    width: int
    channels: list[str]
    settings: dict
    seed: int
    state_dict: dict[str, torch.Tensor]
    history: pd.DataFrame
    best_epoch: int
    mean: float
    sd: float
    fit_ids: list[str]
    inner_ids: list[str]
    fingerprint: str = ""
    resumed_from: int = 0
    landmark_left_out_ids: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        return len(self.channels)

    @property
    def target_layer(self) -> str:
        return network_entry(self.network).target_layer

    def model(self, device: str | torch.device | None = None) -> nn.Module:
        """The network with the chosen weights, in eval mode."""
        net = build_network(self.network, self.in_channels, self.width, seed=0)
        net.load_state_dict(self.state_dict, strict=True)
        return net.to(resolve_device(device)).eval()

    def standardise(self, raw: np.ndarray) -> np.ndarray:
        return (np.asarray(raw, dtype=np.float64) - self.mean) / self.sd


def make_optimizer(model: nn.Module, settings: Mapping
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over all parameters of `model` (the network that is trained) and the cosine
    schedule stepped once per epoch: learning_rate -> MIN_LR_FRACTION of it over epochs."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings["learning_rate"], weight_decay=settings["weight_decay"]
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=settings["epochs"],
        eta_min=settings["learning_rate"] * MIN_LR_FRACTION,
    )
    return optimizer, scheduler


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of one epoch's shuffle, from (seed, epoch) only."""
    return torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch))


def epoch_batches(indices: np.ndarray, batch_size: int, generator: torch.Generator
                  ) -> list[np.ndarray]:
    """A shuffle of `indices` cut into batches; a last batch of one joins the one before
    (BatchNorm and the Cox loss need two)."""
    order = np.asarray(indices)[torch.randperm(len(indices), generator=generator).numpy()]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:
        last = batches.pop()
        batches[-1] = np.concatenate([batches[-1], last])
    return batches


def cubes_digest(cubes: np.ndarray, rows: np.ndarray) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(np.ascontiguousarray(cubes[int(row)]).tobytes())
    return digest.hexdigest()


def training_fingerprint(settings: Mapping, network: str, channels: Sequence[str], seed: int,
                         fit_ids: Sequence[str], inner_ids: Sequence[str], data_digest: str,
                         init_checksum: str) -> str:
    """What the trained weights depend on: the training settings, network, channels, seed,
    the fit and inner patients (IDs, cubes, outcomes) and the initial weights."""
    content = {
        "settings": {k: v for k, v in settings.items() if k not in MEMBER_KEYS},
        "network": network,
        "channels": list(channels),
        "seed": int(seed),
        "fit_ids": list(fit_ids),
        "inner_ids": list(inner_ids),
        "data": data_digest,
        "init": init_checksum,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _is_better(cindex: float, loss: float, best: Mapping | None) -> bool:
    """Higher inner C; equal C: lower inner loss; equal both: the earlier epoch (kept)."""
    if best is None:
        return True
    c = cindex if math.isfinite(cindex) else -math.inf
    best_c = best["inner_cindex"] if math.isfinite(best["inner_cindex"]) else -math.inf
    if c != best_c:
        return c > best_c
    loss = loss if math.isfinite(loss) else math.inf
    best_loss = best["inner_loss"] if math.isfinite(best["inner_loss"]) else math.inf
    return loss < best_loss


def _as_rows(name: str, rows, n: int) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if len(rows) == 0:
        raise ValueError(f"train_member: {name} is empty")
    if rows.min() < 0 or rows.max() >= n or len(np.unique(rows)) != len(rows):
        raise ValueError(f"train_member: {name} must be distinct rows in 0..{n - 1}")
    return rows


def train_member(
    cubes: np.ndarray,
    time,
    event,
    fit_idx,
    inner_idx,
    settings: Mapping,
    seed: int,
    *,
    network: str,
    channels: Sequence[str],
    patient_ids: Sequence[str] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    init_state: Mapping[str, torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    progress: Callable[[dict], None] | None = None,
) -> TrainedMember:
    """Train `network` on the rows `fit_idx` of `cubes` (N, C, G, G, G) and keep the epoch
    best on the rows `inner_idx` (Harrell's C, then inner loss, then earlier epoch).

    `time`/`event` (N,) are read at fit and inner rows only; `patient_ids` (N,) name the rows
    (default: row numbers) in the fingerprint and in fit_ids/inner_ids. `init_state` starts
    from given weights (loaded strictly). With `checkpoint_dir`, every epoch is checkpointed
    and a run resumes from the newest checkpoint with the same fingerprint. `progress` gets
    every epoch's history row. SIGTERM (without another handler) raises SystemExit.
    """
    settings = training_settings(settings)
    device = resolve_device(device)
    cubes_shape = tuple(np.shape(cubes))
    if len(cubes_shape) != 5 or cubes_shape[1] != len(channels):
        raise ValueError(f"cubes must be (N, {len(channels)}, G, G, G) for channels "
                         f"{list(channels)}, got {cubes_shape}")
    n = cubes_shape[0]
    fit_idx, inner_idx = _as_rows("fit_idx", fit_idx, n), _as_rows("inner_idx", inner_idx, n)
    if set(fit_idx.tolist()) & set(inner_idx.tolist()):
        raise ValueError("train_member: fit and inner rows overlap")
    ids = [str(i) for i in (patient_ids if patient_ids is not None else range(n))]
    if len(ids) != n:
        raise ValueError(f"train_member: {len(ids)} patient IDs for {n} cubes")
    time = np.asarray(time, dtype=np.float64).reshape(-1)
    event = np.asarray(event, dtype=np.float64).reshape(-1)
    used = np.concatenate([fit_idx, inner_idx])
    if len(time) != n or len(event) != n:
        raise ValueError(f"train_member: time and event need {n} values")
    if not (np.isfinite(time[used]).all() and np.isin(event[used], (0, 1)).all()):
        raise ValueError("train_member: fit and inner patients need finite times and 0/1 events")
    event = event.astype(np.int64)
    if event[fit_idx].sum() == 0:
        raise ValueError("train_member: no event among the fit patients")
    fit_ids, inner_ids = [ids[i] for i in fit_idx], [ids[i] for i in inner_idx]
    targets, keep, _ = landmark_targets(time, event, settings["landmark_time"])
    landmark_left_out = ([ids[i] for i in fit_idx if not keep[i]]
                         if settings["loss"] == "landmark" else [])

    model = build_network(network, len(channels), settings["width"],
                          seed=derive_seed(seed, "init", network))
    if init_state is not None:
        check_state_fits(model, init_state, "init_state")
        model.load_state_dict(dict(init_state), strict=True)
    init_checksum = state_checksum(init_state) if init_state is not None else ""
    model = model.to(device)
    optimizer, scheduler = make_optimizer(model, settings)
    dtype = autocast_dtype(settings["precision"], device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    digest = hashlib.sha256(
        (cubes_digest(cubes, used) + json.dumps([time[used].tolist(), event[used].tolist()])
         ).encode()
    ).hexdigest()
    fingerprint = training_fingerprint(settings, network, channels, seed, fit_ids, inner_ids,
                                       digest, init_checksum)
    history: list[dict] = []
    best: dict | None = None
    resumed_from = 0
    if checkpoint_dir is not None:
        remove_partial_checkpoints(checkpoint_dir)
        found = find_resumable_checkpoint(
            checkpoint_dir, fingerprint, settings["epochs"], checkpoint_format=CHECKPOINT_FORMAT,
            logger=log, kind="deep CT",
            other_inputs="other settings, patients, cubes, seed or initial weights: not "
            "resumed, training starts over (it will be removed)",
            too_many_epochs="does not fit %d epochs, ignored",
        )
        if found is not None:
            checkpoint = found[1]
            del found
            resumed_from = int(checkpoint["epoch"])
            model.load_state_dict(checkpoint["model"], strict=True)
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            scaler.load_state_dict(checkpoint["scaler"])
            _set_rng_state(checkpoint["rng"], device)
            history = [dict(row) for row in checkpoint["history"]]
            best = dict(checkpoint["best"])
            log.info("deep CT %s: resuming after epoch %d in %s", network, resumed_from,
                     checkpoint_dir)
            del checkpoint

    loss_kind = settings["loss"]
    time_t = torch.as_tensor(time, device=device)
    event_t = torch.as_tensor(event, device=device)
    targets_t = torch.as_tensor(targets, device=device)
    keep_t = torch.as_tensor(keep, device=device)

    def batch_loss(output: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        index = torch.as_tensor(rows, device=device)
        if loss_kind == "cox":
            return cox_partial_likelihood_loss(output, time_t[index], event_t[index])
        return landmark_loss(output, targets_t[index], keep_t[index])

    augment = CubeAugmentation(settings["augmentation"], channels)
    log.info(
        "deep CT %s (width %d, %d channels): %d fit / %d inner patients, %s loss, epochs "
        "%d..%d on %s (%s)", network, settings["width"], len(channels), len(fit_idx),
        len(inner_idx), loss_kind, resumed_from + 1, settings["epochs"], device,
        str(dtype).removeprefix("torch."),
    )
    with deterministic(device), exit_on_sigterm():
        for epoch in range(resumed_from + 1, settings["epochs"] + 1):
            start = perf_counter()
            learning_rate = float(optimizer.param_groups[0]["lr"])
            train_loss = _train_epoch(
                model, cubes, fit_idx, settings, augment, optimizer, scaler, batch_loss,
                seed, epoch, device, dtype,
            )
            scheduler.step()
            inner_raw = _outputs(model, cubes, inner_idx, device)
            with torch.no_grad():
                inner_loss = float(batch_loss(torch.as_tensor(inner_raw, device=device),
                                              inner_idx))
            inner_c = harrell_c(time[inner_idx], event[inner_idx], inner_raw)
            row = {
                "epoch": epoch, "train_loss": train_loss, "inner_loss": inner_loss,
                "inner_cindex": inner_c, "learning_rate": learning_rate,
                "seconds": perf_counter() - start,
            }
            history.append(row)
            if _is_better(inner_c, inner_loss, best):
                best = {"epoch": epoch, "inner_cindex": inner_c, "inner_loss": inner_loss,
                        "state": cpu_state(model)}
            if checkpoint_dir is not None:
                write_checkpoint(checkpoint_dir, epoch, {
                    "format": CHECKPOINT_FORMAT,
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "model": cpu_state(model),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": _rng_state(device),
                    "history": history,
                    "best": best,
                })
            log.info(
                "deep CT %s epoch %d/%d: train loss %.4f, inner loss %.4f, inner C %.3f, "
                "lr %.2e (best epoch %d)", network, epoch, settings["epochs"], train_loss,
                inner_loss, inner_c, learning_rate, best["epoch"],
            )
            if progress is not None:
                progress(dict(row))

        model.load_state_dict(best["state"], strict=True)
        fit_raw = _outputs(model, cubes, fit_idx, device)
    mean = float(np.mean(fit_raw))
    sd = float(np.std(fit_raw, ddof=1)) if len(fit_raw) > 1 else 0.0
    if not (math.isfinite(sd) and sd > 1e-12):
        log.warning("deep CT %s: constant outputs on the fit patients; SD set to 1", network)
        sd = 1.0
    frame = pd.DataFrame(history, columns=["epoch", "train_loss", "inner_loss", "inner_cindex",
                                           "learning_rate", "seconds"])
    frame["best"] = frame["epoch"] == best["epoch"]
    return TrainedMember(
        network=network, width=settings["width"], channels=[str(c) for c in channels],
        settings=settings, seed=int(seed), state_dict=best["state"], history=frame,
        best_epoch=int(best["epoch"]), mean=mean, sd=sd, fit_ids=fit_ids, inner_ids=inner_ids,
        fingerprint=fingerprint, resumed_from=resumed_from,
        landmark_left_out_ids=landmark_left_out,
    )


def _train_epoch(model, cubes, fit_idx, settings, augment, optimizer, scaler, batch_loss,
                 seed, epoch, device, dtype) -> float:
    """One pass over a (seed, epoch)-seeded shuffle of the fit rows; the mean batch loss."""
    generator = epoch_generator(seed, epoch)
    batches = epoch_batches(fit_idx, settings["batch_size"], generator)
    epoch_augment = augment.for_epoch(seed, epoch, device) if augment.active else None
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    total, seen = 0.0, 0
    model.train()
    # The global RNG is seeded too, for any layer that draws from it (dropout).
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(derive_seed(seed, "global", epoch))
        for rows in batches:
            x = torch.from_numpy(np.asarray(cubes[rows])).to(device).float()
            if epoch_augment is not None:
                x = epoch_augment(x)
            with autocast:
                output = model(x)
            loss = batch_loss(output.float().reshape(-1), rows)
            backward_step(loss, optimizer, scaler)
            total += float(loss.detach()) * len(rows)
            seen += len(rows)
    model.eval()
    return total / max(seen, 1)


def _outputs(model: nn.Module, cubes: np.ndarray, rows: np.ndarray, device: torch.device,
             batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    """Raw outputs (float64) of `model` at `rows`: eval mode, fp32, no grad."""
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            x = torch.from_numpy(np.asarray(cubes[chunk])).to(device).float()
            out.append(model(x).float().reshape(-1).cpu())
    model.train(was_training)
    return torch.cat(out).double().numpy() if out else np.zeros(0)


# ---------------------------------------------------------------------------- scoring


def score(model: nn.Module | TrainedMember, cubes: np.ndarray, *,
          batch_size: int = EVAL_BATCH_SIZE, device: str | torch.device | None = None
          ) -> np.ndarray:
    """Raw outputs (N,) float64 of a network or member on cubes (N, C, G, G, G): eval mode,
    fp32, no augmentation, no grad, in batches."""
    device = resolve_device(device)
    net = model.model(device) if isinstance(model, TrainedMember) else model.to(device)
    with deterministic(device):
        return _outputs(net, cubes, np.arange(len(cubes)), device, batch_size)


def standardised_score(member: TrainedMember, cubes: np.ndarray, **kwargs) -> np.ndarray:
    """(raw - mean) / sd with the member's own fit-patient mean and SD."""
    return member.standardise(score(member, cubes, **kwargs))


# ---------------------------------------------------------------------------- fold job


@dataclass
class FoldResult:
    """A fold member and its tables (the rule writes them): scores (patient_id, member,
    fold, role, raw, score), usage (patient_id, member, fold, role: fit / inner / left_out /
    heldout / validation) and history (member, fold, then TrainedMember.history)."""

    trained: TrainedMember
    scores: pd.DataFrame
    usage: pd.DataFrame
    history: pd.DataFrame


def train_fold(
    cubes: np.ndarray,
    patient_ids: Sequence[str],
    time,
    event,
    folds: Mapping[str, int],
    fold: int,
    settings: Mapping,
    seed: int,
    *,
    member: str,
    network: str,
    channels: Sequence[str],
    validation_ids: Sequence[str] = (),
    checkpoint_dir: str | os.PathLike | None = None,
    init_state: Mapping[str, torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    progress: Callable[[dict], None] | None = None,
    seed_name: str | None = None,
    synthetic_cubes: Mapping[str, np.ndarray] | None = None,
) -> FoldResult:
    """Train the member of fold `fold` and score its held-out fold and the validation
    patients.

    `cubes` (N, C, G, G, G) row i is patient_ids[i]; `folds` {patient: fold} (1..k for
    training patients, 0 or absent otherwise, as radpath.deep.cohort.fold_table); the
    training patients of the other folds are split by `inner_split` (seeded by seed and
    fold: every network of a fold uses the same split) into fit and inner parts. The
    member's seed derives from (seed, member, fold). Validation patients must have no fold.
    Under the landmark loss, fit patients censored before the landmark have role left_out.
    `seed_name` (default `member`) names the member in its seed: a random-start twin of a
    pretrained member draws the same batches and augmentations as the member it twins.
    `synthetic_cubes` {training patient: (S, C, G, G, G)}: synthetic CTs made from that
    patient's layout; they join the fit part (with the patient's time and event) of the
    folds where the patient is fitted on, and nothing else (usage role `synthetic`, IDs
    `<patient>~synthetic<k>`).
    """
    settings = training_settings(settings)
    ids = [str(p) for p in patient_ids]
    row_of = {pid: i for i, pid in enumerate(ids)}
    if len(row_of) != len(ids):
        raise ValueError("train_fold: patient IDs repeat")
    validation = [str(p) for p in validation_ids]
    missing = [p for p in validation if p not in row_of]
    if missing:
        raise ValueError(f"train_fold: validation patients without cubes: {missing[:5]}")
    leaked = [p for p in validation if int(folds.get(p, 0)) > 0]
    if leaked:
        raise ValueError(f"train_fold: validation patients in training folds: {leaked[:5]}")
    training = [p for p in ids if int(folds.get(p, 0)) > 0]
    heldout = [p for p in training if int(folds[p]) == int(fold)]
    rest = [p for p in training if int(folds[p]) != int(fold)]
    if not heldout or not rest:
        raise ValueError(f"train_fold: fold {fold} holds {len(heldout)} of {len(training)} "
                         "training patients")
    event = np.asarray(event)
    fit_ids, inner_ids = inner_split(rest, [event[row_of[p]] for p in rest],
                                     settings["inner_fraction"], derive_seed(seed, "fold", fold))
    fit_rows = [row_of[p] for p in fit_ids]
    train_cubes, train_ids = cubes, ids
    train_time, train_event = np.asarray(time, float), event
    synthetic_ids: list[str] = []
    sources: list[str] = []
    extra = [(p, synthetic_cubes[p]) for p in fit_ids if synthetic_cubes and p in synthetic_cubes]
    if extra:
        stacked = np.concatenate([np.asarray(c, dtype=np.asarray(cubes).dtype)
                                  for _, c in extra])
        sources = [p for p, c in extra for _ in range(len(c))]
        synthetic_ids = [f"{p}~synthetic{k + 1}" for p, c in extra for k in range(len(c))]
        train_cubes = np.concatenate([np.asarray(cubes), stacked])
        train_ids = ids + synthetic_ids
        train_time = np.concatenate([train_time, [train_time[row_of[p]] for p in sources]])
        train_event = np.concatenate([event, [event[row_of[p]] for p in sources]])
        fit_rows += list(range(len(ids), len(train_ids)))
    trained = train_member(
        train_cubes, train_time, train_event, fit_rows, [row_of[p] for p in inner_ids],
        settings, derive_seed(seed, "member", seed_name or member, fold), network=network,
        channels=channels, patient_ids=train_ids, checkpoint_dir=checkpoint_dir,
        init_state=init_state, device=device, progress=progress,
    )
    trained.meta.update({"member": member, "fold": int(fold)})
    scored = heldout + validation
    raw = score(trained, np.asarray(cubes)[[row_of[p] for p in scored]] if scored else
                np.zeros((0, *np.shape(cubes)[1:]), np.float32), device=device)
    scores = pd.DataFrame({
        "patient_id": scored, "member": member, "fold": int(fold),
        "role": [HELDOUT] * len(heldout) + [VALIDATION] * len(validation),
        "raw": raw, "score": trained.standardise(raw),
    })
    left_out = set(trained.landmark_left_out_ids)
    synthetic = set(synthetic_ids)
    roles = ([(p, SYNTHETIC if p in synthetic else LEFT_OUT if p in left_out else FIT)
              for p in trained.fit_ids]
             + [(p, INNER) for p in trained.inner_ids]
             + [(p, HELDOUT) for p in heldout] + [(p, VALIDATION) for p in validation])
    usage = pd.DataFrame(roles, columns=["patient_id", "role"])
    source_of = dict(zip(synthetic_ids, sources, strict=True)) if synthetic_ids else {}
    usage.insert(1, "member", member)
    usage.insert(2, "fold", int(fold))
    usage["source"] = [source_of.get(p, p) for p in usage["patient_id"]]
    history = trained.history.copy()
    history.insert(0, "member", member)
    history.insert(1, "fold", int(fold))
    return FoldResult(trained, scores, usage, history)


# ---------------------------------------------------------------------------- member files


def save_member(path: str | os.PathLike, trained: TrainedMember, meta: Mapping | None = None
                ) -> Path:
    """Write a member as one .pt file (tensors and plain types only, for
    torch.load(weights_only=True)), atomically; `meta` (plain types) is stored with it."""
    payload = {
        "format": MEMBER_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in trained.state_dict.items()},
        "network": trained.network,
        "width": int(trained.width),
        "in_channels": int(trained.in_channels),
        "channels": list(trained.channels),
        "settings": json.loads(json.dumps(trained.settings)),
        "seed": int(trained.seed),
        "mean": float(trained.mean),
        "sd": float(trained.sd),
        "best_epoch": int(trained.best_epoch),
        "fit_ids": list(trained.fit_ids),
        "inner_ids": list(trained.inner_ids),
        "landmark_left_out_ids": list(trained.landmark_left_out_ids),
        "fingerprint": trained.fingerprint,
        "history": json.loads(trained.history.to_json(orient="records")),
        "meta": json.loads(json.dumps(dict(trained.meta) | dict(meta or {}))),
    }
    return save_atomically(payload, path)


def load_member(path: str | os.PathLike) -> TrainedMember:
    """A member written by `save_member` (torch.load with weights_only=True)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != MEMBER_FORMAT:
        raise ValueError(f"{path} is not a deep CT member file ({MEMBER_FORMAT})")
    history = pd.DataFrame(payload["history"])
    member = TrainedMember(
        network=payload["network"], width=int(payload["width"]),
        channels=list(payload["channels"]), settings=dict(payload["settings"]),
        seed=int(payload["seed"]), state_dict=dict(payload["state_dict"]), history=history,
        best_epoch=int(payload["best_epoch"]), mean=float(payload["mean"]),
        sd=float(payload["sd"]), fit_ids=list(payload["fit_ids"]),
        inner_ids=list(payload["inner_ids"]), fingerprint=payload["fingerprint"],
        landmark_left_out_ids=list(payload["landmark_left_out_ids"]),
        meta=dict(payload["meta"]),
    )
    if member.in_channels != int(payload["in_channels"]):
        raise ValueError(f"{path}: {payload['in_channels']} input channels but channel names "
                         f"{member.channels}")
    check_state_fits(build_network(member.network, member.in_channels, member.width, seed=0),
                     member.state_dict, f"member file {path}")
    return member
