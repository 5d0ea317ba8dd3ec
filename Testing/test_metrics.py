"""Evaluation metrics against scipy/numpy/scikit-image and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from skimage.metrics import structural_similarity

from MSKdeXTraining.evaluation import metrics


@pytest.fixture
def pair():
    rng = np.random.default_rng(3)
    truth = rng.uniform(100, 300, 40)
    return truth + rng.normal(0, 20, 40), truth


def test_pcc_matches_scipy(pair):
    pred, truth = pair
    assert metrics.pcc(pred, truth) == pytest.approx(stats.pearsonr(pred, truth).statistic, abs=1e-12)
    assert np.isnan(metrics.pcc(np.ones(5), np.arange(5)))


def test_column_pccs_match_numpy_over_each_columns_finite_pairs():
    """Each column's PCC over its own finite pairs (np.corrcoef there); NaN for a constant side
    or fewer than 2 pairs; clipped to [-1, 1]."""
    rng = np.random.default_rng(5)
    pred = rng.normal(size=(30, 6))
    truth = pred + rng.normal(size=(30, 6))
    pred[4, 1], truth[9, 2], truth[11, 2] = np.nan, np.inf, -np.inf
    pred[:, 3] = 2.5  # constant
    truth[1:, 4] = np.nan  # one pair
    truth[:, 5] = 3 * pred[:, 5] + 1  # exactly linear
    found = metrics.pccs(pred, truth)
    for i in (0, 1, 2):
        keep = np.isfinite(pred[:, i]) & np.isfinite(truth[:, i])
        assert keep.sum() == (30, 29, 28)[i]
        assert found[i] == pytest.approx(np.corrcoef(pred[keep, i], truth[keep, i])[0, 1], abs=1e-12)
        assert metrics.pcc(pred[:, i], truth[:, i]) == pytest.approx(found[i], abs=1e-15)
    assert np.isnan(found[3]) and np.isnan(found[4]) and found[5] == pytest.approx(1.0, abs=1e-12) and found[5] <= 1
    assert metrics.mean_pcc(pred[:, :3], truth[:, :3]) == pytest.approx(found[:3].mean(), rel=1e-12)
    assert np.isnan(metrics.mean_pcc(pred, truth))
    with pytest.raises(ValueError, match="one shape"):
        metrics.pccs(pred, truth[:, :2])


def test_mae_matches_numpy(pair):
    pred, truth = pair
    assert metrics.mae(pred, truth) == pytest.approx(np.abs(pred - truth).mean())


def test_icc_hand_computed_offset():
    # pred = truth + 1 for three subjects: rows 1.5/2.5/3.5 -> MSR = 2; columns 2/3 -> MSC = 1.5;
    # MSE = 0, so ICC(2,1) = 2 / (2 + 0 + 2 * 1.5 / 3) = 2/3 while PCC = 1.
    truth = np.array([1.0, 2.0, 3.0])
    assert metrics.icc(truth + 1, truth) == pytest.approx(2 / 3, abs=1e-12)
    assert metrics.pcc(truth + 1, truth) == pytest.approx(1.0)
    assert metrics.icc(truth, truth) == pytest.approx(1.0)


def test_icc_shrout_fleiss_table():
    # Shrout & Fleiss (1979), Table 2: 6 targets x 4 judges; ICC(2,1) = 0.29 in their Table 4.
    ratings = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8],
                        [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float)
    assert metrics.icc_a1(ratings) == pytest.approx(0.29, abs=0.005)
    assert icc21(*ratings.T) == pytest.approx(metrics.icc_a1(ratings), abs=1e-12)  # the helper below


def test_icc_rejects_bad_shape():
    with pytest.raises(ValueError, match="n_subjects"):
        metrics.icc_a1(np.arange(5.0))
    with pytest.raises(ValueError, match="same length"):
        metrics.icc([1, 2, 3], [1, 2])


def test_psnr_ssim_match_definitions():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 2, (48, 40))
    pred = ref + rng.normal(0, 0.05, ref.shape)
    rng_ref = ref.max() - ref.min()
    expected = 10 * np.log10(rng_ref ** 2 / np.mean((pred - ref) ** 2))
    assert metrics.psnr(pred, ref) == pytest.approx(expected, rel=1e-9)
    assert metrics.ssim(pred, ref) == pytest.approx(
        structural_similarity(ref, pred, data_range=rng_ref), rel=1e-12)
    assert metrics.psnr(ref, ref) == np.inf
    assert metrics.ssim(ref, ref) == pytest.approx(1.0)
    assert metrics.ssim(pred, ref) < 1.0


def test_anova_matches_scipy():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 5.0, 7.0, 9.0])
    f, p = metrics.anova_oneway(a, b)
    ref = stats.f_oneway(a, b)
    assert (f, p) == pytest.approx((ref.statistic, ref.pvalue))
    # two groups: F equals the square of the pooled two-sample t statistic
    assert f == pytest.approx(stats.ttest_ind(a, b).statistic ** 2)
    with pytest.raises(ValueError):
        metrics.anova_oneway(a)


def icc21(*raters) -> float:
    """ICC(2,1) of k raters' columns from the Shrout & Fleiss (1979) mean squares: BMS (between
    targets), JMS (between judges), EMS (residual); written here independently of metrics."""
    x = np.column_stack(raters).astype(np.float64)
    n, k = x.shape
    bms = k * ((x.mean(axis=1) - x.mean()) ** 2).sum() / (n - 1)
    jms = n * ((x.mean(axis=0) - x.mean()) ** 2).sum() / (k - 1)
    resid = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + x.mean()
    ems = (resid ** 2).sum() / ((n - 1) * (k - 1))
    return (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n)


def test_agreement_bundle(pair):
    """n, PCC, ICC(2,1) and MAE against numpy and the mean-square formula, and hand values."""
    pred, truth = pair
    out = metrics.agreement(pred, truth)
    assert set(out) == {"n", "pcc", "icc", "mae"} and out["n"] == 40
    assert out["pcc"] == pytest.approx(np.corrcoef(pred, truth)[0, 1], abs=1e-12)
    assert out["icc"] == pytest.approx(icc21(pred, truth), abs=1e-12)
    assert out["mae"] == pytest.approx(np.abs(pred - truth).mean(), rel=1e-12)
    assert 0.5 < out["icc"] < out["pcc"] < 1  # noise and no bias: ICC below PCC, both high
    # pred = truth + 1 (see test_icc_hand_computed_offset): PCC 1, ICC 2/3, MAE 1
    hand = metrics.agreement([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert hand == {"n": 3, "pcc": pytest.approx(1.0), "icc": pytest.approx(2 / 3), "mae": pytest.approx(1.0)}


def test_non_finite_pairs_are_left_out(pair):
    """A diverged model's NaN / infinite predictions are not scored (n counts the pairs that are);
    none finite gives NaN, never an error."""
    pred, truth = pair
    bad = pred.copy()
    bad[[0, 5]], bad[7] = np.nan, np.inf
    keep = np.isfinite(bad)
    assert metrics.agreement(bad, truth) == metrics.agreement(pred[keep], truth[keep])
    assert metrics.agreement(bad, truth)["n"] == 37
    none = metrics.agreement(np.full(5, np.nan), np.arange(5.0))
    assert none["n"] == 0 and all(np.isnan(none[k]) for k in ("pcc", "icc", "mae"))


def test_pairs_with_a_non_finite_truth_are_left_out_and_anova_needs_two_values_per_group(pair):
    """A pair is scored only where the truth is finite too (not only the prediction); one-way
    ANOVA refuses a group of a single value (no within-group variance)."""
    pred, truth = pair
    bad = truth.copy()
    bad[[1, 2]], bad[3] = np.nan, -np.inf
    keep = np.isfinite(bad)
    assert metrics.agreement(pred, bad) == metrics.agreement(pred[keep], truth[keep])
    assert metrics.agreement(pred, bad)["n"] == 37
    with pytest.raises(ValueError, match="at least two groups of at least two values"):
        metrics.anova_oneway([1.0, 2.0, 3.0], [4.0])


def test_bootstrap_ci_is_scipys_bca_and_resamples_whole_groups(pair):
    """Each case its own group: scipy.stats.bootstrap's BCa interval of the same statistic, with
    the same seed. Every patient's case twice, grouped by patient: the interval of the mean is that
    of the single cases (resampling patients, not cases, which would narrow it)."""
    pred, _ = pair
    ids = [f"p{i}" for i in range(40)]
    low, high = metrics.bootstrap_ci(lambda cases: float(pred[cases].mean()), ids, n_resamples=500, seed=4)
    ref = stats.bootstrap((pred,), np.mean, vectorized=False, n_resamples=500, method="BCa",
                          rng=np.random.default_rng(4)).confidence_interval
    assert (low, high) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert low < pred.mean() < high
    twice = np.repeat(pred, 2)
    grouped = metrics.bootstrap_ci(lambda cases: float(twice[cases].mean()), np.repeat(ids, 2), n_resamples=500, seed=4)
    assert grouped == pytest.approx((low, high), rel=1e-12)
    as_cases = metrics.bootstrap_ci(lambda cases: float(twice[cases].mean()), [f"c{i}" for i in range(80)],
                                    n_resamples=500, seed=4)
    assert as_cases[1] - as_cases[0] < 0.8 * (high - low)
    assert metrics.bootstrap_ci(lambda cases: 1.0, ["a", "b", "a"]) == pytest.approx((np.nan, np.nan), nan_ok=True)
    assert np.isnan(metrics.bootstrap_ci(lambda cases: np.nan, ids)).all()  # undefined statistic: no interval


def test_bootstrap_ci_of_an_array_statistic_gives_each_values_interval(pair):
    """An array statistic: each value's interval is the one of that value alone (the same
    resamples); a value undefined on the data has none, the others keep theirs."""
    pred, truth = pair
    ids = [f"p{i}" for i in range(40)]
    both = lambda cases: np.array([pred[cases].mean(), metrics.pcc(pred[cases], truth[cases]), np.nan])
    low, high = metrics.bootstrap_ci(both, ids, n_resamples=500, seed=4)
    alone = (lambda cases: float(pred[cases].mean()), lambda cases: metrics.pcc(pred[cases], truth[cases]))
    for j, one in enumerate(alone):
        assert (low[j], high[j]) == pytest.approx(metrics.bootstrap_ci(one, ids, n_resamples=500, seed=4), rel=1e-12)
    assert np.isnan(low[2]) and np.isnan(high[2])
    few = metrics.bootstrap_ci(both, ["a", "b", "a"])
    assert few[0].shape == (3,) and np.isnan(few).all()
