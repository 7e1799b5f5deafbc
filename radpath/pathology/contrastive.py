"""PathoSig tile clustering: contrastive clustering (Li et al. 2021, AAAI, "Contrastive
Clustering") of H&E tiles, trained once on a tile sample and then used to assign every
tile of every slide to a cluster.

A backbone from radpath.pathology.encoders (frozen by default; optionally its last stage trainable)
feeds two heads: an instance head whose L2-normalised projections of two augmented views
of a tile are pulled together (NT-Xent over tiles) and a cluster head whose soft
assignments are contrasted per cluster (NT-Xent over the columns of the batch's
probability matrix) with an entropy term that keeps every cluster in use.

Training checkpoints after every epoch and resumes bit-identically after a kill: each
epoch's shuffle and augmentations come from a generator seeded by (seed, epoch), never
from state that a restart would lose. Scoring (`assign_slide`) is separate: it rebuilds
the backbone from the model file's settings and refuses weights that changed since.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from radpath.inputs.io import atomic_path
from radpath.nn import training
from radpath.pathology.embedding import (
    PRECISIONS,
    _dtype_name,
    autocast_dtype,
    check_any_read,
    cpu_budget,
    run_shard,
    slide_job_summary,
    slide_tile_batches,
)
from radpath.pathology.encoders import (
    RANDOM,
    Encoder,
    EncoderError,
    build_encoder,
    sha256_file,
)
from radpath.pathology.feature_files import attrs_dict
from radpath.pathology.wsi import (
    SlideError,
    check_tile_attrs,
    open_slide,
    read_coords_h5,
)

log = logging.getLogger(__name__)

CLUSTERING_DEFAULTS: dict = {
    "backbone": "resnet50",
    "weights": RANDOM,
    "timm_kwargs": {},
    "ignore_keys": [],
    "train_last_block": False,
    "n_clusters": 50,
    "instance_dim": 128,
    "instance_temperature": 0.5,
    "cluster_temperature": 1.0,
    "entropy_weight": 1.0,
    "epochs": 20,
    "batch_size": 128,
    "learning_rate": 3e-4,
    "weight_decay": 0.0,
    "input_size": 224,
    "precision": "bf16",
    "num_workers": 0,
}
# Settings that do not change the trained weights: a run may resume with other values
# (more epochs extend a finished run; workers only read tiles).
RESUMABLE_SETTINGS = ("epochs", "num_workers")
MODEL_FORMAT = "radpath-contrastive-clustering/1"
CHECKPOINT_FORMAT = "radpath-contrastive-checkpoint/1"
DIGEST_TILES = 64  # tiles hashed into the training fingerprint
BN_CALIBRATION_TILES = 8192  # plain tiles that re-estimate BatchNorm statistics after training

# Ruifrok & Johnston's H&E-DAB stain vectors (optical density per RGB channel), exactly as
# skimage.color.rgb_from_hed; optical density is log(rgb) / log(1e-6) as in skimage.
RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64
)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
MIN_RGB = 1e-6
LOG_MIN_RGB = math.log(MIN_RGB)


# ---------------------------------------------------------------------------- settings


def clustering_settings(settings: Mapping | None = None) -> dict:
    """CLUSTERING_DEFAULTS updated with `settings` as plain JSON types; unknown keys raise."""
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(CLUSTERING_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown clustering settings {unknown}: known are {sorted(CLUSTERING_DEFAULTS)}"
        )
    merged = copy.deepcopy(CLUSTERING_DEFAULTS) | settings
    merged["weights"] = str(merged["weights"])
    merged["timm_kwargs"] = dict(merged["timm_kwargs"] or {})
    merged["ignore_keys"] = [str(key) for key in merged["ignore_keys"] or ()]
    for key in ("n_clusters", "instance_dim", "epochs", "batch_size", "input_size", "num_workers"):
        merged[key] = int(merged[key])
    for key in (
        "instance_temperature", "cluster_temperature", "entropy_weight", "learning_rate",
        "weight_decay",
    ):
        merged[key] = float(merged[key])
    merged["train_last_block"] = bool(merged["train_last_block"])
    if merged["precision"] not in PRECISIONS:
        raise ValueError(f"unknown precision {merged['precision']!r}: {' | '.join(PRECISIONS)}")
    if merged["n_clusters"] < 2:
        raise ValueError(f"n_clusters must be at least 2, got {merged['n_clusters']}")
    if merged["batch_size"] < 2:
        raise ValueError(
            f"batch_size must be at least 2 (contrastive pairs), got {merged['batch_size']}"
        )
    return json.loads(json.dumps(merged))  # plain types only: stored in weights_only files


def build_backbone(settings: Mapping, seed: int = 0) -> Encoder:
    """The settings' backbone encoder ("random" weights are seeded by `seed`)."""
    return build_encoder(
        settings["backbone"],
        settings["weights"],
        settings["timm_kwargs"],
        settings["ignore_keys"],
        seed,
    )


