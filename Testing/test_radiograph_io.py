"""Radiograph reading: real DICOMs, DICOMs written here (spacing fields, MONOCHROME1,
16-bit, rescale), ITK images and pictures; spacing is never guessed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from MSKdeXTraining.dicom_radiograph import HIP_ABOVE_TABLE_MM
from MSKdeXTraining.imaging.volume import InputError
from MSKdeXTraining.radiograph_io import read_radiograph, unit_range


def write_dicom(path, array: np.ndarray, photometric="MONOCHROME2", bits=16, **fields):
    """A minimal DX DICOM file (explicit VR little endian) holding ``array``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray, for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16 if bits > 8 else 8
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    for k, v in fields.items():
        setattr(ds, k, v)
    ds.PixelData = array.astype(np.uint16 if bits > 8 else np.uint8).tobytes()
    if hasattr(ds, "set_pixel_data"):  # pydicom >= 3
        ds.save_as(path, enforce_file_format=True)
    else:  # pydicom 2.x (what 3D Slicer bundles)
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
    return path


@pytest.fixture
def ramp() -> np.ndarray:
    return (np.arange(200 * 160).reshape(200, 160) % 4096).astype(np.uint16)


def test_dicom_imager_pixel_spacing_16bit(tmp_path, ramp):
    f = write_dicom(tmp_path / "a.dcm", ramp, bits=12, ImagerPixelSpacing=[0.5, 0.4],
                    PixelSpacing=[0.45, 0.36])
    r = read_radiograph(f)
    assert r.pixel_spacing == (0.5, 0.4)  # detector spacing wins over the calibrated one
    assert "ImagerPixelSpacing" in r.source["spacing_field"] and r.source["bits_stored"] == 12
    np.testing.assert_array_equal(r.array, ramp)
    assert r.array.dtype == np.float32


def test_dicom_pixel_spacing_and_rescale(tmp_path, ramp):
    f = write_dicom(tmp_path / "b.dcm", ramp, bits=12, PixelSpacing=[0.6, 0.6],
                    RescaleSlope=2, RescaleIntercept=-10)
    r = read_radiograph(f)
    assert r.pixel_spacing == (0.6, 0.6) and "PixelSpacing" in r.source["spacing_field"]
    np.testing.assert_allclose(r.array, 2.0 * ramp - 10)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_dicom_reads_with_the_pydicom_2_api(tmp_path, ramp, monkeypatch):
    """3D Slicer bundles pydicom 2.x, which has no ``pydicom.pixels``: the modality LUT then
    comes from ``pydicom.pixel_data_handlers`` (also checked by hand with pydicom 2.4.4)."""
    import pydicom.pixels

    monkeypatch.delattr(pydicom.pixels, "apply_modality_lut")  # as in pydicom 2: the import fails
    f = write_dicom(tmp_path / "b.dcm", ramp, bits=12, PixelSpacing=[0.6, 0.6], RescaleSlope=2,
                    RescaleIntercept=-10)
    np.testing.assert_allclose(read_radiograph(f).array, 2.0 * ramp - 10)


def test_dicom_monochrome1_is_inverted(tmp_path, ramp):
    f = write_dicom(tmp_path / "c.dcm", ramp, photometric="MONOCHROME1", bits=12,
                    ImagerPixelSpacing=[0.5, 0.5])
    np.testing.assert_array_equal(read_radiograph(f).array, 4095 - ramp.astype(np.float32))


def test_dicom_monochrome1_inverts_after_a_modality_lut(tmp_path, ramp):
    """The LUT is indexed by the stored value; MONOCHROME1's inversion comes after it."""
    from pydicom.dataset import Dataset

    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.ModalityLUTType = "US"
    table = np.round(np.sqrt(np.arange(4096) / 4095) * 1000).astype(np.uint16)
    lut.LUTData = table.tobytes()
    f = write_dicom(tmp_path / "l.dcm", ramp, photometric="MONOCHROME1", bits=12,
                    ImagerPixelSpacing=[0.5, 0.5], ModalityLUTSequence=[lut])
    r = read_radiograph(f)
    np.testing.assert_array_equal(r.array, 1000.0 - table[ramp])
    assert r.source["value_range"] == [0.0, 1000.0]


def test_a_folder_is_not_a_radiograph(tmp_path):
    with pytest.raises(InputError, match="is a folder; expected one radiograph file"):
        read_radiograph(tmp_path)


def test_dicom_without_spacing_is_an_error_unless_given(tmp_path, ramp):
    f = write_dicom(tmp_path / "d.dcm", ramp, bits=12)
    with pytest.raises(InputError, match=r"d\.dcm.*ImagerPixelSpacing.*PixelSpacing.*--pixel-spacing"):
        read_radiograph(f)
    r = read_radiograph(f, pixel_spacing=0.5)
    assert r.pixel_spacing == (0.5, 0.5) and r.source["spacing_field"].startswith("argument")


def test_a_given_spacing_that_overrides_the_files_own_is_noted(tmp_path, ramp):
    """--pixel-spacing for the pictures of a mixed folder also applies to its DICOMs: where a
    file's own spacing differs, the result says so, and how much larger the anatomy looks."""
    f = write_dicom(tmp_path / "a.dcm", ramp, bits=12, ImagerPixelSpacing=[0.4, 0.4])
    r = read_radiograph(f, pixel_spacing=0.5)
    assert r.pixel_spacing == (0.5, 0.5) and r.source["spacing_in_file"] == [0.4, 0.4]
    [note] = [n for n in r.source.get("notes", []) if "pixel spacing given" in n]
    assert "[0.5, 0.5] mm, was used instead of the file's own [0.4, 0.4] mm (ImagerPixelSpacing" in note
    assert note.endswith("the anatomy looks 1.25x as large to the model as with the file's; volumes and masses "
                         "depend strongly on it, by no fixed factor")
    same = read_radiograph(f, pixel_spacing=0.402)  # within 1 %: nothing to say
    assert not any("pixel spacing given" in n for n in same.source.get("notes", []))


def test_a_spacing_for_files_without_one_leaves_the_others_their_own(tmp_path, ramp):
    """--pixel-spacing-if-missing (``missing_spacing``) for a mixed folder: used for a file with
    no spacing or a placeholder one, never over a file's own; held to the field of view."""
    own = write_dicom(tmp_path / "own.dcm", ramp, bits=12, ImagerPixelSpacing=[0.4, 0.4])
    r = read_radiograph(own, missing_spacing=0.5)
    assert r.pixel_spacing == (0.4, 0.4) and r.source["spacing_field"].startswith("ImagerPixelSpacing")
    for f in (write_dicom(tmp_path / "none.dcm", ramp, bits=12),
              write_dicom(tmp_path / "placeholder.dcm", ramp, bits=12, PixelSpacing=[1.0, 1.0])):
        r = read_radiograph(f, missing_spacing=(0.5, 0.6))
        assert r.pixel_spacing == (0.5, 0.6), f
        assert r.source["spacing_field"] == "argument (missing_spacing)" and r.source["spacing_in_file"] is None
    assert read_radiograph(own, pixel_spacing=0.5).pixel_spacing == (0.5, 0.5)  # --pixel-spacing: always
    with pytest.raises(InputError, match=r"none\.dcm.*field of view.*check the value given \(--pixel-spacing-if-missing"):
        read_radiograph(tmp_path / "none.dcm", missing_spacing=0.01)
    with pytest.raises(InputError, match="pixel_spacing and missing_spacing exclude each other"):
        read_radiograph(own, pixel_spacing=0.5, missing_spacing=0.5)


