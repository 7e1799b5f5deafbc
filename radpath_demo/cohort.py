"""Synthetic demo cohort: chest-CT-like crops with a lung lesion, scanners and survival.

Every patient gets a lesion (lobulated, spiculated ellipsoid with an enhancing rim and a
necrotic core), a chest wall (air, fat, muscle) and lung with vessels, imaged by one of a
few simulated scanners that differ in voxel size, slice thickness, sharpness, noise and HU
offset. Survival follows a Cox model whose log-hazard grows with lesion volume, lesion
heterogeneity (necrosis, texture), stage and age, so radiomics has a real signal to find.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from radpath.inputs.io import atomic_path, write_tsv

LESION_LABEL = 1
MUSCLE_LABEL = 2
LUNG_LABEL = 3  # the known lungs (synthesis: lung_label, and the segmentation test)
STAGES = ("I", "II", "III", "IV")
HU_RANGE = (-1024, 3071)

# Log lesion volume (ml) is standardised with the sampling distribution's constants, so a
# patient's true risk does not depend on who else is in the cohort.
LOG_RADIUS_MEAN = math.log(10.5)  # mm
LOG_RADIUS_SD = 0.3
LOG_VOLUME_MEAN = math.log(4.0 / 3.0 * math.pi * 10.5**3 / 1000.0)
LOG_VOLUME_SD = 3 * LOG_RADIUS_SD


@dataclass(frozen=True)
class Scanner:
    """Acquisition and reconstruction of one simulated CT scanner."""

    name: str
    kernel: str
    pixel_mm: float  # in-plane spacing
    slice_thickness: float  # mm, also the slice spacing
    blur_mm: float  # in-plane Gaussian sigma of the reconstruction kernel
    noise_hu: float  # noise SD in a uniform region
    noise_grain_mm: float  # in-plane correlation length of the noise
    hu_offset: float  # calibration offset


SCANNERS = (
    Scanner("scanner_A", "soft", 0.70, 1.0, 0.8, 14.0, 0.8, 0.0),
    Scanner("scanner_B", "sharp", 0.80, 2.0, 0.3, 30.0, 0.4, 12.0),
    Scanner("scanner_C", "standard", 0.90, 3.0, 0.55, 20.0, 0.6, -8.0),
    Scanner("scanner_D", "soft", 0.78, 1.5, 1.0, 16.0, 0.9, 5.0),
    Scanner("scanner_E", "sharp", 0.65, 2.5, 0.25, 34.0, 0.35, -4.0),
)


@dataclass(frozen=True)
class Grid:
    """Voxel grid of one image; size, spacing and origin in SimpleITK's (x, y, z) order."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Numpy (z, y, x) shape of arrays on this grid."""
        return self.size[2], self.size[1], self.size[0]

    def axis_coordinates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Physical x, y and z (mm) of the voxel centres along each axis."""
        return tuple(
            o + s * np.arange(n)
            for n, s, o in zip(self.size, self.spacing, self.origin, strict=True)
        )

    def with_subslices(self, k: int) -> Grid:
        """The same field of view with each slice split into k thinner slices."""
        sz = self.spacing[2] / k
        oz = self.origin[2] - self.spacing[2] / 2 + sz / 2
        return Grid(
            (self.size[0], self.size[1], self.size[2] * k),
            (*self.spacing[:2], sz),
            (*self.origin[:2], oz),
        )


@dataclass(frozen=True, eq=False)
class Lesion:
    """Lesion centred at the origin (mm); boundary radius R * g(u) in its rotated, scaled frame."""

    radius_mm: float
    axes: np.ndarray  # relative semi-axes, product 1
    rotation: np.ndarray  # 3x3, columns are the principal axes
    lobe_directions: np.ndarray  # (k, 3) unit vectors
    lobe_frequencies: np.ndarray
    lobe_amplitudes: np.ndarray
    lobe_phases: np.ndarray
    spike_directions: np.ndarray  # (j, 3) unit vectors
    spike_lengths: np.ndarray  # relative to the local radius
    spike_sharpness: float
    core_fraction: float  # necrotic core radius / lesion radius (0 = no necrosis)
    core_irregularity: float
    enhancing_hu: float
    necrotic_hu: float
    texture_hu: float
    texture_grain_mm: float
    extent_mm: tuple[float, float, float]  # half-extent along x, y, z
    volume_ml: float


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Soft-tissue organ around the lesion, chest wall towards -y, lung towards +y, vessels."""

    wall_mm: float  # lesion centre to the inner surface of the muscle at x = 0
    lung_mm: float  # lesion centre to the lung at x = 0
    curvature: float  # 1/mm: wall and lung boundary bend towards the lesion as |x| grows
    muscle_mm: float
    fat_mm: float
    organ_hu: float
    lung_hu: float
    muscle_hu: float
    fat_hu: float
    vessel_points: np.ndarray  # (v, 3)
    vessel_directions: np.ndarray  # (v, 3) unit vectors
    vessel_radii: np.ndarray


