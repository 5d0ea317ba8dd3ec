"""Out-of-distribution (OOD) check: is a radiograph like the model's training radiographs?

Three steps, one section each:

* fitting (:func:`ood_statistics`, at the end of training): the training radiographs'
  statistics, ``model.json["ood"]``;
* scoring (:func:`ood_scores`): a radiograph against them, by the Mahalanobis distance of G's
  pooled features, the intensity z-score and the orientation check: the correlation of the
  film's 8 x 8 block layout (:func:`layout`) with the training films' mean layout, as given and
  turned or flipped (:data:`ORIENTATIONS`; inverted: the same correlation negated);
* verdict (:func:`ood_verdict`, :class:`OODResult`): those scores against their thresholds
  plus image-level checks (colour image, raw or 8-bit data, field-of-view coverage, flat
  content). The score is the larger of the first two model scores relative to its threshold
  (> 1: unlike the training data).

Imports nothing of ``training/`` or ``inference`` at run time (both use it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .models import Generator
    from .training.data import PreparedDataset
    from .training.objective import Normalisation

# Features of a radiograph: its coarse layout

#: Side of the block grid of a radiograph's layout (:func:`layout`).
LAYOUT_GRID = 8
#: What the orientation check tries on a radiograph (B, 1, H, W): turned or flipped.
ORIENTATIONS = {
    "flipped top to bottom": lambda x: x.flip(-2),
    "turned 180 degrees": lambda x: x.rot90(2, (-2, -1)),
    "turned 90 degrees clockwise": lambda x: x.rot90(-1, (-2, -1)),
    "turned 90 degrees counter-clockwise": lambda x: x.rot90(1, (-2, -1)),
}


def layout(xray: torch.Tensor, grid: int = LAYOUT_GRID) -> torch.Tensor:
    """(B, 1, H, W) -> (B, grid^2) block means: the coarse layout of each radiograph."""
    return torch.nn.functional.adaptive_avg_pool2d(xray.double(), grid).flatten(1)


def layout_correlation(layouts: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """(B,) Pearson r of each :func:`layout` (B, grid^2) with a mean layout (grid^2,)."""
    a = layouts.double() - layouts.double().mean(1, keepdim=True)
    b = mean.double().flatten() - mean.double().mean()
    return (a @ b) / (a.norm(dim=1) * b.norm()).clamp_min(1e-12)


# Fitting (at training)

#: Shrinkage of the feature covariance towards its mean variance.
COV_SHRINKAGE = 0.1


def shrunk(cov: np.ndarray) -> np.ndarray:
    """``cov`` shrunk by :data:`COV_SHRINKAGE` towards its mean variance times the identity."""
    avg_var = max(float(np.trace(cov)) / len(cov), 1e-12)
    return (1 - COV_SHRINKAGE) * cov + COV_SHRINKAGE * avg_var * np.eye(len(cov))


def shrunk_covariance(f: np.ndarray) -> np.ndarray:
    """The shrunk covariance of the rows of ``f`` (n, d) (zero before shrinking for one row)."""
    return shrunk(np.atleast_2d(np.cov(f, rowvar=False) if len(f) > 1 else np.zeros((f.shape[1],) * 2)))


def leave_one_out_distances(f: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each row of ``f`` (n, d) to the mean and shrunk covariance of
    the other rows: what a new image meets. In-sample distances run low, the more so the
    closer d is to n (in-sample d^2 averages about d, a new image's far more), so a threshold
    from them would flag ordinary new films. With fewer than 3 rows, the in-sample distances.

    Without row i the scatter matrix loses k d_i d_i^T (d_i = f_i - mean, k = n / (n - 1)), so
    in the eigenbasis of the full scatter each covariance is a diagonal minus a rank-one
    term: one eigendecomposition, then Sherman-Morrison, O(n d^2) in all."""
    n, dim = f.shape
    d = f - f.mean(0)
    if n < 3:
        return np.sqrt(np.einsum("bi,ij,bj->b", d, np.linalg.inv(shrunk_covariance(f)), d))
    eigval, eigvec = np.linalg.eigh(d.T @ d)
    w2 = (d @ eigvec) ** 2  # each row's d_i in the eigenbasis, squared
    k, a = n / (n - 1), (1 - COV_SHRINKAGE) / (n - 2)
    avg_var = np.maximum((eigval.sum() - k * w2.sum(1)) / ((n - 2) * dim), 1e-12)
    # cov_-i = diag(a * eigval + shrinkage * avg_var_i) - a k w_i w_i^T; the distance of
    # f_i - (mean of the others) = k d_i by Sherman-Morrison
    q = (w2 / (a * eigval[None, :] + COV_SHRINKAGE * avg_var[:, None])).sum(1)
    # q + c q^2 / (1 - c q) = q / (1 - c q); near-identical rows make 1 - c q round to <= 0
    return k * np.sqrt(q / np.maximum(1.0 - a * k * q, 1e-12))


