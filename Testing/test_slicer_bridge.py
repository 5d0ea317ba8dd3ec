"""The MRML bridge (MSKdeX/MSKdeXLib) on a real MRML scene from the slicer-core wheel.

Real data: the TotalSegmentator example CT + segmentation and a real DICOM radiograph; a tiny
model trained for one epoch on the backend's toy dataset for Decompose.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import unittest
import warnings
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MSKdeX"))

from MSKdeXTraining.decomposition_table import TABLE_COLUMNS  # noqa: E402
from MSKdeXTraining.imaging.geometry import Geometry, apply, rigid  # noqa: E402
from MSKdeXTraining.drr_types import DRR_TYPES  # noqa: E402
from MSKdeXTraining.imaging.projector import project_objects  # noqa: E402
from MSKdeXTraining.imaging.volume import InputError, Volume, read_ct, read_labels  # noqa: E402
from MSKdeXTraining.objects import ObjectMap, load_object_map  # noqa: E402
from MSKdeXTraining.radiograph_io import Radiograph, read_radiograph  # noqa: E402

from MSKdeXLib.backend_process import BackendProcess, parse_progress  # noqa: E402
from MSKdeXLib.coordinates import from_vtk_matrix  # noqa: E402
from MSKdeXLib.layouts import ONE_UP, RESULTS_LAYOUT, film_view, register_layouts, show_film_layout  # noqa: E402
from MSKdeXLib.drr_nodes import drr_layers, place_over, stack_from_layers  # noqa: E402
from MSKdeXLib.layer_names import TYPE_ATTRIBUTE, UNIT_ATTRIBUTE, drr_objects  # noqa: E402
from MSKdeXLib.pipeline import Pipeline, drr_warnings, registered_on  # noqa: E402
from MSKdeXLib.pose_nodes import accept_pose, pose_from_transform_node, pose_to_transform_node  # noqa: E402
from MSKdeXLib.radiograph_nodes import radiograph_from_node, radiograph_to_node  # noqa: E402
from MSKdeXLib.results_table import ood_text, table_rows  # noqa: E402
from MSKdeXLib.scene_io import load_scene, save_scene  # noqa: E402
from MSKdeXLib.segmentation_nodes import (label_names, labels_from_segmentation, labels_to_segmentation,  # noqa: E402
                                          name_values, unmatched_segments)
from MSKdeXLib.volume_nodes import volume_from_node, volume_to_node  # noqa: E402

pytestmark = pytest.mark.slicer


def train_tiny_model(root: Path) -> Path:
    """One epoch of a tiny generator on two toy cases (32 x 32 detector): a real run folder."""
    from MSKdeXTraining.training.config import TrainConfig
    from MSKdeXTraining.training.toy import write_toy_dataset
    from MSKdeXTraining.training.trainer import train

    data = write_toy_dataset(root / "toy", n_cases=2, size=32)
    config = TrainConfig(epochs=1, image_size=32, gan=False, lambda_cyc=0.0, g_width=4, g_branches=1,
                         g_blocks=1, batch_size=2, checkpoint_every=1, device="cpu", amp_bf16=False,
                         channels_last=False)
    return train(config, data, root / "run")


@pytest.fixture(scope="module")
def example(shared_data):
    """Real CT + segmentation read by the backend, and the same put into a fresh MRML scene."""
    folder = shared_data / "totalsegmentator-example"
    ct = read_ct(folder / "example_ct.nii.gz")
    labels = read_labels(folder / "example_seg_fast_force_split.nii.gz")
    objects = load_object_map("totalsegmentator")
    scene = slicer.vtkMRMLScene()
    ct_node = volume_to_node(ct, scene, "CT")
    seg_node = labels_to_segmentation(labels, scene, "segmentation", label_names(objects))
    return {"ct": ct, "labels": labels, "objects": objects, "scene": scene, "ct_node": ct_node,
            "seg_node": seg_node}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return train_tiny_model(tmp_path_factory.mktemp("tiny_model"))


def test_a_ct_node_with_nan_is_refused_like_a_ct_file(example):
    array = example["ct"].array.astype(np.float32)
    array[3, 4, 5] = np.nan
    node = volume_to_node(example["ct"].with_array(array), example["scene"], "nan CT")
    with pytest.raises(InputError, match="CT volume 'nan CT': CT holds 1 NaN/inf voxels"):
        Pipeline(example["scene"]).inputs(node, example["seg_node"], example["objects"])
    example["scene"].RemoveNode(node)


def test_ct_round_trip_is_exact(example):
    ct, node = example["ct"], example["ct_node"]
    back = volume_from_node(node)
    assert back.array.dtype == ct.array.dtype
    assert np.array_equal(back.array, ct.array)
    for field in ("spacing", "origin", "direction"):
        assert np.array_equal(getattr(back, field), getattr(ct, field)), field
    # the node's IJK->RAS is the LPS affine with x and y flipped: a voxel lands at the same place
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    index = np.array([5.0, 17.0, 31.0, 1.0])
    np.testing.assert_allclose(from_vtk_matrix(m) @ index, np.diag([-1.0, -1.0, 1.0, 1.0]) @ ct.affine @ index,
                               atol=1e-9)


def test_segmentation_round_trip_is_exact(example):
    labels, seg = example["labels"], example["seg_node"]
    segmentation = seg.GetSegmentation()
    names = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
    assert {"gluteus_maximus_left", "femur_right", "sacrum"} <= names
    assert segmentation.GetNumberOfSegments() == len(np.unique(labels.array)) - 1
    back = labels_from_segmentation(seg, example["ct_node"])
    assert np.array_equal(back.array, labels.array)
    assert back.grid_differences(labels) == []


def test_a_segmentation_under_another_transform_than_the_ct_is_refused():
    """Slicer's export would move the labels by the segmentation's transform; the bridge
    refuses that, and reads the labels once both share the transform."""
    scene = slicer.vtkMRMLScene()
    ct = Volume(np.zeros((20, 20, 20), np.int16), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    array = np.zeros((20, 20, 20), np.uint8)
    array[5:10, 5:10, 5:10] = 1
    ct_node = volume_to_node(ct, scene, "CT")
    seg = labels_to_segmentation(ct.with_array(array), scene, "seg", {1: "gluteus_medius_left"})
    pose = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "MSKdeX aligned pelvis pose")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 6.0)  # 6 mm (3 voxels) along R
    pose.SetMatrixTransformToParent(shift)
    seg.SetAndObserveTransformNodeID(pose.GetID())
    with pytest.raises(InputError, match=r"segmentation 'seg': it is under transform 'MSKdeX aligned pelvis "
                                         r"pose', the CT 'CT' under no transform"):
        labels_from_segmentation(seg, ct_node)
    ct_node.SetAndObserveTransformNodeID(pose.GetID())
    assert np.array_equal(labels_from_segmentation(seg, ct_node).array, array)


def test_label_maps_in_and_out_of_a_segmentation_leave_no_nodes_behind():
    """Slicer's import and export add a display node and a colour table per call besides the
    label map asked for; none of them stays (they piled up with every QC, DRR or Register)."""
    scene = slicer.vtkMRMLScene()
    ct = Volume(np.zeros((20, 20, 20), np.int16), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    array = np.zeros((20, 20, 20), np.uint8)
    array[5:10, 5:10, 5:10], array[12:15, 5:10, 5:10] = 1, 2
    ct_node = volume_to_node(ct, scene, "CT")

    def nodes() -> dict[str, str]:
        return {n.GetID(): n.GetClassName() for n in (scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()))
                if not n.IsA("vtkMRMLSubjectHierarchyNode")}

    before = nodes()
    seg = labels_to_segmentation(ct.with_array(array), scene, "seg", {1: "gluteus_medius_left", 2: "pelvis"})
    added = {k: v for k, v in nodes().items() if k not in before}
    assert sorted(added.values()) == ["vtkMRMLSegmentationDisplayNode", "vtkMRMLSegmentationNode"]
    with_segmentation = nodes()
    for _ in range(2):
        assert np.array_equal(labels_from_segmentation(seg, ct_node).array, array)
        assert nodes() == with_segmentation
    labels_to_segmentation(ct.with_array(array), scene, "seg", {1: "gluteus_medius_left", 2: "pelvis"}, node=seg)
    assert nodes() == with_segmentation  # the same node filled again


def test_a_ct_under_a_transform_is_refused_and_a_layer_follows_its_films_transform():
    """MSKdeX reads voxels in their own geometry: a CT the views show moved (rotated to fix its
    orientation, say) is refused, naming the transform; under the identity it is read. A layer
    over a film under a transform lies under it too, and the film's view is the one the
    transform turns it into."""
    scene = slicer.vtkMRMLScene()
    hu = np.full((20, 20, 20), -1000, np.int16)  # air around muscle
    hu[5:10, 5:10, 5:10] = 40
    ct = Volume(hu, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    ct_node = volume_to_node(ct, scene, "CT")
    seg = labels_to_segmentation(ct.with_array((hu == 40).astype(np.uint8)), scene, "seg", {1: "gluteus_medius_left"})
    turn = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "feet first")
    for node in (ct_node, seg):
        node.SetAndObserveTransformNodeID(turn.GetID())
    objects = load_object_map("synthetic")
    assert Pipeline(scene).segmentation_qc(ct_node, seg, objects)[0].objects["gluteus_medius"].volume_cm3 > 0
    rotation = vtk.vtkMatrix4x4()
    rotation.SetElement(1, 1, -1.0)
    rotation.SetElement(2, 2, -1.0)  # 180 degrees about R
    turn.SetMatrixTransformToParent(rotation)
    with pytest.raises(InputError, match=r"CT volume 'CT': it lies under transform 'feet first', which MSKdeX "
                                         r"would not apply .*Harden transform"):
        Pipeline(scene).segmentation_qc(ct_node, seg, objects)

    film = radiograph_to_node(Radiograph(np.zeros((40, 30), np.float32), (2.0, 2.0), {}), scene, "film")
    layer = radiograph_to_node(Radiograph(np.ones((20, 15), np.float32), (4.0, 4.0), {}), scene, "layer")
    place_over(layer, film)
    assert layer.GetParentTransformNode() is None and film_view(film) == "Green"
    axial = vtk.vtkMatrix4x4()
    axial.SetElement(1, 1, 0.0), axial.SetElement(1, 2, -1.0), axial.SetElement(2, 1, 1.0), axial.SetElement(2, 2, 0.0)
    turn.SetMatrixTransformToParent(axial)  # 90 degrees about R: the coronal film now lies axial
    film.SetAndObserveTransformNodeID(turn.GetID())
    place_over(layer, film)
    assert layer.GetTransformNodeID() == turn.GetID() and film_view(film) == "Red"


def test_the_objects_with_drr_layers_are_those_of_the_last_compute_drrs_not_other_layers():
    scene = slicer.vtkMRMLScene()
    assert drr_objects(scene) == []
    stack = np.ones((3, 2, 8, 8), np.float32)
    drr_layers(stack, ["pelvis", "femur"], (2.0, 2.0), scene, "MSKdeX DRR")
    drr_layers(stack[:, :1], ["sacrum"], (2.0, 2.0), scene, "MSKdeX aligned")  # a registered bone's layer
    assert drr_objects(scene) == ["pelvis", "femur"]
    kept = scene.GetFirstNodeByName("MSKdeX DRR pelvis MDRR")
    drr_layers(stack[:, :1], ["pelvis"], (2.0, 2.0), scene, "MSKdeX DRR")  # another map: no femur now
    assert drr_objects(scene) == ["pelvis"] and scene.GetFirstNodeByName("MSKdeX DRR femur VDRR") is None
    assert scene.GetFirstNodeByName("MSKdeX DRR pelvis MDRR") is kept  # updated, not made again
    assert scene.GetFirstNodeByName("MSKdeX aligned sacrum VDRR") is not None  # another prefix's: kept


def test_segments_are_matched_by_name(example):
    """A segmentation made elsewhere (no MSKdeX tags) is read by object-map segment names."""
    scene, objects = example["scene"], example["objects"]
    small = example["labels"].with_array(np.where(np.isin(example["labels"].array, [25, 80]),
                                                  example["labels"].array, 0))
    seg = labels_to_segmentation(small, scene, "untagged", label_names(objects))
    for i in range(seg.GetSegmentation().GetNumberOfSegments()):
        seg.GetSegmentation().GetNthSegment(i).RemoveTag("MSKdeX.LabelValue")
    with pytest.raises(InputError, match="have no label value"):
        labels_from_segmentation(seg, example["ct_node"])
    values = {name: value for value, name in label_names(objects).items()}
    assert np.array_equal(labels_from_segmentation(seg, example["ct_node"], values).array, small.array)
    first = seg.GetSegmentation().GetNthSegment(0).GetName()
    seg.GetSegmentation().GetNthSegment(1).SetName(first)  # two segments, one name
    with pytest.raises(InputError, match="several segments are named"):
        labels_from_segmentation(seg, example["ct_node"], values)
    scene.RemoveNode(seg)


def test_totalsegmentator_class_names_match_their_objects(example):
    """Segments named as TotalSegmentator names its classes (hip_left, iliopsoas_right: the map's
    aliases of pelvis and iliacus) are matched, not left out."""
    scene, objects = example["scene"], example["objects"]
    small = example["labels"].with_array(np.where(np.isin(example["labels"].array, [77, 89]),
                                                  example["labels"].array, 0))
    seg = labels_to_segmentation(small, scene, "TotalSegmentator", {77: "hip_left", 89: "iliopsoas_right"})
    for i in range(seg.GetSegmentation().GetNumberOfSegments()):
        seg.GetSegmentation().GetNthSegment(i).RemoveTag("MSKdeX.LabelValue")
    assert unmatched_segments(seg, name_values(objects)) == []
    assert np.array_equal(labels_from_segmentation(seg, example["ct_node"], name_values(objects)).array,
                          small.array)
    scene.RemoveNode(seg)


def test_a_ct_not_in_hu_is_refused(example):
    """CT values without their rescale intercept (+1024) would make every lean fraction wrong."""
    scene = example["scene"]
    node = volume_to_node(example["ct"].with_array(example["ct"].array + 1024), scene, "raw CT")
    with pytest.raises(InputError, match=r"CT volume 'raw CT': the muscles' median is \d+, not HU"):
        Pipeline(scene).inputs(node, example["seg_node"], example["objects"])
    scene.RemoveNode(node)


def test_segmentation_qc_through_the_bridge(example):
    from MSKdeXTraining.qc import segmentation_qc

    from MSKdeXLib.qc_table import qc_rows

    scene, objects = example["scene"], example["objects"]
    qc, table = Pipeline(scene).segmentation_qc(example["ct_node"], example["seg_node"], objects)
    count = scene.GetNumberOfNodes()
    assert Pipeline(scene).segmentation_qc(example["ct_node"], example["seg_node"], objects)[1] is table
    assert scene.GetNumberOfNodes() == count  # the same table filled again, no export nodes left
    assert qc.to_json() == segmentation_qc(example["labels"], objects, ct=example["ct"]).to_json()
    assert table.GetNumberOfRows() == len(objects)
    assert table.GetColumnUnitLabel("volume_cm3") == table.GetColumnUnitLabel("metal_cm3") == "cm3"
    # the example CT's left hip implant fails the femur (and its neighbours), not the sacrum
    femur, sacrum = objects.index("femur"), objects.index("sacrum")
    assert abs(table.GetTable().GetColumnByName("metal_cm3").GetValue(femur) - 7.452) < 1e-3
    assert table.GetTable().GetColumnByName("status").GetValue(femur) == "failed"
    assert table.GetTable().GetColumnByName("status").GetValue(sacrum) == "ok"
    # remove the sacrum segment: the object goes missing and the row says "failed"
    seg = labels_to_segmentation(example["labels"], scene, "no sacrum", label_names(objects))
    seg.GetSegmentation().RemoveSegment(seg.GetSegmentation().GetSegmentIdBySegmentName("sacrum"))
    broken, table = Pipeline(scene).segmentation_qc(example["ct_node"], seg, objects)
    rows = {r["object"]: r for r in qc_rows(broken)}
    assert rows["sacrum"]["status"] == "failed" and "missing" in rows["sacrum"]["flags"]
    assert table.GetAttribute("MSKdeX.QCFailed") == "1"
    assert table.GetTable().GetColumnByName("status").GetValue(sacrum) == "failed"
    scene.RemoveNode(seg)


def test_radiograph_is_a_one_slice_volume(shared_data):
    path = shared_data / "pediatric-ap-radiographs" / "331_DDH_1.dcm"
    radiograph = read_radiograph(path, pixel_spacing=(0.5, 0.5))
    scene = slicer.vtkMRMLScene()
    node = radiograph_to_node(radiograph, scene, "xray")
    assert node.GetImageData().GetDimensions() == (radiograph.array.shape[1], radiograph.array.shape[0], 1)
    back = radiograph_from_node(node)
    assert np.array_equal(back.array, radiograph.array)
    assert back.pixel_spacing == radiograph.pixel_spacing
    assert back.source["path"] == str(path)
    # columns run to the patient's left (-x in RAS), rows to the feet (-z in RAS)
    spacing_ras = node.GetSpacing()
    directions = np.zeros((3, 3))
    node.GetIJKToRASDirections(directions)
    np.testing.assert_array_equal(directions[:, 0], [-1, 0, 0])
    np.testing.assert_array_equal(directions[:, 1], [0, 0, -1])
    assert spacing_ras[:2] == (0.5, 0.5)
    multi = volume_to_node(read_ct(shared_data / "totalsegmentator-example" / "example_ct.nii.gz"), scene, "ct")
    with pytest.raises(InputError, match="one-slice"):
        radiograph_from_node(multi)
    # a node loaded by Slicer itself (no MSKdeX source record): its spacing is checked and noted
    node.RemoveAttribute("MSKdeX.Source")
    unread = radiograph_from_node(node).source
    assert unread["spacing_field"].startswith("argument") and unread["colour"] is False
    assert "not read by MSKdeX" in unread["notes"][0]
    node.SetSpacing(5.0, 5.0, 1.0)
    with pytest.raises(InputError, match=r"xray\): implausible pixel spacing .*Volumes module"):
        radiograph_from_node(node)
    node.SetSpacing(1.0, 1.0, 1.0)  # Slicer's spacing for a PNG: the placeholder, as in the backend
    with pytest.raises(InputError, match=r"xray\): pixel spacing 1.0 x 1.0 mm, what Slicer gives .*Volumes module"):
        radiograph_from_node(node)


def test_a_colour_node_loaded_by_slicer_is_recorded_as_colour():
    """A colour picture Slicer loaded itself (a vector volume) is made grey and recorded as
    colour, which decomposition flags as for a colour file."""
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "photo")
    rgb = np.zeros((1, 400, 500, 3), np.uint8)
    rgb[..., 0] = 200
    slicer.util.updateVolumeFromArray(node, rgb)
    node.SetSpacing(0.5, 0.5, 1.0)
    radiograph = radiograph_from_node(node)
    assert radiograph.source["colour"] is True
    np.testing.assert_allclose(radiograph.array, 200 * 0.299, rtol=1e-6)


def layout_views(element) -> list[tuple[str, str]]:
    """(class, singletontag) of every view in a parsed layout description, depth first."""
    if element.GetName() == "view":
        return [(element.GetAttribute("class"), element.GetAttribute("singletontag"))]
    return [v for i in range(element.GetNumberOfNestedElements()) for v in layout_views(element.GetNestedElement(i))]


def test_a_film_is_shown_face_on_in_the_view_of_its_plane():
    """A one-slice film gets the slice view of its plane, alone or beside the results table and
    plot; a scene without a layout node (headless) is left alone."""
    scene = slicer.vtkMRMLScene()
    film = radiograph_to_node(Radiograph(np.zeros((40, 30), np.float32), (2.0, 2.0), {}), scene, "film")
    assert show_film_layout(scene, film) is None  # no layout node: nothing to switch
    register_layouts(scene)  # nor to register with
    layout = scene.AddNode(slicer.vtkMRMLLayoutNode())
    register_layouts(scene)  # at startup: a scene saved with one of them shown reopens with it
    assert all(layout.IsLayoutDescription(i) for i in RESULTS_LAYOUT.values())
    layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
    assert show_film_layout(scene, film) == "Green"  # MSKdeX places films coronal (AP)
    assert layout.GetViewArrangement() == ONE_UP["Green"] == slicer.vtkMRMLLayoutNode.SlicerLayoutOneUpGreenSliceView
    assert show_film_layout(scene, film, results=True) == "Green"
    assert layout.GetViewArrangement() == RESULTS_LAYOUT["Green"]
    root = slicer.vtkMRMLLayoutNode.ParseLayout(layout.GetCurrentLayoutDescription())
    assert layout_views(root) == [("vtkMRMLSliceNode", "Green"), ("vtkMRMLTableViewNode", "TableView1"),
                                  ("vtkMRMLPlotViewNode", "PlotView1")]
    show_film_layout(scene, film)  # another layer over the film keeps the results beside it
    assert layout.GetViewArrangement() == RESULTS_LAYOUT["Green"]
    show_film_layout(scene, film, results=False)  # a new film: not beside the last patient's results
    assert layout.GetViewArrangement() == ONE_UP["Green"]
    # a film Slicer loaded itself lies where it put it: axial (a PNG) -> Red, sagittal -> Yellow;
    # the plane's normal decides, not a slice axis skewed towards another view's
    skewed = np.array([[1, 0, 0], [0, 0, 0.6], [0, 1, 0.8]])  # columns i, j (coronal plane), k
    for directions, view in ((np.eye(3), "Red"), (np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]]), "Yellow"),
                             (skewed, "Green")):
        film.SetIJKToRASDirections(*directions.ravel().tolist())
        assert show_film_layout(scene, film) == view
        assert layout.GetViewArrangement() == ONE_UP[view]
    film.SetIJKToRASDirections(*np.eye(3).ravel().tolist())
    assert show_film_layout(scene, film, results=True) == "Red"
    assert layout_views(slicer.vtkMRMLLayoutNode.ParseLayout(layout.GetCurrentLayoutDescription()))[0] == (
        "vtkMRMLSliceNode", "Red")


def test_drrs_through_the_bridge_equal_the_backend(example):
    geometry = Geometry(96, 96, (6.0, 6.0))
    pipeline = Pipeline(example["scene"])
    steps = []
    result, layers = pipeline.compute_drrs(example["ct_node"], example["seg_node"], example["objects"], geometry,
                                           progress=lambda f, m: steps.append(f))
    stack = result.stack
    assert steps and steps[-1] == 1.0
    ct, labels, objects = example["ct"], example["labels"], example["objects"]
    pose = Pipeline.reference_pose(labels, objects, geometry)
    direct = project_objects(ct, labels, objects, geometry, pose)
    assert np.array_equal(stack.data.numpy(), direct.data.numpy())
    assert len(layers) == 3 * len(objects)
    assert np.array_equal(stack_from_layers(layers, objects.names), direct.data.numpy())
    node = layers[("gluteus_medius", "vdrr")]
    assert pipeline.drr_layer("gluteus_medius", "vdrr").GetID() == node.GetID()  # the panel's lookup by name
    assert pipeline.drr_layer("no_such_object", "vdrr") is None
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(example["scene"])
    folder = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node))
    assert hierarchy.GetItemName(folder) == "MSKdeX DRR"
    assert hierarchy.GetNumberOfItemChildren(folder) == 3 * len(objects)
    assert node.GetAttribute(UNIT_ATTRIBUTE) == "cm" and node.GetAttribute(TYPE_ATTRIBUTE) == "vdrr"
    assert layers[("pelvis", "mdrr")].GetAttribute(UNIT_ATTRIBUTE) == "g/cm2"
    # invariant through the nodes: VDRR layer sum x pixel area = segmented volume (cm3)
    lut = objects.lookup_table(labels.array)
    counts = np.bincount(lut[labels.array].ravel() + 1, minlength=len(objects) + 1)[1:]
    assert np.all(direct.lost_fraction()[1] < 1e-6), "objects must lie inside the detector"
    for i, name in enumerate(objects.names):
        layer = volume_from_node(layers[(name, "vdrr")]).array
        assert layer.sum(dtype=np.float64) * geometry.pixel_area_cm2 == pytest.approx(
            counts[i] * ct.voxel_volume_cm3, rel=1e-4)


def test_drr_warnings_name_absent_objects_and_unmatched_segments(example):
    """Segments named unlike the object map are left out of the DRRs: the warnings name them and
    the objects they leave empty (the panel shows these instead of a bare "done")."""
    scene, objects = example["scene"], example["objects"]
    seg = labels_to_segmentation(example["labels"], scene, "renamed", label_names(objects))
    segmentation = seg.GetSegmentation()
    for side, name in (("left", "glute min L"), ("right", "glute min R")):
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(f"gluteus_minimus_{side}"))
        segment.SetName(name)
        segment.RemoveTag("MSKdeX.LabelValue")
    result, layers = Pipeline(scene).compute_drrs(example["ct_node"], seg, objects, Geometry(32, 32, (16.0, 16.0)))
    assert not volume_from_node(layers[("gluteus_minimus", "vdrr")]).array.any()
    unmatched = result.metrics["unmatched_segments"]
    assert unmatched[:2] == ["glute min L", "glute min R"]  # no label value: listed first
    assert "label_1" in unmatched and "sacrum" not in unmatched  # organs outside the map, not objects
    warnings = drr_warnings(result.metrics)
    assert "1 object(s) absent from the segmentation (their layers are zero): gluteus_minimus" in warnings
    matched = next(w for w in warnings if "matched to no object of the map 'totalsegmentator'" in w)
    assert matched.startswith(f"{len(unmatched)} segment(s)") and matched.endswith(f"and {len(unmatched) - 10} more")
    assert "(left out; name them after its objects): glute min L, glute min R, label_1" in matched
    result, _ = Pipeline(scene).compute_drrs(example["ct_node"], example["seg_node"], objects,
                                             Geometry(32, 32, (16.0, 16.0)))
    assert result.metrics["unmatched_segments"] and drr_warnings(result.metrics) == []  # organs alone: no warning
    scene.RemoveNode(seg)


def test_a_drr_layer_is_shown_placed_like_the_radiograph(example):
    """Layers computed without a radiograph (coronal plane, at the origin), or with another one,
    take the plane and centre of the radiograph they are shown over."""
    scene = example["scene"]
    pipeline = Pipeline(scene)
    pipeline.compute_drrs(example["ct_node"], example["seg_node"], example["objects"], Geometry(32, 32, (16.0, 16.0)))
    image = np.linspace(0, 1, 60 * 80, dtype=np.float32).reshape(60, 80)
    xray = radiograph_to_node(Radiograph(image, (3.0, 3.0), {}), scene, "moved xray")
    xray.SetOrigin(40.0, -25.0, 130.0)
    layer = pipeline.drr_layer("pelvis", "vdrr")
    assert not np.allclose(_centre_ras(layer), _centre_ras(xray), atol=1.0)
    assert pipeline.drr_layer("pelvis", "vdrr", over=xray).GetID() == layer.GetID()
    np.testing.assert_allclose(_centre_ras(layer), _centre_ras(xray), atol=1e-9)
    directions, expected = np.zeros((3, 3)), np.zeros((3, 3))
    layer.GetIJKToRASDirections(directions)
    xray.GetIJKToRASDirections(expected)
    np.testing.assert_allclose(directions, expected, atol=1e-12)
    assert layer.GetSpacing()[:2] == (16.0, 16.0)  # its own pixels, not the radiograph's
    scene.RemoveNode(xray)


def test_a_loaded_radiograph_decomposes_as_the_file_does(tmp_path, tiny_model):
    """Load radiograph: the backend reader's record (magnification from the DICOM distances, pixel
    padding, bit depth) reaches the node and the decomposition, which equals the CLI's (the
    Decomposer on the file); a node Slicer loaded itself gets a note saying what was not read."""
    from test_radiograph_io import write_dicom

    from MSKdeXTraining.inference import Decomposer

    image = (np.arange(400 * 320).reshape(400, 320) % 4000 + 50).astype(np.uint16)
    image[:, :20] = 0  # a padded border
    path = write_dicom(tmp_path / "hip.dcm", image, bits=12, ImagerPixelSpacing=[0.6, 0.6], PixelPaddingValue=0,
                       DistanceSourceToDetector=1150.0, DistanceSourceToPatient=920.0)
    (tmp_path / "hip.json").write_text("{not JSON")  # read for a NIfTI/NRRD/MHA file only, as the CLI does
    scene = slicer.vtkMRMLScene()
    node = Pipeline(scene).load_radiograph(path)
    assert node.GetName() == "hip"
    read, back = read_radiograph(path), radiograph_from_node(node)
    assert np.array_equal(back.array, read.array) and back.pixel_spacing == read.pixel_spacing == (0.6, 0.6)
    for key in ("magnification", "magnification_field", "sdd_mm", "padding_range", "bits_stored", "colour"):
        assert back.source[key] == read.source[key], key
    assert "(0018,1111)" in back.source["magnification_field"] and back.padding.sum() == 400 * 20
    ours = Pipeline(scene).decompose(tiny_model, node, tta=1).decomposition
    cli = Decomposer.from_run(tiny_model).decompose(read, tta=1)
    assert ours.source["magnification"] == cli.source["magnification"] == read.magnification
    assert ours.source["resampling"] == cli.source["resampling"]  # the padding left out of the window
    assert ours.ood.reasons == cli.ood.reasons and ours.table == cli.table
    # a pixel spacing given in the panel replaces the file's (and is noted)
    given = radiograph_from_node(Pipeline(scene).load_radiograph(path, 0.5))
    assert given.pixel_spacing == (0.5, 0.5) and given.source["spacing_field"] == "argument (pixel_spacing)"
    with pytest.raises(InputError, match="radiograph file: choose a file"):
        Pipeline(scene).load_radiograph(Path())  # the panel's empty path field
    # an implausible magnification in the file: the error names where to give one, which then loads
    wrong = write_dicom(tmp_path / "wrong.dcm", image, bits=12, ImagerPixelSpacing=[0.6, 0.6],
                        EstimatedRadiographicMagnificationFactor=3.5)
    field = "the 'Magnification' field"
    with pytest.raises(InputError, match=r"wrong.dcm: magnification from EstimatedRadiographicMagnificationFactor "
                                         r"\(0018,1114\) is 3.5: implausible.*\(the 'Magnification' field\)$"):
        Pipeline(scene).load_radiograph(wrong, magnification_option=field)
    loaded_node = Pipeline(scene).load_radiograph(wrong, None, 1.2)
    loaded = radiograph_from_node(loaded_node)
    assert (loaded.magnification, loaded.source["magnification_field"]) == (
        1.2, "given in MSKdeX (Magnification) when loaded")
    assert loaded.source["magnification_in_file"] == 3.5
    # the panel's value changed before Decompose: compared with the file's, one note, not a stale one
    source = Pipeline(scene).decompose(tiny_model, loaded_node, tta=1, magnification=1.4).decomposition.source
    assert (source["magnification_in_file"], source["magnification"]) == (3.5, 1.4)
    assert [n for n in source["notes"] if n.startswith("the magnification given")] == [
        "the magnification given, 1.4, was used instead of the file's own 3.5 (EstimatedRadiographicMagnification"
        "Factor (0018,1114)): the anatomy looks 2.5x as large to the model as with the file's; volumes and masses "
        "depend strongly on it, by no fixed factor"]
    # the same pixels in a node MSKdeX did not read: the decomposition says what it lacks
    node.RemoveAttribute("MSKdeX.Source")
    notes = Pipeline(scene).decompose(tiny_model, node, tta=1).decomposition.ood.split()[1]
    assert ("the radiograph node 'hip' was loaded by Slicer, not read by MSKdeX: the file's magnification, pixel "
            "padding and bit depth were not read (load it with 'Load radiograph' to use them)") in notes


def test_registration_takes_the_films_distances_as_the_cli_does(tmp_path):
    """Bone alignment's geometry is the CLI's (`mskdex register`: read_xray): the distances of the
    file read by Load radiograph, a patient-calibrated spacing scaled to the detector, the ones
    given replacing them; a node without them assumes the defaults and says so."""
    from test_radiograph_io import write_dicom

    from MSKdeXTraining.imaging.registration import read_xray

    image = (np.arange(300 * 240).reshape(300, 240) % 4000 + 50).astype(np.uint16)
    films = [write_dicom(tmp_path / "detector.dcm", image, bits=12, ImagerPixelSpacing=[0.6, 0.6],
                         DistanceSourceToDetector=1300.0, DistanceSourceToPatient=1050.0),
             write_dicom(tmp_path / "patient.dcm", image, bits=12, PixelSpacing=[0.4, 0.4],
                         PixelSpacingCalibrationType="GEOMETRY", DistanceSourceToDetector=1250.0,
                         DistanceSourceToPatient=1000.0)]
    scene = slicer.vtkMRMLScene()
    for path in films:
        node = Pipeline(scene).load_radiograph(path)
        geometry, assumed = Pipeline.registration_geometry(node)
        assert geometry == read_xray(path)[1] and assumed is None
        assert (geometry.sdd, geometry.sod) != (Geometry.sdd, Geometry.sod)
        given, _ = Pipeline.registration_geometry(node, 1400.0, None)
        assert given == read_xray(path, sdd=1400.0)[1]
    assert geometry.pixel_spacing == pytest.approx((0.4 * geometry.sdd / geometry.sod,) * 2)  # patient -> detector
    node.RemoveAttribute("MSKdeX.Source")  # loaded by Slicer itself: nothing read from the file
    geometry, assumed = Pipeline.registration_geometry(node)
    assert (geometry.sdd, geometry.sod) == (1100.0, 880.0) and "assuming SDD 1100 mm, SOD 880 mm" in assumed


@pytest.mark.parametrize("parallel", [False, True], ids=["perspective", "parallel"])
def test_registration_takes_a_cohort_films_sidecar_as_the_cli_does(tmp_path, parallel):
    """A cohort radiograph (MHA + ``mskdex-xray`` sidecar): bone alignment's geometry is the
    CLI's (read_xray), the sidecar's exactly (parallel beam included), the distances given
    replacing its own, for no distance, the SDD only and both; with a spacing given in Load
    radiograph, or set on the node since, only the sidecar's parallel flag and the distances the
    reader records count, as ``mskdex register --pixel-spacing`` reads it."""
    import SimpleITK as sitk

    from MSKdeXTraining.imaging.registration import read_xray

    image = sitk.GetImageFromArray(np.random.default_rng(0).random((40, 60)).astype(np.float32))
    image.SetSpacing((1.5, 1.5))
    path = tmp_path / "xray.mha"
    sitk.WriteImage(image, str(path))
    sidecar = Geometry(rows=40, cols=60, pixel_spacing=(1.5, 1.5), sdd=1050.0, sod=850.0, parallel=parallel)
    (tmp_path / "xray.json").write_text(json.dumps(
        {"format": "mskdex-xray", "version": 1, "geometry": sidecar.to_json()}))
    scene = slicer.vtkMRMLScene()
    node = Pipeline(scene).load_radiograph(path)
    for sdd, sod in [(None, None), (1200.0, None), (1200.0, 900.0)]:
        geometry, assumed = Pipeline.registration_geometry(node, sdd, sod)
        assert geometry == read_xray(path, sdd=sdd, sod=sod)[1] and assumed is None, (sdd, sod)
    assert Pipeline.registration_geometry(node)[0] == sidecar
    # with another spacing, the sidecar gives only the distances its reader records, and parallel
    given = Pipeline(scene).load_radiograph(path, 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a parallel film's SOD is assumed: registration_geometry notes it
        for sdd, sod in [(None, None), (1200.0, 900.0)]:
            expected = read_xray(path, pixel_spacing=(2.0, 2.0), sdd=sdd, sod=sod)[1]
            assert Pipeline.registration_geometry(given, sdd, sod)[0] == expected, (sdd, sod)
            # the given spacing is the detector's: neither view scales it (parallel: magnification 1)
            assert expected.pixel_spacing == (2.0, 2.0) and expected.parallel == parallel
    node.SetSpacing(2.0, 2.0, 1.0)
    assert Pipeline.registration_geometry(node, 1200.0, 900.0)[0] == expected


def test_a_femur_starts_from_a_pelvis_registered_on_the_same_inputs():
    """The pelvis pose's recorded inputs match on node IDs and distances to 0.01 mm: not on the
    last bits of a distance computed from a magnification, nor on fields a 0.3.2 scene lacks."""
    inputs = {"ct": "vtkMRMLScalarVolumeNode1", "segmentation": "vtkMRMLSegmentationNode1",
              "radiograph": "vtkMRMLScalarVolumeNode2", "sdd": 900.0, "sod": 900 / (900 / 760), "assumed": False}
    assert inputs["sod"] != 760.0  # one rounding step away
    recorded = {**inputs, "sod": 760.0}
    assert registered_on(json.dumps(recorded), inputs)
    assert registered_on(json.dumps({k: v for k, v in recorded.items() if k != "assumed"}), inputs)  # 0.3.2
    assert not registered_on(json.dumps({**recorded, "sod": 761.0}), inputs)
    assert not registered_on(json.dumps({**recorded, "radiograph": "vtkMRMLScalarVolumeNode3"}), inputs)
    assert not registered_on(json.dumps({**recorded, "sdd": None}), inputs)
    assert not registered_on(None, inputs) and not registered_on("not json", inputs) and not registered_on("[]", inputs)


def test_long_work_can_be_cancelled(example):
    from MSKdeXLib.progress import Cancelled, ProgressRelay

    seen = []
    relay = ProgressRelay(lambda f, m: seen.append(f))
    relay.cancel()
    with pytest.raises(Cancelled):
        Pipeline(example["scene"]).compute_drrs(example["ct_node"], example["seg_node"], example["objects"],
                                                Geometry(32, 32, (12.0, 12.0)), progress=relay)
    assert seen == []
    # a Cancel (or scene close) handled while the GUI processes events in a report stops at once
    relay = ProgressRelay(lambda f, m: relay.cancel())
    with pytest.raises(Cancelled, match="cancelled at 100 % \\(last\\)"):
        relay(1.0, "last")


def test_a_progress_text_with_percent_signs_shows_as_is():
    """bar_format keeps tqdm's text literal in a QProgressBar format: QProgressBar::text() (as in
    Qt 5 and 6) replaces %m, %v then %p, with no escape."""
    from MSKdeXLib.progress import bar_format

    def qt_text(fmt: str, value: int) -> str:  # QProgressBar::text() for the range 0..100
        return fmt.replace("%m", "100").replace("%v", str(value)).replace("%p", str(value))

    text = "epoch 2/5:  40%|####  | 2/5 [%p %v %m %%]"
    assert qt_text(bar_format(text), 40).replace("\u2060", "") == f"{text} 40%"


@pytest.mark.slow
def test_bone_alignment_through_the_bridge():
    """Register a small synthetic pelvis to its own DRR in a shifted pose: transform node, GC, layer;
    then a femur, which starts from the pelvis's pose node and turns about its head."""
    from MSKdeXTraining.imaging.registration import femoral_head_center

    objects = load_object_map("synthetic")
    z, y, x = np.mgrid[:28, :28, :28].astype(float)
    labels = np.zeros(x.shape, np.uint8)
    labels[((x - 14) / 9) ** 2 + ((y - 14) / 4) ** 2 + ((z - 18) / 5) ** 2 <= 1] = 1  # pelvis
    labels[(x - 7) ** 2 + (y - 14) ** 2 + (z - 7) ** 2 <= 4.5 ** 2] = 3  # femur left (a head)
    labels[(x - 21) ** 2 + (y - 14) ** 2 + (z - 7) ** 2 <= 4.5 ** 2] = 4  # femur right
    ct = Volume(np.where(labels > 0, 700, -1000).astype(np.int16), (4.0, 4.0, 4.0), (-56.0, -56.0, -56.0), np.eye(3))
    labels = ct.with_array(labels)
    scene = slicer.vtkMRMLScene()
    ct_node = volume_to_node(ct, scene, "CT")
    seg_node = labels_to_segmentation(labels, scene, "segmentation", label_names(objects))
    geometry = Geometry(48, 48, (4.0, 4.0))
    reference = Pipeline.reference_pose(labels, objects, geometry)
    truth = rigid((0.0, 0.0, 3.0), (4.0, -3.0, 0.0)) @ reference
    drrs = project_objects(ct, labels, objects.select(["pelvis", "femur"]), geometry, truth).data[0].numpy()
    drr, film = drrs[0], drrs.sum(0)  # the pelvis alone; the film shows the femurs too
    xray_node = radiograph_to_node(Radiograph((film / film.max()).astype(np.float32), (4.0, 4.0), {}), scene, "xray")

    result, transform, layer = Pipeline(scene).register(ct_node, seg_node, xray_node, objects, "pelvis",
                                                        geometry.sdd, geometry.sod, "fast")
    assert result.ok and result.gc > 0.9
    np.testing.assert_allclose(result.pose[:2, 3], truth[:2, 3], atol=2.0)  # in-plane mm (depth is weak)
    np.testing.assert_allclose(pose_from_transform_node(transform), result.pose, atol=1e-9)
    assert float(transform.GetAttribute("MSKdeX.GradientCorrelation")) == pytest.approx(result.gc)
    aligned = volume_from_node(layer).array[0]
    assert np.corrcoef(aligned.ravel(), drr.ravel())[0, 1] > 0.95
    assert volume_from_node(layer).grid_differences(volume_from_node(xray_node)) == []
    assert transform.GetName() == "MSKdeX aligned pelvis pose"
    assert Pipeline.registration_distances(transform) == "SDD 1100.0 mm, SOD 880.0 mm"
    # Redo from the pose node after the user moved it by 2 mm: converges again
    moved = pose_from_transform_node(transform)
    moved[:3, 3] += [2.0, -2.0, 0.0]
    again, _, _ = Pipeline(scene).register(ct_node, seg_node, xray_node, objects, "pelvis", geometry.sdd,
                                           geometry.sod, "fast", start_pose=moved)
    assert again.gc > 0.9
    np.testing.assert_allclose(again.pose[:2, 3], truth[:2, 3], atol=2.0)
    with pytest.raises(InputError, match="bone: expected one of"):
        Pipeline(scene).register(ct_node, seg_node, xray_node, objects, "tibia", 1100.0, 880.0)
    # a femur starts only from an accepted pelvis (the Redo above registered it again: not accepted)
    with pytest.raises(InputError, match=r"femur_left: .*pelvis.* is not accepted; .*click Accept first"):
        Pipeline(scene).register(ct_node, seg_node, xray_node, objects, "femur_left", geometry.sdd, geometry.sod)
    accept_pose(transform)
    femur, _, _ = Pipeline(scene).register(ct_node, seg_node, xray_node, objects, "femur_left", geometry.sdd,
                                           geometry.sod, "fast")
    pelvis_pose = pose_from_transform_node(scene.GetFirstNodeByName("MSKdeX aligned pelvis pose"))
    head = femoral_head_center(labels, (3,))
    np.testing.assert_allclose(femur.center_cam, apply(pelvis_pose, head), atol=1e-9)
    assert femur.gc_threshold == 0.5 and femur.gc > 0.5
    assert scene.GetFirstNodeByName("MSKdeX aligned pelvis WVDRR") is not None  # each bone's layer stays
    # a pelvis registered with other distances is not a femur's start: the AP view is
    other, _, _ = Pipeline(scene).register(ct_node, seg_node, xray_node, objects, "femur_left", geometry.sdd + 50,
                                           geometry.sod + 50, "fast")
    from MSKdeXTraining.imaging.geometry import default_ap_pose
    from MSKdeXTraining.imaging.registration import default_isocenter

    far = Geometry(48, 48, (4.0, 4.0), geometry.sdd + 50, geometry.sod + 50)
    ap = default_ap_pose(default_isocenter(labels, objects), far)
    np.testing.assert_allclose(other.center_cam, apply(ap, head), atol=1e-6)


