"""Projection geometry: the AP convention, pose round trips, projection vs the projector."""

import numpy as np
import pytest
import torch

from scipy.spatial.transform import Rotation

from MSKdeXTraining.imaging.geometry import (Geometry, apply, check_pose, default_ap_pose, fit_sphere, project,
                                             resample_image, rigid)
from MSKdeXTraining.errors import InputError
from MSKdeXTraining.imaging.projector import Splatter


def test_default_ap_view_orientation():
    g = Geometry(rows=101, cols=101, pixel_spacing=(1.0, 1.0), sdd=1000, sod=800)
    iso = np.array([10.0, -20.0, 30.0])
    pose = default_ap_pose(iso, g)
    centre = project(apply(pose, iso), g)
    np.testing.assert_allclose(centre, [50, 50])  # isocentre on the central ray
    assert apply(pose, iso)[2] == pytest.approx(800)
    left, back, head = (project(apply(pose, iso + d), g) - centre for d in np.eye(3) * 10)
    assert left[1] > 0 and abs(left[0]) < 1e-9       # patient's left -> larger column
    np.testing.assert_allclose(back, [0, 0], atol=1e-9)  # the central ray runs along +y (A -> P)
    assert head[0] < 0                                # superior -> upper rows
    assert apply(pose, iso + [0, -10, 0])[2] < 800    # anterior is nearer the source


def test_rigid_round_trip_and_centre():
    m = rigid((10, -20, 35), (1, 2, 3), center_mm=(5, 6, 7))
    # extrinsic x-y-z angles about the centre, then the translation
    np.testing.assert_allclose(Rotation.from_matrix(m[:3, :3]).as_euler("xyz", degrees=True), [10, -20, 35])
    np.testing.assert_allclose(m[:3, 3] - (5, 6, 7) + m[:3, :3] @ (5, 6, 7), [1, 2, 3], atol=1e-9)
    np.testing.assert_allclose(apply(m, np.array([5.0, 6, 7])), [6, 8, 10])
    np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-12)


def test_geometry_json_resize_and_validation():
    g = Geometry(rows=100, cols=80, pixel_spacing=(1.5, 2.0), sdd=1200, sod=900, parallel=True)
    assert Geometry.from_json(g.to_json()) == g
    r = g.resized(50)
    assert (r.rows, r.cols) == (50, 50) and r.pixel_spacing == (3.0, 3.2)
    assert g.pixel_area_cm2 == pytest.approx(0.03) and g.magnification == 1.0
    for bad, message in ((dict(rows=0), r"detector size must be >= 1 pixel, got 0x80"),
                         (dict(pixel_spacing=(0, 1)), r"pixel_spacing must be finite and > 0 mm, got \(0, 1\)"),
                         (dict(pixel_spacing=(1.5, float("nan"))), "pixel_spacing must be finite"),
                         (dict(sod=1200, sdd=1100), "need 0 < sod < sdd < inf"),
                         (dict(sod=0), "need 0 < sod < sdd < inf")):
        with pytest.raises(InputError, match=message):
            Geometry(**{"rows": 100, "cols": 80, "pixel_spacing": (1.5, 2.0), **bad})


@pytest.mark.parametrize("parallel", [False, True])
def test_splatted_point_lands_where_project_says(parallel):
    g = Geometry(rows=40, cols=50, pixel_spacing=(1.2, 0.9), sdd=1000, sod=700, parallel=parallel)
    point = np.array([7.3, -5.1, 650.0])
    row, col = project(point, g)
    sp = Splatter(g, 1, (False,))
    sp.add(torch.tensor(point[None], dtype=torch.float32), torch.ones(1, 1), torch.zeros(1, dtype=torch.long))
    image = sp.result()[0][0, 0].double().numpy()
    rr, cc = np.mgrid[:40, :50]
    assert (image * rr).sum() / image.sum() == pytest.approx(row, abs=1e-4)
    assert (image * cc).sum() / image.sum() == pytest.approx(col, abs=1e-4)


def test_matched_detector_has_the_reference_pixel_size_at_the_isocentre():
    ref = Geometry(rows=64, cols=48, pixel_spacing=(2.0, 2.5), sdd=1100.0, sod=900.0)
    g = Geometry(rows=512, cols=512, pixel_spacing=(0.3, 0.3), sdd=1000.0, sod=760.0).matched(ref)
    assert (g.rows, g.cols, g.sdd, g.sod) == (64, 48, 1000.0, 760.0)
    iso = np.array(g.pixel_spacing) / g.magnification
    np.testing.assert_allclose(iso, np.array(ref.pixel_spacing) / ref.magnification)
    # a point at the isocentre plane lands on the same pixel in both
    pose_ref, pose_g = default_ap_pose(np.zeros(3), ref), default_ap_pose(np.zeros(3), g)
    point = np.array([40.0, 0.0, -30.0])
    np.testing.assert_allclose(project(apply(pose_g, point), g), project(apply(pose_ref, point), ref))


def test_resampling_keeps_edge_pixels_and_zeroes_only_outside():
    """Target pixels within the source's outer half pixel take the edge value, not 0."""
    from MSKdeXTraining.imaging.geometry import resample_image

    source = Geometry(rows=10, cols=10, pixel_spacing=(1.2, 1.2))
    finer = Geometry(rows=12, cols=12, pixel_spacing=(1.0, 1.0))  # same 12 mm field of view
    np.testing.assert_array_equal(resample_image(np.ones((10, 10)), source, finer), 1.0)
    wider = Geometry(rows=20, cols=20, pixel_spacing=(1.0, 1.0))  # 4 mm beyond on each side
    out = resample_image(np.ones((10, 10)), source, wider)
    assert out[4:16, 4:16].min() == 1.0 and out[:3].max() == 0.0 and out[:, -3:].max() == 0.0


