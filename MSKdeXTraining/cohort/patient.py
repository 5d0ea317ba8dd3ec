"""A synthetic patient: a template deformed, re-proportioned and given CT intensities (HU).

:func:`sample_patient` draws every random parameter (a JSON-able dict, recorded in
``truth.json``); :func:`build_patient` turns a template and those parameters into a CT and a
label map, deterministically (random fields come from seeds stored in the parameters).

Steps, on the output grid (isotropic ``spacing`` mm, LPS, identity direction):
1. backward warp of the template: global scaling about the hip-centre midpoint (body size) plus
   a smooth random displacement that fades to zero within 20 mm of bone, so bones keep their
   shape exactly (up to the global scale);
2. per-muscle volume change: each muscle is re-thresholded on its signed distance so that it
   holds ``factor`` times its voxels; it grows only into unlabelled body voxels (no
   overlaps), and what it frees becomes intermuscular fat (no holes);
3. body fat: the skin moves out (or in, through unlabelled tissue only) by a sampled amount;
   unlabelled tissue shallower than the subcutaneous depth is fat, deeper tissue is a smooth
   mixture of fat and organ-like soft tissue;
4. HU: muscles mix lean muscle and fat by a per-muscle, spatially varying fat fraction (a
   systemic level of the patient plus the muscle's own deviation);
   bones have a cortical shell and a cancellous interior from the depth below the bone
   surface; air outside; then scanner blur and noise;
5. crop, as a hip CT is acquired: superior-inferior to the extent of pelvis, sacrum and the
   muscles (:func:`~.anatomy.region_labels`) plus :data:`CROP_MARGIN_MM`, so the femur
   shafts and the spine are cut at that level. The truth is computed from the cropped CT,
   and the CT centre is the region's centre (superior-inferior), where the radiograph and
   the default AP view are centred.

The grid spans the region plus :data:`BODY_ROOM_MM` superior and inferior, the whole body
the radiograph sees (:attr:`Patient.body_ct`): a hip film shows abdomen and thighs running
off its edges. Where the template ends before that, its end slices are repeated (body mask,
soft tissue, spine and femur shafts; object muscles become other muscle, pelvis and sacrum
unlabelled tissue), so the body continues smoothly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..imaging.volume import Volume
from .anatomy import BODY, FEMUR, OTHER_MUSCLE, SPINE, Template, region_labels, synthetic_map
from .fields import coarse_distance, smooth_field

#: Internal label of fat freed by a shrinking muscle or added under the skin.
FAT = 254
BONE_LABELS = (1, 2, 3, 4, SPINE)
#: CT number given to air outside the body.
AIR_VALUE_HU = -1000.0
#: Output HU range (int16 CT).
HU_MIN, HU_MAX = -1024, 3071
#: Superior-inferior margin (mm) of the CT around the pelvis, sacrum and muscles.
CROP_MARGIN_MM = 10.0
#: Superior-inferior extent (mm) synthesised beyond the region (scaled) for the radiograph:
#: the 58.9 cm detector sees up to about 290 mm either side of its central ray (region centre
#: +- 15 mm) at the detector, about 230 mm at the front of the body, so the body reaches past
#: every edge of the image. Also room for muscle growth (<= 20 mm) and deformation (<= 7 mm).
BODY_ROOM_MM = 150.0
#: Fat infiltration of a muscle = the patient's systemic level, uniform in [0, SYSTEMIC_FAT_MAX],
#: plus the muscle's own deviation, uniform in +-FAT_DEVIATION, clipped to [0, FAT_MAX]. Muscle
#: fat is largely systemic (age, inactivity, metabolic disease), so the muscles of one patient
#: correlate (r about 0.7 per side before clipping), while each muscle's density stays
#: independent of its volume.
SYSTEMIC_FAT_MAX, FAT_DEVIATION, FAT_MAX = 0.35, 0.12, 0.5


@dataclass(frozen=True)
class Patient:
    """A synthetic patient: ``ct`` (int16 HU) and ``labels`` (uint8 cohort values) cropped like
    a hip CT (the saved CT; the truth is computed from it), ``body_ct`` and ``body_labels``
    on the whole synthesised grid (the body the radiograph sees; ``ct`` is its slices
    ``crop``), and ``derived`` realised quantities (JSON-able)."""

    ct: Volume
    labels: Volume
    body_ct: Volume
    body_labels: Volume
    crop: slice
    derived: dict


def muscle_sides() -> dict[str, int]:
    """Per-side muscle names of the ``synthetic`` map -> cohort label value."""
    m = synthetic_map().per_side()
    return {o.name: o.labels[0] for o in m.objects if o.is_muscle}


def sample_patient(rng: np.random.Generator, template: Template) -> dict:
    """Draw all random parameters of one synthetic patient (JSON-able dict)."""
    u = rng.uniform
    muscles = muscle_sides()
    systemic = float(u(0.0, SYSTEMIC_FAT_MAX))

    def infiltration() -> float:
        return float(np.clip(systemic + u(-FAT_DEVIATION, FAT_DEVIATION), 0.0, FAT_MAX))
    return {
        "template": template.name,
        "scale": float(u(0.88, 1.12)),
        "deformation": {"amplitude_mm": float(u(2.0, 7.0)), "length_mm": float(u(50.0, 90.0)),
                        "seed": int(rng.integers(2**31))},
        "volume_factor": {n: float(u(0.7, 1.3)) for n in muscles},
        "systemic_fat_infiltration": systemic,
        "fat_infiltration": {n: infiltration() for n in muscles},
        "other_muscle_fat_infiltration": infiltration(),
        "infiltration_texture": {"length_mm": float(u(8.0, 20.0)), "contrast": float(u(0.3, 0.8)),
                                 "seed": int(rng.integers(2**31))},
        "skin_shift_mm": float(u(-8.0, 25.0)),
        "subcutaneous_depth_mm": float(u(15.0, 35.0)),
        "hu": {"lean_muscle": float(u(45.0, 62.0)), "fat": float(u(-115.0, -85.0)),
               "soft_tissue": float(u(25.0, 45.0)), "cortical": float(u(1100.0, 1600.0)),
               "cancellous": float(u(150.0, 350.0)), "marrow": float(u(-20.0, 60.0)),
               "cortical_thickness_mm": {"femur": float(u(3.5, 6.0)), "other": float(u(1.0, 2.5))}},
        "ct": {"blur_sigma_mm": float(u(1.0, 1.6)), "noise_sd_hu": float(u(5.0, 20.0)),
               "noise_seed": int(rng.integers(2**31))},
        "visceral_seed": int(rng.integers(2**31)),
    }


def build_patient(template: Template, params: dict, spacing: float,
                  margin_mm: float = CROP_MARGIN_MM, room_mm: float = BODY_ROOM_MM) -> Patient:
    """The patient ``params`` describes, on an isotropic grid of ``spacing`` mm.

    The CT spans the pelvis, sacrum and muscles plus ``margin_mm`` superior and inferior; the
    body (for the radiograph) the same plus ``room_mm`` (>= ``margin_mm`` + 30 mm).
    ``derived`` holds the volume factors actually reached, hip centres and the z ranges (mm)
    of CT and body.
    """
    if room_mm < margin_mm + 30.0:
        raise ValueError(f"room_mm must be >= margin_mm + 30 mm, got {room_mm} and {margin_mm}")
    s = params["scale"]
    grid = _output_grid(template, s, spacing, params["skin_shift_mm"], room_mm)
    centre = template.centre
    pts = _grid_points(grid)  # (k, j, i, 3) world mm
    similar = centre + (pts - centre) / s
    bone = np.isin(_sample_labels(template.labels, similar), BONE_LABELS)
    fade = np.clip(coarse_distance(bone, spacing) / 20.0, 0.0, 1.0)
    fade = fade * fade * (3 - 2 * fade)  # smoothstep: 0 at bone, 1 from 20 mm away
    d = params["deformation"]
    disp = smooth_field(d["seed"], grid.array.shape, spacing, d["length_mm"], 3) * d["amplitude_mm"]
    labels = _sample_labels(template.labels, similar - fade[..., None] * disp)
    realised = change_muscle_volumes(labels, params["volume_factor"], spacing)
    depth = _skin_depth(labels, params["skin_shift_mm"], spacing)
    body = labels > 0  # after the skin shift (it moves the body's surface)
    hu = _hu(labels, depth, params, spacing)
    ct = params["ct"]
    hu = ndimage.gaussian_filter(hu, ct["blur_sigma_mm"] / spacing)
    noise = np.random.default_rng(ct["noise_seed"]).standard_normal(hu.shape, dtype=np.float32)
    hu = np.clip(np.round(hu + ct["noise_sd_hu"] * noise), HU_MIN, HU_MAX).astype(np.int16)
    out_labels = np.where(labels >= FAT, 0, labels).astype(np.uint8)
    region = np.isin(out_labels, region_labels())
    if not region.any():
        raise InputError("synthetic patient has no pelvis, sacrum or muscle voxels to crop to")
    keep = grid.extent(region, 0, margin_mm)
    body_ct, body_labels = grid.with_array(hu), grid.with_array(out_labels)
    ct_vol, label_vol = (v.cropped(0, keep) for v in (body_ct, body_labels))
    derived = {"volume_factor_realised": realised,
               "hip_centres_mm": {k: (centre + s * (v - centre)).tolist()
                                  for k, v in template.hip_centres.items()},
               "body_voxels": int(body[keep].sum()),
               "ct_z_range_mm": _z_range(ct_vol), "body_z_range_mm": _z_range(body_ct)}
    return Patient(ct_vol, label_vol, body_ct, body_labels, keep, derived)


def _z_range(vol: Volume) -> list[float]:
    """LPS z range (mm, voxel edges) of an axis-aligned volume."""
    return (vol.origin[2] + vol.spacing[2] * np.array([-0.5, vol.array.shape[0] - 0.5])).tolist()


def change_muscle_volumes(labels: np.ndarray, factors: dict[str, float], spacing: float,
                          reach_mm: float = 20.0) -> dict[str, float]:
    """Scale each muscle's voxel count by its factor, in place; returns the realised factors.

    A muscle keeps the voxels nearest its surface (signed distance) up to the target count,
    taking only its own or unlabelled body voxels within ``reach_mm``; voxels it gives up
    become :data:`FAT`.
    """
    pad = int(np.ceil(reach_mm / spacing)) + 1
    realised = {}
    for name, value in muscle_sides().items():
        inside_all = labels == value
        n = int(inside_all.sum())
        if n == 0:
            realised[name] = 1.0
            continue
        idx = np.argwhere(inside_all)
        lo = np.maximum(idx.min(0) - pad, 0)
        hi = np.minimum(idx.max(0) + pad + 1, labels.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        sub = labels[box]
        inside = sub == value
        target = int(round(factors[name] * n))
        if target >= n:  # grow: all own voxels plus the nearest unlabelled body voxels
            dist = ndimage.distance_transform_edt(~inside, sampling=spacing)
            candidate = (sub == BODY) & (dist <= reach_mm)
            count = target - n
        else:  # shrink: keep the voxels deepest inside
            dist = -ndimage.distance_transform_edt(inside, sampling=spacing)
            candidate, count = inside, target
        order = np.flatnonzero(candidate.ravel())
        order = order[np.argsort(dist.ravel()[order], kind="stable")][:count]
        keep = np.zeros(sub.size, bool)
        keep[order] = True
        keep = keep.reshape(sub.shape) | (inside if target >= n else False)
        sub[inside & ~keep] = FAT
        sub[keep] = value
        realised[name] = float(keep.sum() / n)
    return realised


def _skin_depth(labels: np.ndarray, shift_mm: float, spacing: float) -> np.ndarray:
    """Move the skin by ``shift_mm`` (in place) and return the depth below the new skin (mm)."""
    body = labels > 0
    if shift_mm > 0:
        labels[~body & (coarse_distance(body, spacing) <= shift_mm)] = FAT
    else:
        free = (labels == BODY) | (labels == FAT)
        labels[free & (coarse_distance(~body, spacing) <= -shift_mm)] = 0
    return coarse_distance(labels == 0, spacing)


def _hu(labels: np.ndarray, depth: np.ndarray, params: dict, spacing: float) -> np.ndarray:
    """Noise-free HU of every voxel (float32)."""
    h = params["hu"]
    shape = labels.shape
    hu = np.full(shape, AIR_VALUE_HU, np.float32)
    fat = (labels == FAT) | ((labels == BODY) & (depth <= params["subcutaneous_depth_mm"]))
    hu[fat] = h["fat"]
    deep = (labels == BODY) & ~fat
    if deep.any():
        mix = smooth_field(params["visceral_seed"], shape, spacing, 25.0, 1)[..., 0][deep]
        organ = 1.0 / (1.0 + np.exp(-3.0 * (mix + 0.3)))
        hu[deep] = h["fat"] + (h["soft_tissue"] - h["fat"]) * organ
    tex = params["infiltration_texture"]
    texture = smooth_field(tex["seed"], shape, spacing, tex["length_mm"], 1)[..., 0]
    fractions = {v: params["fat_infiltration"][n] for n, v in muscle_sides().items()}
    fractions[OTHER_MUSCLE] = params["other_muscle_fat_infiltration"]
    for value, f in fractions.items():
        sel = labels == value
        if sel.any():
            phi = np.clip(f * (1.0 + tex["contrast"] * texture[sel]), 0.0, 1.0)
            hu[sel] = (1.0 - phi) * h["lean_muscle"] + phi * h["fat"]
    for value in BONE_LABELS:
        _bone_hu(hu, labels, value, h, spacing)
    return hu


def _bone_hu(hu: np.ndarray, labels: np.ndarray, value: int, h: dict, spacing: float) -> None:
    """Cortical shell + cancellous interior of one bone from the depth below its surface."""
    sel = labels == value
    if not sel.any():
        return
    idx = np.argwhere(sel)
    lo, hi = np.maximum(idx.min(0) - 1, 0), np.minimum(idx.max(0) + 2, labels.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    inside = sel[box]
    # voxel (centre) depth below the surface; the outermost voxel spans depth [0, spacing]
    top = ndimage.distance_transform_edt(inside, sampling=spacing) - spacing
    t = h["cortical_thickness_mm"]["femur" if value in FEMUR.values() else "other"]
    cortex = np.clip((t - top) / spacing, 0.0, 1.0)
    centre_depth = top + spacing / 2
    cancellous = h["marrow"] + (h["cancellous"] - h["marrow"]) * np.exp(-centre_depth / 15.0)
    values = cortex * h["cortical"] + (1.0 - cortex) * cancellous
    region = hu[box]
    region[inside] = values[inside]


def _output_grid(template: Template, scale: float, spacing: float, skin_shift: float,
                 room_mm: float) -> Volume:
    """Axis-aligned LPS grid holding the scaled body (plus room for the skin shift) in-plane,
    and the scaled region (:attr:`Template.region_z`) plus ``room_mm`` superior-inferior
    (beyond the template's ends too, see :func:`_sample_labels`)."""
    lab = template.labels
    shape = np.array(lab.array.shape[::-1])
    corners = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in shape], indexing="ij")).reshape(3, -1).T
    world = corners @ lab.affine[:3, :3].T + lab.affine[:3, 3]
    c = template.centre
    lo = c + scale * (world.min(0) - c)
    hi = c + scale * (world.max(0) - c)
    margin = max(skin_shift, 0.0) + 2 * spacing
    z_lo = c[2] + scale * (template.region_z[0] - c[2]) - room_mm
    z_hi = c[2] + scale * (template.region_z[1] - c[2]) + room_mm
    lo, hi = lo - margin, hi + margin
    lo[2], hi[2] = z_lo, z_hi
    size = np.maximum(np.ceil((hi - lo) / spacing).astype(int), 2)
    origin = lo + spacing / 2
    return Volume(np.zeros(size[::-1], np.uint8), (spacing,) * 3, origin, np.eye(3))