def test_decompose_creates_layers_table_and_chart(example, shared_data, tiny_model):
    scene = slicer.vtkMRMLScene()
    radiograph = read_radiograph(shared_data / "pediatric-ap-radiographs" / "331_DDH_1.dcm",
                                 pixel_spacing=(0.6, 0.6))
    node = radiograph_to_node(radiograph, scene, "xray")
    steps = []
    out = Pipeline(scene).decompose(tiny_model, node, tta=2, progress=lambda f, m: steps.append((f, m)))
    result = out.decomposition
    n = len(result.names)
    fractions = [f for f, _ in steps]  # rising to 100 % once, when the layers and the table are there
    assert fractions == sorted(fractions) and fractions.count(1.0) == 1 and steps[-1] == (1.0, "done")
    assert (0.9, "adding the layers and the results table") in steps
    assert len(out.layers) == 3 * n
    assert {t for _, t in out.layers} == set(DRR_TYPES)
    rows = table_rows(out.table)
    assert [r["object"] for r in rows] == list(result.names)
    assert tuple(rows[0]) == TABLE_COLUMNS == tuple(result.table[0])  # the backend's, in its order
    assert out.table.GetColumnUnitLabel("volume_cm3") == "cm3"
    assert out.table.GetColumnUnitLabel("mass_g") == "g"
    assert out.table.GetColumnUnitLabel("mass_sd_g") == "g"
    assert out.chart.GetNthPlotSeriesNode(0).GetYColumnName() == "mass_g"
    assert out.table.GetAttribute("MSKdeX.OOD") == ("1" if result.ood.flag else "0")
    assert out.table.GetAttribute("MSKdeX.IntervalLevel") == ""  # the tiny model has no calibration
    assert out.table.GetColumnTitle("mass_high_g") == "Mass 90 % high (g)"
    assert result.ood.flag, "a child's DICOM covering 68 % of the toy model's field of view is out of distribution"
    text = ood_text(result.ood)  # the panel's verdict: the flag's reasons, then each note on its line
    assert text.startswith("Out of distribution: ") and "field of view" in text.splitlines()[0]
    assert "\nNote: no calibrated interval" in text and "note:" not in text.splitlines()[0]
    area = result.geometry.pixel_area_cm2
    for row in rows:
        vdrr = volume_from_node(out.layers[(row["object"], "vdrr")]).array
        mdrr = volume_from_node(out.layers[(row["object"], "mdrr")]).array
        assert vdrr.sum(dtype=np.float64) * area == pytest.approx(row["volume_cm3"], rel=1e-5, abs=1e-9)
        assert mdrr.sum(dtype=np.float64) * area == pytest.approx(row["mass_g"], rel=1e-5, abs=1e-9)
    # the layers sit in the radiograph's plane, centred on it, at the model's pixel spacing
    layer = out.layers[(result.names[0], "wvdrr")]
    assert layer.GetSpacing()[:2] == (result.geometry.pixel_spacing[1], result.geometry.pixel_spacing[0])
    np.testing.assert_allclose(_centre_ras(layer), _centre_ras(node), atol=1e-9)
    # a second run updates the same nodes instead of adding new ones
    count = scene.GetNumberOfNodes()
    Pipeline(scene).decompose(tiny_model, node, tta=1)
    assert scene.GetNumberOfNodes() == count
    # the panel's Results table selector: the results go into the table picked there
    mine = scene.AddNewNodeByClass("vtkMRMLTableNode", "my results")
    again = Pipeline(scene).decompose(tiny_model, node, tta=1, table_node=mine)
    assert again.table.GetID() == mine.GetID() and scene.GetNumberOfNodes() == count + 1
    assert [r["object"] for r in table_rows(mine)] == list(result.names)
    assert again.chart.GetNthPlotSeriesNode(0).GetTableNodeID() == mine.GetID()


