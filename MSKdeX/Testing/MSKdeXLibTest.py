"""Slicer-side tests of MSKdeXLib on synthetic data (run by ctest inside Slicer; they need only
the MRML libraries, so they also run under plain Python with the slicer-core wheel)."""

from __future__ import annotations

import sys
import unittest
from pathlib import Path

import numpy as np
import slicer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the module folder (MSKdeXLib)

from MSKdeXTraining.imaging.volume import Volume  # noqa: E402
from MSKdeXTraining.radiograph_io import Radiograph  # noqa: E402

from MSKdeXLib.backend_process import parse_progress  # noqa: E402
from MSKdeXLib.pose_nodes import pose_from_transform_node, pose_to_transform_node  # noqa: E402
from MSKdeXLib.radiograph_nodes import radiograph_from_node, radiograph_to_node  # noqa: E402
from MSKdeXLib.results_table import results_table, table_rows  # noqa: E402
from MSKdeXLib.segmentation_nodes import labels_from_segmentation, labels_to_segmentation  # noqa: E402
from MSKdeXLib.volume_nodes import volume_from_node, volume_to_node  # noqa: E402


def oblique_volume(rng: np.random.Generator) -> Volume:
    """A small int16 CT with anisotropic spacing and an oblique direction (LPS)."""
    c, s = np.cos(0.3), np.sin(0.3)
    direction = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return Volume(rng.integers(-1000, 2000, (7, 9, 11)).astype(np.int16), (0.7, 1.3, 2.9),
                  (12.5, -40.25, 101.0), direction)


class MSKdeXLibTest(unittest.TestCase):
    def setUp(self) -> None:
        self.scene = slicer.vtkMRMLScene()
        self.rng = np.random.default_rng(7)

    def test_volume_round_trip_is_exact(self) -> None:
        ct = oblique_volume(self.rng)
        node = volume_to_node(ct, self.scene, "CT")
        back = volume_from_node(node)
        self.assertEqual(back.array.dtype, ct.array.dtype)
        self.assertTrue(np.array_equal(back.array, ct.array))
        np.testing.assert_allclose(back.affine, ct.affine, rtol=0, atol=1e-12)
        # RAS in the node: x and y flipped, z kept
        self.assertAlmostEqual(node.GetOrigin()[0], -12.5)
        self.assertAlmostEqual(node.GetOrigin()[1], 40.25)
        self.assertAlmostEqual(node.GetOrigin()[2], 101.0)

    def test_segmentation_round_trip_keeps_values(self) -> None:
        ct = oblique_volume(self.rng)
        labels = ct.with_array(self.rng.choice([0, 3, 17, 80], ct.array.shape).astype(np.uint8))
        ct_node = volume_to_node(ct, self.scene, "CT")
        seg = labels_to_segmentation(labels, self.scene, "seg", {80: "gluteus_maximus_left"})
        names = sorted(seg.GetSegmentation().GetNthSegment(i).GetName() for i in range(3))
        self.assertEqual(names, ["gluteus_maximus_left", "label_17", "label_3"])
        back = labels_from_segmentation(seg, ct_node)
        self.assertTrue(np.array_equal(back.array, labels.array))
        self.assertEqual(back.grid_differences(ct), [])
        # without the MSKdeX tags, "label_17" still means 17; the named segment needs a mapping
        for i in range(3):
            seg.GetSegmentation().GetNthSegment(i).RemoveTag("MSKdeX.LabelValue")
        with self.assertRaisesRegex(ValueError, "gluteus_maximus_left"):
            labels_from_segmentation(seg, ct_node)
        back = labels_from_segmentation(seg, ct_node, {"gluteus_maximus_left": 80})
        self.assertTrue(np.array_equal(back.array, labels.array))

    def test_radiograph_is_one_slice(self) -> None:
        image = self.rng.random((5, 8)).astype(np.float32)
        node = radiograph_to_node(Radiograph(image, (0.4, 0.6), {"format": "test"}), self.scene, "xray")
        self.assertEqual(node.GetImageData().GetDimensions(), (8, 5, 1))
        back = radiograph_from_node(node)
        self.assertTrue(np.array_equal(back.array, image))
        self.assertEqual(back.pixel_spacing, (0.4, 0.6))
        self.assertEqual(back.source["format"], "test")

    def test_pose_round_trip(self) -> None:
        from MSKdeXTraining.imaging.geometry import rigid

        reference = rigid((90.0, 0.0, 0.0), (0.0, 0.0, 880.0))
        pose = rigid((3.0, -2.0, 5.0), (4.0, -6.0, 2.0), (10.0, 20.0, 30.0)) @ reference
        node = pose_to_transform_node(pose, reference, self.scene, "pose", gc=0.8)
        np.testing.assert_allclose(pose_from_transform_node(node), pose, atol=1e-9)

    def test_results_table_units(self) -> None:
        rows = [{"object": "pelvis", "kind": "bone", "volume_cm3": 300.0, "volume_low_cm3": 250.0,
                 "volume_high_cm3": 360.0, "volume_sd_cm3": 2.0, "mass_g": 400.0, "mass_low_g": None,
                 "mass_high_g": None, "mass_sd_g": None}]
        node = results_table(rows, self.scene, "results")
        self.assertEqual(node.GetColumnUnitLabel("mass_g"), "g")
        self.assertEqual(node.GetColumnUnitLabel("volume_cm3"), "cm3")
        out = table_rows(node)[0]
        self.assertEqual((out["object"], out["mass_g"]), ("pelvis", 400.0))
        self.assertTrue(np.isnan(out["mass_sd_g"]) and np.isnan(out["mass_high_g"]))
        self.assertEqual(out["volume_high_cm3"], 360.0)

    def test_parse_tqdm_progress(self) -> None:
        self.assertEqual(parse_progress("epochs:  45%|####5     | 9/20 [00:01<00:02,  5.1it/s]"), (0.45, "epochs"))
        self.assertEqual(parse_progress(" 45%|####5     | 00:01<00:02 epoch 3/600, g 0.25"), (0.45, "epoch 3/600, g 0.25"))
        self.assertIsNone(parse_progress("epoch 3 loss 0.25"))


if __name__ == "__main__":
    unittest.main()
