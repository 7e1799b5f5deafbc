"""radpath.deep.gradcam: the ensemble's Grad-CAM points at the region that drives the outcome."""


import numpy as np
from deep_ct_data import (
    NO_AUGMENTATION,
    corner_blob_cohort,
)

from radpath.deep import gradcam
from radpath.deep import training as dc
from radpath.survival.metrics import harrell_c

FIT_ROWS, INNER_ROWS, HELD_ROWS = np.arange(140), np.arange(140, 176), np.arange(176, 676)


def test_gradcam_points_at_the_region_that_drives_the_outcome(tmp_path):
    cubes, time_, event, region = corner_blob_cohort(300, grid=16, seed=2, noise=0.1)
    trained = dc.train_member(
        cubes, time_, event, np.arange(200), np.arange(200, 250),
        {"width": 4, "epochs": 6, "learning_rate": 1e-2, "augmentation": NO_AUGMENTATION}, 2,
        network="resnet10", channels=["ct@16mm"], device="cpu",
    )
    test = cubes[250:]
    raw = dc.score(trained, test, device="cpu")
    assert harrell_c(time_[250:], event[250:], raw) > 0.75
    high_risk = np.argsort(raw)[-25:]  # Grad-CAM shows what raises the risk
    cam = gradcam.gradcam([trained], test[high_risk], device="cpu")
    assert cam.shape == (25, 16, 16, 16) and cam.min() >= 0 and cam.max() <= 1
    inside = cam[:, region].sum() / cam.sum()
    assert inside > 2 * region.mean(), inside  # the octant is 1/8 of the cube
    mean_map = cam.mean(axis=0)
    assert region[np.unravel_index(np.argmax(mean_map), mean_map.shape)]
    assert mean_map[region].mean() > 3 * mean_map[~region].mean()
    # the ensemble is the mean of the members' maps
    twice = gradcam.gradcam([trained, trained.model("cpu")], test[high_risk[:3]],
                       trained.target_layer, device="cpu")
    np.testing.assert_allclose(twice, cam[:3], atol=1e-6)
    png = gradcam.gradcam_montage(test[high_risk[-1], 0], cam[-1], tmp_path / "cam.png", "P1")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