def _centre_ras(node) -> np.ndarray:
    """RAS position (mm) of the centre of a volume node's image."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    dims = np.array(node.GetImageData().GetDimensions(), float)
    return (from_vtk_matrix(m) @ np.append((dims - 1) / 2, 1.0))[:3]


def test_decompose_rejects_a_folder_without_model(tmp_path):
    scene = slicer.vtkMRMLScene()
    image = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    node = radiograph_to_node(Radiograph(image, (2.0, 2.0), {}), scene, "xray")
    with pytest.raises(InputError, match=rf"{tmp_path} is not a model run folder; run `mskdex train`"):
        Pipeline(scene).decompose(tmp_path, node)
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(InputError, match=r"model.json: is a file; expected the model run folder"):
        Pipeline(scene).decompose(tmp_path / "model.json", node)
    for unset in ("", "."):  # the panel's empty field: refused without searching the working folder
        with pytest.raises(InputError, match="model folder: choose the run folder of a trained model"):
            Pipeline(scene).decompose(Path(unset), node)


def test_results_table_takes_the_backends_columns(monkeypatch):
    """The table's columns are the backend's TABLE_COLUMNS, in its order: a column the backend
    adds without a title/unit here, or one it drops, is refused; so are rows lacking a column."""
    import MSKdeXLib.results_table as module
    from MSKdeXLib.results_table import results_table

    scene = slicer.vtkMRMLScene()
    row = {c: ("femur" if c == "object" else "bone" if c == "kind" else 1.0) for c in TABLE_COLUMNS}
    reordered = TABLE_COLUMNS[:2] + TABLE_COLUMNS[2:][::-1]
    monkeypatch.setattr(module, "TABLE_COLUMNS", reordered)
    assert tuple(table_rows(results_table([row], scene, "results"))[0]) == reordered
    for changed in (TABLE_COLUMNS + ("density_g_cm3",), TABLE_COLUMNS[:-1]):
        monkeypatch.setattr(module, "TABLE_COLUMNS", changed)
        with pytest.raises(RuntimeError, match="update TEXT_COLUMNS / NUMBER_COLUMNS"):
            results_table([row], scene, "results")
    monkeypatch.setattr(module, "TABLE_COLUMNS", TABLE_COLUMNS)
    with pytest.raises(InputError, match=r"results: result rows lack the fields \['mass_sd_g'\]"):
        results_table([{k: v for k, v in row.items() if k != "mass_sd_g"}], scene, "results")


def test_scene_save_and_load_preserve_everything(example, tmp_path):
    scene = slicer.vtkMRMLScene()
    ct, labels, objects = example["ct"], example["labels"], example["objects"]
    ct_node = volume_to_node(ct, scene, "CT")
    seg_node = labels_to_segmentation(labels, scene, "segmentation", label_names(objects))
    _, layers = Pipeline(scene).compute_drrs(ct_node, seg_node, objects, Geometry(32, 32, (16.0, 16.0)))
    rows = [{"object": n, "kind": k, "volume_cm3": 10.0 * i, "volume_low_cm3": 8.0 * i, "volume_high_cm3": 12.0 * i,
             "volume_sd_cm3": 0.5, "mass_g": 11.0 * i, "mass_low_g": 9.0 * i, "mass_high_g": 13.0 * i,
             "mass_sd_g": 0.25} for i, (n, k) in enumerate(zip(objects.names, objects.kinds))]
    from MSKdeXLib.results_table import results_chart, results_table

    table = results_table(rows, scene, "results")
    results_chart(table, scene, "chart")
    reference = Pipeline.reference_pose(labels, objects, Geometry())
    pose = reference.copy()
    pose[:3, 3] += [3.0, -2.0, 1.5]
    pose_to_transform_node(pose, reference, scene, "pelvis pose", gc=0.7)

    path = save_scene(scene, tmp_path / "saved")
    loaded = load_scene(path)
    ct2 = loaded.GetFirstNodeByName("CT")
    back = volume_from_node(ct2)
    assert np.array_equal(back.array, ct.array) and back.grid_differences(ct) == []
    assert np.array_equal(labels_from_segmentation(loaded.GetFirstNodeByName("segmentation"), ct2).array,
                          labels.array)
    assert drr_objects(loaded) == list(objects.names)  # what the panel offers to show
    for (name, drr_type), node in layers.items():
        again = loaded.GetFirstNodeByName(node.GetName())
        assert again.GetAttribute(TYPE_ATTRIBUTE) == drr_type
        assert np.array_equal(volume_from_node(again).array, volume_from_node(node).array)
    table2 = loaded.GetFirstNodeByName("results")
    assert table_rows(table2) == table_rows(table)
    assert table2.GetColumnUnitLabel("mass_g") == "g" and table2.GetColumnUnitLabel("volume_cm3") == "cm3"
    assert loaded.GetFirstNodeByName("chart") is not None
    np.testing.assert_allclose(pose_from_transform_node(loaded.GetFirstNodeByName("pelvis pose")), pose,
                               atol=1e-9)


def test_backend_process_reports_progress_and_cancels():
    script = ("import sys, time\nfrom tqdm import tqdm\n"
              "print('starting', flush=True)\n"
              "for i in tqdm(range(100), desc='epochs', mininterval=0):\n    time.sleep(0.02 if i < 50 else 5)\n")
    process = BackendProcess([sys.executable, "-c", script])
    deadline = time.monotonic() + 30
    while process.fraction < 0.5 and time.monotonic() < deadline:
        process.poll()
        time.sleep(0.05)
    assert process.fraction >= 0.5 and process.message == "epochs"
    assert "starting" in process.log
    assert not any("%|" in line for line in process.log), "progress bars must not flood the log"
    process.cancel(grace_s=5)
    assert not process.running and process.cancelled
    events = process.poll()
    assert events[-1].kind == "finished" and events[-1].returncode != 0 and events[-1].cancelled


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_request_cancel_returns_at_once_and_poll_kills_a_process_ignoring_sigterm():
    """The panel's Cancel training: SIGTERM without waiting; poll() sends SIGKILL after the grace period."""
    script = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "print('ready', flush=True)\ntime.sleep(60)\n")
    process = BackendProcess([sys.executable, "-c", script])
    deadline = time.monotonic() + 30
    while "ready" not in process.log and time.monotonic() < deadline:
        process.poll()
        time.sleep(0.02)
    start = time.monotonic()
    process.request_cancel(grace_s=1.0)
    assert time.monotonic() - start < 0.5 and process.cancelled
    time.sleep(0.3)
    process.poll()
    assert process.running  # SIGTERM ignored, grace period not over
    while process.running and time.monotonic() < start + 20:
        process.poll()
        time.sleep(0.05)
    assert not process.running and time.monotonic() - start >= 1.0
    assert process.poll()[-1].returncode == -signal.SIGKILL


