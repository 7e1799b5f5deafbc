"""Tiny synthetic volumes and layouts (soft tissue, a lung half, a nodule) for the synthesis tests."""


from __future__ import annotations

import numpy as np

from radpath.synthesis import layout as layouts
from radpath.synthesis import quality as quality


def sphere_volumes(n: int, size: int = 16, seed: int = 0):
    """Volumes in [-1, 1]: soft tissue, a lung half, a bright nodule; and their layouts."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:size, :size, :size]
    volumes, labels = [], []
    for _ in range(n):
        centre = rng.uniform(size * 0.3, size * 0.7, 3)
        radius = rng.uniform(size * 0.12, size * 0.22)
        nodule = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 < radius**2
        lung = y >= size // 2
        layout = layouts.make_layout(nodule, lung)
        volume = np.where(lung, -0.7, 0.1) + np.where(nodule, 0.6, 0.0)
        volume = volume + 0.05 * rng.normal(size=volume.shape)
        volumes.append(np.clip(volume, -1, 1).astype(np.float32))
        labels.append(layout)
    return np.stack(volumes), np.stack(labels)
