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
    assert "size (4, 3, 2) vs (8, 6, 4)" in ct.same_grid(labels)[0]
    on_ct = resample_labels(labels, ct)
    assert not ct.same_grid(on_ct) and on_ct.array.dtype == np.uint8 and on_ct.array.all()


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