def test_backend_runs_in_pythonslicer_only_inside_slicer(tmp_path, monkeypatch):
    from MSKdeXLib.backend_process import python_executable

    fake = tmp_path / "PythonSlicer"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    assert python_executable() == sys.executable  # slicer-core outside the application
    monkeypatch.setattr(slicer, "app", object(), raising=False)
    assert python_executable() == str(fake)


def test_training_runs_the_real_cli_in_a_process(tmp_path, tiny_model):
    """The Training section's path: `mskdex train` in a child process, progress parsed, run folder written."""
    data = tiny_model.parent / "toy"  # the toy dataset the fixture trained on
    config = tmp_path / "tiny.yaml"
    config.write_text("epochs: 2\nimage_size: 32\ngan: false\nlambda_cyc: 0.0\ng_width: 4\ng_branches: 1\n"
                      "g_blocks: 1\nbatch_size: 2\ncheckpoint_every: 1\ndevice: cpu\namp_bf16: false\n"
                      "channels_last: false\n")
    with pytest.raises(InputError, match="manifest.json"):
        Pipeline.training_process(tmp_path, str(config), tmp_path / "run")
    with pytest.raises(InputError, match=r"cannot split it \(the dataset has 1 patient\(s\) .*Untick the hold-out"):
        Pipeline.training_process(data, str(config), tmp_path / "run")  # holding out is the default
    assert not (tmp_path / "run").exists()
    process = Pipeline.training_process(data, str(config), tmp_path / "run", hold_out=False)
    fractions = []
    while process.running:
        fractions += [e.fraction for e in process.poll() if e.kind == "progress"]
        time.sleep(0.1)
    events = process.poll()
    fractions += [e.fraction for e in events if e.kind == "progress"]
    assert events[-1].kind == "finished" and events[-1].returncode == 0 and not events[-1].cancelled, process.log
    assert fractions and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert (tmp_path / "run" / "model.json").is_file() and not (tmp_path / "run" / "calibration.json").exists()
    # fold 0 of 4 is held out (`mskdex train --fold 0/4` calibrates on it, test_training); what counts is
    # its patients in the trainer's split (two cases each): 32 patients hold out 8, 36 hold out 9
    manifest = json.loads((data / "manifest.json").read_text())
    case, big = manifest["cases"][0], tmp_path / "big"
    big.mkdir()

    def with_patients(n: int) -> Path:
        manifest["cases"] = [{**case, "id": f"c{k}", "patient": f"p{k // 2}"} for k in range(2 * n)]
        (big / "manifest.json").write_text(json.dumps(manifest))
        return big

    with pytest.raises(InputError, match=r"holds 8 patient\(s\) with usable cases; .* at least 9"):
        Pipeline.training_process(with_patients(32), str(config), tmp_path / "held")
    process = Pipeline.training_process(with_patients(36), str(config), tmp_path / "held")
    process.cancel()
    assert process.command[-2:] == ["--fold", "0/4"]