@dataclass(frozen=True, eq=False)
class DemoPatient:
    """Everything needed to render one patient's CT and label map."""

    patient_id: str
    scanner: Scanner
    grid: Grid
    lesion: Lesion
    anatomy: Anatomy
    image_seed: np.random.SeedSequence


@dataclass(frozen=True)
class RiskModel:
    """Planted log-hazard: per SD of log volume and heterogeneity, per stage, per decade."""

    volume: float = 0.8
    heterogeneity: float = 0.7
    stage: tuple[float, float, float, float] = (0.0, 0.35, 0.75, 1.3)
    age_per_decade: float = 0.15
    # Chemoradiotherapy (randomised, half the patients) helps high-risk patients: its log
    # hazard ratio is treatment_log_hr * sigmoid(2 z), z the standardised log-hazard (about
    # HR 0.4 at z = +1.5, 0.9 at z = -1.5).
    treated_fraction: float = 0.5
    treatment_log_hr: float = -1.0


@dataclass(frozen=True)
class SurvivalModel:
    """Weibull death and progression times, administrative censoring plus drop-out."""

    weibull_shape: float = 1.3
    os_scale_months: float = 40.0
    progression_scale_months: float = 16.0
    progression_noise_sd: float = 0.5
    accrual_months: float = 36.0
    min_follow_up_months: float = 18.0
    dropout_per_month: float = 0.005


@dataclass(frozen=True, eq=False)
class DemoCohort:
    """Patients to render plus the patients, clinical and truth tables."""

    patients: list[DemoPatient]
    patients_sheet: pd.DataFrame
    clinical: pd.DataFrame
    truth: pd.DataFrame


# --- lesion geometry ---------------------------------------------------------------------