def test_implausible_spacing_is_an_error(tmp_path, ramp):
    f = write_dicom(tmp_path / "e.dcm", ramp, bits=12, ImagerPixelSpacing=[5.0, 5.0])
    with pytest.raises(InputError, match=r"e\.dcm.*ImagerPixelSpacing.*outside"):
        read_radiograph(f)
    with pytest.raises(InputError, match="field of view"):
        read_radiograph(f, pixel_spacing=(0.1, 0.1))  # 20 mm x 16 mm: not a hip radiograph
    with pytest.raises(InputError, match=r"--pixel-spacing must be numbers > 0 \(mm\), got -1 1"):
        read_radiograph(f, pixel_spacing=(-1, 1))
    # a spacing given explicitly wins over the file's plausible range (e.g. 2.3 mm demo pixels);
    # the field of view must still be a radiograph's
    assert read_radiograph(f, pixel_spacing=2.3).pixel_spacing == (2.3, 2.3)


def test_real_pediatric_dicoms(shared_data):
    files = sorted((shared_data / "pediatric-ap-radiographs").glob("*.dcm"))
    assert len(files) == 10
    with pytest.raises(InputError, match=r"331_DDH.*PixelSpacing \(0028,0030\) is 1\.0.*placeholder"):
        read_radiograph(files[0])
    for f in files:
        r = read_radiograph(f, pixel_spacing=1.0)
        assert r.shape == (331, 331) and r.source["bits_stored"] == 8
        assert r.source["colour"] is False  # stored as RGB with three equal channels
        assert 0 <= r.array.min() < r.array.max() <= 255


def test_dicom_magnification_fields(tmp_path, ramp):
    f = write_dicom(tmp_path / "m.dcm", ramp, ImagerPixelSpacing=[0.5, 0.5],
                    DistanceSourceToDetector=1150.0, DistanceSourceToPatient=920.0,
                    EstimatedRadiographicMagnificationFactor=1.1)
    r = read_radiograph(f)
    assert r.magnification == pytest.approx(1.1) and r.source["sdd_mm"] == 1150.0
    # SID / SOD beats SDD / DistanceSourceToPatient, which is measured to the table side
    assert "(0018,1114)" in r.source["magnification_field"]
    f = write_dicom(tmp_path / "d.dcm", ramp, ImagerPixelSpacing=[0.5, 0.5],
                    DistanceSourceToDetector=1150.0, DistanceSourceToPatient=920.0)
    r = read_radiograph(f)
    # DistanceSourceToPatient reaches the table: the hips lie HIP_ABOVE_TABLE_MM nearer the source
    assert r.magnification == pytest.approx(1150 / (920 - HIP_ABOVE_TABLE_MM))
    assert r.source["distance_source_to_patient_mm"] == 920.0 and r.source["hip_above_table_mm"] == HIP_ABOVE_TABLE_MM
    assert "(0018,1111)" in r.source["magnification_field"]
    f = write_dicom(tmp_path / "e.dcm", ramp, ImagerPixelSpacing=[0.5, 0.5],
                    EstimatedRadiographicMagnificationFactor=1.15)
    assert read_radiograph(f).magnification == pytest.approx(1.15)
    given = read_radiograph(f, magnification=1.3)
    assert given.magnification == 1.3 and given.source["magnification_in_file"] == pytest.approx(1.15)
    # the argument wins, with a note of what it changes (area at the patient: (1.15 / 1.3)^2)
    [note] = [n for n in given.source["notes"] if "magnification given" in n]
    assert "1.3, was used instead of the file's own 1.15 (EstimatedRadiographicMagnificationFactor" in note
    assert "the anatomy looks 0.885x as large to the model" in note
    same = read_radiograph(f, magnification=1.155)  # within 1 %: nothing to note
    assert not any("magnification given" in n for n in same.source.get("notes", []))
    # a spacing calibrated at the patient is already at the patient's scale
    f = write_dicom(tmp_path / "c.dcm", ramp, PixelSpacing=[0.45, 0.45], PixelSpacingCalibrationType="GEOMETRY",
                    DistanceSourceToDetector=1150.0, DistanceSourceToPatient=920.0)
    assert read_radiograph(f).magnification == 1.0
    # ... but not once the user gives the (detector) spacing: then the distances count
    assert read_radiograph(f, pixel_spacing=0.5).magnification == pytest.approx(1150 / (920 - HIP_ABOVE_TABLE_MM))
    for dsp in (HIP_ABOVE_TABLE_MM, 1150.0):  # no room for the hips, or not before the detector
        f = write_dicom(tmp_path / "x.dcm", ramp, ImagerPixelSpacing=[0.5, 0.5],
                        DistanceSourceToDetector=1150.0, DistanceSourceToPatient=dsp)
        r = read_radiograph(f)
        assert r.magnification is None and "not between" in r.source["magnification_problem"]
    plain = read_radiograph(write_dicom(tmp_path / "p.dcm", ramp, ImagerPixelSpacing=[0.5, 0.5]))
    assert plain.magnification is None and plain.source["magnification_field"] == "none"
    bad = write_dicom(tmp_path / "b.dcm", ramp, ImagerPixelSpacing=[0.5, 0.5],
                      EstimatedRadiographicMagnificationFactor=3.5)
    with pytest.raises(InputError, match=r"b.dcm: magnification from EstimatedRadiographic.* is 3.5: implausible"
                       r".*; correct the file's field$"):  # a caller that takes no magnification
        read_radiograph(bad)
    with pytest.raises(InputError,
                       match=r"is 3.5: implausible.*; pass the right value explicitly \(--magnification\)$"):
        read_radiograph(bad, magnification_option="--magnification")  # the option is named where there is one
    assert read_radiograph(bad, magnification=1.2).magnification == 1.2  # and it replaces the file's