def test_backend_process_reports_failure():
    process = BackendProcess([sys.executable, "-c", "import sys; print('bad input', file=sys.stderr); sys.exit(2)"])
    assert process.wait(30) == 2
    events = process.poll()
    assert [e.text for e in events if e.kind == "log"] == ["bad input"]
    assert events[-1].returncode == 2


def test_an_old_python_is_refused_naming_the_slicer_to_install():
    """Slicer 5.8 and older ship Python 3.9: MSKdeX refuses it clearly (pyproject: requires-python)."""
    from MSKdeXLib.dependencies import PYTHON_MIN, require_python

    wanted = 'requires-python = ">=' + ".".join(map(str, PYTHON_MIN)) + '"'
    assert wanted in (ROOT / "pyproject.toml").read_text().splitlines()
    with pytest.raises(RuntimeError, match=r"MSKdeX needs Python 3.10 or newer, which 3D Slicer ships from "
                                           r"version 5.10 on; this Slicer runs Python 3.9.10: install a newer"):
        require_python((3, 9, 10, "final", 0))
    require_python((3, 10, 0))
    require_python()


def test_requirements_detection(tmp_path):
    from MSKdeXLib.dependencies import (ensure_requirements, missing_requirements, read_requirements,
                                        require_dependencies)

    path = tmp_path / "requirements.txt"
    path.write_text("# comment\nnumpy>=1.0\n\nnumpy>=999  # too new\nno-such-package-mskdex>=1\n")
    missing = [str(r) for r in missing_requirements(read_requirements(path))]
    assert missing == ["numpy>=999", "no-such-package-mskdex>=1"]
    path.write_text("numpy>=1.0\n")
    assert ensure_requirements(lambda text: pytest.fail("nothing to confirm"), path) == []
    require_dependencies(path)  # torch and numpy are here
    path.write_text("numpy>=1.0\nno-such-package-mskdex>=1\n")
    with pytest.raises(RuntimeError, match=r"not installed .*: no-such-package-mskdex>=1\. Click 'Check dependencies'"):
        require_dependencies(path)
    path.write_text("numpy>=1.0\nnot a requirement!\n")
    with pytest.raises(ValueError, match=r"requirements.txt:2: not a valid requirement"):
        read_requirements(path)