# ---------------------------------------------------------------------------- network


def last_block_names(backbone: nn.Module) -> tuple[str, ...]:
    """Submodule names of a backbone's last stage: a timm ResNet's last stage holding
    parameters (layer4; layer3 of the truncated resnet50_trunc), or a ViT's last block
    with its final norm(s)."""
    stages = [f"layer{i}" for i in (4, 3, 2, 1) if hasattr(backbone, f"layer{i}")]
    if len(stages) == 4:
        with_parameters = [
            name for name in stages if any(True for _ in backbone.get_submodule(name).parameters())
        ]
        if with_parameters:
            return (with_parameters[0],)
    blocks = getattr(backbone, "blocks", None)
    is_vit = hasattr(backbone, "patch_embed") and hasattr(backbone, "norm")
    if is_vit and isinstance(blocks, nn.Sequential | nn.ModuleList) and len(blocks) > 0:
        names = [f"blocks.{len(blocks) - 1}"]
        for norm in ("norm", "fc_norm"):
            module = getattr(backbone, norm, None)
            if isinstance(module, nn.Module) and any(True for _ in module.parameters()):
                names.append(norm)
        return tuple(names)
    raise ValueError(
        f"train_last_block: backbone {type(backbone).__name__} is neither a timm ResNet "
        "(layer1..layer4) nor a ViT (patch_embed, blocks, norm): its last block is unknown; set "
        "train_last_block to false"
    )


class ContrastiveClusteringNet(nn.Module):
    """Backbone + instance head (L2-normalised projection) + cluster head (softmax).

    The backbone is frozen (requires_grad False, always in eval mode, run under no_grad)
    unless `train_last_block`: then its last stage (`last_block_names`) trains and follows
    the net's train/eval mode (its BatchNorm statistics are part of the trained state).
    The frozen part builds no autograd graph either way, as none of its inputs need grads.
    """

    def __init__(
        self,
        encoder: Encoder,
        n_clusters: int,
        instance_dim: int = 128,
        train_last_block: bool = False,
    ):
        super().__init__()
        dim = int(encoder.dim)
        self.backbone = encoder.model
        self.encoder_name = encoder.name
        self.mean = tuple(float(v) for v in encoder.mean)
        self.std = tuple(float(v) for v in encoder.std)
        self.n_clusters = int(n_clusters)
        # Each head starts with a BatchNorm1d (not in Li et al., whose backbone trains): a
        # frozen backbone's features come in its own scale (a random ResNet's ~1e-2, far
        # apart from a ViT's), and unscaled they left the cluster head at uniform output
        # (purity 0.59 vs 0.90 on the demo's tissue patterns, frozen random ResNet50).
        self.instance_head = nn.Sequential(
            nn.BatchNorm1d(dim), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, int(instance_dim))
        )
        self.cluster_head = nn.Sequential(
            nn.BatchNorm1d(dim), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, self.n_clusters),
            nn.Softmax(dim=1),
        )
        self.backbone.requires_grad_(False)
        self.trainable_blocks = last_block_names(self.backbone) if train_last_block else ()
        for name in self.trainable_blocks:
            self.backbone.get_submodule(name).requires_grad_(True)
        self.train(False)

    def train(self, mode: bool = True) -> ContrastiveClusteringNet:
        super().train(mode)
        self.backbone.eval()
        for name in self.trainable_blocks:
            self.backbone.get_submodule(name).train(mode)
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.trainable_blocks:
            return self.backbone(x)
        with torch.no_grad():
            return self.backbone(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z: L2-normalised instance projections (B, instance_dim), p: cluster
        probabilities (B, n_clusters)), both float32."""
        h = self.features(x)
        z = F.normalize(self.instance_head(h).float(), dim=1)
        return z, self._probabilities(h)

    def cluster_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Soft cluster assignments (B, n_clusters), float32, without the instance head."""
        return self._probabilities(self.features(x))

    def _probabilities(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.cluster_head[:-1](h).float()  # softmax in fp32 under autocast
        return self.cluster_head[-1](logits)

    def trainable_keys(self) -> list[str]:
        """state_dict keys of the trained part: both heads and the trainable blocks."""
        prefixes = (
            "instance_head.",
            "cluster_head.",
            *(f"backbone.{name}." for name in self.trainable_blocks),
        )
        return [key for key in self.state_dict() if key.startswith(prefixes)]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the trained part's parameters and buffers."""
        keys = set(self.trainable_keys())
        return {
            key: value.detach().to("cpu", copy=True)
            for key, value in self.state_dict().items()
            if key in keys
        }

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load `trainable_state_dict` output; ValueError unless its keys are exactly ours."""
        expected = set(self.trainable_keys())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"trained state does not fit this network: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        self.load_state_dict(dict(state), strict=False)


def build_clustering_net(
    encoder: Encoder, settings: Mapping, seed: int
) -> ContrastiveClusteringNet:
    """The network with heads initialised from `seed` (the global RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ContrastiveClusteringNet(
            encoder,
            settings["n_clusters"],
            settings["instance_dim"],
            settings["train_last_block"],
        )


def module_checksum(module: nn.Module) -> str:
    """sha256 of a module's state (names, shapes and bytes): tells a random backbone
    rebuilt from its seed from the one a model was trained on."""
    return training.state_checksum(module.state_dict())


# ---------------------------------------------------------------------------- losses


def instance_contrastive_loss(
    z_a: torch.Tensor, z_b: torch.Tensor, temperature: float
) -> torch.Tensor:
    """NT-Xent (SimCLR) over the 2N rows of two (N, D) views, by cosine similarity.

    Row i of z_a and row i of z_b are positives; each sample's other 2N - 2 rows are its
    negatives. Mean over the 2N samples, as Li et al.'s InstanceLoss (sum / 2N).
    """
    n = z_a.shape[0]
    z = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)
    logits = (z @ z.T) / temperature
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pairs, float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, positives)


