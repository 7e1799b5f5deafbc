"""ComBat fit/apply: agreement with neuroCombat, apply to new patients, edge cases."""

import json
import sys

import numpy as np
import pandas as pd
import pytest
from neuroCombat import neuroCombat

from radpath.radiomics.harmonize import (
    ComBatModel,
    HarmonizationError,
    apply_combat,
    batch_effect_summary,
    fit_apply_combat,
    fit_combat,
    pca_by_batch,
    unseen_batches,
    with_estimated_batches,
)

N_FEATURES = 20
BATCH_SIZES = {"siteA": 25, "siteB": 20, "siteC": 15}
BATCH_SHIFT = {"siteA": 0.0, "siteB": 3.0, "siteC": -2.0}
BATCH_SCALE = {"siteA": 1.0, "siteB": 2.0, "siteC": 0.5}
AGE_EFFECT = 0.15  # per year, on features f0, f3, f6, ...


def make_cohort(seed: int = 0):
    """60 patients, 3 sites with different location and scale, age and stage effects."""
    rng = np.random.default_rng(seed)
    batch_labels = np.repeat(list(BATCH_SIZES), list(BATCH_SIZES.values()))
    n = len(batch_labels)
    ids = [f"P{i:03d}" for i in range(n)]
    # Integer ages: neuroCombat casts continuous covariates to float32.
    age = rng.integers(40, 80, n).astype(float)
    stage = rng.choice(["I", "II", "III"], n)
    shift = np.array([BATCH_SHIFT[b] for b in batch_labels])
    scale = np.array([BATCH_SCALE[b] for b in batch_labels])
    columns = {}
    for j in range(N_FEATURES):
        age_effect = AGE_EFFECT * age if j % 3 == 0 else 0.0
        stage_effect = 1.5 * (stage == "III") - 0.5 * (stage == "II")
        columns[f"f{j:02d}"] = 10.0 + j + age_effect + stage_effect + shift + scale * rng.normal(size=n)
    features = pd.DataFrame(columns, index=pd.Index(ids, name="patient_id"))
    batch = pd.Series(batch_labels, index=features.index, name="scanner")
    covariates = pd.DataFrame({"age": age, "stage": stage}, index=features.index)
    return features, batch, covariates


@pytest.fixture(scope="module")
def cohort():
    return make_cohort()


def neurocombat_result(features, batch, covariates, parametric, mean_only):
    """neuroCombat's full output (data: features x patients, estimates, info)."""
    covars = pd.DataFrame({"batch": batch.to_numpy()})
    categorical, continuous = None, None
    if covariates is not None:
        covars["age"] = covariates["age"].to_numpy()
        covars["stage"] = covariates["stage"].to_numpy()
        categorical, continuous = ["stage"], ["age"]
    return neuroCombat(
        features.to_numpy().T.copy(),
        covars,
        "batch",
        categorical_cols=categorical,
        continuous_cols=continuous,
        parametric=parametric,
        mean_only=mean_only,
    )


def neurocombat_reference(features, batch, covariates, parametric, mean_only):
    return neurocombat_result(features, batch, covariates, parametric, mean_only)["data"].T


def split_train_test(features, batch, covariates, test_ids):
    train = ~features.index.isin(test_ids)
    return (
        (features[train], batch[train], covariates[train]),
        (features.loc[test_ids], batch.loc[test_ids], covariates.loc[test_ids]),
    )


@pytest.mark.parametrize("parametric", [True, False], ids=["parametric", "nonparametric"])
@pytest.mark.parametrize("mean_only", [False, True], ids=["location_scale", "mean_only"])
@pytest.mark.parametrize("with_covariates", [False, True], ids=["no_covariates", "covariates"])
def test_matches_neurocombat(cohort, parametric, mean_only, with_covariates):
    features, batch, covariates = cohort
    covariates = covariates if with_covariates else None
    expected = neurocombat_reference(features, batch, covariates, parametric, mean_only)

    model, harmonized = fit_apply_combat(
        features, batch, covariates, parametric=parametric, mean_only=mean_only
    )

    assert np.abs(harmonized.to_numpy() - expected).max() < 1e-8
    assert harmonized.index.equals(features.index)
    assert list(harmonized.columns) == list(features.columns)
    assert model.batches == ["siteA", "siteB", "siteC"]
    assert model.covariate_names == (["age", "stage_II", "stage_III"] if with_covariates else [])