@torch.no_grad()
def ood_statistics(G: Generator, ds: PreparedDataset, norm: Normalisation,
                   device: torch.device) -> dict:
    """Training-set statistics for the out-of-distribution check (scored by :func:`ood_scores`):
    mean/std over images of the per-image intensity mean and std; mean and shrunk
    covariance of G's pooled head features and the 99th percentile of the training
    images' leave-one-out Mahalanobis distances; the mean block layout (layout check) and the
    [min, median] of the training images' correlations with the mean of the others (as a new
    film meets it: in-sample correlations run high when the images are few)."""
    G.eval()
    feats, means, stds, layouts = [], [], [], []
    for i in range(len(ds)):
        x = ds.load(i)["xray"][None].to(device)
        feats.append(G.pooled_features(norm.xin(x)).double().cpu()[0])
        means.append(float(x.mean()))
        stds.append(float(x.std(correction=0)))  # as ood_scores computes it (numpy, ddof 0)
        layouts.append(layout(x.cpu()))
    G.train()
    layouts = torch.cat(layouts)
    layout_mean = layouts.mean(0)
    n = len(layouts)
    others = (n * layout_mean - layouts) / (n - 1) if n > 1 else layouts
    layout_r = torch.cat([layout_correlation(layouts[i:i + 1], others[i]) for i in range(n)]).numpy()
    f = torch.stack(feats).numpy()
    maha = leave_one_out_distances(f)
    return {"intensity_mean": [float(np.mean(means)), max(float(np.std(means)), 1e-6)],
            "intensity_std": [float(np.mean(stds)), max(float(np.std(stds)), 1e-6)],
            "feature_mean": f.mean(0).tolist(), "feature_cov": shrunk_covariance(f).tolist(),
            "feature_p99": max(float(np.percentile(maha, 99)), 1e-6), "n_images": len(f),
            "feature_p99_of": "leave-one-out distances" if len(f) > 2 else "in-sample distances",
            "feature": "global mean of G's HRNetV2 head features", "shrinkage": COV_SHRINKAGE,
            "layout_mean": layout_mean.tolist(), "layout_grid": LAYOUT_GRID,
            "layout_r_min_median": [float(layout_r.min()), float(np.median(layout_r))],
            "layout_r_of": "leave-one-out correlations" if n > 1 else "in-sample correlations"}


# Scoring


@torch.no_grad()
def ood_scores(stats: dict, features: torch.Tensor, xray: torch.Tensor) -> dict[str, np.ndarray]:
    """Out-of-distribution scores per image (B,) of the radiographs ``xray`` (B, 1, H, W) in
    [0, 1], with G's pooled head ``features`` (B, C) of them, relative to the training
    radiographs' ``stats`` (``model.json["ood"]``).

    ``feature_score``: Mahalanobis distance of the pooled G features to the training
    mean, divided by the 99th percentile over the training images (> 1: unusual);
    ``intensity_z``: largest |z| of the image's mean and std of intensity;
    ``layout_r``: Pearson r of the image's block layout with the training radiographs' mean
    layout, and ``layout_<orientation>``: the same for the image as each of
    :data:`ORIENTATIONS` would correct it (both absent for a model without ``layout_mean``).
    """
    f = features.double().cpu().numpy()
    mean = np.asarray(stats["feature_mean"])
    prec = np.linalg.inv(np.asarray(stats["feature_cov"]))
    d = f - mean
    maha = np.sqrt(np.einsum("bi,ij,bj->b", d, prec, d))
    x = xray.double().cpu().numpy().reshape(len(xray), -1)
    z_mean = np.abs(x.mean(1) - stats["intensity_mean"][0]) / stats["intensity_mean"][1]
    z_std = np.abs(x.std(1) - stats["intensity_std"][0]) / stats["intensity_std"][1]
    scores = {"feature_score": maha / stats["feature_p99"], "intensity_z": np.maximum(z_mean, z_std)}
    if "layout_mean" in stats:
        mean_layout, grid, films = torch.tensor(stats["layout_mean"]), stats["layout_grid"], xray.cpu()
        for name, turn in {"r": lambda x: x, **ORIENTATIONS}.items():
            scores[f"layout_{name}"] = layout_correlation(layout(turn(films), grid), mean_layout).numpy()
    return scores


