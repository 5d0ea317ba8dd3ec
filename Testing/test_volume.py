"""Volume I/O: geometry kept through files, validation errors name file and field."""

import numpy as np
import pytest
from conftest import write_image
import SimpleITK as sitk

from MSKdeXTraining.imaging.volume import (InputError, Volume, read_ct, read_labels,
                                           resample_labels)


def _write(path, array, spacing=(1.0, 2.0, 3.0), origin=(4.0, 5.0, 6.0)):
    return write_image(path, array, spacing, origin)


def test_round_trip_affine_and_resampling(tmp_path):
    ct = read_ct(_write(tmp_path / "ct.nrrd", np.arange(24, dtype=np.int16).reshape(2, 3, 4)))
    np.testing.assert_allclose(ct.affine @ [1, 1, 1, 1], [5, 7, 9, 1])
    assert ct.voxel_volume_cm3 == pytest.approx(0.006)
    labels = Volume(np.ones((4, 6, 8), np.uint8), (0.5, 1.0, 1.5), (3.75, 4.5, 5.25), np.eye(3))
    assert "size (4, 3, 2) vs (8, 6, 4)" in ct.grid_differences(labels)[0]
    on_ct = resample_labels(labels, ct)
    assert not ct.grid_differences(on_ct) and on_ct.array.dtype == np.uint8 and on_ct.array.all()
    # the same size, spacing and origin, the axes flipped (a label map stored left-right mirrored):
    # a different grid, whose labels would otherwise be projected on the wrong side
    flipped = Volume(np.zeros(ct.array.shape, np.uint8), ct.spacing, ct.origin, np.diag([-1.0, 1.0, 1.0]))
    assert ct.grid_differences(flipped) == ["direction [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]] vs "
                                            "[[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]"]


def test_reading_refuses_bad_images(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_ct(tmp_path / "none.nii.gz")
    rgb = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.mha"))
    with pytest.raises(InputError, match="rgb.mha: CT must have one value per voxel"):
        read_ct(tmp_path / "rgb.mha")
    with pytest.raises(InputError, match="neg.nrrd: label map holds negative values"):
        read_labels(_write(tmp_path / "neg.nrrd", -np.ones((2, 3, 4), np.int16)))
    flat = read_labels(_write(tmp_path / "float.nrrd", np.full((2, 3, 4), 2.0, np.float32)))
    assert flat.array.dtype.kind == "i"
    huge = np.zeros((2, 3, 4), np.int32)
    huge[1, 2, 3] = 2 ** 31 - 1  # a lookup table indexed by it would take 16 GB
    with pytest.raises(InputError, match="huge.nrrd: label map holds value 2147483647; expected labels 0-65535"):
        read_labels(_write(tmp_path / "huge.nrrd", huge))


@pytest.mark.parametrize("name", ["sheared.nrrd", "sheared.mha"])
def test_a_sheared_grid_is_refused(tmp_path, name):
    """A direction whose axes are not at right angles (a gantry tilt kept as a shear) makes the
    product of the spacings the wrong voxel volume (+11.8 % in the NRRD, which stores the axes
    at unit length): refused, naming the file and the field; a rotated orthonormal grid is read."""
    image = sitk.GetImageFromArray(np.zeros((2, 3, 4), np.int16))
    image.SetDirection((1, 0, 0, 0.5, 1, 0, 0, 0, 1))
    sitk.WriteImage(image, str(tmp_path / name))
    for read in (read_ct, read_labels):
        with pytest.raises(InputError, match=rf"{name}: field 'direction' .* is not orthonormal: .* off right "
                                             r"angles \(sheared voxels"):
            read(tmp_path / name)
    c, s = np.cos(0.3), np.sin(0.3)
    image.SetDirection((c, -s, 0, s, c, 0, 0, 0, 1))
    sitk.WriteImage(image, str(tmp_path / name))
    np.testing.assert_allclose(read_ct(tmp_path / name).direction, [[c, -s, 0], [s, c, 0], [0, 0, 1]], atol=1e-6)


def _dicom_series(folder, uid: str, slices: int, value: int, prefix: str, z_of=lambda k: 2.0 * k,
                  y_of=lambda k: 0.0) -> None:
    """Write a CT series of ``slices`` 8x8 slices (SeriesInstanceUID ``uid``) into ``folder``,
    slice ``k`` at (0, ``y_of(k)``, ``z_of(k)``) mm."""
    for z in range(slices):
        image = sitk.GetImageFromArray(np.full((8, 8), value, np.int16))
        for tag, v in {"0020|000e": uid, "0020|000d": "1.2.3", "0020|0032": f"0\\{y_of(z)}\\{z_of(z)}",
                       "0020|0037": "1\\0\\0\\0\\1\\0", "0008|0060": "CT", "0020|0013": str(z + 1),
                       "0028|1053": "1", "0028|1052": "0"}.items():
            image.SetMetaData(tag, v)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"{prefix}{z:03d}.dcm"))
        writer.Execute(image)


def test_dicom_folder_with_several_series_is_refused(tmp_path):
    _dicom_series(tmp_path, "1.2.3.4.1", 3, 111, "a")
    assert read_ct(tmp_path).array.shape == (3, 8, 8)
    _dicom_series(tmp_path, "1.2.3.4.2", 10, 222, "b")
    with pytest.raises(InputError, match=r"holds 2 DICOM series .*1\.2\.3\.4\.1': 3.*1\.2\.3\.4\.2': 10"):
        read_ct(tmp_path)


