"""Agreement and image-quality metrics of the paper's evaluation (Sec. 3, Table 1).

The agreement metrics score the pairs where both values are finite (a diverged model's NaN or
infinite predictions are left out, and :func:`agreement` reports how many pairs were scored);
none left gives NaN.

* :func:`pcc` / :func:`pccs` - Pearson correlation coefficient (of each column);
* :func:`icc_a1` - ICC(2,1): two-way random effects, absolute agreement, single rater
  (Shrout & Fleiss 1979, Psychol Bull 86:420, their case 2; McGraw & Wong 1996 "ICC(A,1)");
* :func:`mae` - mean absolute error, in the unit of the inputs (cm3 or g);
* :func:`psnr` / :func:`ssim` - of a predicted DRR against the reference DRR (scikit-image),
  with the data range of the *reference* image;
* :func:`anova_oneway` - one-way ANOVA (scipy.stats.f_oneway), as the paper compares the
  absolute errors of two methods;
* :func:`bootstrap_ci` - BCa bootstrap confidence interval of a statistic of the cases,
  resampling patients (scipy.stats.bootstrap).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def _pair(pred: ArrayLike, truth: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of ``pred`` and ``truth`` (same length) where both are finite."""
    p = np.asarray(pred, dtype=np.float64).ravel()
    t = np.asarray(truth, dtype=np.float64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"prediction and truth must have the same length, got {p.size} and {t.size}")
    keep = np.isfinite(p) & np.isfinite(t)
    return p[keep], t[keep]


def pccs(pred: ArrayLike, truth: ArrayLike) -> np.ndarray:
    """Pearson correlation coefficient of each column of ``(cases, columns)`` arrays, over the
    column's finite pairs; NaN for a column with fewer than 2 finite pairs or a constant side."""
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if p.shape != t.shape or p.ndim != 2:
        raise ValueError(f"prediction and truth must be (cases, columns) arrays of one shape, got {p.shape} "
                         f"and {t.shape}")
    keep = np.isfinite(p) & np.isfinite(t)
    n = keep.sum(axis=0)
    flat = np.zeros(p.shape[1], bool)
    centred = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for x in (p, t):
            flat |= np.where(keep, x, -np.inf).max(axis=0, initial=-np.inf) == np.where(keep, x, np.inf).min(
                axis=0, initial=np.inf)
            x = np.where(keep, x, 0.0)
            centred.append(np.where(keep, x - x.sum(axis=0) / n, 0.0))
        pc, tc = centred
        r = (pc * tc).sum(axis=0) / np.sqrt((pc * pc).sum(axis=0) * (tc * tc).sum(axis=0))
    return np.where((n >= 2) & ~flat, np.clip(r, -1.0, 1.0), np.nan)


def pcc(pred: ArrayLike, truth: ArrayLike) -> float:
    """Pearson correlation coefficient of two 1D samples (their finite pairs); NaN when either
    is constant or n < 2."""
    p, t = _pair(pred, truth)
    return float(pccs(p[:, None], t[:, None])[0])


def mean_pcc(pred: np.ndarray, truth: np.ndarray, rows: np.ndarray | None = None) -> float:
    """Mean over the columns of ``(cases, columns)`` arrays of their PCCs (:func:`pccs`, on the
    cases at the indices ``rows``, repeats allowed; default all); NaN (undefined) when any column's
    PCC is (e.g. a constant channel) or there is no column."""
    take = slice(None) if rows is None else rows
    chosen = pccs(pred[take], truth[take])
    return float(chosen.mean()) if chosen.size else float("nan")


def icc_a1(ratings: ArrayLike) -> float:
    """ICC(2,1) of an ``(n_subjects, k_raters)`` table (absolute agreement, single rater).

    From the two-way ANOVA mean squares of rows (MSR), columns (MSC) and residual (MSE):
    ``(MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n)``. NaN for n < 2 or a table
    without any variance.
    """
    x = np.asarray(ratings, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"ratings must be (n_subjects, k_raters >= 2), got shape {x.shape}")
    n, k = x.shape
    if n < 2:
        return float("nan")
    grand = x.mean()
    ss_rows = k * np.sum((x.mean(axis=1) - grand) ** 2)
    ss_cols = n * np.sum((x.mean(axis=0) - grand) ** 2)
    ss_err = np.sum((x - grand) ** 2) - ss_rows - ss_cols
    msr, msc = ss_rows / (n - 1), ss_cols / (k - 1)
    mse = ss_err / ((n - 1) * (k - 1))
    den = msr + (k - 1) * mse + k * (msc - mse) / n
    return float((msr - mse) / den) if den > 0 else float("nan")