# Verdict

#: Intensity |z| (image mean/std vs the training radiographs) above which a radiograph is flagged.
OOD_Z = 4.0
#: Feature score (Mahalanobis distance / training 99th percentile) above which it is flagged.
OOD_FEATURE = 1.5
#: Fraction of the model's field of view the radiograph must cover.
MIN_COVERAGE = 0.8
#: DICOM Modality values of projection radiographs (digital, computed, radiographic imaging,
#: fluoroscopy, angiography) and of "other" (OT: secondary captures, e.g. exported films); any
#: other modality (CT, MR, US, ...) is flagged.
PROJECTION_MODALITIES = ("DX", "CR", "RG", "RF", "XA", "OT")
#: A radiograph is flagged when turning or inverting it raises the Pearson r of its layout with
#: the training radiographs' mean layout by more than this (a film upside down, sideways or
#: with bone dark: r 0.89-0.99 upright on the demo's films, <= 0.73 turned, < 0 inverted).
ORIENTATION_MARGIN = 0.1
#: A correction is named only when it brings the layout r to at least this (noise gains as
#: much by chance, to r < 0.3).
CORRECTED_MIN_R = 0.5
#: A film whose layout r is this far below the lowest of the training films' (and that no
#: correction explains) is unlike them: another body part, a child, not a radiograph.
LAYOUT_UNLIKE_MARGIN = 0.1


@dataclass
class OODResult:
    """Out-of-distribution verdict: ``flag``, ``score`` (> 1: a model score beyond its
    threshold), human-readable ``reasons`` and the ``features`` they were computed from."""

    flag: bool
    score: float
    reasons: list[str]
    features: dict[str, float] = field(default_factory=dict)

    def split(self) -> tuple[list[str], list[str]]:
        """(the reasons for the flag, the notes without their "note: " prefix)."""
        return split_notes(self.reasons)


def split_notes(reasons: list[str]) -> tuple[list[str], list[str]]:
    """A result's ``reasons`` as (flags, notes): notes (assumed or given values, checks not made,
    missing intervals) start with "note: " and accompany flagged and unflagged results alike."""
    return ([r for r in reasons if not r.startswith("note: ")],
            [r.removeprefix("note: ") for r in reasons if r.startswith("note: ")])


