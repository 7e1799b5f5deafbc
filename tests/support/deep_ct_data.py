"""Synthetic CT cubes with known outcome mechanisms, for the deep CT tests."""

from __future__ import annotations

import numpy as np
import torch

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


# --- networks whose attention the test sets --------------------------------------------------

# The first convolution and batch norm of each registry family (they read the cube).
STEMS = {"resnet": ("conv1", "bn1"), "densenet": ("features.conv0", "features.norm0")}


def _kernel(size: int, stride: int) -> torch.Tensor:
    """A kernel passing one feature channel on: the centre tap; for a 3^3 convolution at
    stride 2 (output cell i reads voxels 2i-1..2i+1) the taps of voxels 2i and 2i+1, so that
    every voxel counts exactly once and no cell reads the zero padding."""
    kernel = torch.zeros((size,) * 3)
    if stride == 1 or size == 1:
        kernel[(size // 2,) * 3] = 1.0
    else:
        kernel[1:, 1:, 1:] = 1.0
    return kernel


@torch.no_grad()
def attention_network(name: str, in_channels: int, reads: list[int | None],
                      biases: list[float], width: int = 4) -> torch.nn.Module:
    """The registry network `name` with weights set so that feature channel j carries
    relu(input channel reads[j] + biases[j]) (None: reads nothing, a constant) from the stem
    to the risk, which is its sum over the cube: every voxel counts once (`_kernel`), every
    other weight is 0 and batch norms are the identity. A negative bias is a threshold: only
    voxels brighter than it count, and nothing else moves the risk. A positive one makes the
    risk linear in the input, equally sensitive to every voxel. A constant (None) makes
    every feature map flat."""
    from torch import nn

    from radpath.deep import networks

    net = networks.build_network(name, in_channels, width, seed=0).eval()
    stem_conv, stem_norm = STEMS["resnet" if name.startswith("resnet") else "densenet"]
    carried = len(reads)
    for module_name, module in net.named_modules():
        if isinstance(module, nn.Conv3d):
            module.weight.zero_()
            if module.bias is not None:
                module.bias.zero_()
            if module_name == stem_conv:
                for j, channel in enumerate(reads):
                    if channel is not None:
                        module.weight[j, channel][(1, 1, 1)] = 1.0
            elif "downsample" not in module_name and "denselayer" not in module_name:
                for j in range(carried):
                    module.weight[j, j] = _kernel(module.kernel_size[0], module.stride[0])
        elif isinstance(module, nn.BatchNorm3d):
            module.reset_parameters()
            module.running_var.fill_(1.0 - module.eps)
            if module_name == stem_norm:
                module.bias[:carried] = torch.tensor(biases, dtype=module.bias.dtype)
        elif isinstance(module, nn.Linear):
            module.weight.zero_()
            module.weight[0, :carried] = 1.0
            module.bias.zero_()
    return net


def as_member(net: torch.nn.Module, network: str, channels: list[str], width: int = 4
              ) -> dc.TrainedMember:
    """A fold member holding `net`'s weights, as the training jobs save them."""
    import pandas as pd

    return dc.TrainedMember(
        network=network, width=width, channels=list(channels),
        settings=dc.training_settings({"width": width}), seed=0,
        state_dict={k: v.detach().clone() for k, v in net.state_dict().items()},
        history=pd.DataFrame(columns=["epoch"]), best_epoch=1, mean=0.0, sd=1.0,
        fit_ids=[], inner_ids=[],
    )


def top_two_threshold(values: np.ndarray) -> float:
    """Halfway between the largest and second-largest value: only the brightest voxel
    passes (as float32, what the network computes in)."""
    flat = np.sort(np.asarray(values, dtype=np.float32).ravel())
    assert flat[-1] > flat[-2], "the brightest voxel is not unique"
    return float((flat[-1] + flat[-2]) / 2)