@pytest.mark.parametrize("parametric", [True, False], ids=["parametric", "nonparametric"])
@pytest.mark.parametrize(
    ("with_covariates", "site", "column", "value"),
    [(False, "siteA", "f01", 1 / 7), (True, "siteC", "f05", 1 / 3)],
    ids=["no_covariates", "covariates"],
)
def test_feature_constant_within_a_batch_matches_neurocombat(
    cohort, parametric, with_covariates, site, column, value
):
    """sva gives a batch in which a feature is constant delta_hat = 1. Here the exact
    within-batch variance is 0 but ours rounds to ~1e-30 (the mean of equal floats is not
    always that float), so an exact ``== 0`` test misses it and moves the batch's priors;
    neuroCombat, summing in another order, does get 0 for these values."""
    features, batch, covariates = cohort
    in_site = (batch == site).to_numpy()
    features = features.copy()
    features.loc[in_site, column] = value
    if with_covariates:
        # Covariates constant within the site too, so the covariate-adjusted residual is.
        covariates = covariates.copy()
        covariates.loc[in_site, "age"] = 60.0
        covariates.loc[in_site, "stage"] = "I"
    else:
        covariates = None
    reference = neurocombat_result(features, batch, covariates, parametric, mean_only=False)
    batch_pos, column_pos = sorted(BATCH_SIZES).index(site), list(features.columns).index(column)
    fired = reference["estimates"]["delta_hat"][batch_pos][column_pos] == 1.0
    if with_covariates and not fired:
        # With covariates the residual comes from a BLAS regression whose last bits depend on
        # the CPU's kernels: on some machines neuroCombat's exact zero does not fire. The
        # tolerant-zero test below checks this case on every machine.
        pytest.skip("neuroCombat's exact zero test does not fire with this CPU's BLAS rounding")
    assert fired, (
        "precondition: neuroCombat's exact zero test must fire for this constant"
    )

    model, harmonized = fit_apply_combat(features, batch, covariates, parametric=parametric)

    assert np.abs(harmonized.to_numpy() - reference["data"].T).max() < 1e-10
    assert model.passthrough_features == []
    assert np.ptp(harmonized.loc[in_site, column]) < 1e-12  # still constant within the site


@pytest.mark.parametrize("with_covariates", [False, True], ids=["no_covariates", "covariates"])
def test_batch_constant_features_match_neurocombat_with_a_tolerant_zero_test(
    cohort, monkeypatch, with_covariates
):
    """Whatever the constant, with neuroCombat's ``delta_hat == 0`` made tolerant of rounding
    (its own exact test fires or not depending on how numpy rounds the constant)."""
    module = sys.modules[neuroCombat.__module__]
    monkeypatch.setattr(module, "convert_zeroes", lambda x: np.where(x <= 1e-20, 1.0, x))
    features, batch, covariates = cohort
    in_site = (batch == "siteC").to_numpy()
    features = features.copy()
    if with_covariates:
        covariates = covariates.copy()
        covariates.loc[in_site, "age"] = 60.0
        covariates.loc[in_site, "stage"] = "I"
    else:
        covariates = None
    for j, value in enumerate([0.1, 1 / 3, 1 / 7, 0.2, 0.15, 123.456]):
        features.loc[in_site, f"f{j:02d}"] = value
    expected = neurocombat_reference(features, batch, covariates, parametric=True, mean_only=False)

    _, harmonized = fit_apply_combat(features, batch, covariates)

    assert np.abs(harmonized.to_numpy() - expected).max() < 1e-10


def test_new_patients_one_at_a_time_equal_all_at_once(cohort):
    features, batch, covariates = cohort
    test_ids = ["P003", "P010", "P030", "P044", "P050", "P059"]
    train, test = split_train_test(features, batch, covariates, test_ids)
    model = fit_combat(*train)

    together = apply_combat(model, *test)
    one_by_one = pd.concat(
        [apply_combat(model, test[0].loc[[pid]], test[1].loc[[pid]], test[2].loc[[pid]]) for pid in test_ids]
    )

    np.testing.assert_allclose(one_by_one.to_numpy(), together.to_numpy(), rtol=0, atol=1e-12)
    assert not np.allclose(together.to_numpy(), test[0].to_numpy())  # it did change them


def test_apply_to_subset_of_batches(cohort):
    features, batch, covariates = cohort
    model = fit_combat(features, batch, covariates, parametric=False)
    full = apply_combat(model, features, batch, covariates)

    site_b = batch.index[batch == "siteB"]
    subset = apply_combat(model, features.loc[site_b], batch.loc[site_b], covariates.loc[site_b])

    np.testing.assert_allclose(subset.to_numpy(), full.loc[site_b].to_numpy(), rtol=0, atol=1e-12)