def ood_verdict(x: np.ndarray, scores: dict[str, np.ndarray], source: dict, coverage: float,
                training_layout_r: list[float] | None, notes: Sequence[str] = ()) -> OODResult:
    """The verdict on one radiograph: image-level checks plus the model's scores against its
    training radiographs.

    ``x`` (H, W) is the model input in [0, 1]; ``scores`` its :func:`ood_scores` (B = 1);
    ``source`` what reading the file found (colour, bit depth, presentation intent, the DICOM
    tags of an inverted film); ``coverage`` the fraction of the model's field of view it covers;
    ``training_layout_r`` the [min, median] of the training films' layout r
    (``model.json["ood"]["layout_r_min_median"]``, for a model with the layout check). Flagged
    by the Mahalanobis distance of G's pooled features (in units of the training 99th
    percentile) above :data:`OOD_FEATURE`, the intensity z-score above :data:`OOD_Z`, the
    layout check (:func:`_orientation`: the film matches the training films' mean layout
    better turned or inverted, or matches it much worse than any training film did) or an
    image-level check; the ``notes`` ("note: ...") follow the reasons and flag nothing."""
    feats = {"feature_score": float(scores["feature_score"][0]),
             "intensity_z": float(scores["intensity_z"][0]),
             "coverage": coverage, "std": float(np.std(x))}
    reasons = []
    if source.get("colour"):
        reasons.append("colour image (its channels differ); radiographs are grey")
    if source.get("modality") and source["modality"] not in PROJECTION_MODALITIES:
        reasons.append(f"DICOM Modality (0008,0060) {source['modality']}: not a projection radiograph "
                       f"({', '.join(PROJECTION_MODALITIES)})")
    if source.get("presentation_intent") == "FOR PROCESSING":
        reasons.append("raw detector data (PresentationIntentType (0008,0068) FOR PROCESSING), "
                       "not processed like the training radiographs")
    if source.get("bits_stored", 16) <= 8:
        reasons.append(f"{source['bits_stored']}-bit image: a processed export, unlike the "
                       "training radiographs (continuous detector values)")
    if coverage < MIN_COVERAGE:
        reasons.append(f"the radiograph covers {100 * coverage:.0f} % of the model's "
                       f"field of view (< {100 * MIN_COVERAGE:.0f} %): a smaller film or crop than the "
                       "training radiographs, or a pixel spacing given too small (never enlarge a right one)")
    if feats["std"] < 0.02:
        reasons.append("nearly uniform image (intensity std < 0.02)")
    if feats["feature_score"] > OOD_FEATURE:
        reasons.append(f"image features unlike the training radiographs (score "
                       f"{feats['feature_score']:.2f} > {OOD_FEATURE}, 1 = training 99th percentile)")
    if feats["intensity_z"] > OOD_Z:
        reasons.append(f"intensity statistics {feats['intensity_z']:.1f} SD from the training radiographs")
    orientation = _orientation(scores, source, training_layout_r)
    if orientation is not None:
        reason, layout_feats = orientation
        feats.update(layout_feats)
        if reason:
            reasons.append(reason)
    flag = bool(reasons)
    reasons += notes
    score = max(feats["feature_score"] / OOD_FEATURE, feats["intensity_z"] / OOD_Z)
    return OODResult(flag, float(score), reasons, feats)


def _orientation(scores: dict, source: dict, training_r: list[float] | None) -> tuple[str, dict] | None:
    """(reason, features) of the layout check: the correction (turn, flip, inversion) that
    raises the layout r by more than :data:`ORIENTATION_MARGIN` to at least
    :data:`CORRECTED_MIN_R`; else, for a smaller such gain or an r more than
    :data:`LAYOUT_UNLIKE_MARGIN` below the lowest training film's (``training_r``: [min,
    median], leave one out), a reason naming none; reason "" when neither applies; None when
    the model has no layout statistics."""
    if "layout_r" not in scores:
        return None
    r, training_min = float(scores["layout_r"][0]), training_r[0]
    low = training_min - LAYOUT_UNLIKE_MARGIN
    candidates = {"inverted": -r}
    for name in ORIENTATIONS:
        turned = float(scores[f"layout_{name}"][0])
        candidates[name] = turned
        candidates[f"{name} and inverted"] = -turned
    best = max(candidates, key=candidates.get)
    feats = {"layout_r": r, "layout_r_best_other": candidates[best], "layout_r_low": low}
    gain = candidates[best] > r + ORIENTATION_MARGIN
    if not gain or candidates[best] < CORRECTED_MIN_R:  # no correction named
        if r >= low and not gain:
            return "", feats
        return (f"the film's layout is unlike the training films' (correlation {r:.2f} as given, at most "
                f"{candidates[best]:.2f} turned or inverted; training films {training_min:.2f} or more): "
                "another body part or field of view, or not a hip radiograph?", feats)
    # near ties (a top-bottom flip and a 180-degree turn differ by a left-right mirror): name all
    close = " or ".join(c for c in sorted(candidates, key=candidates.get, reverse=True)
                        if candidates[c] >= candidates[best] - 0.02)
    tags = [f"{keyword} {source[k]}" for k, keyword in (
        ("photometric_interpretation", "PhotometricInterpretation"),
        ("presentation_lut_shape", "PresentationLUTShape"),
        ("pixel_intensity_relationship_sign", "PixelIntensityRelationshipSign")) if k in source]
    said = f" (the file says {', '.join(tags)})" if tags and "inverted" in best else ""
    return (f"the film matches the training films' layout better after this correction: {close} "
            f"(correlation {candidates[best]:.2f}, as given {r:.2f}){said}; check that it is upright "
            "and that bone is bright", feats)