def sphere_directions(n: int) -> np.ndarray:
    """n nearly uniform unit vectors (Fibonacci sphere), shape (n, 3)."""
    i = np.arange(n) + 0.5
    polar = np.arccos(1 - 2 * i / n)
    azimuth = math.pi * (1 + 5**0.5) * i
    return np.stack(
        [np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1
    )


def boundary_scale(lesion: Lesion, unit: np.ndarray) -> np.ndarray:
    """g(u): lesion radius in direction u (lesion frame) relative to radius_mm."""
    lobes = np.cos(
        math.pi * lesion.lobe_frequencies * (unit @ lesion.lobe_directions.T) + lesion.lobe_phases
    )
    spikes = np.clip(unit @ lesion.spike_directions.T, 0, 1) ** lesion.spike_sharpness
    return 1 + lobes @ lesion.lobe_amplitudes + spikes @ lesion.spike_lengths


def _lesion_extent_and_volume(lesion: Lesion) -> tuple[tuple[float, float, float], float]:
    directions = np.concatenate([sphere_directions(4000), lesion.spike_directions])
    g = boundary_scale(lesion, directions)
    boundary = lesion.radius_mm * g[:, None] * (directions * lesion.axes) @ lesion.rotation.T
    extent = tuple(float(e) for e in np.abs(boundary).max(axis=0))
    volume_ml = 4 / 3 * math.pi * lesion.radius_mm**3 * float(np.mean(g[:4000] ** 3)) / 1000
    return extent, volume_ml


def sample_lesion(radius_mm: float, heterogeneity: float, rng: np.random.Generator) -> Lesion:
    """Random lesion shape and texture; `heterogeneity` (~N(0, 1)) drives necrosis and texture."""
    axes = rng.uniform(0.8, 1.25, 3)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    n_lobes, n_spikes = 5, int(rng.integers(0, 7))
    core = float(np.clip(0.5 + 0.2 * heterogeneity + rng.normal(0, 0.05), 0, 0.8))
    contrast = max(5.0, 35 + 15 * heterogeneity + rng.normal(0, 5))
    enhancing = 95 + rng.normal(0, 8)
    draft = Lesion(
        radius_mm=float(radius_mm),
        axes=axes / np.prod(axes) ** (1 / 3),
        rotation=rotation,
        lobe_directions=_unit_vectors(rng, n_lobes),
        lobe_frequencies=rng.uniform(1, 3, n_lobes),
        lobe_amplitudes=rng.uniform(0.02, 0.09, n_lobes),
        lobe_phases=rng.uniform(0, 2 * math.pi, n_lobes),
        spike_directions=_unit_vectors(rng, n_spikes),
        spike_lengths=rng.uniform(0.15, 0.5, n_spikes),
        spike_sharpness=float(rng.uniform(40, 80)),
        core_fraction=core,
        core_irregularity=float(rng.uniform(0.05, 0.15)),
        enhancing_hu=float(enhancing),
        necrotic_hu=float(enhancing - contrast),
        texture_hu=float(max(5.0, 14 + 4 * heterogeneity + rng.normal(0, 2))),
        texture_grain_mm=float(rng.uniform(1.0, 2.0)),
        extent_mm=(0.0, 0.0, 0.0),
        volume_ml=0.0,
    )
    extent, volume = _lesion_extent_and_volume(draft)
    return dataclasses.replace(draft, extent_mm=extent, volume_ml=volume)


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _lesion_box(lesion: Lesion, grid: Grid) -> tuple[slice, slice, slice]:
    """(z, y, x) slices of the grid that contain the lesion."""
    slices = []
    for coords, extent, spacing in zip(
        grid.axis_coordinates(), lesion.extent_mm, grid.spacing, strict=True
    ):
        inside = np.flatnonzero(np.abs(coords) <= extent + spacing)
        slices.append(slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0))
    return slices[2], slices[1], slices[0]


def lesion_radial_field(lesion: Lesion, grid: Grid) -> np.ndarray:
    """Normalised radius at each voxel centre: 0 at the centre, 1 on the boundary, inf far out."""
    field = np.full(grid.shape, np.inf)
    box = _lesion_box(lesion, grid)
    x, y, z = (c[s] for c, s in zip(grid.axis_coordinates(), box[::-1], strict=True))
    offsets = np.stack(
        np.broadcast_arrays(x[None, None, :], y[None, :, None], z[:, None, None]), axis=-1
    )
    local = (offsets @ lesion.rotation) / lesion.axes
    rho = np.linalg.norm(local, axis=-1)
    unit = local / np.maximum(rho, 1e-9)[..., None]
    field[box] = rho / (lesion.radius_mm * boundary_scale(lesion, unit))
    return field


def make_lesion_mask(lesion: Lesion, grid: Grid) -> np.ndarray:
    """Boolean (z, y, x) lesion mask sampled at voxel centres."""
    return lesion_radial_field(lesion, grid) <= 1


# --- anatomy and rendering ---------------------------------------------------------------


