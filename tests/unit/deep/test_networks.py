"""radpath.deep.networks: every registered network builds, gives one risk per cube and
names its Grad-CAM layer and where that layer's cells sit on the cube; start checkpoints load
strictly, naming every mismatched key."""


import numpy as np
import pytest
import torch
from deep_ct_data import (
    CHANNELS,
    TINY,
    tiny_cohort,
)

from radpath.deep import networks
from radpath.deep import training as dc
from radpath.nn import training as nn_training


@pytest.mark.parametrize("name", sorted(networks.NETWORKS))
def test_every_network_gives_one_risk_per_cube_and_has_its_gradcam_layer(name):
    net = networks.build_network(name, in_channels=3, width=4, seed=0)
    again = networks.build_network(name, in_channels=3, width=4, seed=0)
    assert nn_training.state_checksum(net.state_dict()) == nn_training.state_checksum(again.state_dict())
    with torch.no_grad():
        out = net.eval()(torch.zeros(2, 3, 16, 16, 16))
    assert out.shape == (2, 1)
    assert networks.NETWORKS[name].target_layer in dict(net.named_modules())
    assert networks.NETWORKS[name].description


@torch.no_grad()
def _averaging_weights(net: torch.nn.Module) -> None:
    """Every kernel the mean of its window and input channels, batch norms the identity:
    with a positive input every unit is active and every layer mirror-symmetric."""
    for module in net.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.weight.fill_(1.0 / module.weight[0].numel())
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, torch.nn.BatchNorm3d):
            module.reset_parameters()
            module.running_var.fill_(1.0 - module.eps)


def _middle_cell_gradient(name: str, size: int) -> tuple[int, np.ndarray] | None:
    """(middle cell index, gradient of that cell of the Grad-CAM layer with respect to a
    size^3 input of ones) under averaging weights; None when the layer has no middle cell."""
    net = networks.build_network(name, 1, 4, seed=0).eval()
    _averaging_weights(net)
    layer = dict(net.named_modules())[networks.NETWORKS[name].target_layer]
    captured = {}
    hook = layer.register_forward_hook(lambda _m, _i, output: captured.update(cells=output))
    x = torch.ones(1, 1, size, size, size, requires_grad=True)
    with torch.enable_grad():
        net(x)
        hook.remove()
        cells = captured["cells"]
        if cells.shape[-1] % 2 == 0:
            return None
        middle = cells.shape[-1] // 2
        (gradient,) = torch.autograd.grad(cells[0, :, middle, middle, middle].sum(), x)
    return middle, gradient[0, 0].numpy()


@pytest.mark.parametrize("name", sorted(networks.NETWORKS))
def test_the_registry_places_the_gradcam_cells_at_their_receptive_fields_centres(name):
    """The middle cell of the Grad-CAM layer, on the grid size at which the gradient of that
    cell with respect to the input is mirror-symmetric (so its receptive field is centred on
    the cube's centre, padding included), sits where the registry's FeatureGrid puts it."""
    grid = networks.NETWORKS[name].target_grid
    for size in range(8, 33):
        found = _middle_cell_gradient(name, size)
        if found is None:
            continue
        middle, gradient = found
        if np.allclose(gradient, gradient[::-1, ::-1, ::-1], rtol=1e-5, atol=0):
            assert grid.stride * middle + grid.offset == pytest.approx((size - 1) / 2), size
            return
    pytest.fail(f"{name}: no grid size up to 32 centres a cell of its Grad-CAM layer")


def test_an_unknown_network_names_the_known_ones():
    with pytest.raises(ValueError, match="resnet10, resnet18, densenet121"):
        networks.build_network("vit", 1, 4)


FIT_ROWS, INNER_ROWS, HELD_ROWS = np.arange(140), np.arange(140, 176), np.arange(176, 676)


def test_strict_loading_lists_missing_unexpected_and_misshaped_keys(tmp_path):
    state = networks.build_network("resnet10", 2, 4, seed=0).state_dict()
    broken = dict(state)
    del broken["fc.weight"]
    broken["head.weight"] = torch.zeros(1)
    broken["conv1.weight"] = torch.zeros(4, 1, 3, 3, 3)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ValueError) as error:
        networks.load_init_checkpoint(tmp_path / "broken.pt", "resnet10", 2, 4)
    message = str(error.value)
    assert "1 missing (fc.weight)" in message and "1 unexpected (head.weight)" in message
    assert "1 mis-shaped (conv1.weight (4, 1, 3, 3, 3) != (4, 2, 3, 3, 3))" in message
    with pytest.raises(ValueError, match="densenet|missing"):
        networks.load_init_checkpoint(tmp_path / "broken.pt", "densenet121", 2, 4)
    with pytest.raises(ValueError, match="mis-shaped"):
        dc.train_member(*tiny_cohort(), np.arange(16), np.arange(16, 24), TINY, 0,
                        network="resnet10", channels=CHANNELS,
                        init_state=networks.build_network("resnet10", 2, 8).state_dict())