def test_registration_geometry_from_dicom_distances(tmp_path, ramp):
    """`mskdex register`'s geometry: the SOD follows the SDD actually used; a spacing
    calibrated at the patient is scaled up to the detector."""
    from MSKdeXTraining.imaging.registration import read_xray

    f = write_dicom(tmp_path / "f.dcm", ramp, ImagerPixelSpacing=[0.5, 0.5],
                    EstimatedRadiographicMagnificationFactor=1.2)
    _, g = read_xray(f, sdd=1000.0)
    assert g.sdd == 1000.0 and g.sdd / g.sod == pytest.approx(1.2)
    f = write_dicom(tmp_path / "p.dcm", ramp, PixelSpacing=[0.4, 0.4], PixelSpacingCalibrationType="GEOMETRY")
    _, g = read_xray(f, sdd=1100.0, sod=880.0)
    assert g.pixel_spacing == pytest.approx((0.5, 0.5))
    # calibrated at the patient, both distances in the file: used (the SOD is not assumed)
    f = write_dicom(tmp_path / "q.dcm", ramp, PixelSpacing=[0.4, 0.4], PixelSpacingCalibrationType="GEOMETRY",
                    DistanceSourceToDetector=1150.0, DistanceSourceToPatient=920.0)
    _, g = read_xray(f, require_distances=True)
    sod = 920.0 - HIP_ABOVE_TABLE_MM  # the hips, above the table DistanceSourceToPatient reaches
    assert (g.sdd, g.sod) == (1150.0, sod) and g.pixel_spacing == pytest.approx((0.4 * 1150 / sod,) * 2)
    # no distances anywhere: assumed with a warning, or refused where they set the targets' scale
    f = write_dicom(tmp_path / "n.dcm", ramp, ImagerPixelSpacing=[0.5, 0.5])
    with pytest.warns(UserWarning, match="assuming SDD 1100 mm, SOD 880 mm"):
        assert read_xray(f)[1].sdd == 1100.0
    with pytest.raises(InputError, match=r"n.dcm: source distances not in the file .* nor given"):
        read_xray(f, require_distances=True)


def test_cohort_sidecar_gives_magnification(tmp_path):
    from MSKdeXTraining.imaging.registration import read_xray

    img = sitk.GetImageFromArray(np.zeros((64, 64), np.float32))
    img.SetSpacing((2.0, 2.0))
    sitk.WriteImage(img, str(tmp_path / "xray.mha"))
    geometry = {"rows": 64, "cols": 64, "pixel_spacing": [2.0, 2.0], "sdd": 1100.0, "sod": 900.0}
    (tmp_path / "xray.json").write_text(json.dumps({"format": "mskdex-xray", "version": 1, "geometry": geometry}))
    assert read_radiograph(tmp_path / "xray.mha").magnification == pytest.approx(1100 / 900)
    # a simulated radiograph's coarse pixels (the demo cohort's are 2.3 mm) are exact, not implausible
    img.SetSpacing((2.3, 2.3))
    sitk.WriteImage(img, str(tmp_path / "xray.mha"))
    (tmp_path / "xray.json").write_text(json.dumps({"format": "mskdex-xray", "version": 1,
                                                    "geometry": {**geometry, "pixel_spacing": [2.3, 2.3]}}))
    assert read_radiograph(tmp_path / "xray.mha").pixel_spacing == (2.3, 2.3)
    sitk.WriteImage(img, str(tmp_path / "plain.mha"))
    with pytest.raises(InputError, match="plain.mha: implausible pixel spacing"):
        read_radiograph(tmp_path / "plain.mha")
    # a spacing the user gives instead is checked as for any film: a 12.8 m field of view is refused
    with pytest.raises(InputError, match=r"xray.mha: implausible pixel spacing .* 64 x 200 = 12800.0 mm"):
        read_radiograph(tmp_path / "xray.mha", pixel_spacing=200.0)
    (tmp_path / "xray.json").write_text(json.dumps({"format": "mskdex-xray", "version": 1, "geometry": {}}))
    with pytest.raises(InputError, match=r"xray.json: field 'geometry': missing field\(s\)"):
        read_radiograph(tmp_path / "xray.mha")
    # a sidecar that is not the image's (rows and columns swapped; a bad distance) is refused
    for bad, message in [({"rows": 32}, "describes 32x64 pixels .* but xray.mha has 64x64"),
                         ({"pixel_spacing": [2.3, 2.0]}, r"describes 64x64 pixels of \[2.3, 2.0\] mm"),
                         ({"sdd": "far"}, "field 'sdd' must be a finite number")]:
        (tmp_path / "xray.json").write_text(json.dumps(
            {"format": "mskdex-xray", "version": 1, "geometry": {**geometry, "pixel_spacing": [2.3, 2.3], **bad}}))
        for read in (read_radiograph, read_xray):
            with pytest.raises(InputError, match=message):
                read(tmp_path / "xray.mha")


def test_itk_image_spacing_order(tmp_path):
    a = np.random.default_rng(0).random((120, 90)).astype(np.float32)
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((0.8, 1.2))  # (column, row) in ITK order
    sitk.WriteImage(img, str(tmp_path / "x.mha"))
    r = read_radiograph(tmp_path / "x.mha")
    assert r.pixel_spacing == (1.2, 0.8)
    np.testing.assert_array_equal(r.array, a)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 50, 50), np.float32)), str(tmp_path / "v.nii.gz"))
    with pytest.raises(InputError, match="2D"):
        read_radiograph(tmp_path / "v.nii.gz")