def _grid_points(grid: Volume) -> np.ndarray:
    """World (LPS mm) coordinates of every voxel centre, ``(k, j, i, 3)`` float64."""
    k, j, i = [np.arange(n, dtype=float) for n in grid.array.shape]
    a = grid.affine
    x = a[0, 0] * i + a[0, 3]
    y = a[1, 1] * j + a[1, 3]
    z = a[2, 2] * k + a[2, 3]
    out = np.empty(grid.array.shape + (3,))
    out[..., 0] = x[None, None, :]
    out[..., 1] = y[None, :, None]
    out[..., 2] = z[:, None, None]
    return out


def _sample_labels(labels: Volume, world: np.ndarray) -> np.ndarray:
    """Nearest-neighbour labels at world points ``(..., 3)``: 0 outside the template's
    in-plane extent; beyond its superior/inferior ends the body continues as its end slices
    (body mask, soft tissue, spine, femurs), object muscles there become :data:`OTHER_MUSCLE`
    and pelvis/sacrum unlabelled tissue, so the continuation adds nothing to the region."""
    inv = np.linalg.inv(labels.affine)
    ijk = world @ inv[:3, :3].T + inv[:3, 3]
    coords = np.moveaxis(ijk[..., ::-1], -1, 0)  # (k, j, i) index order
    n = labels.array.shape[0]
    beyond = (coords[0] < -0.5) | (coords[0] > n - 0.5)
    np.clip(coords[0], 0, n - 1, out=coords[0])
    out = ndimage.map_coordinates(labels.array, coords, order=0, mode="constant", cval=0)
    if beyond.any():
        continued = np.arange(256, dtype=np.uint8)
        continued[list(region_labels())] = BODY
        continued[list(muscle_sides().values())] = OTHER_MUSCLE
        out[beyond] = continued[out[beyond]]
    return out