def icc(pred: ArrayLike, truth: ArrayLike) -> float:
    """ICC(2,1) between predictions and ground truth (two 'raters' of the same subjects; their
    finite pairs)."""
    p, t = _pair(pred, truth)
    return icc_a1(np.stack([p, t], axis=1))


def mae(pred: ArrayLike, truth: ArrayLike) -> float:
    """Mean absolute error over the finite pairs, in the unit of the inputs (NaN for none)."""
    p, t = _pair(pred, truth)
    return float(np.mean(np.abs(p - t))) if p.size else float("nan")


def _images(pred: ArrayLike, ref: ArrayLike) -> tuple[np.ndarray, np.ndarray, float]:
    p = np.asarray(pred, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if p.shape != r.shape or p.ndim != 2:
        raise ValueError(f"need two 2D images of the same shape, got {p.shape} and {r.shape}")
    return p, r, float(np.ptp(r))


def psnr(pred: ArrayLike, ref: ArrayLike) -> float:
    """PSNR (dB) of ``pred`` against ``ref`` with data range ``max(ref) - min(ref)``.

    ``inf`` for identical images, NaN for a flat reference.
    """
    p, r, rng = _images(pred, ref)
    if rng == 0:
        return float("nan")
    if np.array_equal(p, r):
        return float("inf")
    return float(peak_signal_noise_ratio(r, p, data_range=rng))


def ssim(pred: ArrayLike, ref: ArrayLike) -> float:
    """SSIM (scikit-image defaults: 7x7 window) with data range ``max(ref) - min(ref)``."""
    p, r, rng = _images(pred, ref)
    if rng == 0:
        return float("nan")
    return float(structural_similarity(r, p, data_range=rng))


def anova_oneway(*groups: ArrayLike) -> tuple[float, float]:
    """One-way ANOVA of two or more samples of finite values: (F statistic, p value)."""
    arrays = [np.asarray(g, dtype=np.float64).ravel() for g in groups]
    if len(arrays) < 2 or any(a.size < 2 for a in arrays):
        raise ValueError("one-way ANOVA needs at least two groups of at least two values")
    res = stats.f_oneway(*arrays)
    return float(res.statistic), float(res.pvalue)


def agreement(pred: ArrayLike, truth: ArrayLike) -> dict[str, float]:
    """PCC, ICC(2,1) and MAE of one quantity of one object, plus n, the number of finite pairs
    scored."""
    p, t = _pair(pred, truth)
    return {"n": int(p.size), "pcc": pcc(p, t), "icc": icc(p, t), "mae": mae(p, t)}


def bootstrap_ci(statistic: Callable[[np.ndarray], float | np.ndarray], groups: Sequence[str], level: float = 0.95,
                 n_resamples: int = 2000, seed: int = 0) -> tuple[float, float] | tuple[np.ndarray, np.ndarray]:
    """BCa bootstrap confidence interval (scipy.stats.bootstrap, seeded) of ``statistic(cases)``,
    a float or a 1D array of floats (an interval each, from the same resamples) of the cases at
    the given indices into ``groups`` (repeats allowed), resampling whole groups with replacement:
    with ``groups`` the cases' patients, a patient's cases stay together. (low, high), arrays for
    an array statistic; NaN with fewer than 3 groups or for a value undefined (NaN) on the data or
    on resamples."""
    first = {g: i for i, g in enumerate(dict.fromkeys(groups))}  # groups in order of appearance
    member = np.array([first[g] for g in groups], dtype=int)
    members = [np.flatnonzero(member == g) for g in range(len(first))]
    value = np.asarray(statistic(np.arange(len(member))), dtype=np.float64)
    low, high = np.full(value.shape, np.nan), np.full(value.shape, np.nan)
    if len(members) >= 3 and np.isfinite(value).any():
        def resampled(sample: np.ndarray) -> np.ndarray:
            return statistic(np.concatenate([members[g] for g in sample]))

        with warnings.catch_warnings():  # a degenerate or undefined resample gives NaN: reported as such
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            ci = stats.bootstrap((np.arange(len(members)),), resampled, vectorized=False, n_resamples=n_resamples,
                                 confidence_level=level, method="BCa", rng=np.random.default_rng(seed)
                                 ).confidence_interval
        low, high = (np.where(np.isfinite(value), bound, np.nan) for bound in (ci.low, ci.high))
    return (float(low), float(high)) if value.ndim == 0 else (low, high)
