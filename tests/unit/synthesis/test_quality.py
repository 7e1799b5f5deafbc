"""radpath.synthesis.quality: the metrics tell real CTs from unreal ones."""


from __future__ import annotations

import math

import numpy as np
import pandas as pd

from radpath.synthesis import quality as quality


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