@pytest.mark.parametrize("z_of, y_of, message", [
    (lambda k: 2.0 * k + 2.0 * (k >= 3), lambda k: 0.0,
     r"a002.dcm and a003.dcm \(slices 3 and 4 of 6\) lie 4 mm apart along the slice normal, the series' "
     r"step is 2 mm: a missing"),
    (lambda k: 2.0 * k, lambda k: 0.35 * k, r"drifts 0.175 mm within the slice plane per mm .*\(9.9 degrees\): a gantry tilt"),
])
def test_a_dicom_series_off_a_regular_grid_is_refused(tmp_path, z_of, y_of, message):
    """SimpleITK reads a series with a slice missing, or sheared by a gantry tilt, as a regular
    volume of the wrong geometry (an averaged spacing; no shear): refused, naming the tag."""
    _dicom_series(tmp_path, "1.2.3.4.1", 6, 40, "a", z_of, y_of)
    with pytest.raises(InputError, match=message):
        read_ct(tmp_path)
    regular = tmp_path / "regular"  # positions written to 0.1 mm: 0.6 / 0.7 mm steps are one series
    regular.mkdir()
    _dicom_series(regular, "1.2.3.4.2", 6, 40, "a", lambda k: round(0.625 * k, 1))
    assert read_ct(regular).spacing[2] == pytest.approx(0.625, abs=0.05)


@pytest.mark.parametrize("step, off, refused", [
    (2.0, 0.49, False), (2.0, 0.51, True),  # a quarter of the step: 0.5 mm
    (0.4, 0.14, False), (0.4, 0.16, True),  # at least 0.15 mm (positions written to 0.1 mm)
])
def test_slice_step_tolerance_edge(tmp_path, step, off, refused):
    """One slice step off by just under / over max(0.15 mm, a quarter of the step)."""
    _dicom_series(tmp_path, "1.2.3.4.1", 6, 40, "a", lambda k: step * k + off * (k >= 3))
    if refused:
        with pytest.raises(InputError, match=r"a002.dcm and a003.dcm \(slices 3 and 4 of 6\)"):
            read_ct(tmp_path)
    else:
        assert read_ct(tmp_path).array.shape == (6, 8, 8)


def test_box_center_agrees_with_simpleitk_on_an_oblique_grid():
    direction = sitk.VersorTransform((0.2, 0.5, -0.3), 0.7).GetMatrix()
    volume = Volume(np.zeros((10, 12, 14), np.uint8), (0.8, 1.1, 2.5), (-30.0, 12.0, 400.0), direction)
    mask = np.zeros(volume.array.shape, bool)
    mask[2, 3, 4] = mask[7, 9, 5] = mask[4, 5, 13] = True  # box: k 2-7, j 3-9, i 4-13
    expected = volume.to_sitk().TransformContinuousIndexToPhysicalPoint((8.5, 6.0, 4.5))
    np.testing.assert_allclose(volume.box_center(mask), expected, atol=1e-9)


def test_a_single_slice_or_non_integer_label_map_is_refused(tmp_path):
    """A CT of one slice (a 3D file holding a 2D image) is no volume; a label map of fractional
    values (resampled with linear interpolation) would lose them to truncation: both refused."""
    with pytest.raises(InputError, match=r"one.nrrd: CT must be a 3D image, got size \(4, 3, 1\)"):
        read_ct(_write(tmp_path / "one.nrrd", np.zeros((1, 3, 4), np.int16)))
    fractional = np.full((2, 3, 4), 2.0, np.float32)
    fractional[1, 2, 3] = 1.5
    with pytest.raises(InputError, match=r"half.nrrd: label map holds non-integer values \(pixel type float32\)"):
        read_labels(_write(tmp_path / "half.nrrd", fractional))


@pytest.mark.parametrize("name", ["ct.nii", "ct.nii.gz"])
def test_a_nifti_cut_short_is_refused_not_read_with_zeros(tmp_path, name):
    """ITK reads a NIfTI file cut short (a copy not finished) without a word, its missing voxels
    0: the CT's masses would then fall short of its truth. It is refused, naming the file; a
    complete one reads, also a .nii.gz of two gzip members (its last size field is the second's)."""
    import gzip

    hu = np.random.default_rng(0).integers(-1000, 1500, (30, 40, 50)).astype(np.int16)
    image = sitk.GetImageFromArray(hu)
    sitk.WriteImage(image, str(tmp_path / name))
    data = (tmp_path / name).read_bytes()
    np.testing.assert_array_equal(read_ct(tmp_path / name).array, hu)
    (tmp_path / f"cut_{name}").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match=rf"cut_{name}: cannot be read as an image: its (voxel|compressed) data is "
                                         r"cut short"):
        read_ct(tmp_path / f"cut_{name}")
    if name.endswith(".gz"):
        (tmp_path / "two.nii.gz").write_bytes(data + gzip.compress(b""))
        np.testing.assert_array_equal(read_ct(tmp_path / "two.nii.gz").array, hu)


def test_a_path_that_is_not_utf8_is_refused_before_simpleitk_aborts(tmp_path):
    """SimpleITK ends the whole process (SIGABRT) on a path that is not UTF-8, e.g. a Latin-1
    folder name found in a folder listing: an error naming the path instead."""
    with pytest.raises(InputError, match=r"ct\\udce9.nii.gz': the path is not valid UTF-8"):
        read_ct(tmp_path / "ct\udce9.nii.gz")