def test_geometry_from_json_refuses_missing_or_wrong_fields():
    good = Geometry(40, 48, (2.5, 2.0), 1000.0, 700.0).to_json()
    assert Geometry.from_json({k: v for k, v in good.items() if k != "parallel"}) == Geometry(40, 48, (2.5, 2.0), 1000.0, 700.0)
    for broken, message in [({"rows": 10}, r"m.json: missing field\(s\) \['cols', 'pixel_spacing', 'sdd', 'sod'\]"),
                            (dict(good, rows="40"), "m.json: field 'rows' must be an integer"),
                            (dict(good, pixel_spacing=[2.0]), "m.json: field 'pixel_spacing' must be"),
                            (dict(good, sdd=None), "m.json: field 'sdd' must be a finite number"),
                            (dict(good, sdd=float("inf")), "m.json: field 'sdd' must be a finite number"),
                            (dict(good, pixel_spacing=[float("nan"), 1.0]),
                             "m.json: field 'pixel_spacing' must be a finite number"),
                            (dict(good, sod=2000.0), "m.json: need 0 < sod < sdd")]:
        with pytest.raises(InputError, match=f"^{message}"):  # the file named once
            Geometry.from_json(broken, "m.json")


def test_downsampling_is_anti_aliased():
    """White noise at 0.5 mm resampled to 2 mm pixels: anti-aliasing
    removes most of it (bilinear sampling alone keeps half its SD)."""
    src = Geometry(rows=160, cols=160, pixel_spacing=(0.5, 0.5))
    noise = np.random.default_rng(0).random((160, 160)).astype(np.float32)
    out = resample_image(noise, src, src.resized(40))
    assert out[2:-2, 2:-2].std() < 0.3 * noise.std()


def test_resampling_a_non_square_detector_matches_rows_to_rows_and_columns_to_columns():
    """Rows follow the row origin and columns the column origin; only pixels beyond the source's columns get 0."""
    source = Geometry(rows=10, cols=20, pixel_spacing=(1.0, 1.0))
    image = (np.arange(10)[:, None] * 100 + np.arange(20)[None, :]).astype(np.float32)
    rows = resample_image(image, source, Geometry(rows=6, cols=20, pixel_spacing=(1.0, 1.0)))
    np.testing.assert_allclose(rows, image[2:8], atol=1e-4)  # the central 6 rows
    wide = resample_image(image, source, Geometry(rows=10, cols=30, pixel_spacing=(1.0, 1.0)))
    np.testing.assert_allclose(wide[:, 5:25], image, atol=1e-4)
    assert wide[:, :5].max() == 0.0 and wide[:, 25:].max() == 0.0


def test_upsampling_is_not_blurred():
    """A finer target's pixels on source pixel centres keep the source values exactly (no anti-aliasing filter)."""
    source = Geometry(rows=10, cols=10, pixel_spacing=(2.0, 2.0))
    image = np.random.default_rng(1).random((10, 10)).astype(np.float32)
    out = resample_image(image, source, Geometry(rows=19, cols=19, pixel_spacing=(1.0, 1.0)))
    np.testing.assert_allclose(out[::2, ::2], image, atol=1e-6)


def test_a_source_at_the_detector_and_a_boolean_size_are_refused():
    """sod must be strictly below sdd, and a JSON true is no detector size."""
    with pytest.raises(InputError, match="need 0 < sod < sdd < inf"):
        Geometry(sdd=1100.0, sod=1100.0)
    with pytest.raises(InputError, match="m.json: field 'rows' must be an integer, got True"):
        Geometry.from_json(dict(Geometry().to_json(), rows=True), "m.json")


def test_check_pose_refuses_a_scaled_or_sheared_matrix():
    """check_pose accepts a rigid transform and refuses one whose 3x3 block is not a rotation."""
    pose = rigid((10.0, -5.0, 30.0), (1.0, 2.0, 880.0))
    np.testing.assert_array_equal(check_pose(pose, "pose"), pose)
    scaled = pose.copy()
    scaled[:3, :3] *= 1.01
    sheared = pose.copy()
    sheared[0, 1] += 0.05
    mirrored = pose.copy()  # orthonormal, determinant -1: it would render mirrored DRRs
    mirrored[0, :3] *= -1
    for bad in (scaled, sheared, mirrored):
        with pytest.raises(InputError, match="start pose must be a finite 4x4 world->camera rigid transform"):
            check_pose(bad, "start pose")


def test_fit_sphere_finds_a_sphere_and_refuses_coplanar_points():
    """fit_sphere gives the centre and radius of points on a sphere, and None for points in one plane."""
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(30, 3))
    points = np.array([10.0, -20.0, 30.0]) + 24.0 * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    centre, radius = fit_sphere(points)
    np.testing.assert_allclose(centre, [10.0, -20.0, 30.0], atol=1e-6)
    assert radius == pytest.approx(24.0, abs=1e-6)
    assert fit_sphere(np.c_[rng.normal(size=(30, 2)) * 20.0, np.full(30, 5.0)]) is None
