"""Synthetic CT cubes with known outcome mechanisms, for the deep CT tests."""

from __future__ import annotations

import numpy as np

from radpath.deep import training as dc

CHANNELS = ["ct@16mm", "mask@16mm"]


def simulate_survival(risk: np.ndarray, rng: np.random.Generator, censor_max: float = 4.0
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Exponential event times with hazard exp(risk), uniform censoring on (0, censor_max)."""
    event_time = rng.exponential(1.0 / np.exp(risk))
    censor = rng.uniform(0.0, censor_max, size=len(risk))
    return np.minimum(event_time, censor), (event_time <= censor).astype(int)


def sphere_cohort(n: int, grid: int = 16, seed: int = 0, beta: float = 2.5):
    """Cubes (n, 2, G, G, G) float16 (CT-like: a bright sphere in noise; its mask) whose
    risk is the standardised sphere radius times `beta`; (cubes, time, event, radius)."""
    rng = np.random.default_rng(seed)
    radius = rng.uniform(1.5, grid * 0.35, size=n)
    axis = np.arange(grid) - (grid - 1) / 2
    distance = np.sqrt(sum(a**2 for a in np.meshgrid(axis, axis, axis, indexing="ij")))
    cubes = np.empty((n, 2, grid, grid, grid), dtype=np.float16)
    for i, r in enumerate(radius):
        mask = distance <= r
        ct = rng.normal(0.3, 0.05, size=mask.shape) + 0.4 * mask
        cubes[i, 0], cubes[i, 1] = ct, mask
    z = (radius - radius.mean()) / radius.std()
    time, event = simulate_survival(beta * z, rng)
    return cubes, time, event, radius


def corner_blob_cohort(n: int, grid: int = 16, seed: int = 0, beta: float = 2.5,
                       distractor: bool = False, sigma: float = 0.1, noise: float = 0.2):
    """Cubes (n, 1, G, G, G) of noise with a blob in the first corner octant whose intensity
    drives the risk (with `distractor`, also a blob of random, irrelevant intensity in the
    opposite octant);
    (cubes, time, event, region mask (G, G, G) of the first octant)."""
    rng = np.random.default_rng(seed)
    axis = np.arange(grid)
    zz, yy, xx = np.meshgrid(axis, axis, axis, indexing="ij")
    quarter = grid / 4 - 0.5

    def blob(centre: float) -> np.ndarray:
        d2 = (zz - centre) ** 2 + (yy - centre) ** 2 + (xx - centre) ** 2
        return np.exp(-d2 / (2 * (grid * sigma) ** 2))

    near, far = blob(quarter), blob(grid - 1 - quarter)
    level = rng.uniform(0.0, 1.0, size=n)
    other = rng.uniform(0.0, 1.0, size=n) if distractor else np.zeros(n)
    cubes = rng.normal(0.0, noise, size=(n, 1, grid, grid, grid))
    cubes[:, 0] += level[:, None, None, None] * near + other[:, None, None, None] * far
    z = (level - level.mean()) / level.std()
    time, event = simulate_survival(beta * z, rng)
    half = grid // 2
    region = np.zeros((grid, grid, grid), dtype=bool)
    region[:half, :half, :half] = True
    return cubes.astype(np.float16), time, event, region


NO_AUGMENTATION = dict.fromkeys(dc.DEFAULTS["augmentation"], False)

ALL_AUGMENTATION = dict.fromkeys(dc.DEFAULTS["augmentation"], True)

TINY = {"networks": ["resnet10"], "width": 4, "epochs": 2, "batch_size": 8,
        "learning_rate": 1e-2, "augmentation": NO_AUGMENTATION}


def tiny_cohort(n: int = 24, grid: int = 8, seed: int = 0):
    cubes, time_, event, _ = sphere_cohort(n, grid=grid, seed=seed)
    return cubes, time_, event
