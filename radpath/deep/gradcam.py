"""Grad-CAM of the deep CT ensembles (MONAI's GradCAM on each member's target layer, the
mean over members) and the montage of a patient's map over its CT for the report."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from radpath.deep.training import TrainedMember
from radpath.inputs.io import atomic_path
from radpath.nn.training import resolve_device

log = logging.getLogger(__name__)


def _unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Each map (B, 1, ...) scaled to [0, 1] (max -> 1); a constant map becomes 0.
    (MONAI's default_normalizer maps the maximum to 0.)"""
    flat = maps.reshape(maps.shape[0], -1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    span = (high - low).clamp_min(1e-12)
    scaled = (flat - low[:, None]) / span[:, None]
    scaled = torch.where((high - low)[:, None] > 1e-12, scaled, torch.zeros_like(scaled))
    return scaled.reshape(maps.shape)


def gradcam(models: Sequence[nn.Module | TrainedMember], cubes: np.ndarray,
            target_layer: str | None = None, *, batch_size: int = 8,
            device: str | torch.device | None = None) -> np.ndarray:
    """Ensemble Grad-CAM (N, G, G, G) float32 of the risk output: per member, MONAI's
    GradCAM on `target_layer` (default: the network entry's), trilinear upsampling to the
    cube grid and each patient's map scaled to [0, 1]; then the mean over members. The
    models are copied (hooks never touch the originals)."""
    if not models:
        raise ValueError("gradcam: no models")
    from monai.visualize import GradCAM

    device = resolve_device(device)
    cubes = np.asarray(cubes)
    total = np.zeros((len(cubes), *cubes.shape[2:]), dtype=np.float64)
    for model in models:
        if isinstance(model, TrainedMember):
            layer = target_layer or model.target_layer
            net = model.model(device)
        else:
            if target_layer is None:
                raise ValueError("gradcam: target_layer is needed for a plain nn.Module")
            layer = target_layer
            net = copy.deepcopy(model).to(device).eval()
        if layer not in dict(net.named_modules()):
            raise ValueError(f"gradcam: the network has no layer {layer!r}")
        cam = GradCAM(nn_module=net, target_layers=layer, postprocessing=_unit_range)
        for start in range(0, len(cubes), batch_size):
            x = torch.from_numpy(cubes[start : start + batch_size]).to(device).float()
            maps = cam(x, class_idx=0)
            total[start : start + len(x)] += maps[:, 0].detach().double().cpu().numpy()
        del cam, net
    return (total / len(models)).astype(np.float32)


def gradcam_montage(ct: np.ndarray, cam: np.ndarray, path: str | os.PathLike,
                    title: str = "", mask: np.ndarray | None = None) -> Path:
    """PNG of the slices through the cube centre, CT (G, G, G) in grey with the map (same
    shape, [0, 1]) in colour over it (values under 0.05 left clear) and, when given, the
    tumour mask's outline in white. Axes are taken as (z, y, x), as the cubes are stored:
    axial = fixed z, coronal = fixed y, sagittal = fixed x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ct, cam = np.asarray(ct, dtype=np.float32), np.asarray(cam, dtype=np.float32)
    if ct.shape != cam.shape or ct.ndim != 3:
        raise ValueError(f"gradcam_montage: CT {ct.shape} and map {cam.shape} must be one "
                         "3D grid")
    cz, cy, cx = (s // 2 for s in ct.shape)
    outline = np.zeros_like(ct) if mask is None else np.asarray(mask, dtype=np.float32)
    views = (("axial", ct[cz], cam[cz], outline[cz]),
             ("coronal", ct[:, cy], cam[:, cy], outline[:, cy]),
             ("sagittal", ct[:, :, cx], cam[:, :, cx], outline[:, :, cx]))
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.9))
    low, high = float(np.min(ct)), float(np.max(ct))
    for ax, (name, image, heat, edge) in zip(axes, views, strict=True):
        ax.imshow(image, cmap="gray", vmin=low, vmax=high if high > low else low + 1,
                  origin="upper" if name == "axial" else "lower")
        ax.imshow(np.ma.masked_less(heat, 0.05), cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0,
                  origin="upper" if name == "axial" else "lower")
        if edge.min() < 0.5 < edge.max():
            ax.contour(edge, levels=[0.5], colors="white", linewidths=0.8,
                       origin="upper" if name == "axial" else "lower")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
