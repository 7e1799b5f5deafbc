"""Attention maps of the deep CT ensembles, one per cube scale, and how much of them falls on
the lesion; the montage of a patient's maps over its CT for the report.

The method depends on what a network sees (`attention_method`):

- one scale (view `per_scale`, or a single cube size): Grad-CAM, MONAI's GradCAM of the risk
  output on the registry's target layer (the ReLU of the gradient-weighted sum of its feature
  maps). Its cells are placed on the cube's voxels at the centres the registry gives
  (radpath.deep.networks.FeatureGrid), linearly in between, the edge cells' values carried to
  the cube's border (`cells_to_voxels`): exact, where trilinear upsampling with
  align_corners=False put the ResNets' maps 1.5 voxels off.
- several scales stacked as channels (view `channels`): Grad-CAM cannot say which scale a
  cell looked at. The cubes share one voxel grid but not one body: voxel j of the 50 mm cube
  and voxel j of the 25 mm cube are different places (up to half the difference of the edges
  apart), and every feature cell mixes all of them. Each scale's map is instead the saliency
  |d risk / d input| summed over that scale's own channels (CT, extra images, mask), on that
  cube's own voxels: where a small change of that cube's input changes the risk most. The
  gradient is taken with respect to the voxels themselves, so its position is exact.
  (Gradient times input would also be per channel, but it scales with the intensity: a
  network equally sensitive everywhere would seem to look at whatever is bright.)

Units: every member's map is divided by its mean over the cube, an "attention density" in
which 1 is what every voxel would get if the attention were spread evenly; the ensemble's map
is the mean of its members' maps. A member whose map is zero everywhere (Grad-CAM: nothing in
that layer raised the risk) is left out of that mean.

`mask_statistics` compares a map with the tumour: `mass_in_mask` is the share of the map's
mass on the tumour (the mask channel: tumour fraction per voxel), `mask_share` the tumour's
share of the cube's volume, and `ratio` their quotient (the mean density over the tumour):
1 = no more attention on the lesion than an even spread would put there (chance), > 1 =
concentrated on the lesion, < 1 = mostly elsewhere. Saliency of a network equally sensitive
to every voxel reads exactly 1; Grad-CAM weighs activations, which follow the image, so such
a network can read a little above 1 on a lesion brighter than its surroundings.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from radpath.deep.cube_files import scale_channels
from radpath.deep.networks import FeatureGrid, NetworkEntry, network_entry
from radpath.deep.training import TrainedMember
from radpath.inputs.io import atomic_path
from radpath.nn.training import resolve_device

log = logging.getLogger(__name__)

GRADCAM, SALIENCY = "gradcam", "saliency"
METHOD_LABELS = {GRADCAM: "Grad-CAM", SALIENCY: "saliency"}


def attention_method(channels: Sequence[str]) -> str:
    """Grad-CAM for a network that sees one scale, saliency for one that sees several."""
    return GRADCAM if len(scale_channels(channels)) == 1 else SALIENCY


# --- placing feature cells on the cube ------------------------------------------------------


def voxel_positions_in_cells(size: int, cells: int, grid: FeatureGrid) -> torch.Tensor:
    """Every input voxel's position in units of cells (cell i at i), clamped to the cells."""
    position = (torch.arange(size, dtype=torch.float64) - grid.offset) / grid.stride
    return position.clamp(0, cells - 1)


def cells_to_voxels(cells: torch.Tensor, grid: FeatureGrid, size: Sequence[int]) -> torch.Tensor:
    """(B, d, h, w) map on a layer's cells -> (B, *size) on the input voxels: cell i of an
    axis sits on voxel grid.stride * i + grid.offset; voxels between cell centres are
    interpolated linearly, those beyond the first or last centre take that cell's value."""
    cells = cells.double()
    normalised = []
    for axis, n in enumerate(size):
        count = cells.shape[1 + axis]
        position = voxel_positions_in_cells(int(n), count, grid)
        # grid_sample with align_corners=True: -1 and 1 are the first and last cell centres
        normalised.append(2 * position / (count - 1) - 1 if count > 1
                          else torch.zeros_like(position))
    d, h, w = torch.meshgrid(*normalised, indexing="ij")
    sample_at = torch.stack([w, h, d], dim=-1).to(cells.device)  # grid_sample wants (x, y, z)
    sample_at = sample_at.expand(len(cells), *sample_at.shape)
    voxels = F.grid_sample(cells[:, None], sample_at, mode="bilinear", padding_mode="border",
                           align_corners=True)
    return voxels[:, 0]


# --- the two methods ------------------------------------------------------------------------