def test_apply_accepts_reordered_columns_and_extra_covariates(cohort):
    features, batch, covariates = cohort
    model = fit_combat(features, batch, covariates[["age"]])
    reordered = features[features.columns[::-1]]
    extra = covariates.assign(unused=1.0)

    out = apply_combat(model, reordered, batch, extra)

    expected = apply_combat(model, features, batch, covariates[["age"]])
    pd.testing.assert_frame_equal(out[features.columns], expected)


def test_unseen_batch_names_batch_and_patients(cohort):
    features, batch, covariates = cohort
    model = fit_combat(features, batch, covariates)
    new_batch = batch.copy()
    new_batch.loc[["P001", "P002"]] = "siteZ"

    with pytest.raises(HarmonizationError, match=r"siteZ.*P001, P002"):
        apply_combat(model, features, new_batch, covariates)


@pytest.mark.parametrize("parametric", [True, False])
def test_estimated_new_batch_of_training_patients_equals_their_training_estimates(
        cohort, parametric):
    """ComBat's batch effects and their empirical Bayes priors come from each batch's own
    patients: a training batch presented under a new name gets its training estimates back,
    so the estimate for a scanner the run never saw is ComBat's own estimator, nothing else."""
    features, batch, covariates = cohort
    model = fit_combat(features, batch, covariates, parametric=parametric)
    site_c = batch.index[batch == "siteC"]
    renamed = batch.loc[site_c].replace({"siteC": "siteZ"})
    assert unseen_batches(model, renamed) == ["siteZ"]

    extended, sizes = with_estimated_batches(model, features.loc[site_c], renamed,
                                             covariates.loc[site_c])

    assert sizes == {"siteZ": len(site_c)}
    assert extended.batches == ["siteA", "siteB", "siteC", "siteZ"]
    np.testing.assert_allclose(extended.gamma_star[3], model.gamma_star[2], rtol=1e-10)
    np.testing.assert_allclose(extended.delta_star[3], model.delta_star[2], rtol=1e-10)
    pd.testing.assert_frame_equal(
        apply_combat(extended, features.loc[site_c], renamed, covariates.loc[site_c]),
        apply_combat(model, features.loc[site_c], batch.loc[site_c], covariates.loc[site_c]),
        rtol=1e-10,
    )
    # The training batches are untouched; the model itself is not changed.
    np.testing.assert_array_equal(extended.gamma_star[:3], model.gamma_star)
    assert model.batches == ["siteA", "siteB", "siteC"]


def test_estimated_new_batch_needs_two_patients(cohort):
    features, batch, covariates = cohort
    model = fit_combat(features, batch, covariates)
    new_batch = batch.copy()
    new_batch.loc["P003"] = "siteZ"

    with pytest.raises(HarmonizationError, match=r"siteZ.*one patient.*P003"):
        with_estimated_batches(model, features, new_batch, covariates)


def test_unseen_covariate_level_is_an_error(cohort):
    features, batch, covariates = cohort
    model = fit_combat(features, batch, covariates)
    new_covariates = covariates.copy()
    new_covariates.loc["P005", "stage"] = "IV"

    with pytest.raises(HarmonizationError, match=r"stage.*IV.*P005"):
        apply_combat(model, features, batch, new_covariates)


def with_single_patient_batch(features, batch):
    batch = batch.copy()
    batch.loc["P007"] = "scannerX"
    return features, batch


def test_single_patient_batch_error_names_batch_and_patient(cohort):
    features, batch = with_single_patient_batch(*cohort[:2])

    with pytest.raises(HarmonizationError, match=r"scannerX.*P007"):
        fit_combat(features, batch)


def test_single_patient_batch_merged_into_largest(cohort):
    features, batch = with_single_patient_batch(*cohort[:2])

    model, harmonized = fit_apply_combat(features, batch, single_patient_batch="merge")

    assert model.batch_merges == {"scannerX": "siteA"}
    assert model.batches == ["siteA", "siteB", "siteC"]
    assert model.batch_sizes == {"siteA": 25, "siteB": 20, "siteC": 15}
    assert np.isfinite(harmonized.to_numpy()).all()
    # A later patient from scannerX is harmonized as a siteA patient.
    one = features.loc[["P040"]]
    as_x = apply_combat(model, one, pd.Series(["scannerX"], index=one.index))
    as_a = apply_combat(model, one, pd.Series(["siteA"], index=one.index))
    pd.testing.assert_frame_equal(as_x, as_a)


def test_model_round_trips_through_json(cohort):
    features, batch, covariates = cohort
    model = fit_combat(features.assign(constant=7.0), batch, covariates, parametric=False)

    restored = ComBatModel.from_dict(json.loads(json.dumps(model.to_dict())))

    assert restored.to_dict() == model.to_dict()
    pd.testing.assert_frame_equal(
        apply_combat(restored, features.assign(constant=7.0), batch, covariates),
        apply_combat(model, features.assign(constant=7.0), batch, covariates),
        check_exact=True,
    )