def test_missing_requirements_are_installed_the_way_slicer_offers(tmp_path, monkeypatch):
    """Slicer with pip_ensure (slicer.packaging, first slicer.pydeps) gets the Requirement objects
    (and asks the user itself); older Slicer: the confirm callback, then slicer.util.pip_install.
    A package still missing afterwards, or a declined installation, is an error naming it."""
    import types

    import slicer
    import slicer.util
    from packaging.requirements import Requirement

    from MSKdeXLib.dependencies import ensure_requirements

    path = tmp_path / "requirements.txt"
    path.write_text("numpy>=1.0\nno-such-package-mskdex>=1\n")
    calls = []
    monkeypatch.setattr(slicer.util, "pip_install", lambda names: calls.append(("pip_install", names)),
                        raising=False)
    with pytest.raises(RuntimeError, match=r"installation declined"):
        ensure_requirements(lambda text: "no-such-package-mskdex>=1" in text and False, path)
    assert calls == []
    with pytest.raises(RuntimeError, match=r"still missing after installation: no-such-package-mskdex>=1"):
        ensure_requirements(lambda text: True, path)
    assert calls == [("pip_install", ["no-such-package-mskdex>=1"])]
    monkeypatch.setitem(sys.modules, "slicer.packaging", types.ModuleType("slicer.packaging"))  # no pip_ensure
    for name in ("pydeps", "packaging"):  # the first name, then the present one, which wins
        module = types.ModuleType(f"slicer.{name}")
        module.pip_ensure = lambda reqs, requester, name=name: calls.append((name, reqs, requester))
        monkeypatch.setitem(sys.modules, f"slicer.{name}", module)
        monkeypatch.setattr(slicer, name, module, raising=False)
        with pytest.raises(RuntimeError, match=r"still missing after installation"):
            ensure_requirements(lambda text: pytest.fail("pip_ensure asks the user itself"), path)
        assert calls[-1] == (name, [Requirement("no-such-package-mskdex>=1")], "MSKdeX")


