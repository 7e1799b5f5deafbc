"""The registry of 3D networks of the deep CT models (MONAI's ResNets and DenseNet-121 for
cubes of C channels, one risk output), building them seeded, and loading a start checkpoint
(deep_ct.init_checkpoint, or a pretraining run's member) into them strictly."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

MEMBER_FORMAT = "radpath-deep-ct-member/1"  # a trained member file (radpath.deep.training)


@dataclass(frozen=True)
class FeatureGrid:
    """Where the cells of a feature map sit on the network's input grid: along every axis,
    cell i is centred on input voxel `stride * i + offset` (the centre of the input window
    its strided convolutions and poolings read)."""

    stride: int
    offset: float


@dataclass(frozen=True)
class NetworkEntry:
    """A network of the registry: builder (in_channels, width) -> nn.Module with one output
    (the risk score), the layer Grad-CAM reads, where that layer's cells sit on the cube
    grid, and a description."""

    builder: Callable[[int, int], nn.Module]
    target_layer: str
    target_grid: FeatureGrid
    description: str


def _resnet(layers: list[int], in_channels: int, width: int) -> nn.Module:
    # Cubes are small (16-48 voxels): the stem is a 3^3 convolution at stride 1 without max
    # pooling (MONAI's default 7^3 + max pool would leave 1 voxel for layer4 at 16^3), and the
    # three stride-2 stages bring 16 -> 2 and 48 -> 6 voxels at layer4. Projection shortcuts
    # (type B, 1^3 conv + BN, no bias: BN follows) in both depths.
    from monai.networks.nets import ResNet

    return ResNet(
        "basic", layers, [width, 2 * width, 4 * width, 8 * width], spatial_dims=3,
        n_input_channels=in_channels, conv1_t_size=3, conv1_t_stride=1, no_max_pool=True,
        shortcut_type="B", bias_downsample=False, num_classes=1,
    )


def _densenet121(in_channels: int, width: int) -> nn.Module:
    # MONAI's DenseNet121 halves the grid four times before its last block (7^3 stride-2 stem
    # and max pool, then three transitions): 16^3 cubes would vanish. The stem here is a 3^3
    # convolution at stride 1 and no pool, so the last dense block sees G/8 voxels (as ResNet).
    from monai.networks.nets import DenseNet121

    net = DenseNet121(
        spatial_dims=3, in_channels=in_channels, out_channels=1, init_features=width,
        growth_rate=max(2, width // 2),
    )
    net.features.conv0 = nn.Conv3d(in_channels, width, kernel_size=3, padding=1, bias=False)
    net.features.pool0 = nn.Identity()
    return net


# Grad-CAM reads the last stage at G/4 (ResNet layer3, DenseNet denseblock3: 4^3 cells for
# 16^3 cubes, 12^3 for 48^3): the G/8 stage's cells each see the whole cube (receptive field
# 49+ voxels), and on synthetic cubes whose outcome lives in one corner its maps spread over
# the cube (16^3: 7-54% of the mass in that octant vs 26-59% at G/4).
# Their cells are 4 voxels apart but not centred alike: a ResNet halves the grid with 3^3
# convolutions at stride 2 and padding 1 (and 1^3 shortcuts), whose output cell i reads input
# voxels 2i-1..2i+1, so layer3's cell i is centred on voxel 4i; DenseNet halves it with 2^3
# average pools (cell i = voxels 2i, 2i+1), so denseblock3's cell i is centred on voxel
# 4i + 1.5. (Trilinear upsampling with align_corners=False assumes the latter for both,
# which put the ResNets' maps 1.5 voxels off.)
RESNET_LAYER3 = FeatureGrid(stride=4, offset=0.0)
DENSENET_BLOCK3 = FeatureGrid(stride=4, offset=1.5)
NETWORKS: dict[str, NetworkEntry] = {
    "resnet10": NetworkEntry(
        partial(_resnet, [1, 1, 1, 1]), "layer3", RESNET_LAYER3,
        "MONAI 3D ResNet-10 (basic blocks [1,1,1,1], planes w..8w, 3^3 stem, no max pool)",
    ),
    "resnet18": NetworkEntry(
        partial(_resnet, [2, 2, 2, 2]), "layer3", RESNET_LAYER3,
        "MONAI 3D ResNet-18 (basic blocks [2,2,2,2], planes w..8w, 3^3 stem, no max pool)",
    ),
    "densenet121": NetworkEntry(
        _densenet121, "features.denseblock3", DENSENET_BLOCK3,
        "MONAI 3D DenseNet-121 (init features w, growth w/2, 3^3 stem, no pool)",
    ),
}


def network_entry(name: str) -> NetworkEntry:
    if name not in NETWORKS:
        raise ValueError(f"unknown deep CT network {name!r}: known are {', '.join(NETWORKS)}")
    return NETWORKS[name]


def build_network(name: str, in_channels: int, width: int = 64, seed: int | None = None
                  ) -> nn.Module:
    """The registry's network `name` with `in_channels` input channels; its weights are
    initialised from `seed` (None: the global RNG), leaving the global RNG alone."""
    entry = network_entry(name)
    if int(in_channels) < 1 or int(width) < 2:
        raise ValueError(f"{name}: in_channels must be >= 1 and width >= 2, got "
                         f"{in_channels} and {width}")
    if seed is None:
        return entry.builder(int(in_channels), int(width))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) % 2**63)
        return entry.builder(int(in_channels), int(width))


def check_state_fits(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """ValueError naming the missing, unexpected and mis-shaped keys (the first few of each
    and their counts) unless `state` loads strictly into `model`."""
    own = model.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    shapes = [
        f"{key} {tuple(state[key].shape)} != {tuple(own[key].shape)}"
        for key in own
        if key in state and tuple(state[key].shape) != tuple(own[key].shape)
    ]
    if missing or unexpected or shapes:
        def listed(what: str, items: list[str]) -> str:
            more = ", ..." if len(items) > 5 else ""
            return f"{len(items)} {what}" + (f" ({', '.join(items[:5])}{more})" if items else "")

        parts = [listed("missing", missing), listed("unexpected", unexpected),
                 listed("mis-shaped", shapes)]
        raise ValueError(f"{source} does not fit the network: keys {'; '.join(parts)}")


def load_init_checkpoint(path: str | os.PathLike, network: str, in_channels: int, width: int
                         ) -> dict[str, torch.Tensor]:
    """The state dict of a local checkpoint to start training from (transfer learning),
    checked to load strictly into network(in_channels, width): .pt/.pth (torch.load with
    weights_only=True: a state dict, a dict holding one under `state_dict` or `model`, or a
    radpath member file) or .safetensors. A DataParallel `module.` prefix is removed.
    ValueError when the file cannot be read or its keys do not fit (see `check_state_fits`)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise ValueError(f"{path}: reading .safetensors needs the safetensors package"
                             ) from err
        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle, zip and weights_only errors come in many types
            raise ValueError(f"init checkpoint {path} unreadable: "
                             f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                             ) from err
    if isinstance(state, dict) and state.get("format") == MEMBER_FORMAT:
        state = state["state_dict"]
    elif isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"init checkpoint {path} holds no state dict of tensors")
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    model = build_network(network, in_channels, width, seed=0)
    check_state_fits(model, state, f"init checkpoint {path}")
    return dict(state)
