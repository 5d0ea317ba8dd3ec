"""The object-wise DRR projector against analytic phantoms: sums, chords, ray weights, flatness."""

import math
import re
import tracemalloc

import numpy as np
import pytest
import torch

from MSKdeXTraining.errors import InputError
from MSKdeXTraining.imaging import hu
from MSKdeXTraining.imaging.geometry import Geometry, default_ap_pose, rigid
from MSKdeXTraining.imaging.projector import (Splatter, _box_weights, footprint_mm, per_pixel_area,
                                              project_objects, subdivision, voxel_amounts)
from MSKdeXTraining.imaging.volume import Volume
from MSKdeXTraining.objects import ObjectMap, ObjectSpec

BALL = ObjectMap("test", (ObjectSpec("ball", "muscle", (1,)), ObjectSpec("bone", "bone", (2,)),
                          ObjectSpec("missing", "muscle", (3,))))
ONE = ObjectMap("one", (ObjectSpec("thing", "muscle", (1,)),))


def ellipsoid(radii_mm, spacing_mm, hu_value=40, pad=3):
    """CT + labels of a uniform ellipsoid (label 1) centred on the grid (world origin 0)."""
    radii = np.asarray(radii_mm, float)
    n = (2 * np.ceil(radii / spacing_mm) + 2 * pad + 1).astype(int)  # i, j, k sizes
    origin = -(n - 1) / 2 * spacing_mm
    k, j, i = np.meshgrid(*[np.arange(m) * spacing_mm + o for m, o in zip(n[::-1], origin[::-1])],
                          indexing="ij")
    inside = (i / radii[0]) ** 2 + (j / radii[1]) ** 2 + (k / radii[2]) ** 2 <= 1
    ct = Volume(np.where(inside, hu_value, -1000).astype(np.int16), (spacing_mm,) * 3, origin, np.eye(3))
    return ct, ct.with_array(inside.astype(np.uint8))


def pixel_rays(g: Geometry):
    """Camera-frame unit direction (rows, cols, 3) of every pixel's central ray, and R (mm)."""
    u0, v0 = g.detector_origin
    u = u0 + np.arange(g.cols) * g.pixel_spacing[1]
    v = v0 + np.arange(g.rows) * g.pixel_spacing[0]
    uu, vv = np.meshgrid(u, v)
    p = np.stack([uu, vv, np.full_like(uu, g.sdd)], -1)
    r = np.linalg.norm(p, axis=-1)
    return p / r[..., None], r


def sphere_chords(g: Geometry, centre_cam, radius):
    """Entry/exit distances s1, s2 (mm) of every pixel ray through a sphere (nan if missed)."""
    d, r = pixel_rays(g)
    b = d @ np.asarray(centre_cam, float)
    disc = b ** 2 - (np.dot(centre_cam, centre_cam) - radius ** 2)
    root = np.sqrt(np.where(disc > 0, disc, np.nan))
    return b - root, b + root, r, d[..., 2]