def _network(model: nn.Module | TrainedMember, network: str | None, device: torch.device
             ) -> tuple[nn.Module, NetworkEntry | None]:
    """An eval-mode copy of the model on `device` (hooks never touch the original) and its
    registry entry (`network`, or the member's own)."""
    if isinstance(model, TrainedMember):
        return model.model(device), network_entry(network or model.network)
    net = copy.deepcopy(model).to(device).eval()
    return net, network_entry(network) if network else None


def gradcam_cells(net: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """(B, d, h, w) Grad-CAM of the risk output on `layer`'s cells (after MONAI's ReLU)."""
    from monai.visualize import GradCAM

    if layer not in dict(net.named_modules()):
        raise ValueError(f"gradcam: the network has no layer {layer!r}")
    cam = GradCAM(nn_module=net, target_layers=layer)
    return cam.compute_map(x, class_idx=0)[:, 0].detach()


def input_saliency(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, C, G, G, G) |d risk / d x|, the risk's sensitivity to every input voxel."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        risk = net(x).reshape(len(x), -1)[:, 0]
        (gradient,) = torch.autograd.grad(risk.sum(), x)
    return gradient.abs()


def as_density(maps: np.ndarray) -> np.ndarray:
    """Each map (first axis) divided by its mean: 1 = an even spread. A map that is zero
    everywhere becomes NaN (it says nothing about where the network looked)."""
    maps = np.asarray(maps, dtype=np.float64)
    means = maps.reshape(len(maps), -1).mean(axis=1)
    shape = (len(maps),) + (1,) * (maps.ndim - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(means.reshape(shape) > 0, maps / means.reshape(shape), np.nan)


def ensemble_mean(maps: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of the members' density maps, leaving out NaN (empty) maps; NaN where every
    member's map was empty."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: stays NaN
        return np.nanmean(np.stack(maps), axis=0)


def _batches(cubes: np.ndarray, batch_size: int, device: torch.device):
    for start in range(0, len(cubes), batch_size):
        yield torch.from_numpy(np.asarray(cubes[start : start + batch_size])).to(device).float()


def gradcam(models: Sequence[nn.Module | TrainedMember], cubes: np.ndarray, *,
            network: str | None = None, batch_size: int = 8,
            device: str | torch.device | None = None) -> np.ndarray:
    """Ensemble Grad-CAM (N, G, G, G) float32 densities of networks that see one scale (or
    whose maps are read as one grid): per model, Grad-CAM on its registry entry's target
    layer, placed exactly on the cube's voxels (`cells_to_voxels`) and divided by its mean;
    then the mean over models (module doc). A plain nn.Module needs `network`, the registry
    name giving its layer and cell centres."""
    if not models:
        raise ValueError("gradcam: no models")
    device = resolve_device(device)
    cubes = np.asarray(cubes)
    per_model = []
    for model in models:
        net, entry = _network(model, network, device)
        if entry is None:
            raise ValueError("gradcam: a plain nn.Module needs `network` (its registry name)")
        maps = []
        for x in _batches(cubes, batch_size, device):
            cells = gradcam_cells(net, entry.target_layer, x)
            maps.append(cells_to_voxels(cells, entry.target_grid, x.shape[2:]).cpu().numpy())
        per_model.append(as_density(np.concatenate(maps)))
        del net
    return ensemble_mean(per_model).astype(np.float32)


def saliency(models: Sequence[nn.Module | TrainedMember], cubes: np.ndarray,
             channels: Sequence[str], *, batch_size: int = 8,
             device: str | torch.device | None = None) -> dict[str, np.ndarray]:
    """{scale label: (N, G, G, G) float32 ensemble saliency densities}: per model, |d risk /
    d input| summed over each scale's channels (`channels` names the cubes' channels, e.g.
    "ct@50mm"), divided by its mean; then the mean over models (module doc)."""
    if not models:
        raise ValueError("saliency: no models")
    device = resolve_device(device)
    cubes = np.asarray(cubes)
    scales = scale_channels(channels)
    if cubes.shape[1] != len(channels):
        raise ValueError(f"saliency: cubes of {cubes.shape[1]} channels, {len(channels)} names")
    per_model: dict[str, list[np.ndarray]] = {label: [] for label in scales}
    for model in models:
        net, _ = _network(model, None, device)
        sums = {label: [] for label in scales}
        for x in _batches(cubes, batch_size, device):
            gradient = input_saliency(net, x)
            for label, index in scales.items():
                sums[label].append(gradient[:, index].sum(dim=1).cpu().numpy())
        for label in scales:
            per_model[label].append(as_density(np.concatenate(sums[label])))
        del net
    return {label: ensemble_mean(maps).astype(np.float32) for label, maps in per_model.items()}


def member_attention(member: TrainedMember, cubes: np.ndarray, *, batch_size: int = 8,
                     device: str | torch.device | None = None
                     ) -> tuple[str, dict[str, np.ndarray]]:
    """(method, {scale label: (N, G, G, G) densities}) of one member on cubes of its own
    channels (member.channels), by `attention_method`."""
    method = attention_method(member.channels)
    if method == GRADCAM:
        (label,) = scale_channels(member.channels)
        maps = {label: gradcam([member], cubes, batch_size=batch_size, device=device)}
    else:
        maps = saliency([member], cubes, member.channels, batch_size=batch_size, device=device)
    return method, maps


# --- the map and the lesion -----------------------------------------------------------------


def mask_statistics(density: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """mass_in_mask, mask_share and ratio (module doc) of a map and the tumour fraction per
    voxel of the same cube; NaN where the map is empty or the cube holds no tumour."""
    density = np.asarray(density, dtype=np.float64)
    mask = np.clip(np.asarray(mask, dtype=np.float64), 0.0, 1.0)
    share = float(mask.mean())
    total = float(density.sum())
    if not np.isfinite(total) or total <= 0:
        return {"mass_in_mask": float("nan"), "mask_share": share, "ratio": float("nan")}
    mass = float((density * mask).sum() / total)
    return {"mass_in_mask": mass, "mask_share": share,
            "ratio": mass / share if share > 0 else float("nan")}


# --- the montage ----------------------------------------------------------------------------


class ScalePanel(NamedTuple):
    """One row of a montage: a scale's CT channel, its attention density and tumour
    fraction (all (G, G, G), z, y, x) and the row's label."""

    label: str
    ct: np.ndarray
    density: np.ndarray
    mask: np.ndarray | None = None


def _overlay(density: np.ndarray, top: float) -> np.ndarray:
    """RGBA of a density slice: colour (jet) from an even spread (1) to `top`, opacity
    rising from 0 at 1 to 0.6 at `top`, so that the CT shows where attention is ordinary."""
    import matplotlib

    level = np.clip((density - 1.0) / (top - 1.0), 0.0, 1.0)
    rgba = matplotlib.colormaps["jet"](level)
    rgba[..., 3] = 0.6 * level
    return rgba


def attention_montage(panels: Sequence[ScalePanel], path: str | os.PathLike, title: str = ""
                      ) -> Path:
    """PNG with a row per scale: axial, coronal and sagittal slices through the cube centre
    (the lesion centroid), CT in grey, the density in colour where it exceeds an even spread
    (1), more opaque the higher it is, and, when given, the tumour outline in white. Axes are (z, y, x), as the cubes are
    stored: axial = fixed z, coronal = fixed y, sagittal = fixed x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        raise ValueError("attention_montage: no panels")
    fig, axes = plt.subplots(len(panels), 3, figsize=(7.5, 2.6 * len(panels) + 0.3),
                             squeeze=False)
    for row, panel in zip(axes, panels, strict=True):
        ct = np.asarray(panel.ct, dtype=np.float32)
        heat = np.nan_to_num(np.asarray(panel.density, dtype=np.float32))
        if ct.shape != heat.shape or ct.ndim != 3:
            raise ValueError(f"attention_montage: CT {ct.shape} and map {heat.shape} must be "
                             "one 3D grid")
        outline = (np.zeros_like(ct) if panel.mask is None
                   else np.asarray(panel.mask, dtype=np.float32))
        cz, cy, cx = (s // 2 for s in ct.shape)
        views = (("axial", ct[cz], heat[cz], outline[cz]),
                 ("coronal", ct[:, cy], heat[:, cy], outline[:, cy]),
                 ("sagittal", ct[:, :, cx], heat[:, :, cx], outline[:, :, cx]))
        low, high = float(ct.min()), float(ct.max())
        top = max(float(heat.max()), 1.0 + 1e-6)
        for ax, (name, image, density, edge) in zip(row, views, strict=True):
            origin = "upper" if name == "axial" else "lower"
            ax.imshow(image, cmap="gray", vmin=low, vmax=high if high > low else low + 1,
                      origin=origin)
            ax.imshow(_overlay(density, top), origin=origin)
            if edge.min() < 0.5 < edge.max():
                ax.contour(edge, levels=[0.5], colors="white", linewidths=0.8, origin=origin)
            ax.set_title(f"{panel.label}: {name}", fontsize=8)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