def test_constant_features_pass_through(cohort):
    features, batch, covariates = cohort
    features = features.assign(constant=7.0, zero=0.0)

    model, harmonized = fit_apply_combat(features, batch, covariates)

    assert model.passthrough_features == ["constant", "zero"]
    assert (harmonized["constant"] == 7.0).all() and (harmonized["zero"] == 0.0).all()
    assert np.isfinite(harmonized.to_numpy()).all()
    # The other features are harmonized exactly as without the constant ones.
    expected = fit_apply_combat(features.drop(columns=["constant", "zero"]), batch, covariates)[1]
    pd.testing.assert_frame_equal(harmonized[expected.columns], expected)


def test_nan_in_features_names_feature(cohort):
    features, batch, _ = cohort
    features = features.copy()
    features.loc["P004", "f05"] = np.nan

    with pytest.raises(HarmonizationError, match=r"f05.*P004"):
        fit_combat(features, batch)


def test_missing_batch_and_collinear_covariate_are_errors(cohort):
    features, batch, covariates = cohort
    with pytest.raises(HarmonizationError, match="P059"):
        fit_combat(features, batch.drop("P059"))
    site_code = covariates.assign(site_code=(batch == "siteB").astype(float))
    with pytest.raises(HarmonizationError, match="site_code"):
        fit_combat(features, batch, site_code)


def test_fit_is_deterministic(cohort):
    first = fit_combat(*cohort, parametric=False).to_dict()
    second = fit_combat(*cohort, parametric=False).to_dict()
    assert json.dumps(first) == json.dumps(second)


def test_batch_effect_shrinks_and_covariate_effect_is_kept():
    features, batch, covariates = make_cohort(seed=1)
    test_ids = list(features.index[::5])
    train, test = split_train_test(features, batch, covariates, test_ids)

    model = fit_combat(*train[:2], train[2][["age"]])
    harmonized = apply_combat(model, features, batch, covariates)

    before = batch_effect_summary(features, batch)
    after = batch_effect_summary(harmonized, batch)
    assert before["kruskal_p"].median() < 1e-3
    assert after["kruskal_p"].median() > 0.1
    assert after["anova_p"].median() > 0.1
    age_features = [f"f{j:02d}" for j in range(0, N_FEATURES, 3)]
    age_corr = harmonized[age_features].corrwith(covariates["age"])
    assert (age_corr > 0.6).all()
    # Slope on age within training batches stays near the planted 0.15 per year.
    slopes = [np.polyfit(covariates["age"], harmonized[f], 1)[0] for f in age_features]
    np.testing.assert_allclose(slopes, AGE_EFFECT, atol=0.05)


def test_batch_effect_summary_skips_constant_features(cohort):
    features, batch, _ = cohort
    summary = batch_effect_summary(features.assign(constant=1.0), batch)

    assert list(summary.index) == list(features.columns)
    assert list(summary.columns) == ["kruskal_h", "kruskal_p", "anova_f", "anova_p"]
    assert summary.loc["f01", "kruskal_p"] < 1e-3


def test_pca_by_batch_handles_nan_and_constant_columns(cohort):
    features, batch, _ = cohort
    messy = features.assign(constant=3.0)
    messy.loc["P002", "f04"] = np.nan

    scores = pca_by_batch(messy, n_components=2)

    assert list(scores.columns) == ["PC1", "PC2"]
    assert scores.index.equals(features.index)
    assert np.isfinite(scores.to_numpy()).all()
    ratios = scores.attrs["explained_variance_ratio"]
    assert ratios[0] >= ratios[1] > 0
    # Before harmonization PC1 separates the sites by their location shift.
    site_means = scores["PC1"].groupby(batch).mean()
    assert abs(site_means["siteB"] - site_means["siteC"]) > 2
    pd.testing.assert_frame_equal(scores, pca_by_batch(messy, n_components=2))


def test_categorical_dtype_sets_reference_level(cohort):
    features, batch, covariates = cohort
    ordered = covariates.assign(stage=pd.Categorical(covariates["stage"], categories=["III", "I", "II"]))

    model, harmonized = fit_apply_combat(features, batch, ordered)

    assert model.covariate_names == ["age", "stage_I", "stage_II"]
    assert model.covariate_levels == {"age": None, "stage": ["III", "I", "II"]}
    # Same column space as the sorted (reference "I") coding, so the same result.
    _, sorted_coding = fit_apply_combat(features, batch, covariates)
    np.testing.assert_allclose(harmonized.to_numpy(), sorted_coding.to_numpy(), rtol=0, atol=1e-9)