@pytest.mark.parametrize("parallel, rotation, sod, spacing", [
    (True, (0, 0, 0), 800.0, 1.0),
    (False, (0, 0, 0), 500.0, 1.0),
    (False, (20, -35, 50), 700.0, 1.3),
    (False, (-70, 10, 5), 450.0, 1.2),
])
def test_sums_equal_voxel_volume_and_mass_in_any_pose(parallel, rotation, sod, spacing):
    ct, labels = ellipsoid((14, 9, 11), 1.1)
    lab = labels.array.copy()
    lab[labels.array.shape[0] // 2:] *= 2  # upper half is the "bone"
    lab = labels.with_array(lab)
    ct = ct.with_array(np.where(lab.array == 2, 700, ct.array).astype(np.int16))
    g = Geometry(rows=96, cols=80, pixel_spacing=(spacing, spacing * 1.2), sdd=1000, sod=sod,
                 parallel=parallel)
    pose = default_ap_pose((0, 0, 0), g) @ rigid(rotation)
    stack = project_objects(ct, lab, BALL, g, pose)
    assert stack.data.shape == (3, 3, 96, 80)
    voxel = ct.voxel_volume_cm3
    volume = np.array([(lab.array == v).sum() * voxel for v in (1, 2, 3)])
    h = ct.array.astype(float)
    mass = np.array([hu.mdrr_density(h[lab.array == 1], True).sum() * voxel,
                     hu.mdrr_density(h[lab.array == 2], False).sum() * voxel, 0.0])
    np.testing.assert_allclose(stack.volume_cm3, volume, rtol=1e-4)
    np.testing.assert_allclose(stack.mass_g, mass, rtol=1e-4)
    assert np.all(stack.lost_fraction() == 0)
    assert float(stack.data[:, 2].abs().sum()) == 0.0  # absent object: zero channel
    analytic = 4 / 3 * math.pi * 14 * 9 * 11 / 1000
    assert volume[:2].sum() == pytest.approx(analytic, rel=0.03)  # voxelisation error only


def test_parallel_thickness_is_the_exact_chord_length():
    ct, labels = ellipsoid((15, 15, 15), 0.5)
    g = Geometry(rows=48, cols=48, pixel_spacing=(0.9, 0.9), parallel=True)
    stack = project_objects(ct, labels, ONE, g, default_ap_pose((0, 0, 0), g))
    centre = np.array([0, 0, g.sod])
    s1, s2, _, _ = sphere_chords(g, centre, 15.0)
    u0, v0 = g.detector_origin  # parallel: ray through the pixel centre along z
    uu, vv = np.meshgrid(u0 + np.arange(48) * 0.9, v0 + np.arange(48) * 0.9)
    chord_mm = 2 * np.sqrt(np.clip(15.0 ** 2 - uu ** 2 - vv ** 2, 0, None))
    drr_mm = stack.data[1, 0].numpy() * 10  # VDRR cm -> mm
    deep = chord_mm > 10
    assert np.abs(drr_mm - chord_mm)[deep].max() < 0.6  # about one voxel (0.5 mm)
    assert abs(np.mean(drr_mm[deep] - chord_mm[deep])) < 0.1
    mu = hu.attenuation(np.array(40.0))
    np.testing.assert_allclose(stack.data[0, 0].numpy(), stack.data[1, 0].numpy() * mu, rtol=1e-4)


@pytest.mark.parametrize("centre_cam, pixel_mm", [((0.0, 0.0, 500.0), 1.5), ((140.0, -90.0, 320.0), 3.0)])
def test_perspective_pixels_equal_exact_ray_weighted_integrals(centre_cam, pixel_mm):
    radius = 16.0
    ct, labels = ellipsoid((radius,) * 3, 0.5, hu_value=0)
    g = Geometry(rows=48, cols=48, pixel_spacing=(pixel_mm, pixel_mm), sdd=1000, sod=600)
    pose = np.eye(4)
    pose[:3, 3] = centre_cam
    # a detector wide enough to hold the whole (magnified, off-centre) sphere
    reach = [(abs(c) * g.sdd + 1.2 * radius * g.sdd) / centre_cam[2] / pixel_mm for c in centre_cam[:2]]
    big = Geometry(rows=2 * math.ceil(reach[1]), cols=2 * math.ceil(reach[0]),
                   pixel_spacing=(pixel_mm, pixel_mm), sdd=1000, sod=600)
    stack = project_objects(ct, labels, ONE, big, pose)
    s1, s2, r, cos_g = sphere_chords(big, centre_cam, radius)
    vdrr_exact_mm = cos_g * (s2 ** 3 - s1 ** 3) / (3 * r ** 2)
    chord_mm = s2 - s1
    deep = np.nan_to_num(chord_mm) > 0.6 * 2 * radius
    assert deep.sum() > 50
    vdrr = stack.data[1, 0].numpy() * 10
    err = np.abs(vdrr - vdrr_exact_mm)[deep] / vdrr_exact_mm[deep]
    assert err.max() < 0.04 and err.mean() < 0.01
    # the WVDRR is the plain line integral of mu: chord (cm) x mu_water
    wv = stack.data[0, 0].numpy()
    err_wv = np.abs(wv - chord_mm / 10 * hu.MU_WATER_PER_CM)[deep] / (chord_mm[deep] / 10 * hu.MU_WATER_PER_CM)
    assert err_wv.max() < 0.04 and err_wv.mean() < 0.01
    # the usual (SOD/SDD)^2 scaling would be far off for a sphere away from the isocentre
    naive = chord_mm * (g.sod / g.sdd) ** 2
    assert np.mean(np.abs(naive - vdrr_exact_mm)[deep] / vdrr_exact_mm[deep]) > 0.2
    assert stack.volume_cm3[0] == pytest.approx(labels.array.sum() * ct.voxel_volume_cm3, rel=1e-4)


def slab(voxel_mm, shape=(60, 10, 60)):
    """Uniform slab, thin along j (the AP beam direction), label 1, 0 HU."""
    k, j, i = shape
    n = np.array([i, j, k])
    ct = Volume(np.zeros(shape, np.int16), (voxel_mm,) * 3, -(n - 1) / 2 * voxel_mm, np.eye(3))
    return ct, ct.with_array(np.ones(shape, np.uint8))


def ripple(image: np.ndarray, half: int = 7) -> float:
    """Peak deviation from a fitted quadratic trend in the central window, relative to the mean."""
    c = image.shape[0] // 2
    w = image[c - half:c + half, c - half:c + half].astype(float)
    yy, xx = np.mgrid[:w.shape[0], :w.shape[1]].reshape(2, -1).astype(float)
    a = np.stack([np.ones_like(xx), xx, yy, xx * xx, yy * yy, xx * yy], 1)
    res = w.ravel() - a @ np.linalg.lstsq(a, w.ravel(), rcond=None)[0]
    return float(np.abs(res).max() / w.mean())


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("voxel_mm, pixel_mm", [(0.37, 1.0), (0.7, 1.6), (1.3, 1.0), (2.9, 1.1)])
def test_uniform_slab_projects_flat_no_moire_no_holes(parallel, voxel_mm, pixel_mm):
    ct, labels = slab(voxel_mm)
    g = Geometry(rows=48, cols=48, pixel_spacing=(pixel_mm, pixel_mm), sdd=1000, sod=800,
                 parallel=parallel)
    image = project_objects(ct, labels, ONE, g, default_ap_pose((0, 0, 0), g)).data[1, 0].numpy()
    c = image[24 - 7:24 + 7, 24 - 7:24 + 7]
    assert c.min() > 0.99 * c.max()  # aligned voxels: flat up to float rounding
    expected_cm = 10 * voxel_mm / 10 * (1.0 if parallel else (g.sod / g.sdd) ** 2)
    assert c.mean() == pytest.approx(expected_cm, rel=2e-3)


@pytest.mark.parametrize("rotation", [(0, 20, 0), (8, 0, 25), (-12, 15, 5)])
def test_rotated_slab_has_no_moire(rotation):
    ct, labels = slab(0.8, shape=(70, 14, 70))
    g = Geometry(rows=48, cols=48, pixel_spacing=(1.1, 1.1), sdd=1000, sod=800)
    pose = default_ap_pose((0, 0, 0), g) @ rigid(rotation)
    image = project_objects(ct, labels, ONE, g, pose).data[1, 0].numpy()
    assert ripple(image) < 0.012


def test_subdivision_keeps_footprints_within_one_pixel():
    g = Geometry(rows=64, cols=64, pixel_spacing=(1.0, 1.0), sdd=1000, sod=800)
    for rotation, voxel in [((0, 0, 0), 0.7), ((0, 0, 0), 2.9), ((0, 30, 0), 2.0), ((25, 40, 10), 1.5)]:
        axes = (default_ap_pose((0, 0, 0), g) @ rigid(rotation))[:3, :3] * voxel
        n = subdivision(axes, 800.0, g)
        fx, fy = footprint_mm(axes, n)
        assert fx * 1.25 <= 1 + 1e-9 and fy * 1.25 <= 1 + 1e-9
    aligned = default_ap_pose((0, 0, 0), g)[:3, :3] * 0.7
    assert subdivision(aligned, 800.0, g) == (1, 1, 1)
    assert subdivision(aligned * 3, 800.0, g) == (3, 1, 3)


def test_label_poses_move_one_bone_like_a_separate_render():
    ct, labels = ellipsoid((12, 8, 10), 1.0)
    lab = labels.array.copy()
    lab[:, :, : lab.shape[2] // 2] *= 2
    lab = labels.with_array(lab)
    g = Geometry(rows=64, cols=64, pixel_spacing=(1.2, 1.2), sdd=1000, sod=700)
    pose = default_ap_pose((0, 0, 0), g)
    moved = pose @ rigid((5, -8, 12), (6, -4, 3))
    both = project_objects(ct, lab, BALL, g, pose, label_poses={2: moved}).data
    only_bone = ObjectMap("b", (ObjectSpec("bone", "bone", (2,)),), "ignore")
    separate = project_objects(ct, lab, only_bone, g, moved).data
    np.testing.assert_allclose(both[:, 1], separate[:, 0], rtol=1e-5, atol=1e-7)


def test_splatter_counts_what_falls_outside_the_detector():
    g = Geometry(rows=10, cols=12, pixel_spacing=(1.0, 1.0), sdd=1000, sod=500)
    sp = Splatter(g, 2, (False,), "cpu")
    pts = torch.tensor([[0.0, 0.0, 500.0], [100.0, 0.0, 500.0], [-2.4, 1.7, 500.0], [0.0, -90.0, 400.0]])
    sp.add(pts, torch.tensor([[1.0], [2.0], [4.0], [8.0]]), torch.tensor([0, 1, 1, 0]))
    images, lost = sp.result()
    sums = images.double().sum(dim=(-1, -2)) * g.pixel_area_cm2
    np.testing.assert_allclose(sums[0].numpy(), [1.0, 4.0], rtol=1e-6)
    np.testing.assert_allclose(lost[0].numpy(), [8.0, 2.0], rtol=1e-6)


def test_bilinear_fast_path_equals_the_box_formula_of_width_one():
    pos = torch.linspace(-3.0, 12.0, 1001)
    fast = _box_weights(pos, 1.0, 10, torch.int32)
    general = _box_weights(pos, torch.ones_like(pos), 10, torch.int32)
    assert torch.equal(fast[0], general[0])
    torch.testing.assert_close(fast[1], general[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("footprint", [None, (0.3, 0.2)])
def test_splatter_batches_broadcast_and_the_last_corner_stays_in_the_buffer(footprint):
    """Points (B, P, 3) with shared values (P, C) and channels (B, 1) splat like the flat
    call, with bilinear and with sub-pixel box footprints (0.3 x 0.2 mm magnified about 2x);
    a point beyond the bottom-right corner of the last channel is counted as lost."""
    g = Geometry(rows=6, cols=7, pixel_spacing=(1.0, 1.0), sdd=1000, sod=500)
    # magnified 2x at 500 mm: the detector spans x +-3.5 mm, y +-3 mm there
    pts = torch.tensor([[[0.3, -0.8, 500.0], [50.0, 50.0, 500.0], [0.5, 0.4, 480.0]],
                        [[-1.0, 0.5, 520.0], [1.0, 1.0, 500.0], [90.0, 70.0, 500.0]]])
    values = torch.tensor([[1.0, 2.0], [3.0, 5.0], [7.0, 11.0]])
    flat = Splatter(g, 2, (True, False))
    flat.add(pts.reshape(-1, 3), values.repeat(2, 1), torch.arange(2).repeat_interleave(3), footprint)
    batched = Splatter(g, 2, (True, False))
    batched.add(pts.transpose(1, 2).contiguous().transpose(1, 2), values, torch.arange(2)[:, None],
                footprint)
    unlost = Splatter(g, 2, (True, False), track_lost=False)
    unlost.add(pts, values, torch.arange(2)[:, None], footprint)
    (a, lost_a), (b, lost_b), (c, lost_c) = flat.result(), batched.result(), unlost.result()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    torch.testing.assert_close(lost_a, lost_b)
    assert not lost_c.any()
    # the volume-like column (no line-integral weight) lost exactly what fell outside
    sums = a[1].double().sum(dim=(-1, -2)) * g.pixel_area_cm2
    np.testing.assert_allclose(lost_a[1].numpy(), [5.0, 11.0], rtol=1e-6)
    np.testing.assert_allclose(sums.numpy(), [2.0 + 11.0, 2.0 + 5.0], rtol=1e-6)


def test_lost_amount_is_exact_for_many_small_samples():
    """Thousands of tiny amounts clamped onto one border cell: counted in float64, not float32."""
    g = Geometry(rows=10, cols=12, pixel_spacing=(1.0, 1.0), sdd=1000, sod=500)
    sp = Splatter(g, 1, (False,), "cpu")
    n = 200_000
    pts = torch.tensor([[300.0, 0.0, 500.0]]).repeat(n, 1)
    sp.add(pts, torch.full((n, 1), 1e-3), torch.zeros(n, dtype=torch.long))
    _, lost = sp.result()
    assert float(lost[0, 0]) == pytest.approx(n * float(torch.tensor(1e-3)), rel=1e-9)


def test_objects_behind_the_source_are_refused():
    ct, labels = ellipsoid((5, 5, 5), 1.0)
    g = Geometry(rows=16, cols=16)
    pose = np.eye(4)
    pose[2, 3] = -100.0
    with pytest.raises(ValueError, match="behind the X-ray source"):
        project_objects(ct, labels, ONE, g, pose)


@pytest.mark.parametrize("field", ["pose", "label_poses[2]"])
@pytest.mark.parametrize("bad", ["nan", "shape", "last row"])
def test_non_finite_or_malformed_poses_are_refused_naming_the_field(field, bad):
    ct, labels = ellipsoid((5, 5, 5), 1.0)
    labels.array[labels.array.shape[0] // 2:] *= 2  # a second label that can take its own pose
    g = Geometry(rows=16, cols=16)
    good = default_ap_pose((0, 0, 0), g)
    wrong = good.copy()
    if bad == "nan":
        wrong[0, 3] = np.nan
    elif bad == "shape":
        wrong = good[:3]
    else:
        wrong[3, 0] = 0.5
    pose, label_poses = (wrong, None) if field == "pose" else (good, {2: wrong})
    with pytest.raises(InputError, match=re.escape(f"project_objects: {field} must be a finite 4x4")):
        project_objects(ct, labels, BALL, g, pose, label_poses=label_poses)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_gpu_render_equals_cpu_render():
    ct, labels = ellipsoid((12, 8, 10), 1.0)
    g = Geometry(rows=48, cols=48, pixel_spacing=(1.2, 1.2), sdd=1000, sod=700)
    pose = default_ap_pose((0, 0, 0), g) @ rigid((10, 20, 30))
    cpu = project_objects(ct, labels, ONE, g, pose).data
    gpu = project_objects(ct, labels, ONE, g, pose, device="cuda").data
    assert gpu.is_cuda
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), rtol=1e-4, atol=1e-6)


def test_integer_hu_muscle_mass_uses_the_lean_fraction():
    """0 HU muscle is half lean: its MDRR mass is 0.5 x rho x volume
    (the other projector tests use muscle above +30 HU, where the lean fraction is 1)."""
    ct, labels = ellipsoid((10, 8, 9), 1.0, hu_value=0)
    g = Geometry(rows=64, cols=64, pixel_spacing=(1.0, 1.0), sdd=1000, sod=700)
    stack = project_objects(ct, labels, ONE, g, default_ap_pose((0, 0, 0), g))
    rho0 = float(hu.mass_density(np.array([0.0]))[0])
    expected = labels.array.sum() * ct.voxel_volume_cm3 * 0.5 * rho0
    assert stack.mass_g[0] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("rotation", [(0, 25, 0), (0, 35, 0)])
def test_rotated_coarse_slab_has_no_moire(rotation):
    """No moire for coarse (2.9 mm) voxels rotated in plane either, where the rotated
    lattice's spacing limit binds (0.8 mm voxels are checked above)."""
    ct, labels = slab(2.9, shape=(30, 6, 30))
    g = Geometry(rows=48, cols=48, pixel_spacing=(1.1, 1.1), sdd=1000, sod=800)
    image = project_objects(ct, labels, ONE, g, default_ap_pose((0, 0, 0), g) @ rigid(rotation)).data[1, 0]
    assert ripple(image.numpy()) < 0.012


def test_thin_rod_along_the_beam_projects_as_a_continuous_streak():
    """A one-voxel rod along the beam, tilted 40 deg: its 2.9 mm voxels
    project 2 px apart along the streak, so the slice axis must be subdivided too."""
    voxel = 2.9
    a = np.zeros((5, 24, 5), np.uint8)
    a[2, 2:-2, 2] = 1
    n = np.array(a.shape[::-1])
    ct = Volume(np.zeros(a.shape, np.int16), (voxel,) * 3, -(n - 1) / 2 * voxel, np.eye(3))
    g = Geometry(rows=96, cols=64, pixel_spacing=(1.1, 1.1), parallel=True)
    image = project_objects(ct, ct.with_array(a), ONE, g,
                            default_ap_pose((0, 0, 0), g) @ rigid((40, 0, 0))).data[1, 0].numpy()
    profile = image.sum(axis=1)
    nz = np.flatnonzero(profile > 0)
    inner = profile[nz[0] + 3:nz[-1] - 2]
    assert inner.std() / inner.mean() < 0.05


def test_labels_on_another_grid_are_refused_naming_both():
    ct, labels = ellipsoid((5, 5, 5), 1.0)
    shifted = Volume(labels.array, labels.spacing, labels.origin + 1.0, labels.direction)
    with pytest.raises(ValueError, match=r"seg.nii: label grid differs from the CT: origin"):
        project_objects(ct, shifted, ONE, Geometry(rows=16, cols=16), np.eye(4), source="seg.nii")


def test_integer_hu_far_off_the_scale_are_converted_without_a_table():
    """Integer HU go through a lookup table over their range; an outlier far off the HU scale
    (INT32_MIN would make it 50 GB) is converted directly, to the same values as floats."""
    is_muscle = np.array([True, False, True, False])
    ct = np.array([-1000, 40, 1200, 10_000_000], np.int32)
    tracemalloc.start()
    try:
        amounts = voxel_amounts(ct, is_muscle, 0.027)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    np.testing.assert_array_equal(amounts, voxel_amounts(ct.astype(np.float64), is_muscle, 0.027))
    np.testing.assert_allclose(voxel_amounts(ct[:3], is_muscle[:3], 0.027), amounts[:3], rtol=1e-6)


def test_voxels_wider_than_256_pixels_are_refused_naming_the_spacings():
    ct, labels = ellipsoid((5, 5, 5), 1.0)
    g = Geometry(rows=16, cols=16, pixel_spacing=(0.001, 0.001))
    with pytest.raises(InputError, match=r"^seg.nii: CT spacing \[1.0, 1.0, 1.0\] mm against detector pixel_spacing "
                                         r"\[0.001, 0.001\] mm: voxels project to more than 256 pixels"):
        project_objects(ct, labels, ONE, g, default_ap_pose((0, 0, 0), g), source="seg.nii")


@pytest.mark.parametrize("parallel", [True, False])
def test_uniform_slab_projects_flat_on_non_square_pixels(parallel):
    """Footprints are sized per detector axis: column width from the column spacing, row height
    from the row spacing (the other slab tests use square pixels)."""
    ct, labels = slab(1.1)  # sub-voxels needed along the rows (1.0 mm) but not the columns
    g = Geometry(rows=48, cols=40, pixel_spacing=(1.0, 1.6), sdd=1000, sod=800, parallel=parallel)
    image = project_objects(ct, labels, ONE, g, default_ap_pose((0, 0, 0), g)).data[1, 0].numpy()
    c = image[24 - 7:24 + 7, 20 - 5:20 + 5]
    assert c.min() > 0.99 * c.max()
    expected_cm = 10 * 1.1 / 10 * (1.0 if parallel else (g.sod / g.sdd) ** 2)
    assert c.mean() == pytest.approx(expected_cm, rel=2e-3)


def test_integer_hu_bone_mass_is_the_full_density():
    """Bone voxels in the lookup-table path carry rho x volume, not the muscles' lean share
    (0 HU: the lean fraction would halve it)."""
    amounts = voxel_amounts(np.array([0, 0, 60], np.int16), np.array([False, True, False]), 0.5)
    rho = hu.mass_density(np.array([0.0, 60.0]))
    np.testing.assert_allclose(amounts[:, 2], [0.5 * rho[0], 0.25 * rho[0], 0.5 * rho[1]], rtol=1e-6)
    np.testing.assert_allclose(amounts[:, 1], 0.5)


def test_an_object_reaching_behind_the_source_is_refused_though_most_lies_in_front():
    """The depth check uses the nearest corner: a rod from 20 mm behind the source to 620 mm in
    front of it is refused (the other test's object lies wholly behind)."""
    ct = Volume(np.zeros((32, 3, 3), np.int16), (1.0, 1.0, 20.0), (-1.0, -1.0, -10.0), np.eye(3))
    with pytest.raises(InputError, match="behind the X-ray source"):
        project_objects(ct, ct.with_array(np.ones((32, 3, 3), np.uint8)), ONE, Geometry(rows=16, cols=16),
                        np.eye(4))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_per_pixel_area_rescales_volume_and_mass_but_not_line_integrals(kind):
    """VDRR/MDRR pixels are amounts per area (sum x area is kept); WVDRR pixels are line integrals."""
    drr = np.arange(1.0, 3 * 2 * 2 * 2 + 1).reshape(3, 2, 2, 2).astype(np.float32)
    src = drr if kind == "numpy" else torch.from_numpy(drr)
    out = np.asarray(per_pixel_area(src, 0.04, 0.01))
    np.testing.assert_allclose(out[0], drr[0])
    np.testing.assert_allclose(out[1:], drr[1:] * 4.0)
    assert out.dtype == np.float32


def test_lost_amounts_are_never_negative():
    """float32 rounding of the image can exceed the float64 total; a border hit smaller than
    that rounding leaves a lost amount of 0, not a negative one."""
    g = Geometry(rows=4, cols=4, pixel_spacing=(1.0, 1.0), parallel=True)
    sp = Splatter(g, 1, (False,))
    centre = torch.tensor([[-0.5, -0.5, 800.0]])  # the centre of pixel (1, 1): bilinear weight 1
    sp.add(centre, torch.tensor([[1.0]]), torch.zeros(1, dtype=torch.long))
    # 0.6 float32 ulps of 1.0 at the same pixel: the float32 image rounds up a whole ulp
    sp.add(centre, torch.tensor([[0.6 * 2.0 ** -23]]), torch.zeros(1, dtype=torch.long))
    sp.add(torch.tensor([[100.0, 0.0, 800.0]]), torch.tensor([[1e-9]]), torch.zeros(1, dtype=torch.long))
    _, lost = sp.result()
    assert float(lost[0, 0]) >= 0.0