def test_png_needs_explicit_spacing(tmp_path):
    a = (np.random.default_rng(1).random((100, 80)) * 255).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "p.png")
    with pytest.raises(InputError, match=r"p\.png.*no usable pixel spacing.*--pixel-spacing"):
        read_radiograph(tmp_path / "p.png")
    r = read_radiograph(tmp_path / "p.png", pixel_spacing=(1.0, 1.0))
    np.testing.assert_array_equal(r.array, a)
    rgb = np.stack([a, a // 2, a // 3], -1)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert read_radiograph(tmp_path / "c.png", 1.0).source["colour"] is True


@pytest.mark.parametrize("mode", ["P", "LA"])
def test_palette_and_grey_alpha_pictures_read_as_their_grey_values(tmp_path, mode):
    grey = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (80, 1))
    image = Image.fromarray(grey)
    image = image.convert("LA") if mode == "LA" else image.quantize(64)
    assert image.mode == mode
    image.save(tmp_path / "q.png")
    np.testing.assert_allclose(read_radiograph(tmp_path / "q.png", 1.0).array, grey, atol=1)


def test_unreadable_files(tmp_path):
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom file at all")
    with pytest.raises(InputError, match="junk.dcm: not a readable DICOM file") as err:
        read_radiograph(tmp_path / "junk.dcm")
    assert "force=True" not in str(err.value)  # pydicom's advice to programmers is left out
    with pytest.raises(InputError, match="not found"):
        read_radiograph(tmp_path / "missing.dcm")


def test_spacing_aspect_ratio_beyond_two_is_refused(tmp_path, ramp):
    """1.0 x 0.4 mm pixels (200 x 64 mm, a plausible field of view)."""
    f = write_dicom(tmp_path / "r.dcm", ramp, bits=12, ImagerPixelSpacing=[1.0, 0.4])
    with pytest.raises(InputError, match="ratio 2.50 is above 2"):
        read_radiograph(f)


def test_colour_picture_is_converted_with_the_luma_weights(tmp_path):
    """A colour export becomes BT.601 luma, not one of its channels."""
    rgb = np.random.default_rng(2).integers(0, 256, (100, 80, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    r = read_radiograph(tmp_path / "c.png", 1.0)
    np.testing.assert_allclose(r.array, rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-3)


def test_monochrome1_with_a_negative_rescale_intercept(tmp_path, ramp):
    """The inversion mirrors within the rescaled range [-1024, 3071]
    (the existing MONOCHROME1 tests both have ranges starting at 0)."""
    f = write_dicom(tmp_path / "n.dcm", ramp, photometric="MONOCHROME1", bits=12,
                    ImagerPixelSpacing=[0.5, 0.5], RescaleSlope=1, RescaleIntercept=-1024)
    r = read_radiograph(f)
    assert r.source["value_range"] == [-1024.0, 3071.0]
    np.testing.assert_array_equal(r.array, 3071.0 - ramp.astype(np.float32))
    assert -1024 <= r.array.min() and r.array.max() <= 3071


def test_placeholder_pixel_spacing_is_refused_without_shared_data(tmp_path, ramp):
    """The placeholder PixelSpacing of 1.0 x 1.0 mm is refused (on a DICOM written here, without the shared data)."""
    f = write_dicom(tmp_path / "p.dcm", ramp, bits=12, PixelSpacing=[1.0, 1.0])
    with pytest.raises(InputError, match=r"PixelSpacing \(0028,0030\) is 1\.0.*placeholder"):
        read_radiograph(f)
    assert read_radiograph(write_dicom(tmp_path / "q.dcm", ramp, bits=12, PixelSpacing=[1.0, 0.9])).pixel_spacing == (1.0, 0.9)


def test_big_endian_16bit_picture_keeps_its_bits(tmp_path, ramp):
    path = tmp_path / "film.tif"
    Image.frombytes("I;16B", ramp.shape[::-1], ramp.astype(">u2").tobytes()).save(path)
    assert Image.open(path).mode == "I;16B"
    r = read_radiograph(path, pixel_spacing=0.5)
    np.testing.assert_array_equal(r.array, ramp)  # not cut to 8 bits


def test_itk_direction_is_recorded_not_applied(tmp_path, ramp):
    """Writers disagree on what a 2D film's direction means (a NIfTI of an identity RAS affine
    reads with a flipped one): the stored pixel order is kept and the direction recorded."""
    plain = sitk.GetImageFromArray(ramp)
    plain.SetSpacing((0.6, 0.4))  # column, row
    sitk.WriteImage(plain, str(tmp_path / "plain.mha"))
    assert "direction" not in read_radiograph(tmp_path / "plain.mha").source
    flipped = sitk.GetImageFromArray(ramp)
    flipped.SetSpacing((0.6, 0.4))
    flipped.SetDirection((-1.0, 0.0, 0.0, -1.0))
    sitk.WriteImage(flipped, str(tmp_path / "ras.nii.gz"))
    r = read_radiograph(tmp_path / "ras.nii.gz")
    np.testing.assert_array_equal(r.array, ramp)
    assert r.pixel_spacing == pytest.approx((0.4, 0.6)) and r.source["direction"] == [-1.0, 0.0, 0.0, -1.0]
    # one slice of a 3D NIfTI, stored coronally (row 0 at the feet): a slice's own direction would
    # read as the identity, the file's is recorded
    coronal = sitk.GetImageFromArray(ramp[None])
    coronal.SetDirection((1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0))
    sitk.WriteImage(coronal, str(tmp_path / "coronal.nii.gz"))
    r = read_radiograph(tmp_path / "coronal.nii.gz", pixel_spacing=0.5)
    np.testing.assert_array_equal(r.array, ramp)
    assert r.source["direction"] == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0]


def test_non_finite_pixels_are_refused(tmp_path):
    a = np.full((100, 120), 0.5, np.float32)
    a[3, 4] = np.nan
    image = sitk.GetImageFromArray(a)
    image.SetSpacing((0.5, 0.5))
    sitk.WriteImage(image, str(tmp_path / "nan.mha"))
    with pytest.raises(InputError, match="nan.mha: 1 pixel.* NaN or infinite"):
        read_radiograph(tmp_path / "nan.mha")


def test_unestimated_magnification_factor_is_not_used(tmp_path, ramp):
    """EstimatedRadiographicMagnificationFactor 1.0 beside a detector spacing: not an estimate."""
    f = write_dicom(tmp_path / "m.dcm", ramp, bits=12, ImagerPixelSpacing=[0.5, 0.4],
                    EstimatedRadiographicMagnificationFactor=1.0)
    r = read_radiograph(f)
    assert r.magnification is None and "is 1: not an estimate" in r.source["magnification_problem"]
    g = write_dicom(tmp_path / "g.dcm", ramp, bits=12, ImagerPixelSpacing=[0.5, 0.4],
                    EstimatedRadiographicMagnificationFactor=1.2)
    assert read_radiograph(g).magnification == pytest.approx(1.2)


def test_cmyk_picture_is_read_and_a_decompression_bomb_refused(tmp_path, monkeypatch):
    grey = np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (200, 1))
    Image.fromarray(grey).convert("CMYK").save(tmp_path / "cmyk.jpg")
    r = read_radiograph(tmp_path / "cmyk.jpg", pixel_spacing=0.5)
    assert np.corrcoef(r.array.ravel(), grey.ravel())[0, 1] > 0.99  # not blank (the K channel dropped)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # so that 32000 pixels count as a bomb
    with pytest.raises(InputError, match="cmyk.jpg: cannot be read as a picture"):
        read_radiograph(tmp_path / "cmyk.jpg", pixel_spacing=0.5)


def test_multi_page_tiff_is_refused_not_read_as_its_first_page(tmp_path):
    pages = [Image.fromarray(np.full((200, 160), v, np.uint8)) for v in (10, 200)]
    pages[0].save(tmp_path / "two.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(InputError, match=r"two.tif: holds 2 pages \(frames\); expected one 2D radiograph"):
        read_radiograph(tmp_path / "two.tif", pixel_spacing=0.5)
    pages[0].save(tmp_path / "one.tif")
    assert read_radiograph(tmp_path / "one.tif", pixel_spacing=0.5).array.shape == (200, 160)


def test_dicom_presentation_intent_is_recorded(tmp_path, ramp):
    f = write_dicom(tmp_path / "raw.dcm", ramp, bits=12, ImagerPixelSpacing=[0.5, 0.4],
                    PresentationIntentType="FOR PROCESSING", PresentationLUTShape="INVERSE",
                    PixelIntensityRelationship="LOG", PixelIntensityRelationshipSign=-1)
    r = read_radiograph(f)
    assert r.source["presentation_intent"] == "FOR PROCESSING"
    assert (r.source["presentation_lut_shape"], r.source["pixel_intensity_relationship"],
            r.source["pixel_intensity_relationship_sign"]) == ("INVERSE", "LOG", "-1")
    # recorded, not applied: devices disagree on them; decomposition checks the film's polarity
    np.testing.assert_array_equal(r.array, ramp.astype(np.float32))


@pytest.mark.parametrize("fields, says", [
    ({"RescaleSlope": "", "RescaleIntercept": 0}, r"RescaleSlope \(0028,1053\) is empty"),
    ({"RescaleSlope": 1, "RescaleIntercept": [0, 5]}, r"RescaleIntercept \(0028,1052\) is \[0.0, 5.0\]"),
    ({"BitsStored": None}, r"BitsStored \(0028,0101\) is empty")])
def test_empty_or_multivalued_numeric_fields_name_the_file_and_tag(tmp_path, ramp, fields, says):
    import pydicom

    f = write_dicom(tmp_path / "s.dcm", ramp, bits=12, ImagerPixelSpacing=[0.5, 0.5])
    ds = pydicom.dcmread(f)  # set after writing: write_dicom's BitsStored must stay a number
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    ds.save_as(f)
    with pytest.raises(InputError, match=rf"s\.dcm: {says}; expected one number"):
        read_radiograph(f)


def test_a_malformed_distance_is_a_magnification_problem_not_a_failure(tmp_path, ramp):
    """Type-3 distances: empty is DICOM's "unknown"; two values are not used, and say why."""
    f = write_dicom(tmp_path / "d.dcm", ramp, ImagerPixelSpacing=[0.5, 0.5], DistanceSourceToDetector="",
                    DistanceSourceToPatient=[900, 950])
    r = read_radiograph(f)
    assert r.magnification is None and "sdd_mm" not in r.source
    assert r.source["magnification_problem"].endswith(
        "d.dcm: DistanceSourceToPatient (0018,1111) is [900.0, 950.0]; expected one number")


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_itk_default_spacing_is_refused_as_a_placeholder(tmp_path, ramp, suffix):
    """A file that stores no spacing reads as ITK's 1.0 x 1.0 mm: refused as the DICOM
    placeholder is, unless given, or a cohort sidecar says so."""
    path = tmp_path / f"h{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(ramp), str(path))
    with pytest.raises(InputError, match=rf"h{suffix}: no usable pixel spacing \(image spacing is 1.0 x 1.0 mm, "
                                         r".*placeholder.*\); pass it explicitly \(--pixel-spacing, mm at the "
                                         r"detector: e.g. 2.2-2.7 mm if the film's 160 columns span a 35 x 43 cm "
                                         r"cassette\)"):
        read_radiograph(path)
    r = read_radiograph(path, pixel_spacing=1.0)
    assert r.pixel_spacing == (1.0, 1.0) and r.source["spacing_field"] == "argument (pixel_spacing)"
    geometry = {"rows": 200, "cols": 160, "pixel_spacing": [1.0, 1.0], "sdd": 1100.0, "sod": 900.0}
    (tmp_path / "h.json").write_text(json.dumps({"format": "mskdex-xray", "version": 1, "geometry": geometry}))
    assert read_radiograph(path).pixel_spacing == (1.0, 1.0)
    other = sitk.GetImageFromArray(ramp)
    other.SetSpacing((0.9, 1.0))  # only exactly 1.0 x 1.0 is the placeholder
    sitk.WriteImage(other, str(tmp_path / f"o{suffix}"))
    assert read_radiograph(tmp_path / f"o{suffix}").pixel_spacing == pytest.approx((1.0, 0.9))


def test_magnification_from_imager_over_calibrated_pixel_spacing(tmp_path, ramp):
    """IPS / PS is the magnification when PixelSpacingCalibrationType says PS is calibrated,
    after the factor and the distances; without it, a difference above 1 % is noted."""
    f = write_dicom(tmp_path / "g.dcm", ramp, ImagerPixelSpacing=[0.6, 0.6], PixelSpacing=[0.5, 0.5],
                    PixelSpacingCalibrationType="GEOMETRY")
    r = read_radiograph(f)
    assert r.pixel_spacing == (0.6, 0.6) and r.magnification == pytest.approx(1.2)
    assert r.source["magnification_field"] == ("ImagerPixelSpacing (0018,1164) / PixelSpacing (0028,0030) calibrated "
                                               "at the patient (PixelSpacingCalibrationType (0028,0A02) GEOMETRY)")
    assert "notes" not in r.source
    f = write_dicom(tmp_path / "f.dcm", ramp, ImagerPixelSpacing=[0.6, 0.6], PixelSpacing=[0.5, 0.5],
                    PixelSpacingCalibrationType="GEOMETRY", EstimatedRadiographicMagnificationFactor=1.1)
    assert read_radiograph(f).magnification == pytest.approx(1.1)  # the factor comes first
    f = write_dicom(tmp_path / "b.dcm", ramp, ImagerPixelSpacing=[0.5, 0.5], PixelSpacing=[0.2, 0.2],
                    PixelSpacingCalibrationType="GEOMETRY")
    with pytest.raises(InputError, match=r"b.dcm: magnification from ImagerPixelSpacing .* is 2.5: implausible"):
        read_radiograph(f)
    f = write_dicom(tmp_path / "e.dcm", ramp, ImagerPixelSpacing=[0.6, 0.6], PixelSpacing=[0.6, 0.6],
                    PixelSpacingCalibrationType="GEOMETRY")
    r = read_radiograph(f)  # equal: no estimate, as EstimatedRadiographicMagnificationFactor 1.0 is not
    assert r.magnification is None and "ImagerPixelSpacing / PixelSpacing is 1" in r.source["magnification_problem"]
    f = write_dicom(tmp_path / "n.dcm", ramp, ImagerPixelSpacing=[0.6, 0.6], PixelSpacing=[0.5, 0.5])
    r = read_radiograph(f)
    assert r.pixel_spacing == (0.6, 0.6) and r.magnification is None
    [note] = r.source["notes"]
    assert "differ by more than 1 %" in note and "ImagerPixelSpacing was used" in note and note.endswith("1.200")
    [note] = read_radiograph(f, magnification_option="the 'Magnification' field").source["notes"]
    assert note.endswith("the magnification is 1.200: give it (the 'Magnification' field)")
    f = write_dicom(tmp_path / "c.dcm", ramp, ImagerPixelSpacing=[0.6, 0.6], PixelSpacing=[0.598, 0.598])
    assert "notes" not in read_radiograph(f).source  # within 1 %: nothing to say


def jpeg_lossless_dicom(path, array: np.ndarray, **fields):
    """``array`` as a DX DICOM in JPEG Lossless (1.2.840.10008.1.2.4.70), written by SimpleITK's
    GDCM, with ``fields`` set afterwards (the compressed pixels untouched)."""
    import pydicom

    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.4, 0.5))  # GDCM writes it as ImagerPixelSpacing 0.5\0.4 for DX
    image.SetMetaData("0008|0060", "DX")
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.SetFileName(str(path))
    writer.SetUseCompression(True)
    writer.SetCompressor("JPEG")
    writer.Execute(image)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return path


