"""How real the synthetic CTs are: voxel metrics of reconstructions of held-out patients,
and radiomics realism (the workflow's own features, real vs synthetic) against the same
comparison between two halves of the real cohort."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import linalg, stats

log = logging.getLogger(__name__)

REFERENCE_SPLITS = 20  # random halves of the real cohort averaged for the reference level
FRECHET_COMPONENTS = 10  # principal components of the real features the distance uses


def voxel_metrics(real: np.ndarray, synthetic: np.ndarray, lungs: np.ndarray,
                  window: Sequence[float]) -> dict[str, float]:
    """MAE (HU) and PSNR (dB, peak = the window's width) inside the lungs, and 3D SSIM
    (on the window scaled to [0, 1], 7-voxel windows) averaged over the lungs."""
    from skimage.metrics import structural_similarity

    low, high = float(window[0]), float(window[1])
    real = np.asarray(real, np.float64)
    synthetic = np.asarray(synthetic, np.float64)
    inside = np.asarray(lungs, bool)
    if not inside.any():
        raise ValueError("voxel metrics: no lung voxel")
    error = synthetic[inside] - real[inside]
    mse = float(np.mean(error**2))
    clipped_real = (np.clip(real, low, high) - low) / (high - low)
    clipped_synthetic = (np.clip(synthetic, low, high) - low) / (high - low)
    win = min(7, *[s if s % 2 else s - 1 for s in real.shape])
    _, ssim_map = structural_similarity(clipped_real, clipped_synthetic, data_range=1.0,
                                        win_size=max(3, win), full=True)
    return {
        "mae_hu": float(np.mean(np.abs(error))),
        "psnr_db": float(10 * np.log10((high - low) ** 2 / mse)) if mse > 0 else np.inf,
        "ssim": float(np.mean(ssim_map[inside])),
    }


def standardised(real: pd.DataFrame, other: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Both tables z-scored with the real table's mean and SD (features with SD 0 dropped)."""
    mean, sd = real.mean(), real.std(ddof=1)
    keep = sd.index[(sd > 0) & sd.notna()]
    return ((real[keep] - mean[keep]) / sd[keep]).to_numpy(), (
        (other[keep] - mean[keep]) / sd[keep]).to_numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to the rows of a and b (as FID)."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    root = linalg.sqrtm(cov_a @ cov_b)
    root = np.real(root)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * root))


def ks_by_feature(real: pd.DataFrame, other: pd.DataFrame) -> pd.Series:
    return pd.Series({f: float(stats.ks_2samp(real[f], other[f]).statistic)
                      for f in real.columns}, name="ks")


def principal_scores(real: np.ndarray, other: np.ndarray, components: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Both (standardised) tables projected on the real table's first principal axes."""
    centre = real.mean(axis=0)
    _, _, axes = np.linalg.svd(real - centre, full_matrices=False)
    axes = axes[:components]
    return (real - centre) @ axes.T, (other - centre) @ axes.T


def compare(real: pd.DataFrame, other: pd.DataFrame) -> dict[str, float]:
    """KS per feature, and the Frechet distance on the real table's first principal
    components of the standardised features (at most FRECHET_COMPONENTS and n_real - 1:
    with fewer patients than features the full covariance is singular)."""
    a, b = standardised(real, other)
    k = max(1, min(FRECHET_COMPONENTS, len(a) - 1, a.shape[1]))
    a, b = principal_scores(a, b, k)
    ks = ks_by_feature(real, other)
    return {"ks_median": float(ks.median()), "ks_mean": float(ks.mean()),
            "frechet": frechet_distance(a, b) / k}


def radiomics_realism(real: pd.DataFrame, synthetic: pd.DataFrame, seed: int
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Real (patients x features) vs synthetic (volumes x features), and the reference:
    two random halves of the real patients (REFERENCE_SPLITS splits averaged). The Frechet
    distance is per principal component (see `compare`). Returns the
    summary rows and the per-feature KS table."""
    features = [c for c in real.columns if c in synthetic.columns]
    features = [f for f in features
                if real[f].notna().all() and synthetic[f].notna().all()
                and real[f].std(ddof=1) > 0]
    if len(real) < 4 or len(synthetic) < 2 or not features:
        raise ValueError(f"radiomics realism needs >= 4 real and >= 2 synthetic rows with "
                         f"common features (got {len(real)}, {len(synthetic)}, "
                         f"{len(features)} features)")
    real, synthetic = real[features], synthetic[features]
    versus = compare(real, synthetic)
    rng = np.random.default_rng(seed)
    halves = []
    for _ in range(REFERENCE_SPLITS):
        order = rng.permutation(len(real))
        first, second = real.iloc[order[: len(real) // 2]], real.iloc[order[len(real) // 2:]]
        halves.append(compare(first, second))
    reference = {key: float(np.mean([h[key] for h in halves])) for key in versus}
    rows = []
    for key, label in (("ks_median", "median KS statistic over features"),
                       ("ks_mean", "mean KS statistic over features"),
                       ("frechet", "Frechet distance per principal component of the standardised features")):
        rows.append({"section": "radiomics", "metric": key, "description": label,
                     "synthetic_vs_real": versus[key], "real_half_vs_half": reference[key],
                     "n_real": len(real), "n_synthetic": len(synthetic),
                     "n_features": len(features), "reference_splits": REFERENCE_SPLITS})
    per_feature = pd.DataFrame({"feature": features,
                                "ks_synthetic_vs_real": ks_by_feature(real, synthetic).values})
    return pd.DataFrame(rows), per_feature


def voxel_summary(per_volume: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for metric, label in (("mae_hu", "MAE inside the lungs (HU)"),
                          ("psnr_db", "PSNR inside the lungs (dB)"),
                          ("ssim", "3D SSIM over the lungs")):
        values = per_volume[metric].to_numpy(float)
        rows.append({"section": "voxels (held-out reconstructions)", "metric": metric,
                     "description": label, "mean": float(np.mean(values)),
                     "sd": float(np.std(values, ddof=1)) if len(values) > 1 else np.nan,
                     "n_volumes": len(values)})
    return pd.DataFrame(rows)


def slice_through_nodule(layout: np.ndarray) -> int:
    """The axial slice (z) with the most nodule voxels."""
    counts = (np.asarray(layout) == 2).reshape(layout.shape[0], -1).sum(axis=1)
    return int(np.argmax(counts))


def plot_pairs(pairs: Sequence[Mapping], path: str, window: Sequence[float]) -> None:
    """Rows of (real, synthetic) axial slices through the nodule, nodule outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from radpath.inputs.io import atomic_path

    n = max(1, len(pairs))
    fig, axes = plt.subplots(n, 2, figsize=(5, 2.5 * n), squeeze=False)
    for row, pair in zip(axes, pairs, strict=False):
        z = slice_through_nodule(pair["layout"])
        for ax, image, title in ((row[0], pair["real"], "real"),
                                 (row[1], pair["synthetic"], "synthetic")):
            ax.imshow(image[z], cmap="gray", vmin=window[0], vmax=window[1])
            ax.contour(pair["layout"][z] == 2, levels=[0.5], colors="tab:red", linewidths=0.6)
            ax.set_title(f"{pair['label']}: {title}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