def cluster_usage_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the batch's cluster usage: column sums of p (N, K) over the total."""
    usage = p.float().sum(dim=0)
    usage = usage / usage.sum()
    return -(usage * usage.clamp_min(1e-12).log()).sum()


def cluster_contrastive_loss(
    p_a: torch.Tensor, p_b: torch.Tensor, temperature: float, entropy_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Li et al.'s cluster loss on two (N, K) probability matrices; returns (loss, parts).

    Column k of each matrix represents cluster k; NT-Xent (cosine similarity) over the 2K
    columns makes a cluster's two views agree and clusters differ. The entropy term
    entropy_weight * (2 log K - H(P_a) - H(P_b)), P = column sums / total, is Li et al.'s
    `ne_loss`: minus the entropies up to a constant, so zero for uniform cluster use and
    positive otherwise (it keeps all clusters in use). parts (detached): `contrastive`
    (the NT-Xent) and `entropy` (mean of H(P_a) and H(P_b), at most log K).
    """
    n_clusters = p_a.shape[1]
    contrastive = instance_contrastive_loss(p_a.float().T, p_b.float().T, temperature)
    entropy = cluster_usage_entropy(p_a) + cluster_usage_entropy(p_b)
    loss = contrastive + entropy_weight * (2 * math.log(n_clusters) - entropy)
    return loss, {"contrastive": contrastive.detach(), "entropy": entropy.detach() / 2}


# ---------------------------------------------------------------------------- augmentation


def rgb_to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] (B, 3, H, W) -> H, E, DAB stain densities (B, 3, H, W).

    skimage.color.rgb2hed without its clipping of negative densities, so that
    `hed_to_rgb` inverts it exactly.
    """
    density = torch.log(rgb.clamp_min(MIN_RGB)) / LOG_MIN_RGB
    matrix = HED_FROM_RGB.to(rgb.device, rgb.dtype)
    return torch.einsum("bchw,cs->bshw", density, matrix)


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """Stain densities (B, 3, H, W) -> RGB in [0, 1] (skimage.color.hed2rgb)."""
    matrix = RGB_FROM_HED.to(hed.device, hed.dtype)
    density = torch.einsum("bshw,sc->bchw", hed, matrix)
    return torch.exp(density * LOG_MIN_RGB).clamp(0.0, 1.0)


def _channel_params(values: Iterable[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(tuple(values), dtype=torch.float32, device=device).view(1, 3, 1, 1)


def resize_and_normalize(
    tiles: torch.Tensor,
    input_size: int,
    mean: Iterable[float],
    std: Iterable[float],
) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, S, S), resized (antialiased bilinear)
    to S = input_size when the tiles have another size; no augmentation."""
    x = tiles.permute(0, 3, 1, 2).float() / 255.0
    if tuple(x.shape[-2:]) != (input_size, input_size):
        x = F.interpolate(
            x, size=(input_size, input_size), mode="bilinear", antialias=True, align_corners=False
        )
    return (x - _channel_params(mean, x.device)) / _channel_params(std, x.device)


class TileAugmentation:
    """Two-view augmentation of H&E tiles, batched on the tiles' device.

    uint8 (B, H, W, 3) -> normalised float (B, 3, S, S): a random resized crop (area
    fraction in `crop_scale`, aspect ratio log-uniform in `crop_ratio`, as SimCLR and Li
    et al.) by roi_align, horizontal and vertical flips, 90-degree rotations, HED colour
    jitter (per tile and stain: density * U(1 - s, 1 + s) + U(-s, s), s = `hed_sigma`, the
    shift in natural-log optical density, as Tellez et al.'s "HED-light") and the encoder's
    normalisation. Every random number comes from the
    `generator` passed in, drawn on its device, so a seeded generator gives the same views
    on CPU and GPU tiles.
    """

    PARAMS = 13  # crop scale, ratio, x, y; hflip, vflip, rotation; 3 alphas; 3 betas

    def __init__(
        self,
        input_size: int,
        mean: Iterable[float],
        std: Iterable[float],
        crop_scale: tuple[float, float] = (0.2, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hed_sigma: float = 0.05,
    ):
        self.input_size = int(input_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.crop_ratio = (float(crop_ratio[0]), float(crop_ratio[1]))
        self.hed_sigma = float(hed_sigma)

    def __call__(self, tiles: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, height, width, _ = tiles.shape
        device = tiles.device
        u = torch.rand((batch, self.PARAMS), generator=generator, device=generator.device)
        u = u.to(device=device, dtype=torch.float32)
        x = tiles.permute(0, 3, 1, 2).float() / 255.0
        x = self._crop(x, u[:, 0:4], height, width)
        x = self._flip_and_rotate(x, u[:, 4:7])
        x = self._jitter_stains(x, u[:, 7:10], u[:, 10:13])
        return (x - _channel_params(self.mean, device)) / _channel_params(self.std, device)

    def _crop(self, x: torch.Tensor, u: torch.Tensor, height: int, width: int) -> torch.Tensor:
        low, high = self.crop_scale
        area = height * width * (low + (high - low) * u[:, 0])
        log_low, log_high = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        ratio = torch.exp(log_low + (log_high - log_low) * u[:, 1])
        crop_w = torch.sqrt(area * ratio).clamp(max=width)
        crop_h = torch.sqrt(area / ratio).clamp(max=height)
        x0 = u[:, 2] * (width - crop_w)
        y0 = u[:, 3] * (height - crop_h)
        index = torch.arange(x.shape[0], device=x.device, dtype=torch.float32)
        boxes = torch.stack([index, x0, y0, x0 + crop_w, y0 + crop_h], dim=1)
        # aligned=True: pixel i covers [i, i + 1), so the full box maps pixels onto pixels;
        # adaptive sampling averages ceil(crop / size) points per output pixel (antialiasing).
        return roi_align(
            x, boxes, output_size=self.input_size, spatial_scale=1.0, sampling_ratio=-1,
            aligned=True,
        )

    @staticmethod
    def _flip_and_rotate(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        def chosen(mask: torch.Tensor) -> torch.Tensor:
            return mask.view(-1, 1, 1, 1)

        quarter_turns = (u[:, 2] * 4).long().clamp(max=3)
        x = torch.where(chosen(u[:, 0] < 0.5), x.flip(-1), x)
        x = torch.where(chosen(u[:, 1] < 0.5), x.flip(-2), x)
        x = torch.where(chosen(quarter_turns % 2 == 1), x.rot90(1, dims=(-2, -1)), x)
        return torch.where(chosen(quarter_turns >= 2), x.rot90(2, dims=(-2, -1)), x)

    def _jitter_stains(
        self, x: torch.Tensor, u_alpha: torch.Tensor, u_beta: torch.Tensor
    ) -> torch.Tensor:
        if self.hed_sigma == 0:
            return x
        sigma = self.hed_sigma
        alpha = (1 - sigma + 2 * sigma * u_alpha).view(-1, 3, 1, 1)
        # beta is drawn in natural-log optical density and converted to skimage's stain
        # units (OD / ln 1e6): sigma 0.05 there would shift every pixel by up to 2x in
        # intensity, more than the colour differences between tissue types.
        beta = ((-sigma + 2 * sigma * u_beta) / -LOG_MIN_RGB).view(-1, 3, 1, 1)
        return hed_to_rgb(rgb_to_hed(x) * alpha + beta)


# ---------------------------------------------------------------------------- training


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of one epoch's shuffle and augmentations, from (seed, epoch) only."""
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


def tiles_digest(tiles, n_tiles: int) -> str:
    """sha256 of up to DIGEST_TILES evenly spaced tiles: a cheap check that a checkpoint
    was trained on the same tile sample."""
    indices = np.unique(np.linspace(0, n_tiles - 1, min(n_tiles, DIGEST_TILES)).astype(np.int64))
    return hashlib.sha256(np.ascontiguousarray(tiles[indices]).tobytes()).hexdigest()


def training_fingerprint(
    settings: Mapping, n_tiles: int, tile_shape: tuple, seed: int, provenance: Mapping,
    digest: str,
) -> str:
    """What the trained weights depend on: settings (but RESUMABLE_SETTINGS), the tile
    sample (count, shape, content digest), the seed and the backbone weights' sha256."""
    content = {
        "settings": {k: v for k, v in settings.items() if k not in RESUMABLE_SETTINGS},
        "n_tiles": int(n_tiles),
        "tile_shape": [int(v) for v in tile_shape],
        "tiles_sha256": digest,
        "seed": int(seed),
        "weights_sha256": provenance["weights_sha256"],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def read_tile_batch(tiles, indices: np.ndarray) -> torch.Tensor:
    """uint8 tiles at `indices`, read in increasing order (h5py fancy indexing needs it)."""
    return torch.from_numpy(np.ascontiguousarray(tiles[np.sort(indices)]))


def train_clustering(
    tiles,
    settings: Mapping,
    checkpoint_dir: str | os.PathLike,
    device: str | torch.device | None = None,
    seed: int = 0,
    threads: int | None = None,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Train contrastive clustering on `tiles` (uint8 (n, H, W, 3): numpy array or h5py
    Dataset), checkpointing to `checkpoint_dir` after every epoch.

    Resumes from the newest checkpoint of the same training (`training_fingerprint`); on
    CPU a resumed run ends with the same weights, bit for bit, as an uninterrupted one.
    `threads` sets torch's CPU threads (None leaves them); `progress` gets every epoch's
    history row. Returns model (the trained state, CPU tensors), history (one row per
    epoch: epoch, instance_loss, cluster_loss (with the entropy term), entropy (mean
    H(P), nats), loss, tiles_per_s, seconds, n_tiles), resumed_from (epoch, 0 for a fresh start),
    tiles_per_s (over the epochs run in this call; NaN if none), seed, provenance,
    backbone_checksum, fingerprint, n_tiles.
    """
    settings = clustering_settings(settings)
    device = training.resolve_device(device)
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    n_tiles = len(tiles)
    tile_shape = tuple(tiles.shape[1:])
    if len(tile_shape) != 3 or tile_shape[2] != 3 or np.dtype(tiles.dtype) != np.uint8:
        raise ValueError(
            f"tiles must be uint8 (n, H, W, 3), got {np.dtype(tiles.dtype)} {tuple(tiles.shape)}"
        )
    if n_tiles < 2:
        raise ValueError(f"contrastive clustering needs at least 2 tiles, got {n_tiles}")

    encoder = build_backbone(settings, seed)
    backbone_checksum = module_checksum(encoder.model) if not encoder.pretrained else ""
    net = build_clustering_net(encoder, settings, seed).to(device)
    net.backbone.to(memory_format=torch.channels_last)
    parameters = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(
        parameters, lr=settings["learning_rate"], weight_decay=settings["weight_decay"]
    )
    dtype = autocast_dtype(settings["precision"], device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    fingerprint = training_fingerprint(
        settings, n_tiles, tile_shape, seed, encoder.provenance, tiles_digest(tiles, n_tiles)
    )

    history: list[dict] = []
    resumed_from = 0
    training.remove_partial_checkpoints(checkpoint_dir)
    found = training.find_resumable_checkpoint(
        checkpoint_dir, fingerprint, settings["epochs"], checkpoint_format=CHECKPOINT_FORMAT,
        logger=log, mmap=True, kind="contrastive clustering",
        other_inputs="other settings, tiles, seed or backbone weights: ignored (it will be "
        "removed)",
        too_many_epochs="is past the %d epochs asked for: ignored (it will be removed)",
    )
    resume_path = found[0] if found is not None else None
    del found  # memory-mapped, only looked at: a checkpoint resumed from is read in full
    if resume_path is not None:
        checkpoint = torch.load(resume_path, map_location="cpu", weights_only=True)
        resumed_from = int(checkpoint["epoch"])
        net.load_trainable_state(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        history = [dict(row) for row in checkpoint["history"]]
        log.info("contrastive clustering: resuming from epoch %d (%s)", resumed_from, resume_path)
        del checkpoint
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size

    augment = TileAugmentation(settings["input_size"], encoder.mean, encoder.std)
    log.info(
        "contrastive clustering: %d tiles, %d clusters, %s backbone (%s, %s) on %s (%s), "
        "epochs %d..%d",
        n_tiles, settings["n_clusters"], encoder.name, settings["weights"],
        "last block trained" if net.trainable_blocks else "frozen", device,
        _dtype_name(dtype), resumed_from + 1, settings["epochs"],
    )
    run_tiles, run_seconds = 0, 0.0
    for epoch in range(resumed_from + 1, settings["epochs"] + 1):
        row = train_epoch(
            net, tiles, n_tiles, augment, optimizer, scaler, settings, epoch, seed, device, dtype
        )
        history.append(row)
        run_tiles += row["n_tiles"]
        run_seconds += row["seconds"]
        training.write_checkpoint(
            checkpoint_dir,
            epoch,
            {
                "format": CHECKPOINT_FORMAT,
                "fingerprint": fingerprint,
                "epoch": epoch,
                "model": net.trainable_state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "history": history,
            },
        )
        log.info(
            "contrastive clustering epoch %d/%d: loss %.4f (instance %.4f, cluster %.4f, "
            "entropy %.3f of %.3f), %.0f tiles/s",
            epoch, settings["epochs"], row["loss"], row["instance_loss"], row["cluster_loss"],
            row["entropy"], math.log(settings["n_clusters"]), row["tiles_per_s"],
        )
        if progress is not None:
            progress(dict(row))
    recalibrate_batchnorm(net, tiles, n_tiles, settings, seed, device, dtype)
    return {
        "model": net.trainable_state_dict(),
        "history": history,
        "resumed_from": resumed_from,
        "tiles_per_s": run_tiles / run_seconds if run_seconds > 0 else float("nan"),
        "seed": int(seed),
        "provenance": dict(encoder.provenance),
        "backbone_checksum": backbone_checksum,
        "fingerprint": fingerprint,
        "n_tiles": n_tiles,
    }


def train_epoch(
    net: ContrastiveClusteringNet,
    tiles,
    n_tiles: int,
    augment: TileAugmentation,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    settings: Mapping,
    epoch: int,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
) -> dict:
    """One pass over a (seed, epoch)-seeded permutation of the tiles; the epoch's history
    row. A last batch of a single tile is dropped (no contrastive pair)."""
    start = time.perf_counter()
    generator = epoch_generator(seed, epoch)
    order = torch.randperm(n_tiles, generator=generator).numpy()
    batch_size = settings["batch_size"]
    batches = [order[i : i + batch_size] for i in range(0, n_tiles, batch_size)]
    batches = [batch for batch in batches if len(batch) >= 2]
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    net.train()
    # The global RNG is seeded too: dropout or drop-path in a trainable block would use it.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        for batch in batches:
            batch_tiles = read_tile_batch(tiles, batch).to(device, non_blocking=True)
            views = torch.cat([augment(batch_tiles, generator), augment(batch_tiles, generator)])
            views = views.contiguous(memory_format=torch.channels_last)
            with autocast:
                z, p = net(views)
            z_a, z_b = z.chunk(2)
            p_a, p_b = p.chunk(2)
            instance_loss = instance_contrastive_loss(z_a, z_b, settings["instance_temperature"])
            cluster_loss, parts = cluster_contrastive_loss(
                p_a, p_b, settings["cluster_temperature"], settings["entropy_weight"]
            )
            loss = instance_loss + cluster_loss
            training.backward_step(loss, optimizer, scaler)
            totals += torch.stack(
                [instance_loss.detach(), cluster_loss.detach(), parts["entropy"], loss.detach()]
            ).double() * len(batch)
    net.eval()
    seen = sum(len(batch) for batch in batches)
    instance_mean, cluster_mean, entropy_mean, loss_mean = (totals / max(seen, 1)).tolist()
    seconds = time.perf_counter() - start
    return {
        "epoch": epoch,
        "instance_loss": instance_mean,
        "cluster_loss": cluster_mean,
        "entropy": entropy_mean,
        "loss": loss_mean,
        "tiles_per_s": seen / seconds if seconds > 0 else float("nan"),
        "seconds": seconds,
        "n_tiles": seen,
    }


def recalibrate_batchnorm(
    net: ContrastiveClusteringNet,
    tiles,
    n_tiles: int,
    settings: Mapping,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
) -> None:
    """Re-estimate the BatchNorm statistics of the heads and trainable blocks on plain
    (unaugmented) training tiles, as assignment sees them ("precise BN", Wu & Johnson 2021).

    Training normalises with batch statistics; the running averages it leaves lag behind
    weights that move fast, and eval mode (assignment) would then normalise with stale
    statistics. Leaves the net in eval mode.
    """
    trained = [net.instance_head, net.cluster_head,
               *(net.backbone.get_submodule(name) for name in net.trainable_blocks)]
    norms = [
        module
        for part in trained
        for module in part.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    ]
    order = torch.randperm(n_tiles, generator=epoch_generator(seed, 0)).numpy()
    sample = order[: min(n_tiles, BN_CALIBRATION_TILES)]
    momenta = [module.momentum for module in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # cumulative average over the calibration batches
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    net.train()
    with torch.no_grad(), autocast:
        for start in range(0, len(sample), settings["batch_size"]):
            batch = sample[start : start + settings["batch_size"]]
            if len(batch) < 2:
                continue
            x = resize_and_normalize(
                read_tile_batch(tiles, batch).to(device), settings["input_size"], net.mean,
                net.std,
            )
            net(x.contiguous(memory_format=torch.channels_last))
    for module, momentum in zip(norms, momenta, strict=True):
        module.momentum = momentum
    net.eval()


# ---------------------------------------------------------------------------- model file


def save_clustering_model(
    path: str | os.PathLike,
    result: Mapping,
    settings: Mapping,
    provenance: Mapping | None = None,
) -> Path:
    """Write the trained clustering as one .pt file (tensors and plain types only, for
    torch.load(weights_only=True)), atomically: the trained state (heads, trainable
    backbone blocks), settings, seed, history and the backbone's provenance (default:
    result["provenance"]). The frozen backbone is not stored: it is rebuilt at load."""
    provenance = dict(provenance if provenance is not None else result["provenance"])
    payload = {
        "format": MODEL_FORMAT,
        "settings": clustering_settings(settings),
        "provenance": json.loads(json.dumps(provenance)),
        "seed": int(result["seed"]),
        "backbone_checksum": str(result.get("backbone_checksum", "")),
        "history": json.loads(json.dumps(list(result["history"]))),
        "model": {key: value.detach().cpu() for key, value in result["model"].items()},
    }
    return training.save_atomically(payload, path)


def load_clustering_model(
    path: str | os.PathLike, device: str | torch.device | None = None
) -> tuple[ContrastiveClusteringNet, dict]:
    """(network in eval mode on `device`, metadata) from `save_clustering_model`'s file.

    The backbone is rebuilt from the stored settings; EncoderError (a ValueError, one
    line, naming the model and weights files) when its weights' sha256 is not the one
    the clustering was trained with (or, for random weights, its state differs).
    metadata: settings, provenance, seed, history, sha256 (of the model file), path.
    """
    path = Path(path)
    device = training.resolve_device(device)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a contrastive clustering model ({MODEL_FORMAT})")
    settings = clustering_settings(payload["settings"])
    trained = payload["provenance"]
    encoder = build_backbone(settings, payload["seed"])
    rebuilt = encoder.provenance
    if rebuilt["weights_sha256"] != trained["weights_sha256"]:
        raise EncoderError(
            f"clustering model {path} was trained with backbone {trained['encoder']} weights "
            f"{trained['weights']} (sha256 {trained['weights_sha256'] or 'none: random'}) but "
            f"{rebuilt['weights']} has sha256 {rebuilt['weights_sha256'] or 'none: random'}: "
            "restore those weights or retrain the clustering"
        )
    if not encoder.pretrained and payload["backbone_checksum"]:
        if module_checksum(encoder.model) != payload["backbone_checksum"]:
            raise EncoderError(
                f"clustering model {path}: the random {encoder.name} backbone rebuilt from "
                f"seed {payload['seed']} differs from the one trained (another timm or torch "
                "version?): retrain the clustering"
            )
    net = build_clustering_net(encoder, settings, payload["seed"])
    net.load_trainable_state(payload["model"])
    net = net.to(device).eval()
    net.backbone.to(memory_format=torch.channels_last)
    metadata = {
        "settings": settings,
        "provenance": dict(trained),
        "seed": int(payload["seed"]),
        "history": list(payload["history"]),
        "sha256": sha256_file(path),
        "path": str(path),
    }
    return net, metadata


# ---------------------------------------------------------------------------- assignment


def assign_tiles(
    model: ContrastiveClusteringNet,
    tile_batches: Iterable,
    n_tiles: int,
    input_size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Most probable cluster of every tile: (cluster int16 (n,), its probability float32
    (n,), assigned bool (n,)); `tile_batches` yields (uint8 tiles, indices, skipped) as
    radpath.pathology.embedding.tile_loader. Tiles never yielded stay unassigned (cluster -1)."""
    model = model.to(device).eval()
    cluster = torch.full((n_tiles,), -1, dtype=torch.int16, device=device)
    probability = torch.zeros(n_tiles, dtype=torch.float32, device=device)
    assigned = torch.zeros(n_tiles, dtype=torch.bool, device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    with torch.inference_mode(), autocast:
        for tiles, indices, _skipped in tile_batches:
            if len(indices) == 0:
                continue
            x = resize_and_normalize(
                tiles.to(device, non_blocking=True), input_size, model.mean, model.std
            ).contiguous(memory_format=torch.channels_last)
            best, best_cluster = model.cluster_probabilities(x).max(dim=1)
            rows = indices.to(device, non_blocking=True)
            cluster[rows] = best_cluster.to(torch.int16)
            probability[rows] = best.float()
            assigned[rows] = True
    return cluster.cpu().numpy(), probability.cpu().numpy(), assigned.cpu().numpy()


def assign_slide(
    slide_path: str | os.PathLike,
    slide_id: str,
    coords_h5: str | os.PathLike,
    model_path: str | os.PathLike,
    out_h5: str | os.PathLike,
    settings: Mapping,
    tiles_cfg: dict,
    device: str | torch.device | None = None,
    mpp_override: float | None = None,
    threads: int | None = None,
    loaded: tuple[ContrastiveClusteringNet, dict] | None = None,
) -> dict:
    """Assign every tile of `coords_h5` to a cluster of the model and write `out_h5`.

    `settings` gives the run-time knobs (batch_size, num_workers, precision); what the
    model is (backbone, input size, clusters) comes from the model file. Unreadable tiles
    are skipped, counted and stored as `skipped_coords`; all unreadable -> SlideError.
    `loaded`: the model and metadata `load_clustering_model` gave (a batch of slides).
    Returns slide_id, n_tiles, n_skipped, seconds, tiles_per_s, device, num_workers,
    torch_threads.
    """
    start = time.perf_counter()
    settings = clustering_settings(settings)
    device = training.resolve_device(device)
    num_workers = settings["num_workers"]
    if threads is not None:
        num_workers, torch_threads = cpu_budget(threads, num_workers, slide_id)
        torch.set_num_threads(torch_threads)
    coords, tile_attrs = read_coords_h5(coords_h5)
    with open_slide(slide_path, slide_id, mpp_override) as slide:
        check_tile_attrs(tile_attrs, tiles_cfg, f"{slide.label()}, {coords_h5}", slide.mpp)
    if len(coords) == 0:
        raise SlideError(f"slide {slide_id} ({slide_path}): {coords_h5} holds no tiles")
    model, metadata = loaded or load_clustering_model(model_path, device)
    trained = metadata["settings"]
    differing = sorted(
        key for key in ("backbone", "weights", "n_clusters", "input_size")
        if trained[key] != settings[key]
    )
    if differing:
        log.warning(
            "slide %s: clustering model %s was trained with other %s than configured: "
            "the model's are used", slide_id, model_path, ", ".join(differing),
        )
    dtype = autocast_dtype(settings["precision"], device)
    with slide_tile_batches(slide_path, slide_id, coords, tiles_cfg, mpp_override,
                            settings["batch_size"], num_workers, device) as loader:
        cluster, probability, assigned = assign_tiles(
            model, loader, len(coords), trained["input_size"], device, dtype
        )
    check_any_read(assigned, slide_id, slide_path, coords_h5)
    n_skipped = int((~assigned).sum())
    attrs = {
        "slide_id": slide_id,
        "n_clusters": int(trained["n_clusters"]),
        "model_sha256": metadata["sha256"],
        "encoder": metadata["provenance"]["encoder"],
        "n_skipped": n_skipped,
        "precision": _dtype_name(dtype),
    }
    write_clusters_h5(
        out_h5, coords[assigned], cluster[assigned], probability[assigned], coords[~assigned],
        tile_attrs, attrs,
    )
    return slide_job_summary(slide_id, assigned, start, device, num_workers)


def assign_slides(
    slides: list[dict],
    model_path: str | os.PathLike,
    settings: Mapping,
    tiles_cfg: dict,
    on_error: str,
    threads: int | None = None,
    store: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> None:
    """Assign a shard of slides in one process, the model loaded once (at the first slide
    that is not re-used), each slide as `assign_slide` in a job of its own.

    slides: [{slide_id, slide, mpp, coords, out}]; failures and `store` as
    radpath.pathology.embedding.embed_slides.
    """
    settings = dict(clustering_settings(settings))
    device = training.resolve_device(device)
    if threads is not None:
        settings["num_workers"], torch_threads = cpu_budget(
            threads, settings["num_workers"], f"shard of {len(slides)}"
        )
        torch.set_num_threads(torch_threads)
    result_settings = {
        "network": {k: v for k, v in settings.items() if k not in ("batch_size", "num_workers")},
        "tiles": tiles_cfg,
        "device": device.type,
    }
    model = functools.cache(lambda: load_clustering_model(model_path, device))

    def assign(item: dict) -> None:
        summary = assign_slide(
            item["slide"], item["slide_id"], item["coords"], model_path, item["out"], settings,
            tiles_cfg, device=device, mpp_override=item["mpp"], loaded=model(),
        )
        log.info("assignment summary: %s", summary)

    run_shard(slides, assign, on_error, store, result_settings, [model_path])


# ---------------------------------------------------------------------------- HDF5


def write_clusters_h5(
    path: str | os.PathLike,
    coords: np.ndarray,
    cluster: np.ndarray,
    probability: np.ndarray,
    skipped_coords: np.ndarray,
    tile_attrs: Mapping,
    attrs: Mapping,
) -> None:
    """Atomically write `coords` (n, 2) int64 level 0, `cluster` int16, `probability`
    float32 and `skipped_coords`; file attributes: the tile geometry, then `attrs`."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        coords_ds = h5.create_dataset(
            "coords", data=np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        )
        coords_ds.attrs.update(dict(tile_attrs))
        h5.create_dataset("cluster", data=np.asarray(cluster, dtype=np.int16))
        h5.create_dataset("probability", data=np.asarray(probability, dtype=np.float32))
        h5.create_dataset(
            "skipped_coords", data=np.asarray(skipped_coords, dtype=np.int64).reshape(-1, 2)
        )
        h5.attrs.update(dict(tile_attrs))
        h5.attrs.update(dict(attrs))


def read_clusters_h5(
    path: str | os.PathLike,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(coords (n, 2) int64, cluster (n,) int16, probability (n,) float32, attrs)."""
    with h5py.File(path, "r") as h5:
        return (
            h5["coords"][:].astype(np.int64),
            h5["cluster"][:].astype(np.int16),
            h5["probability"][:].astype(np.float32),
            attrs_dict(h5.attrs),
        )


def cluster_counts(clusters_h5: str | os.PathLike) -> np.ndarray:
    """Tiles per cluster (n_clusters,) int64 of a slide's clusters file."""
    _, cluster, _, attrs = read_clusters_h5(clusters_h5)
    return np.bincount(cluster.astype(np.int64), minlength=int(attrs["n_clusters"]))
