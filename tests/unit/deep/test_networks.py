"""radpath.deep.networks: every registered network builds, gives one risk per cube and
names its Grad-CAM layer; start checkpoints load strictly, naming every mismatched key."""


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