def test_jpeg_lossless_dicom_reads_as_the_uncompressed_pixels(tmp_path, ramp):
    """pydicom has no JPEG Lossless decoder here: SimpleITK's GDCM decodes it, without applying
    the rescale or the MONOCHROME1 inversion twice."""
    fields = {"PhotometricInterpretation": "MONOCHROME1", "RescaleSlope": 2, "RescaleIntercept": -10}
    plain = read_radiograph(write_dicom(tmp_path / "u.dcm", ramp, ImagerPixelSpacing=[0.5, 0.4], **fields))
    r = read_radiograph(jpeg_lossless_dicom(tmp_path / "j.dcm", ramp, **fields))
    assert r.source["pixel_decoder"] == "SimpleITK (GDCM)" and plain.source["pixel_decoder"] == "pydicom"
    assert r.pixel_spacing == (0.5, 0.4)
    np.testing.assert_array_equal(r.array, plain.array)
    assert r.source["value_range"] == plain.source["value_range"]


def test_jpeg_ls_dicom_reads_as_the_uncompressed_pixels(tmp_path):
    """JPEG-LS Lossless (1.2.840.10008.1.2.4.80): pydicom's own test files, compressed and not."""
    import pydicom

    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    if not (folder / "MR_small_jpeg_ls_lossless.dcm").is_file():
        pytest.skip("this pydicom does not ship its test files")
    r = read_radiograph(folder / "MR_small_jpeg_ls_lossless.dcm", pixel_spacing=1.0)
    assert r.source["transfer_syntax"] == "1.2.840.10008.1.2.4.80"
    np.testing.assert_array_equal(r.array, read_radiograph(folder / "MR_small.dcm", pixel_spacing=1.0).array)