def test_slicer_side_unittests_pass():
    """MSKdeX/Testing/MSKdeXLibTest.py (what ctest runs inside Slicer) passes here too."""
    sys.path.insert(0, str(ROOT / "MSKdeX" / "Testing"))
    import MSKdeXLibTest

    result = unittest.TextTestRunner(verbosity=0).run(
        unittest.defaultTestLoader.loadTestsFromModule(MSKdeXLibTest))
    assert result.wasSuccessful() and result.testsRun >= 6, result.failures + result.errors


def test_decompose_magnification_from_the_panel_is_checked(tiny_model):
    """The panel's magnification replaces the file's and is recorded; outside 1-2 it is refused."""
    scene = slicer.vtkMRMLScene()
    image = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    node = radiograph_to_node(Radiograph(image, (4.0, 4.0), {"magnification": 1.1}), scene, "xray")
    source = Pipeline(scene).decompose(tiny_model, node, tta=1, magnification=1.2).decomposition.source
    assert (source["magnification"], source["magnification_field"]) == (1.2, "given in MSKdeX (Magnification)")
    assert source["magnification_in_file"] == 1.1
    assert any("magnification given, 1.2, was used instead of the file's own 1.1" in n and "looks 0.917x" in n
               for n in source["notes"])
    with pytest.raises(InputError, match="panel field 'Magnification' is 0.8"):
        Pipeline(scene).decompose(tiny_model, node, tta=1, magnification=0.8)


def test_a_pose_node_moves_a_world_point_where_the_registration_moved_the_bone():
    """The pose node's RAS matrix is the bone's LPS motion inv(reference) @ pose with x and y flipped on both sides."""
    reference = rigid((90.0, 0.0, 0.0), (0.0, 0.0, 880.0))
    pose = rigid((3.0, -2.0, 5.0), (4.0, -6.0, 2.0), (10.0, 20.0, 30.0)) @ reference
    node = pose_to_transform_node(pose, reference, slicer.vtkMRMLScene(), "pose")
    matrix = vtk.vtkMatrix4x4()
    node.GetMatrixTransformToParent(matrix)
    point_lps = np.array([12.0, -34.0, 56.0])
    moved_lps = apply(np.linalg.inv(reference), apply(pose, point_lps))  # seen by the reference pose as by `pose`
    flip = np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(apply(from_vtk_matrix(matrix), flip * point_lps), flip * moved_lps, atol=1e-9)


