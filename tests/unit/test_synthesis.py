"""The synthesis branch (Lung-DDPM) through the real code: the noise schedule against the
reference formulas, a tiny DDPM that learns, RePaint sampling that keeps the known voxels,
bit-identical resume after SIGTERM and SIGKILL, lung segmentation against the demo's
known lungs, fresh layouts, composition on the source grid, the plan and the quality
metrics."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from interrupt import signal_when_written

from radpath import synthesis
from radpath import synthesis_layout as layouts
from radpath import synthesis_quality as quality
from radpath.configuration import synthesis_plan
from radpath.training import checkpoint_path, list_checkpoints

TINY = {
    "network": "monai_ddpm_unet", "size": 16, "channels": [8, 16],
    "attention_levels": [False, True], "num_res_blocks": 1, "norm_groups": 4,
    "head_channels": 8, "timesteps": 250, "schedule": "cosine", "steps": 200,
    "batch_size": 2, "learning_rate": 2e-3, "ema_decay": 0.99, "precision": "bf16",
    "log_every": 20,
}


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


# ------------------------------------------------------------------------------ schedule


def reference_cosine_alphas_cumprod(T: int, s: float = 8e-3) -> np.ndarray:
    """Nichol and Dhariwal (2021), eq. 17, betas clipped at 0.999, in float64."""
    f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
    abar = f / f[0]
    betas = np.clip(1 - abar[1:] / abar[:-1], 0, 0.999)
    return np.cumprod(1 - betas)


def test_noise_schedules_match_the_reference_formulas():
    cosine = synthesis.make_scheduler({"schedule": "cosine", "timesteps": 250})
    np.testing.assert_allclose(cosine.alphas_cumprod.double().numpy(),
                               reference_cosine_alphas_cumprod(250), atol=1e-6)
    linear = synthesis.make_scheduler({"schedule": "linear", "timesteps": 1000})
    betas = np.linspace(1e-4, 2e-2, 1000)
    np.testing.assert_allclose(linear.alphas_cumprod.double().numpy(),
                               np.cumprod(1 - betas), atol=1e-6)
    # forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)
    x0, noise = torch.rand(2, 1, 4, 4, 4) * 2 - 1, torch.randn(2, 1, 4, 4, 4)
    t = torch.tensor([10, 200])
    abar = reference_cosine_alphas_cumprod(250)[t.numpy()]
    expected = (np.sqrt(abar)[:, None, None, None, None] * x0.double().numpy()
                + np.sqrt(1 - abar)[:, None, None, None, None] * noise.double().numpy())
    # (float32 arithmetic on values up to ~3: 1e-5)
    np.testing.assert_allclose(cosine.add_noise(x0, noise, t).numpy(), expected, atol=1e-5)


def test_reverse_step_is_the_ddpm_posterior_and_monais_step_without_respacing():
    scheduler = synthesis.make_scheduler({"schedule": "cosine", "timesteps": 250})
    abar = scheduler.alphas_cumprod
    sample, epsilon = torch.randn(1, 1, 4, 4, 4), torch.randn(1, 1, 4, 4, 4)
    for t in (249, 120, 1):
        generator = torch.Generator().manual_seed(t)
        monai_prev, _ = scheduler.step(epsilon, t, sample, generator=generator)
        noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(t))
        ours = synthesis.reverse_step(abar, epsilon, t, t - 1, sample, noise)
        torch.testing.assert_close(ours, monai_prev, atol=1e-5, rtol=1e-5)
    # respaced: from t to t_prev with beta' = 1 - abar_t / abar_prev (Ho et al. eq. 7)
    t, t_prev = 200, 150
    a_t, a_p = abar[t].double(), abar[t_prev].double()
    beta = 1 - a_t / a_p
    x0 = ((sample.double() - (1 - a_t).sqrt() * epsilon.double()) / a_t.sqrt()).clamp(-1, 1)
    mean = (a_p.sqrt() * beta / (1 - a_t)) * x0 + ((1 - beta).sqrt() * (1 - a_p) / (1 - a_t)
                                                    ) * sample.double()
    torch.testing.assert_close(synthesis.reverse_step(abar, epsilon, t, t_prev, sample, None),
                               mean.float(), atol=1e-6, rtol=1e-6)
    assert synthesis.sampling_timesteps(250, 5) == [249, 187, 124, 62, 0]
    assert synthesis.sampling_timesteps(250, 250) == list(range(249, -1, -1))
    with pytest.raises(ValueError, match="sampling steps"):
        synthesis.sampling_timesteps(250, 300)


# ------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def trained():
    volumes, labels = sphere_volumes(12, seed=1)
    return synthesis.train_ddpm(volumes, labels, TINY, 3, patient_ids=[f"P{i}" for i in
                                                                        range(12)],
                                device="cpu")


def test_a_tiny_ddpm_learns_the_noise(trained):
    loss = trained.history["loss"].to_numpy()
    assert len(loss) == TINY["steps"] // TINY["log_every"]
    assert loss[-3:].mean() < 0.5 * loss[0], loss  # L1 of pure guessing is ~0.8
    assert trained.fit_ids == [f"P{i}" for i in range(12)]


def test_sampling_keeps_known_voxels_and_is_deterministic(trained, tmp_path):
    volumes, labels = sphere_volumes(1, seed=9)
    region = layouts.region_mask(labels[0], (1.0, 1.0, 1.0), "nodule", 2.0)
    assert 0 < region.mean() < 0.5
    kwargs = {"steps": 10, "seed": 5, "device": "cpu"}
    first = synthesis.sample_volume(trained, labels[0], volumes[0], region, **kwargs)
    again = synthesis.sample_volume(trained, labels[0], volumes[0], region, **kwargs)
    other = synthesis.sample_volume(trained, labels[0], volumes[0], region,
                                    **kwargs | {"seed": 6})
    assert first.shape == (16, 16, 16) and first.dtype == np.float32
    np.testing.assert_array_equal(first[~region], volumes[0][~region])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[region], other[region])
    assert np.abs(first).max() <= 1.0 + 1e-6
    # the saved model samples the same volume
    synthesis.save_model(tmp_path / "model.pt", trained)
    loaded = synthesis.load_model(tmp_path / "model.pt")
    assert loaded.weights_sha256 == trained.weights_sha256
    np.testing.assert_array_equal(
        synthesis.sample_volume(loaded, labels[0], volumes[0], region, **kwargs), first)
    # the model draws the nodule the layout asks for: brighter inside it than in the lung
    full = synthesis.sample_volume(trained, labels[0], volumes[0], np.ones_like(region),
                                   steps=50, seed=1, device="cpu")
    assert full[labels[0] == 2].mean() > full[labels[0] == 1].mean() + 0.5


RESUME = TINY | {"size": 8, "steps": 240, "log_every": 10}
RESUME_SCRIPT = """
import json, sys
sys.path[:0] = sys.argv[3:]
import torch
torch.set_num_threads(1)
from test_synthesis import RESUME, sphere_volumes
from radpath import synthesis
volumes, labels = sphere_volumes(6, size=8, seed=2)
synthesis.train_ddpm(volumes, labels, RESUME, 4, patient_ids=list("abcdef"),
                     checkpoint_dir=sys.argv[1], checkpoint_every=int(sys.argv[2]),
                     device="cpu")