def test_undecodable_pixel_data_names_both_decoders(tmp_path, ramp):
    import pydicom

    f = jpeg_lossless_dicom(tmp_path / "x.dcm", ramp)
    ds = pydicom.dcmread(f)
    ds.PixelData = ds.PixelData[:200]  # cut short: neither decoder can read it
    ds.save_as(f)
    with pytest.raises(InputError, match=r"x.dcm: cannot decode PixelData \(transfer syntax 1.2.840.10008.1.2.4.70\)"
                                         r": pydicom: .*; SimpleITK: "):
        read_radiograph(f)


def test_exif_orientation_is_applied_and_noted(tmp_path):
    a = (np.random.default_rng(3).random((100, 80)) * 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: shown turned 90 degrees clockwise
    Image.fromarray(a).save(tmp_path / "turned.png", exif=exif)
    r = read_radiograph(tmp_path / "turned.png", pixel_spacing=1.0)
    np.testing.assert_array_equal(r.array, np.rot90(a, k=-1))
    assert r.source["exif_orientation"] == 6 and "EXIF Orientation (6)" in r.source["notes"][0]
    Image.fromarray(a).save(tmp_path / "upright.png")
    upright = read_radiograph(tmp_path / "upright.png", pixel_spacing=1.0)
    np.testing.assert_array_equal(upright.array, a)
    assert "notes" not in upright.source and "exif_orientation" not in upright.source


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_pixel_padding_is_left_out_of_the_window_and_set_to_zero(tmp_path, photometric):
    """A 20-pixel border of PixelPaddingValue (or up to PixelPaddingRangeLimit) does not pull
    the window's 1st percentile, and is 0 (no attenuation) in [0, 1], also for MONOCHROME1
    where it reads as the brightest value."""
    film = np.tile(np.linspace(1000, 3000, 160), (200, 1)).astype(np.uint16)
    border = np.ones(film.shape, bool)
    border[20:-20, 20:-20] = False
    film[border] = np.arange(border.sum()) % 11  # stored 0-10
    f = write_dicom(tmp_path / "p.dcm", film, photometric=photometric, bits=12, ImagerPixelSpacing=[0.5, 0.5],
                    PixelPaddingValue=0, PixelPaddingRangeLimit=10)
    r = read_radiograph(f)
    np.testing.assert_array_equal(r.padding, border)
    assert r.source["padding_pixels"] == border.sum()
    x, method = unit_range(r.array, r.source["value_range"], padding=r.padding)
    inside = r.array[~border].astype(np.float64)
    lo, hi = np.percentile(inside, (1, 99.5))
    np.testing.assert_allclose(x[~border], np.clip((inside - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert (x[border] == 0).all() and "padding pixel(s) left out" in method
    high = film.copy()
    high[border] = 4095 - np.arange(border.sum()) % 11  # stored 4085-4095: the value above its range limit
    down = read_radiograph(write_dicom(tmp_path / "h.dcm", high, bits=12, ImagerPixelSpacing=[0.5, 0.5],
                                       PixelPaddingValue=4095, PixelPaddingRangeLimit=4085))
    np.testing.assert_array_equal(down.padding, border)
    single = read_radiograph(write_dicom(tmp_path / "s.dcm", film, bits=12, ImagerPixelSpacing=[0.5, 0.5],
                                         PixelPaddingValue=0))
    assert single.padding.sum() == (film == 0).sum() > 0  # without a range limit: the one value
    none = read_radiograph(write_dicom(tmp_path / "n.dcm", film, bits=12, ImagerPixelSpacing=[0.5, 0.5],
                                       PixelPaddingValue=4000))
    assert none.padding is None  # no pixel holds it
    with pytest.raises(InputError, match=r"a.dcm: every pixel is padding"):
        read_radiograph(write_dicom(tmp_path / "a.dcm", np.zeros_like(film), bits=12,
                                    ImagerPixelSpacing=[0.5, 0.5], PixelPaddingValue=0))


def test_truncated_uncompressed_dicom_is_refused_not_padded(tmp_path, ramp):
    """Uncompressed PixelData shorter than Rows x Columns x bytes per pixel (a file cut short)
    is an error naming both byte counts, never handed to GDCM, which pads it with zeros."""
    import pydicom

    f = write_dicom(tmp_path / "t.dcm", ramp, bits=12, ImagerPixelSpacing=[0.5, 0.5])
    ds = pydicom.dcmread(f)
    ds.PixelData = ds.PixelData[:20000]
    ds.save_as(f)
    with pytest.raises(InputError, match=r"t.dcm: PixelData \(7FE0,0010\) holds 20000 bytes; expected 64000 "
                                         r"\(Rows 200 x Columns 160 x SamplesPerPixel 1 x BitsAllocated 16 / 8, "
                                         r"uncompressed transfer syntax 1.2.840.10008.1.2.1\)"):
        read_radiograph(f)
    whole = write_dicom(tmp_path / "c.dcm", ramp, bits=12, ImagerPixelSpacing=[0.5, 0.5]).read_bytes()
    (tmp_path / "c.dcm").write_bytes(whole[:-30000])  # the file itself cut short
    with pytest.raises(InputError, match=r"c.dcm: PixelData \(7FE0,0010\) holds 34000 bytes; expected 64000"):
        read_radiograph(tmp_path / "c.dcm")
    # a whole image whose header pydicom refuses (no PhotometricInterpretation) goes to GDCM; cut short, not
    del ds.PhotometricInterpretation
    ds.PixelData = ramp.tobytes()
    ds.save_as(f)
    r = read_radiograph(f)
    assert r.source["pixel_decoder"] == "SimpleITK (GDCM)"
    np.testing.assert_array_equal(r.array, ramp)
    ds.PixelData = ds.PixelData[:20000]
    ds.save_as(f)
    with pytest.raises(InputError, match=r"t.dcm: PixelData \(7FE0,0010\) holds 20000 bytes; expected 64000"):
        read_radiograph(f)


def test_truncated_compressed_dicom_and_pydicom_warnings(tmp_path, ramp):
    """Compressed PixelData cut before its end is "missing or truncated" with pydicom's reason;
    pydicom's warnings reach the error or the notes, not the terminal."""
    import warnings

    import pydicom

    whole = jpeg_lossless_dicom(tmp_path / "j.dcm", ramp).read_bytes()
    (tmp_path / "j.dcm").write_bytes(whole[:-100])
    f = write_dicom(tmp_path / "x.dcm", ramp, bits=12, ImagerPixelSpacing=[0.5, 0.5])
    ds = pydicom.dcmread(f)
    ds.PixelData = ds.PixelData + bytes(200)  # excess data: pydicom warns and ignores it
    ds.save_as(f)
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match=r"j.dcm: PixelData \(7FE0,0010\) is missing or truncated; expected the "
                                             r"image's pixels \(pydicom warned: End of file reached before delimiter"):
            read_radiograph(tmp_path / "j.dcm")
        r = read_radiograph(f)
    assert not [str(w.message) for w in leaked]
    np.testing.assert_array_equal(r.array, ramp)
    [note] = r.source["notes"]
    assert note.startswith("pydicom, reading the file: ") and "200 bytes" in note


def test_placeholder_pixel_spacing_beside_imager_spacing_is_not_compared(tmp_path, ramp):
    """PixelSpacing 1.0\\1.0 beside ImagerPixelSpacing is a placeholder: no magnification note."""
    r = read_radiograph(write_dicom(tmp_path / "p.dcm", ramp, ImagerPixelSpacing=[0.5, 0.5],
                                    PixelSpacing=[1.0, 1.0]))
    assert r.pixel_spacing == (0.5, 0.5) and r.magnification is None and "notes" not in r.source


def test_implausible_user_spacing_says_to_check_it(tmp_path, ramp):
    """A --pixel-spacing giving an implausible field of view: the error shows it and says to
    check the value, not to pass one."""
    f = write_dicom(tmp_path / "e.dcm", ramp, bits=12, ImagerPixelSpacing=[0.5, 0.5])
    with pytest.raises(InputError, match=r"e.dcm: implausible pixel spacing from argument \(pixel_spacing\): "
                                         r"field of view 200 x 0.1 = 20.0 mm by 160 x 0.1 = 16.0 mm .*is outside "
                                         r"\[50.0, 1000.0\] mm; .*check the value given") as refused:
        read_radiograph(f, pixel_spacing=0.1)
    assert "pass the right value" not in str(refused.value)


def test_a_greyscale_dicom_with_three_samples_is_refused(tmp_path, ramp):
    """PhotometricInterpretation MONOCHROME2 (or none) over RGB pixels (a bad export): an error
    naming both fields, not a 3-channel 'radiograph' that fails later or far from the file."""
    import pydicom

    f = write_dicom(tmp_path / "rgb.dcm", ramp, bits=8, ImagerPixelSpacing=[0.5, 0.5])
    ds = pydicom.dcmread(f)
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PixelData = np.repeat(ramp.astype(np.uint8)[..., None], 3, axis=2).tobytes()
    ds.save_as(f)
    with pytest.raises(InputError, match=r"rgb.dcm: PhotometricInterpretation \(0028,0004\) is MONOCHROME2 but "
                                         r"SamplesPerPixel \(0028,0002\) is 3; expected 1 sample per pixel"):
        read_radiograph(f)
    del ds.PhotometricInterpretation  # GDCM would decode three channels and call them greyscale
    ds.save_as(f)
    with pytest.raises(InputError, match=r"rgb.dcm: PhotometricInterpretation \(0028,0004\) is missing but "
                                         r"SamplesPerPixel \(0028,0002\) is 3; expected 1 sample per pixel"):
        read_radiograph(f)


def test_a_truncated_image_file_says_so(tmp_path):
    """ITK reports "No such file or directory" for an MHA cut short: the error says first that
    its pixel data is cut short, ITK's words after (CT, labels and radiographs read alike)."""
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((64, 64)).astype(np.float32))
    image.SetSpacing((0.5, 0.5))
    path = tmp_path / "cut.mha"
    sitk.WriteImage(image, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError, match=r"cut.mha: cannot be read as an image: its pixel data is cut short "
                                         r"\(.*\) or its separate data file \(.raw / .zraw\) is missing "
                                         r"\(ITK: .*No such file"):
        read_radiograph(path)


def test_a_given_spacing_or_magnification_out_of_range_is_refused(tmp_path, ramp):
    """A spacing given as zero, not finite or of three values, and a magnification given below 1
    (a film is never smaller than the patient) or above 2: errors naming the value, before use."""
    f = write_dicom(tmp_path / "d.dcm", ramp, bits=12, ImagerPixelSpacing=[0.5, 0.5])
    for bad, message in ((0, "must be numbers > 0 (mm), got 0"), ((0.5, 0.0), "must be numbers > 0 (mm), got 0.5 0"),
                         (float("nan"), "must be numbers > 0 (mm), got nan"), ("x", "must be numbers > 0 (mm), got 'x'"),
                         ((0.5, 0.5, 0.5), "takes one or two values (mm), got 3")):
        with pytest.raises(InputError, match=re.escape(f"--pixel-spacing {message}")):
            read_radiograph(f, pixel_spacing=bad)
        with pytest.raises(InputError, match=re.escape(f"the 'File pixel spacing' field {message}")):
            read_radiograph(f, pixel_spacing=bad, spacing_option="the 'File pixel spacing' field")
        with pytest.raises(InputError, match=re.escape(f"--pixel-spacing-if-missing {message}")):
            read_radiograph(f, missing_spacing=bad)
    for m in (0.9, 2.5):
        with pytest.raises(InputError, match=rf"d.dcm: magnification from argument \(magnification\) is {m:g}: "
                                             r"implausible; expected SDD / SOD in \[1, 2\]"):
            read_radiograph(f, magnification=m)
    assert read_radiograph(f, magnification=1.0).magnification == 1.0  # a spacing calibrated at the patient


def test_a_uniform_stored_image_windows_to_zeros_not_nan():
    """A blank film (every stored value alike) has an empty percentile window: its model input is
    0 everywhere (flagged as nearly uniform by decompose), not NaN."""
    x, method = unit_range(np.full((40, 30), 1000, np.uint16), (0, 4095))
    assert x.dtype == np.float32 and np.isfinite(x).all() and not x.any()
    assert method.startswith("window [1000, 1000]")


def test_a_mirrored_exif_orientation_is_applied_and_noted(tmp_path):
    """EXIF Orientation 2 mirrors the picture left-right (which side is the patient's left): the
    mirror is applied as viewers show it, and noted."""
    a = (np.random.default_rng(4).random((100, 80)) * 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 2
    Image.fromarray(a).save(tmp_path / "mirrored.png", exif=exif)
    r = read_radiograph(tmp_path / "mirrored.png", pixel_spacing=1.0)
    np.testing.assert_array_equal(r.array, a[:, ::-1])
    assert r.source["exif_orientation"] == 2 and "EXIF Orientation (2)" in r.source["notes"][0]


def test_a_multi_frame_dicom_is_refused(tmp_path, ramp):
    """Two frames (a series or a cine stored in one file): an error naming NumberOfFrames."""
    import pydicom

    f = write_dicom(tmp_path / "two.dcm", np.concatenate([ramp, ramp]), ImagerPixelSpacing=[0.5, 0.5])
    ds = pydicom.dcmread(f)
    ds.Rows, ds.NumberOfFrames = ramp.shape[0], 2
    ds.save_as(f)
    with pytest.raises(InputError, match=r"two.dcm: NumberOfFrames \(0028,0008\) is 2; expected one 2D radiograph"):
        read_radiograph(f)


def test_imager_and_pixel_spacing_near_their_thresholds(tmp_path, ramp):
    """ImagerPixelSpacing over a calibrated PixelSpacing that differs between rows and columns
    is no magnification (the problem says why); without PixelSpacingCalibrationType, a 5 %
    difference (above 1 %) is noted."""
    f = write_dicom(tmp_path / "a.dcm", ramp, ImagerPixelSpacing=[0.6, 0.6], PixelSpacing=[0.5, 0.4],
                    PixelSpacingCalibrationType="GEOMETRY")
    r = read_radiograph(f)
    assert r.pixel_spacing == (0.6, 0.6) and r.magnification is None
    assert r.source["magnification_problem"] == ("ImagerPixelSpacing / PixelSpacing is 1.2 for rows, 1.5 for "
                                                 "columns: not one magnification")
    f = write_dicom(tmp_path / "n.dcm", ramp, ImagerPixelSpacing=[0.6, 0.6], PixelSpacing=[0.57, 0.57])
    [note] = read_radiograph(f).source["notes"]
    assert "differ by more than 1 %" in note and note.endswith("the magnification is 1.053")


def test_zero_source_distances_are_unknown_not_used(tmp_path, ramp):
    """Distances and a magnification factor of 0 (what devices write when they do not know
    them) are not used: the film reads, with no magnification and no source distance."""
    f = write_dicom(tmp_path / "z.dcm", ramp, ImagerPixelSpacing=[0.5, 0.5], DistanceSourceToDetector=0,
                    DistanceSourceToPatient=0, EstimatedRadiographicMagnificationFactor=0)
    r = read_radiograph(f)
    assert r.magnification is None and r.source["magnification_field"] == "none"
    assert "sdd_mm" not in r.source and "distance_source_to_patient_mm" not in r.source


def test_an_uncompressed_ybr_full_422_dicom_is_not_taken_for_truncated(tmp_path):
    """YBR_FULL_422 stores two bytes per pixel (chroma shared by two pixels), two thirds of
    Rows x Columns x 3: a whole file reads (here a grey film, chroma 128), not refused as cut short."""
    import pydicom

    grey = (np.arange(200 * 160).reshape(200, 160) % 256).astype(np.uint8)
    f = write_dicom(tmp_path / "ybr.dcm", grey, bits=8, ImagerPixelSpacing=[0.5, 0.5])
    ds = pydicom.dcmread(f)
    ds.SamplesPerPixel, ds.PlanarConfiguration, ds.PhotometricInterpretation = 3, 0, "YBR_FULL_422"
    pairs = grey.reshape(200, 80, 2)  # Y1 Y2 Cb Cr for each two pixels of a row
    ds.PixelData = np.concatenate([pairs, np.full_like(pairs, 128)], axis=2).tobytes()
    ds.save_as(f)
    r = read_radiograph(f)
    assert r.source["colour"] is False
    np.testing.assert_array_equal(r.array, grey)


def test_a_sidecar_of_another_version_is_refused(tmp_path):
    """An mskdex-xray sidecar of a version this reader does not know: an error naming the file
    and field, not a geometry read as if it were version 1."""
    img = sitk.GetImageFromArray(np.zeros((64, 64), np.float32))
    img.SetSpacing((2.0, 2.0))
    sitk.WriteImage(img, str(tmp_path / "xray.mha"))
    geometry = {"rows": 64, "cols": 64, "pixel_spacing": [2.0, 2.0], "sdd": 1100.0, "sod": 900.0}
    (tmp_path / "xray.json").write_text(json.dumps({"format": "mskdex-xray", "version": 2, "geometry": geometry}))
    with pytest.raises(InputError, match=r"xray.json: field 'version' must be 1, got 2"):
        read_radiograph(tmp_path / "xray.mha")


def test_a_json_beside_the_film_that_is_not_utf8_json_is_refused_by_name(tmp_path):
    """A ``<stem>.json`` beside an MHA that is not UTF-8 (e.g. another tool's Latin-1 file): one
    error naming that file, not a decoding traceback naming the film."""
    img = sitk.GetImageFromArray(np.zeros((64, 64), np.float32))
    img.SetSpacing((2.0, 2.0))
    sitk.WriteImage(img, str(tmp_path / "hip.mha"))
    (tmp_path / "hip.json").write_bytes(b'{"ProtocolName": "H\xfcfte a.p."}')
    with pytest.raises(InputError, match=r"hip.json: not valid UTF-8 JSON .*rename or move it"):
        read_radiograph(tmp_path / "hip.mha")


def test_dicom_patient_orientation_turns_a_mirrored_or_flipped_film_to_the_ap_convention(tmp_path, ramp):
    """PatientOrientation (0020,0020) L\\F is how MSKdeX reads a film; R (columns to the patient's
    right: a mirrored film, which registers and decomposes as if the sides were swapped) and H
    (rows to the head) are undone and noted; a lateral one (A/P) and an absent one change nothing."""
    def read(name: str, **fields):
        return read_radiograph(write_dicom(tmp_path / name, ramp, ImagerPixelSpacing=[0.4, 0.4], **fields))

    plain = read("plain.dcm")
    assert "patient_orientation" not in plain.source
    np.testing.assert_array_equal(plain.array, ramp)
    for orientation, expected in ((["L", "F"], ramp), (["R", "F"], ramp[:, ::-1]), (["L", "H"], ramp[::-1]),
                                  (["R", "H"], ramp[::-1, ::-1]), (["RP", "FL"], ramp[:, ::-1])):
        r = read("oriented.dcm", PatientOrientation=orientation)
        np.testing.assert_array_equal(r.array, expected)
        assert r.source["patient_orientation"] == orientation
        turned = [n for n in r.source.get("notes", []) if n.startswith("PatientOrientation")]
        assert len(turned) == (orientation != ["L", "F"]), turned
    assert "mirrored left-right and flipped top-bottom to L\\F" in read("rh.dcm", PatientOrientation=["R", "H"]).source["notes"][0]
    lateral = read("lateral.dcm", PatientOrientation=["P", "F"])
    np.testing.assert_array_equal(lateral.array, ramp)
    assert "P\\F: not a frontal film as stored" in lateral.source["notes"][0]