def sample_anatomy(lesion: Lesion, grid: Grid, rng: np.random.Generator) -> Anatomy:
    """Chest wall at the -y edge of the field of view (air strip outside it), lung towards +y."""
    fov_edge_y = grid.origin[1] - grid.spacing[1] / 2  # mm from the lesion centre, negative
    half_fov = grid.spacing[1] * grid.size[1] / 2
    muscle, fat = float(rng.uniform(7, 12)), float(rng.uniform(3, 7))
    n_vessels = int(rng.integers(2, 6))
    return Anatomy(
        wall_mm=-fov_edge_y - muscle - fat - float(rng.uniform(1, 5)),
        lung_mm=lesion.extent_mm[1] + float(rng.uniform(3, 15)),
        curvature=float(rng.uniform(0.002, 0.005)),
        muscle_mm=muscle,
        fat_mm=fat,
        organ_hu=float(rng.normal(40, 5)),
        lung_hu=float(rng.normal(-850, 15)),
        muscle_hu=float(rng.normal(50, 4)),
        fat_hu=float(rng.normal(-100, 8)),
        vessel_points=rng.uniform(-half_fov, half_fov, (n_vessels, 3)),
        vessel_directions=_unit_vectors(rng, n_vessels),
        vessel_radii=rng.uniform(0.7, 2.0, n_vessels),
    )


def _tissue_maps(anatomy: Anatomy, grid: Grid) -> dict[str, np.ndarray]:
    """Boolean (z, y, x) maps of air, fat, muscle, lung and vessels (the rest is organ)."""
    x, y, z = grid.axis_coordinates()
    bend = anatomy.curvature * x[None, :] ** 2
    below_wall = np.broadcast_to((bend - anatomy.wall_mm - y[:, None])[None], grid.shape)  # mm
    lung = np.broadcast_to((y[:, None] + bend - anatomy.lung_mm >= 0)[None], grid.shape)
    points = np.stack(
        np.broadcast_arrays(x[None, None, :], y[None, :, None], z[:, None, None]), axis=-1
    )
    vessels = np.zeros(grid.shape, dtype=bool)
    for p0, d, r in zip(
        anatomy.vessel_points, anatomy.vessel_directions, anatomy.vessel_radii, strict=True
    ):
        vessels |= np.linalg.norm(np.cross(points - p0, d), axis=-1) <= r
    fat_end = anatomy.muscle_mm + anatomy.fat_mm
    return {
        "air": below_wall > fat_end,
        "fat": (below_wall > anatomy.muscle_mm) & (below_wall <= fat_end),
        "muscle": (below_wall > 0) & (below_wall <= anatomy.muscle_mm),
        "lung": lung & (below_wall <= 0),
        "vessel": vessels & (below_wall <= 0),
    }


def smooth_random_field(
    shape: tuple[int, ...], grain_voxels: tuple[float, ...], rng: np.random.Generator
) -> np.ndarray:
    """Gaussian-filtered white noise scaled to zero mean and unit SD."""
    field = ndimage.gaussian_filter(rng.normal(size=shape), grain_voxels, mode="wrap")
    return (field - field.mean()) / field.std()


def _grain(grid: Grid, mm: float) -> tuple[float, float, float]:
    return mm / grid.spacing[2], mm / grid.spacing[1], mm / grid.spacing[0]