"""


def run_and_kill(folder, repo, sig, after_step: int) -> int:
    process = subprocess.Popen(
        [sys.executable, "-c", RESUME_SCRIPT, str(folder), "20", str(repo / "scripts"),
         str(repo / "tests" / "unit")],
        env=os.environ | {"PYTHONPATH": os.pathsep.join(
            [str(repo / "scripts"), str(repo / "tests" / "support")])}, stderr=subprocess.PIPE)
    return signal_when_written(process, checkpoint_path(folder, after_step), sig, 180)


def test_a_killed_training_resumes_to_the_same_weights(tmp_path, repo):
    torch.set_num_threads(1)
    volumes, labels = sphere_volumes(6, size=8, seed=2)

    def train(folder=None):
        return synthesis.train_ddpm(volumes, labels, RESUME, 4, patient_ids=list("abcdef"),
                                    checkpoint_dir=folder, checkpoint_every=20, device="cpu")

    reference = train()
    for sig, after, status in ((signal.SIGTERM, 20, 128 + signal.SIGTERM),
                               (signal.SIGKILL, 40, -signal.SIGKILL)):
        folder = tmp_path / sig.name
        assert run_and_kill(folder, repo, sig, after) == status
        done = [step for step, _ in list_checkpoints(folder)]
        assert after <= max(done) < RESUME["steps"], done
        resumed = train(folder)
        assert resumed.resumed_from == max(done)
        for key, value in reference.ema_state.items():
            assert torch.equal(value, resumed.ema_state[key]), (sig.name, key)
        pd.testing.assert_frame_equal(resumed.history[["step", "loss"]],
                                      reference.history[["step", "loss"]])
        assert not list(folder.glob(".tmp-*"))


# ------------------------------------------------------------------------------ layouts


LUNG_SETTINGS = {"threshold_hu": -400.0, "air_hu": -950.0, "outside_air_fraction": 0.25,
                 "min_volume_ml": 0.1, "max_components": 2, "closing_mm": 3.0}


def chest_phantom(lungs: bool = True, seed: int = 0):
    """A full-field chest CT (4 mm voxels, 384 x 384 x 160 mm) in HU and what is where:
    an elliptical body (fat rim, soft tissue), two lungs (-850 HU) that run out of the scan
    at both ends, the trachea entering from the top slice and splitting into the main
    bronchi that reach the lungs, air around the body, and below it a table whose foam core
    (-900 HU) is enclosed by its shell. Without `lungs`: an abdomen with bowel gas."""
    rng = np.random.default_rng(seed)
    shape = (40, 96, 96)  # z, y, x
    z, y, x = (np.mgrid[: shape[0], : shape[1], : shape[2]] + 0.5) * 4.0
    x, y, z = x - 192.0, y - 192.0, z
    body = (x / 150) ** 2 + (y / 100) ** 2 <= 1
    inner = (x / 140) ** 2 + (y / 90) ** 2 <= 1
    hu = np.full(shape, -1000.0)
    hu[body] = -100.0
    hu[inner] = 40.0
    truth = {"body": body}
    lung = np.zeros(shape, bool)
    if lungs:
        for side in (-1, 1):
            lung |= ((x - side * 70) / 50) ** 2 + (y / 70) ** 2 <= 1
        trachea = (x**2 + (y + 30) ** 2 <= 9**2) & (z >= 100)
        for side in (-1, 1):  # main bronchi from the carina (z 100) into each lung
            t = np.clip((100 - z) / 40, 0, 1)
            centre_x, centre_y = side * 55 * t, -30 + 20 * t
            trachea |= ((x - centre_x) ** 2 + (y - centre_y) ** 2 <= 6**2) & (z < 100) & (z > 60)
        hu[lung] = -850.0
        hu[trachea] = -1000.0
        truth["airways"] = trachea & ~lung
    else:
        gas = ((x - 30) ** 2 + (y - 10) ** 2 + (z - 80) ** 2) <= 15**2
        hu[gas] = -1000.0
    table = (np.abs(x) <= 150) & (y >= 112) & (y <= 132)
    core = (np.abs(x) <= 142) & (y >= 116) & (y <= 128)
    hu[table] = 200.0
    hu[core] = -900.0
    truth.update(lungs=lung, table_core=core, air=~body & ~table)
    hu += rng.normal(0, 20, shape)
    ct = sitk.GetImageFromArray(np.clip(np.rint(hu), -1024, 3071).astype(np.int16))
    ct.SetSpacing((4.0, 4.0, 4.0))
    return ct, truth


def crop(ct: sitk.Image, truth: dict, x_mm: tuple[float, float], y_mm: tuple[float, float]):
    """The phantom cropped in-plane to [x0, x1) x [y0, y1) mm around the body's centre."""
    xs = slice(int((x_mm[0] + 192) // 4), int((x_mm[1] + 192) // 4))
    ys = slice(int((y_mm[0] + 192) // 4), int((y_mm[1] + 192) // 4))
    array = sitk.GetArrayFromImage(ct)[:, ys, xs]
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(ct.GetSpacing())
    return image, {key: value[:, ys, xs] for key, value in truth.items()}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_lungs_of_a_full_chest_scan_without_airways_table_or_outside_air():
    ct, truth = chest_phantom()
    search = layouts.segment_lungs(ct, LUNG_SETTINGS)
    assert dice(search.lungs, truth["lungs"]) > 0.97
    assert not (search.lungs & truth["table_core"]).any()
    assert not (search.lungs & truth["air"]).any()
    # The trachea and main bronchi are removed (a ring of partial volume may stay where a
    # bronchus enters the lung).
    assert (search.lungs & truth["airways"]).sum() < 0.05 * truth["airways"].sum()
    assert search.airway_ml > 0.5 * truth["airways"].sum() * 64 / 1000
    assert search.outside_air >= 1 and search.outside_body >= 1  # around the body; table core


def test_lungs_of_a_crop_whose_field_of_view_cuts_through_the_lung():
    """Radiotherapy-style crop: the field of view cuts both lungs at its sides and keeps a
    strip of air in front of the chest; lung that touches the edge is lung, the air is not."""
    ct, truth = crop(*chest_phantom(seed=1), x_mm=(-100, 100), y_mm=(-112, 60))
    assert truth["lungs"][:, :, [0, -1]].any() and truth["air"][:, 0].all()
    search = layouts.segment_lungs(ct, LUNG_SETTINGS)
    assert dice(search.lungs, truth["lungs"]) > 0.97
    assert not (search.lungs & truth["air"]).any()
    assert search.outside_air == 1


def test_a_ct_without_lungs_is_refused_naming_the_patient_and_what_was_searched(tmp_path):
    from radpath.defaults import default_config
    from radpath.synthesis_prepare import layout_job

    ct, truth = chest_phantom(lungs=False)
    search = layouts.segment_lungs(ct, LUNG_SETTINGS)
    assert not search.lungs.any() and search.enclosed_air == 1  # the bowel gas
    nodule = np.zeros(truth["body"].shape, np.uint8)
    nodule[18:22, 44:50, 60:66] = 1
    mask = sitk.GetImageFromArray(nodule)
    mask.CopyInformation(ct)
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(mask, str(tmp_path / "mask.nii.gz"))
    config = default_config()
    settings = {**config["synthesis"], "lungs": LUNG_SETTINGS}
    images = {"patient_id": "ABD7", "ct_path": str(tmp_path / "ct.nii.gz"),
              "mask_path": str(tmp_path / "mask.nii.gz"), "mask_label": 1,
              "ct_cfg": config["ct"]}
    with pytest.raises(layouts.LayoutError) as error:
        layout_job(images=images, lung_label="", settings=settings,
                   npz_out=str(tmp_path / "l.npz"), layout_out=str(tmp_path / "l.nii.gz"),
                   ct_out=str(tmp_path / "c.nii.gz"))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"patient ABD7: CT {tmp_path / 'ct.nii.gz'}: no lung found")
    assert "below -400.0 HU" in message and "1 all air inside it" in message
    assert "lung_label" in message
    assert not list(tmp_path.glob("l.*"))


def test_lung_segmentation_finds_the_lungs_of_every_demo_patient(repo):
    """The shipped demo cohort (config/config.yaml's demo settings), every patient, without
    its lung label: Dice against the known lungs >= 0.90."""
    import yaml

    from radpath.demo import LESION_LABEL, LUNG_LABEL, patient_images, sample_cohort

    config = yaml.safe_load((repo / "config/config.yaml").read_text(encoding="utf-8"))
    settings = config["synthesis"]["lungs"]
    cohort = sample_cohort(config["demo"]["n_patients"], config["demo"]["n_scanners"],
                           config["seed"])
    scores = {}
    for patient in cohort.patients:
        hu, labels = patient_images(patient)
        ct = sitk.GetImageFromArray(hu)
        ct.SetSpacing(patient.grid.spacing)
        found = layouts.segment_lungs(ct, settings).lungs
        scores[patient.patient_id] = dice(found, labels == LUNG_LABEL)
        assert not (found & (labels == LESION_LABEL)).all()
    values = np.array(list(scores.values()))
    print(f"demo lung Dice: min {values.min():.3f}, median {np.median(values):.3f}")
    assert len(scores) == config["demo"]["n_patients"]
    assert values.min() >= 0.90, scores


def test_the_lung_label_of_the_mask_file_is_used_when_given(tmp_path):
    labels = np.zeros((6, 8, 8), np.uint8)
    labels[:, 4:, :] = 3
    image = sitk.GetImageFromArray(labels)
    sitk.WriteImage(image, str(tmp_path / "mask.nii.gz"))
    lungs = layouts.lungs_from_label(str(tmp_path / "mask.nii.gz"), 3, image, "P1")
    assert lungs.sum() == 6 * 4 * 8
    with pytest.raises(ValueError, match="P1.*no voxel of lung label 5"):
        layouts.lungs_from_label(str(tmp_path / "mask.nii.gz"), 5, image, "P1")


def test_a_fresh_layout_moves_and_scales_the_nodule():
    _, labels = sphere_volumes(1, size=32, seed=4)
    layout = labels[0]
    spacing = (0.5, 1.0, 2.0)  # x, y, z mm
    before = np.array(np.nonzero(layout == 2)).mean(axis=1)  # z, y, x
    fresh, old = layouts.move_nodule(layout, spacing, (2.0, 3.0, 4.0), 1.0, "P1")
    after = np.array(np.nonzero(fresh == 2)).mean(axis=1)
    np.testing.assert_allclose(after - before, [4.0 / 2.0, 3.0 / 1.0, 2.0 / 0.5], atol=0.3)
    assert old.sum() == (layout == 2).sum()
    assert set(np.unique(fresh[old & (fresh != 2)])) <= {0, 1}  # old voxels: neighbours' class
    bigger, _ = layouts.move_nodule(layout, spacing, (0, 0, 0), 1.5, "P1")
    assert abs((bigger == 2).sum() / (layout == 2).sum() - 1.5**3) < 0.5
    with pytest.raises(ValueError, match="P1: the nodule moved .* leaves the field of view"):
        layouts.move_nodule(layout, spacing, (0.0, 0.0, 200.0), 1.0, "P1")


def test_composition_keeps_the_source_voxels_and_grid():
    ct = sitk.GetImageFromArray(np.arange(6 * 8 * 10, dtype=np.int16).reshape(6, 8, 10))
    ct.SetSpacing((0.7, 0.7, 2.5))
    ct.SetOrigin((-3.0, 4.0, 10.0))
    model = layouts.Grid((4, 4, 4), (1.75, 1.4, 3.75), (-2.475, 4.35, 10.625),
                         tuple(np.eye(3).ravel()))
    synthetic = model.image(np.full((4, 4, 4), -500.0, np.float32))
    region = np.zeros((6, 8, 10), bool)
    region[2:4, 3:6, 4:8] = True
    out = layouts.compose(ct, synthetic, region)
    assert layouts.Grid.of(out) == layouts.Grid.of(ct)
    assert out.GetPixelID() == ct.GetPixelID()
    array, real = sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(ct)
    np.testing.assert_array_equal(array[~region], real[~region])
    assert (array[region] == -500).all()


def test_the_model_grid_covers_the_scan():
    ct = sitk.Image([92, 92, 30], sitk.sitkInt16)
    ct.SetSpacing((0.7, 0.7, 2.0))
    ct.SetOrigin((10.0, -5.0, 3.0))
    nodule = sitk.Image([92, 92, 30], sitk.sitkUInt8)
    nodule.CopyInformation(ct)
    nodule[40:50, 40:50, 10:14] = 1
    grid = layouts.model_grid(ct, nodule, {"size": 16, "field_of_view": "scan"})
    np.testing.assert_allclose(np.array(grid.spacing) * 16, [92 * 0.7, 92 * 0.7, 60.0])
    first_corner = np.array(ct.GetOrigin()) - np.array(ct.GetSpacing()) / 2
    np.testing.assert_allclose(np.array(grid.origin) - np.array(grid.spacing) / 2, first_corner)
    cube = layouts.model_grid(ct, nodule, {"size": 16, "field_of_view": "nodule",
                                           "edge_mm": 32.0})
    centre = np.array(cube.origin) + np.array(cube.spacing) * 7.5
    np.testing.assert_allclose(centre, ct.TransformContinuousIndexToPhysicalPoint(
        (44.5, 44.5, 11.5)), atol=1e-6)


# ------------------------------------------------------------------------------ plan, quality


def test_the_plan_uses_training_patients_only_and_holds_some_out():
    train = [f"P{i:03d}" for i in range(30)]
    settings = {"holdout_fraction": 0.2, "layouts": 4, "draws": 2,
                "fresh": {"patients": 2}}
    plan = synthesis_plan(train, settings, 42)
    assert set(plan["fit"]) | set(plan["heldout"]) == set(train)
    assert not set(plan["fit"]) & set(plan["heldout"]) and plan["heldout"]
    real = [(p, d) for v, p, d in plan["samples"] if v == "real"]
    assert len(real) == 8 and {p for p, _ in real} <= set(plan["fit"])
    assert {p for v, p, _ in plan["samples"] if v == "heldout"} == set(plan["heldout"])
    assert plan == synthesis_plan(list(reversed(train)), settings, 42)
    # adding patients never moves existing ones between fit and held out
    more = synthesis_plan(train + ["Q1", "Q2"], settings, 42)
    assert set(plan["heldout"]) <= set(more["heldout"])


def test_quality_metrics_tell_real_from_unreal():
    rng = np.random.default_rng(0)
    real = rng.normal(-800, 40, (8, 10, 12))
    lungs = np.ones(real.shape, bool)
    same = quality.voxel_metrics(real, real, lungs, (-1000, 400))
    assert same["mae_hu"] == 0 and math.isinf(same["psnr_db"]) and same["ssim"] == 1.0
    noisy = quality.voxel_metrics(real, real + rng.normal(0, 50, real.shape), lungs,
                                  (-1000, 400))
    assert 30 < noisy["mae_hu"] < 50 and 25 < noisy["psnr_db"] < 35 and noisy["ssim"] < 0.9
    features = [f"f{i}" for i in range(30)]
    patients = pd.DataFrame(rng.normal(size=(40, 30)), columns=features)
    alike = pd.DataFrame(rng.normal(size=(20, 30)), columns=features)
    shifted = pd.DataFrame(rng.normal(1.5, 1.0, size=(20, 30)), columns=features)
    good, per_feature = quality.radiomics_realism(patients, alike, 1)
    bad, _ = quality.radiomics_realism(patients, shifted, 1)
    assert len(per_feature) == 30
    by = {t: frame.set_index("metric") for t, frame in (("good", good), ("bad", bad))}
    for metric in ("ks_median", "frechet"):
        assert by["bad"].loc[metric, "synthetic_vs_real"] > 2 * by["good"].loc[
            metric, "synthetic_vs_real"]
        assert by["good"].loc[metric, "synthetic_vs_real"] < 2 * by["good"].loc[
            metric, "real_half_vs_half"]


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="unknown synthesis network"):
        synthesis.build_network(TINY | {"network": "nope"}, 0)
    with pytest.raises(ValueError, match="size 18 must be divisible by 4"):
        synthesis.build_network(TINY | {"size": 18, "channels": [8, 8, 8],
                                        "attention_levels": [False] * 3}, 0)
    with pytest.raises(ValueError, match="one entry per level"):
        synthesis.build_network(TINY | {"attention_levels": [False]}, 0)
    volumes, labels = sphere_volumes(2)
    with pytest.raises(ValueError, match="must be \\(N, 8, 8, 8\\)"):
        synthesis.train_ddpm(volumes, labels, TINY | {"size": 8}, 0, patient_ids=["a", "b"])
    assert json.dumps(layouts.window_to_unit(np.array([-2000.0, 400.0]), (-1000, 400)
                                               ).tolist()) == "[-1.0, 1.0]"
