"""radpath.deep.cube_files: a scale's channels are found by their edge."""


import numpy as np
import pytest

from radpath.deep import cube_files
from radpath.deep import training as dc


def test_channels_of_one_scale_are_found_by_edge():
    channels = ["ct@50mm", "mask@50mm", "ct@37.5mm", "mask@37.5mm"]
    assert cube_files.channel_indices(channels, [37.5]) == [2, 3]
    assert cube_files.channel_indices(channels) == [0, 1, 2, 3]
    assert [dc.is_mask_channel(c) for c in channels] == [False, True, False, True]
    with pytest.raises(ValueError, match="25"):
        cube_files.channel_indices(channels, [25.0])


FIT_ROWS, INNER_ROWS, HELD_ROWS = np.arange(140), np.arange(140, 176), np.arange(176, 676)