def _lesion_hu(
    lesion: Lesion, grid: Grid, radial: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Lesion attenuation: textured enhancing tissue around an irregular necrotic core."""
    texture = smooth_random_field(grid.shape, _grain(grid, lesion.texture_grain_mm), rng)
    core_noise = smooth_random_field(grid.shape, _grain(grid, 3.0), rng)
    core_distance = radial + lesion.core_irregularity * core_noise - lesion.core_fraction
    necrotic = 1 / (1 + np.exp(np.clip(core_distance / 0.04, -50, 50)))
    enhancing = lesion.enhancing_hu + lesion.texture_hu * texture
    return (
        necrotic * (lesion.necrotic_hu + 0.4 * lesion.texture_hu * texture)
        + (1 - necrotic) * enhancing
    )


def _ideal_hu(lesion: Lesion, anatomy: Anatomy, grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Noise-free, unblurred attenuation (HU) at the voxel centres of `grid`."""
    tissue = _tissue_maps(anatomy, grid)
    organ_texture = smooth_random_field(grid.shape, _grain(grid, 2.5), rng)
    lung_texture = smooth_random_field(grid.shape, _grain(grid, 1.5), rng)
    hu = anatomy.organ_hu + 8 * organ_texture
    hu = np.where(tissue["lung"], anatomy.lung_hu + 30 * lung_texture, hu)
    hu[tissue["vessel"]] = 130.0
    hu = np.where(tissue["muscle"], anatomy.muscle_hu + 4 * organ_texture, hu)
    hu = np.where(tissue["fat"], anatomy.fat_hu + 8 * organ_texture, hu)
    hu[tissue["air"]] = -1000.0
    radial = lesion_radial_field(lesion, grid)
    return np.where(radial <= 1, _lesion_hu(lesion, grid, radial, rng), hu)


def render_ct(
    lesion: Lesion, anatomy: Anatomy, scanner: Scanner, grid: Grid, rng: np.random.Generator
) -> np.ndarray:
    """Int16 (z, y, x) CT in HU as `scanner` would reconstruct it on `grid`.

    Each slice averages thin sub-slices (slab partial volume), then the reconstruction
    kernel blurs in-plane, then correlated noise and the scanner's HU offset are added.
    """
    subslices = max(1, math.ceil(grid.spacing[2] / 0.5))
    fine = _ideal_hu(lesion, anatomy, grid.with_subslices(subslices), rng)
    slab = fine.reshape(grid.shape[0], subslices, *grid.shape[1:]).mean(axis=1)
    sharpness = scanner.blur_mm / grid.spacing[0]
    blurred = ndimage.gaussian_filter(slab, (0, sharpness, sharpness), mode="nearest")
    grain = scanner.noise_grain_mm / grid.spacing[0]
    noise = smooth_random_field(grid.shape, (0, grain, grain), rng)
    hu = blurred + scanner.noise_hu * noise + scanner.hu_offset
    return np.clip(np.rint(hu), *HU_RANGE).astype(np.int16)


def make_label_map(lesion: Lesion, anatomy: Anatomy, grid: Grid) -> np.ndarray:
    """Uint8 (z, y, x) labels: LESION_LABEL for the lesion, MUSCLE_LABEL for chest-wall muscle,
    LUNG_LABEL for the lung (with its vessels)."""
    tissue = _tissue_maps(anatomy, grid)
    labels = np.where(tissue["muscle"], MUSCLE_LABEL, 0).astype(np.uint8)
    labels[tissue["lung"]] = LUNG_LABEL
    labels[make_lesion_mask(lesion, grid)] = LESION_LABEL
    return labels


def scan_grid(lesion: Lesion, scanner: Scanner, rng: np.random.Generator) -> Grid:
    """Field of view cropped around the lesion: margin >= 8 mm, in-plane >= 64 mm, lesion ~centred."""
    half = np.maximum(np.asarray(lesion.extent_mm) + 8, (32.0, 32.0, 12.0))
    spacing = np.array([scanner.pixel_mm, scanner.pixel_mm, scanner.slice_thickness])
    size = np.ceil(2 * half / spacing).astype(int)
    shift = rng.uniform(-2, 2, 3)
    origin = -spacing * (size - 1) / 2 + shift
    return Grid(
        tuple(int(n) for n in size),
        tuple(float(s) for s in spacing),
        tuple(float(o) for o in origin),
    )


# --- clinical data and survival ----------------------------------------------------------


def latent_risk(
    log_volume_z: np.ndarray,
    heterogeneity: np.ndarray,
    stage: np.ndarray,
    age: np.ndarray,
    model: RiskModel = RiskModel(),
) -> np.ndarray:
    """True log-hazard of each patient (stage as strings 'I'..'IV', age in years)."""
    stage_effect = np.array([model.stage[STAGES.index(s)] for s in stage])
    return (
        model.volume * np.asarray(log_volume_z)
        + model.heterogeneity * np.asarray(heterogeneity)
        + stage_effect
        + model.age_per_decade * (np.asarray(age) - 65) / 10
    )


def treatment_effect(log_hazard: np.ndarray, treated: np.ndarray, model: RiskModel) -> np.ndarray:
    """The treatment's log hazard ratio for each patient (0 if untreated): larger benefit
    the higher the untreated risk."""
    log_hazard = np.asarray(log_hazard, dtype=float)
    z = (log_hazard - log_hazard.mean()) / (log_hazard.std() or 1.0)
    return np.asarray(treated, float) * model.treatment_log_hr / (1.0 + np.exp(-2.0 * z))


def _weibull_times(
    log_hazard: np.ndarray, scale: float, shape: float, rng: np.random.Generator
) -> np.ndarray:
    return scale * (rng.exponential(size=log_hazard.shape) * np.exp(-log_hazard)) ** (1 / shape)


def simulate_survival(
    log_hazard: np.ndarray, rng: np.random.Generator, model: SurvivalModel = SurvivalModel()
) -> pd.DataFrame:
    """OS and PFS (months) from a Weibull proportional-hazards model.

    Progression shares the log-hazard plus its own noise; PFS ends at progression or death,
    so PFS <= OS. Censoring (accrual + minimum follow-up, random drop-out) is independent of
    risk. Returns columns os_time, os_event, pfs_time, pfs_event.
    """
    log_hazard = np.asarray(log_hazard, dtype=float)
    death = _weibull_times(log_hazard, model.os_scale_months, model.weibull_shape, rng)
    progression_hazard = log_hazard + rng.normal(0, model.progression_noise_sd, log_hazard.shape)
    progression = _weibull_times(
        progression_hazard, model.progression_scale_months, model.weibull_shape, rng
    )
    follow_up = model.min_follow_up_months + rng.uniform(0, model.accrual_months, log_hazard.shape)
    censor = np.minimum(follow_up, rng.exponential(1 / model.dropout_per_month, log_hazard.shape))
    progression_or_death = np.minimum(progression, death)
    return pd.DataFrame(
        {
            "os_time": _months(np.minimum(death, censor)),
            "os_event": (death <= censor).astype(int),
            "pfs_time": _months(np.minimum(progression_or_death, censor)),
            "pfs_event": (progression_or_death <= censor).astype(int),
        }
    )


def _months(t: np.ndarray) -> np.ndarray:
    """Round to 0.1 month, at least 0.1 (monotone, so PFS <= OS survives rounding)."""
    return np.maximum(np.round(t, 1), 0.1)


def _stage_from_score(score: np.ndarray) -> np.ndarray:
    cuts = np.array([-0.84, -0.13, 0.67])  # standard normal quantiles 0.2, 0.45, 0.75
    return np.array(STAGES)[np.searchsorted(cuts, score)]


def patient_ids(n: int, prefix: str = "P") -> list[str]:
    width = max(3, len(str(n)))
    return [f"{prefix}{i + 1:0{width}d}" for i in range(n)]


def sample_cohort(
    n_patients: int,
    n_scanners: int,
    seed: int,
    risk_model: RiskModel = RiskModel(),
    survival_model: SurvivalModel = SurvivalModel(),
    id_prefix: str = "P",
) -> DemoCohort:
    """Draw a whole cohort (no images): patients to render and the three tables."""
    if n_patients < 1:
        raise ValueError(f"demo cohort: n_patients must be >= 1, got {n_patients}")
    if not 1 <= n_scanners <= len(SCANNERS):
        raise ValueError(f"demo cohort: n_scanners must be in 1..{len(SCANNERS)}, got {n_scanners}")
    # A fourth stream for the treatment keeps the first three's draws as they were.
    cohort_seq, shape_seq, image_seq, treatment_seq = np.random.SeedSequence(seed).spawn(4)
    rng = np.random.default_rng(cohort_seq)
    ids = patient_ids(n_patients, id_prefix)
    scanners = [SCANNERS[k] for k in rng.permutation(np.arange(n_patients) % n_scanners)]
    radius_z = rng.normal(size=n_patients)
    radius = np.clip(np.exp(LOG_RADIUS_MEAN + LOG_RADIUS_SD * radius_z), 5, 20)
    heterogeneity = 0.3 * radius_z + math.sqrt(1 - 0.3**2) * rng.normal(size=n_patients)
    age = np.clip(np.rint(rng.normal(65, 10, n_patients)), 30, 90).astype(int)
    sex = rng.choice(np.array(["F", "M"]), n_patients)
    stage_noise = rng.normal(size=n_patients)

    patients = []
    for pid, scanner, r, h, shape_ss, image_ss in zip(
        ids,
        scanners,
        radius,
        heterogeneity,
        shape_seq.spawn(n_patients),
        image_seq.spawn(n_patients),
        strict=True,
    ):
        shape_rng = np.random.default_rng(shape_ss)
        lesion = sample_lesion(r, h, shape_rng)
        grid = scan_grid(lesion, scanner, shape_rng)
        patients.append(
            DemoPatient(
                pid, scanner, grid, lesion, sample_anatomy(lesion, grid, shape_rng), image_ss
            )
        )

    log_volume_z = (
        np.log([p.lesion.volume_ml for p in patients]) - LOG_VOLUME_MEAN
    ) / LOG_VOLUME_SD
    stage = _stage_from_score(0.5 * log_volume_z + math.sqrt(0.75) * stage_noise)
    log_hazard = latent_risk(log_volume_z, heterogeneity, stage, age, risk_model)
    treated = np.random.default_rng(treatment_seq).random(n_patients) < risk_model.treated_fraction
    survival = simulate_survival(
        log_hazard + treatment_effect(log_hazard, treated, risk_model), rng, survival_model
    )

    clinical = pd.concat(
        [pd.DataFrame({"patient_id": ids, "age": age, "sex": sex, "stage": stage,
                       "chemoradiotherapy": np.where(treated, "yes", "no")}), survival],
        axis=1,
    )
    sheet = pd.DataFrame(
        {
            "patient_id": ids,
            "ct": [f"ct/{pid}_ct.nii.gz" for pid in ids],
            "mask": [f"ct/{pid}_mask.nii.gz" for pid in ids],
            "mask_label": LESION_LABEL,
            # The lungs are known for every patient; the sheet names them for half, so the
            # synthesis layouts of the other half come from the classic segmentation.
            "lung_label": pd.array([LUNG_LABEL if i % 2 == 0 else None
                                    for i in range(n_patients)], dtype="Int64"),
            "scanner": [s.name for s in scanners],
            "kernel": [s.kernel for s in scanners],
            "slice_thickness": [s.slice_thickness for s in scanners],
        }
    )
    truth = pd.DataFrame(
        {
            "patient_id": ids,
            "log_hazard": np.round(log_hazard, 6),
            "lesion_volume_ml": np.round([p.lesion.volume_ml for p in patients], 6),
            "log_volume_z": np.round(log_volume_z, 6),
            "heterogeneity": np.round(heterogeneity, 6),
            "necrotic_fraction": np.round([p.lesion.core_fraction**3 for p in patients], 6),
            "scanner": [s.name for s in scanners],
        }
    )
    return DemoCohort(patients, sheet, clinical, truth)


# --- writing -----------------------------------------------------------------------------


def patient_images(patient: DemoPatient) -> tuple[np.ndarray, np.ndarray]:
    """(CT in HU as int16, label map as uint8), both (z, y, x) on the patient's grid."""
    rng = np.random.default_rng(patient.image_seed)
    ct = render_ct(patient.lesion, patient.anatomy, patient.scanner, patient.grid, rng)
    return ct, make_label_map(patient.lesion, patient.anatomy, patient.grid)


def write_image(array: np.ndarray, grid: Grid, path: Path) -> None:
    """Write a (z, y, x) array on `grid` as a compressed NIfTI, atomically."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def generate_cohort(
    out_dir: str | os.PathLike,
    n_patients: int,
    n_scanners: int,
    seed: int,
    slides: SlideSettings | None = None,
    id_prefix: str = "P",
) -> dict[str, Path]:
    """Write the demo cohort under out_dir; return paths keyed patients, clinical, truth, ct_dir
    (and slides, slide_dir when `slides` is given). `id_prefix` starts every patient ID (a
    second cohort, e.g. deep CT pretraining, gets its own)."""
    out = Path(out_dir)
    cohort = sample_cohort(n_patients, n_scanners, seed, id_prefix=id_prefix)
    for patient, ct_rel, mask_rel in zip(
        cohort.patients, cohort.patients_sheet["ct"], cohort.patients_sheet["mask"], strict=True
    ):
        ct, labels = patient_images(patient)
        write_image(ct, patient.grid, out / ct_rel)
        write_image(labels, patient.grid, out / mask_rel)
    paths = {
        "patients": out / "patients.tsv",
        "clinical": out / "clinical.tsv",
        "truth": out / "truth.tsv",
    }
    write_tsv(cohort.patients_sheet, paths["patients"], index=False)
    write_tsv(cohort.clinical, paths["clinical"], index=False)
    write_tsv(cohort.truth, paths["truth"], index=False)
    paths["ct_dir"] = out / "ct"
    if slides is not None:
        sheet = write_demo_slides(out, cohort.truth, slides, seed)
        paths["slides"], paths["slide_dir"] = sheet, out / "slides"
    return paths


@dataclass(frozen=True)
class SlideSettings:
    """Synthetic H&E slides of the demo: small, some patients without any, two scan MPPs."""

    width_um: float = 1000.0
    height_um: float = 750.0
    mpps: tuple[float, ...] = (0.5, 0.25)  # alternate scanners with different resolution
    fraction_with_slides: float = 0.9
    second_slide_fraction: float = 0.15
    # Log-odds of each tissue pattern against stroma per SD of the latent log-hazard: more
    # tumour and necrosis, fewer lymphocytes in high-risk patients.
    pattern_log_odds: tuple[tuple[str, float, float], ...] = (
        ("tumour", 0.0, 0.9),
        ("stroma", 0.0, 0.0),
        ("lymphocytes", 0.0, -0.9),
        ("necrosis", -1.0, 0.6),
    )  # (pattern, intercept, slope)


def slide_phenotype(log_hazard_z: float, settings: SlideSettings) -> dict:
    """The planted histology: the proportions of the slide's tissue patterns follow the
    patient's risk (see SlideSettings.pattern_log_odds)."""
    z = float(np.clip(log_hazard_z, -2.5, 2.5))
    odds = {name: math.exp(a + b * z) for name, a, b in settings.pattern_log_odds}
    total = sum(odds.values())
    return {"pattern_proportions": {name: value / total for name, value in odds.items()}}


def write_demo_slides(
    out: Path, truth: pd.DataFrame, settings: SlideSettings, seed: int
) -> Path:
    """Write slides/<slide_id>.svs for most patients and the slides.tsv sheet."""
    from radpath_demo.slides import write_synthetic_svs

    rng = np.random.default_rng([seed, 7])
    z = (truth["log_hazard"] - truth["log_hazard"].mean()) / truth["log_hazard"].std(ddof=0)
    rows = []
    for i, (pid, risk_z) in enumerate(zip(truth["patient_id"], z, strict=True)):
        if rng.random() > settings.fraction_with_slides:
            continue
        n_slides = 2 if rng.random() < settings.second_slide_fraction else 1
        for k in range(n_slides):
            slide_id = f"{pid}-S{k + 1}"
            mpp = settings.mpps[(i + k) % len(settings.mpps)]
            write_synthetic_svs(
                out / "slides" / f"{slide_id}.svs",
                width=int(settings.width_um / mpp),
                height=int(settings.height_um / mpp),
                mpp=mpp,
                seed=int(rng.integers(2**31)),
                **slide_phenotype(risk_z, settings),
            )
            rows.append({"slide_id": slide_id, "patient_id": pid,
                         "path": f"slides/{slide_id}.svs"})
    sheet = out / "slides.tsv"
    write_tsv(pd.DataFrame(rows), sheet, index=False)
    return sheet