def test_an_int64_volume_is_narrowed_to_int32_only_when_no_value_changes():
    """int64 voxels are stored as int32 when they fit; a value beyond int32 is refused, not wrapped."""
    scene = slicer.vtkMRMLScene()
    array = np.zeros((2, 3, 4), np.int64)
    array[1, 2, 3] = 70000
    back = volume_from_node(volume_to_node(Volume(array, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3)), scene, "fits"))
    assert back.array.dtype == np.int32 and np.array_equal(back.array, array)
    array[0, 0, 0] = 2 ** 31
    with pytest.raises(InputError, match=r"big: voxel values do not fit int32 \(range 0\.\.2147483648\)"):
        volume_to_node(Volume(array, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3)), scene, "big")


def test_a_side_of_several_label_values_names_a_segment_per_value():
    """label_names: a side of one value is <object>_<side>; a side of several gives <object>_<side>_<value> each."""
    objects = ObjectMap.from_json({"format": "mskdex-object-map", "version": 1, "objects": [
        {"name": "pelvis", "kind": "bone", "labels": [1]},
        {"name": "femur", "kind": "bone", "labels": [3, 4, 5], "sides": {"left": [3, 5], "right": [4]}}]})
    assert label_names(objects) == {1: "pelvis", 3: "femur_left_3", 5: "femur_left_5", 4: "femur_right"}
    assert name_values(objects) == {"pelvis": 1, "femur_left_3": 3, "femur_left_5": 5, "femur_right": 4}


def test_segments_named_segment_or_label_and_a_number_give_that_value_and_two_segments_one_value_are_refused():
    """Untagged segments named Segment_<n> / label <n> export as n; two segments mapped to one value are refused."""
    scene = slicer.vtkMRMLScene()
    ct = Volume(np.zeros((6, 6, 6), np.int16), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    array = np.zeros((6, 6, 6), np.uint8)
    array[1:3, 1:3, 1:3], array[3:5, 3:5, 3:5] = 1, 2
    ct_node = volume_to_node(ct, scene, "CT")
    seg = labels_to_segmentation(ct.with_array(array), scene, "seg", {1: "Segment_7", 2: "label 9"})
    for i in range(2):
        seg.GetSegmentation().GetNthSegment(i).RemoveTag("MSKdeX.LabelValue")
    assert np.array_equal(labels_from_segmentation(seg, ct_node).array, np.choose(array, [0, 7, 9]))
    with pytest.raises(InputError, match="seg': two segments map to the same label value"):
        labels_from_segmentation(seg, ct_node, {"Segment_7": 4, "label 9": 4})


def test_a_name_mapping_wins_over_the_segments_value_tag():
    """segment_values takes a segment's value from the name -> value mapping before its MSKdeX tag."""
    scene = slicer.vtkMRMLScene()
    ct = Volume(np.zeros((6, 6, 6), np.int16), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    array = np.zeros((6, 6, 6), np.uint8)
    array[1:4, 2:5, 1:3] = 1
    ct_node = volume_to_node(ct, scene, "CT")
    seg = labels_to_segmentation(ct.with_array(array), scene, "seg", {1: "pelvis"})  # tagged 1
    assert np.array_equal(labels_from_segmentation(seg, ct_node, {"pelvis": 5}).array, array * 5)


def test_a_grey_picture_in_a_vector_volume_is_not_recorded_as_colour():
    """A vector volume whose three channels are equal is grey: recorded as not colour, its grey values kept."""
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "grey photo")
    grey = np.linspace(0, 250, 400 * 500).reshape(1, 400, 500, 1)
    slicer.util.updateVolumeFromArray(node, np.repeat(grey, 3, axis=-1).astype(np.uint8))
    node.SetSpacing(0.5, 0.5, 1.0)
    radiograph = radiograph_from_node(node)
    assert radiograph.source["colour"] is False
    np.testing.assert_allclose(radiograph.array, grey[0, ..., 0].astype(np.uint8), atol=1e-3)


def test_a_layer_with_non_square_pixels_keeps_its_spacing_when_placed_over_a_radiograph():
    """Layers placed over a radiograph keep their (row, column) spacing: column spacing along i, row spacing along j."""
    scene = slicer.vtkMRMLScene()
    xray = radiograph_to_node(Radiograph(np.linspace(0, 1, 60 * 80, dtype=np.float32).reshape(60, 80), (3.0, 3.0),
                                         {}), scene, "xray")
    layer = drr_layers(np.ones((3, 1, 20, 30), np.float32), ["pelvis"], (4.0, 2.5), scene, "test", xray)[
        ("pelvis", "vdrr")]
    assert layer.GetSpacing()[:2] == (2.5, 4.0)
    np.testing.assert_allclose(_centre_ras(layer), _centre_ras(xray), atol=1e-9)
    place_over(layer, xray)  # again: unchanged
    assert layer.GetSpacing()[:2] == (2.5, 4.0)
    np.testing.assert_allclose(_centre_ras(layer), _centre_ras(xray), atol=1e-9)


@pytest.mark.parametrize("line, expected", [
    ("epochs:  33%|###3      | 1/3 [00:01<00:02,  1.0it/s]", (1 / 3, "epochs")),  # n/total, not the rounded %
    ("cases:  50%|#####     | 500/1.00k [00:10<00:10, 50.0it/s]", (0.5, "cases")),  # tqdm's k suffix
    ("epochs: 100%|##########| 12/10 [00:01<00:00]", (1.0, "epochs")),  # never past 1
    ("train:  45%|####5     | 9/20 [00:01<00:02] epoch 3/600, g 0.25", (0.45, "train: epoch 3/600, g 0.25")),
])
def test_progress_fraction_and_message_of_tqdm_lines(line, expected):
    """parse_progress: the fraction is n/total (a k suffix scaled, clamped to 1), the message desc: postfix."""
    fraction, message = parse_progress(line)
    assert fraction == pytest.approx(expected[0], abs=1e-12) and message == expected[1]


def test_a_pelvis_registered_with_a_shorter_distance_is_not_the_femurs_start():
    """registered_on compares SDD / SOD within 0.01 mm either way: a recorded distance 1 mm below does not match."""
    inputs = {"ct": "vtkMRMLScalarVolumeNode1", "segmentation": "vtkMRMLSegmentationNode1",
              "radiograph": "vtkMRMLScalarVolumeNode2", "sdd": 1100.0, "sod": 880.0, "assumed": False}
    assert registered_on(json.dumps({**inputs, "sod": 880.005}), inputs)
    assert not registered_on(json.dumps({**inputs, "sod": 879.0}), inputs)
    assert not registered_on(json.dumps({**inputs, "sod": 881.0}), inputs)
    assert not registered_on(json.dumps({**inputs, "sdd": 1099.0}), inputs)


def test_drr_warnings_list_ten_names_without_a_remainder_and_a_stack_of_other_objects_is_refused():
    """Ten absent objects are listed whole (no "and 0 more"); drr_layers refuses a stack of another N than names."""
    names = [f"object_{k}" for k in range(10)]
    metrics = {"objects": [], "absent": names, "outside_fov": [], "unmatched_segments": [], "object_map": "m"}
    assert drr_warnings(metrics) == [
        "10 object(s) absent from the segmentation (their layers are zero): " + ", ".join(names)]
    with pytest.raises(InputError, match=r"layers: DRR stack must be \(3, 1, H, W\), got \(3, 2, 4, 4\)"):
        drr_layers(np.ones((3, 2, 4, 4), np.float32), ["pelvis"], (1.0, 1.0), slicer.vtkMRMLScene(), "layers")


def test_segments_of_the_totalsegmentator_extension_match_by_their_ids():
    """The TotalSegmentator extension keeps each class name as the segment's ID and, by default
    ("standard segment names"), renames the segment itself after its terminology (e.g. "Right
    iliopsoas muscle"): such segments are matched by ID, not left out of every object."""
    objects = load_object_map("totalsegmentator")
    array = np.zeros((10, 12, 14), np.int16)
    array[2:5, 2:9, 3:10], array[6:8, 4:10, 5:12] = 77, 89
    labels = Volume(array, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    scene = slicer.vtkMRMLScene()
    ct = volume_to_node(labels.with_array(np.zeros_like(array)), scene, "CT")
    seg = labels_to_segmentation(labels, scene, "TotalSegmentator", {77: "hip_left", 89: "iliopsoas_right"})
    segmentation = seg.GetSegmentation()
    for class_name, standard in (("hip_left", "Left hip bone"), ("iliopsoas_right", "Right iliopsoas muscle")):
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(class_name))
        segmentation.RemoveSegment(segment)
        segment.RemoveTag("MSKdeX.LabelValue")
        segment.SetName(standard)
        segmentation.AddSegment(segment, class_name)
    assert sorted(segmentation.GetSegmentIDs()) == ["hip_left", "iliopsoas_right"]
    assert unmatched_segments(seg, name_values(objects)) == []
    assert np.array_equal(labels_from_segmentation(seg, ct, name_values(objects)).array, array)
