"""A signal-free cohort shaped like the demo's training set, for the selection and model tests."""


import numpy as np
import pandas as pd


def null_cohort(seed: int, n: int = 28, p: int = 80):
    """A small cohort without signal, shaped like the demo's clinical_radiomics model: age and a
    one-hot stage with a rare level (forced), p skewed correlated radiomics-like features, and
    outcomes unrelated to all of them (28 patients, ~17 events, as the demo's training set)."""
    rng = np.random.default_rng(seed)
    clinical = {"age": rng.normal(62, 9, n).round()}
    stage = rng.choice(["I", "II", "III", "IV"], n, p=[0.3, 0.3, 0.3, 0.1])
    clinical.update({f"stage[{s}]": (stage == s).astype(float) for s in ["II", "III", "IV"]})
    latent, loadings = rng.normal(size=(n, 6)), rng.normal(size=(6, p))
    features = np.exp(0.5 * (latent @ loadings) / np.sqrt(6) + rng.normal(size=(n, p)))
    X = pd.concat(
        [pd.DataFrame(clinical), pd.DataFrame(features, columns=[f"r{i:03d}" for i in range(p)])],
        axis=1,
    )
    time = rng.exponential(20, n).round(1) + 0.1
    return X, time, (rng.random(n) < 0.6).astype(int)

NULL_FORCED = ["age", "stage[II]", "stage[III]", "stage[IV]"]

# config.yaml's selection defaults, pinned: the cases below depend on them (e.g. 50 alphas).
NULL_SELECTION_CFG = {
    "near_zero_variance": {"freq_ratio": 19.0, "unique_fraction": 0.1},
    "correlation_threshold": 0.9, "univariate_p": 0.1, "univariate_max_features": 50,
    "l1_ratio": 1.0, "cv_folds": 5, "n_alphas": 50, "alpha_rule": "min", "max_features": 8,
}  # fmt: skip
