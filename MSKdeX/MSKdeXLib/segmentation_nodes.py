"""Segmentation nodes <-> backend label maps (integer values per object map).

A label map imported here becomes one segment per label value, named after the object map
(``gluteus_maximus_left``, ``pelvis``, ...) and tagged with its value (segment tag
:data:`VALUE_TAG`), so exporting it again gives back the same values on the same grid. A
segmentation made elsewhere (Segment Editor, TotalSegmentator) is exported by segment name or ID:
pass ``values`` (name -> label value), e.g. from :func:`label_names` inverted (the TotalSegmentator
extension keeps each class name as the segment's ID, e.g. ``femur_left``, while its default
"standard segment names" rename the segment itself); segments named
``Label_<value>`` (a label map imported without a colour table) or ``Segment_<value>`` (a label
file loaded as a segmentation) give that value. The Segment Editor names new segments
``Segment_<n>`` too, so such a mapping is logged as a warning, and the segmentation QC shows
each object's volume.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import slicer
import vtk

from MSKdeXTraining.errors import InputError
from MSKdeXTraining.imaging.volume import Volume
from MSKdeXTraining.objects import ObjectMap

from .volume_nodes import labels_from_node, volume_to_node

if TYPE_CHECKING:
    from slicer import vtkMRMLScene, vtkMRMLSegmentationNode, vtkMRMLVolumeNode

#: Segment tag that records the label value a segment stands for.
VALUE_TAG = "MSKdeX.LabelValue"
#: Segment names that carry their label value.
_VALUE_NAME = re.compile(r"^(?:label|segment)[_ ]?(\d+)$", re.IGNORECASE)


def label_names(objects: ObjectMap) -> dict[int, str]:
    """Segment name for every label value of ``objects``: ``<object>_<side>`` for sided
    objects, the object name for one-label objects, ``<object>_<value>`` otherwise."""
    names: dict[int, str] = {}
    for o in objects.objects:
        for side, values in o.sides.items():
            for v in values:
                names[v] = f"{o.name}_{side}" if len(values) == 1 else f"{o.name}_{side}_{v}"
        for v in o.labels:
            names.setdefault(v, o.name if len(o.labels) == 1 else f"{o.name}_{v}")
    return names


def name_values(objects: ObjectMap) -> dict[str, int]:
    """Label value for every segment name of :func:`label_names` (its inverse) and of the map's
    ``aliases`` (e.g. TotalSegmentator's class names ``hip_left``, ``iliopsoas_right``)."""
    return {**objects.aliases, **{name: value for value, name in label_names(objects).items()}}


@contextmanager
def _scratch_nodes(scene: vtkMRMLScene) -> Iterator[None]:
    """Remove on leaving every node added to ``scene`` inside the block but singletons and the
    subject hierarchy (a scene's one tree, made on first use): Slicer's label map import and
    export add display nodes and a colour table besides the nodes asked for, which would
    otherwise pile up with every run."""
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        yield
    finally:
        added = [n for n in (scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()))
                 if n.GetID() not in before and n.GetSingletonTag() is None
                 and not n.IsA("vtkMRMLSubjectHierarchyNode")]
        for n in reversed(added):
            scene.RemoveNode(n)


def _color_table(scene, names: Mapping[int, str], node_name: str):
    """A user colour table whose entry ``value`` is named ``names[value]`` (others unnamed)."""
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", node_name)
    table.SetTypeToUser()
    top = max(names)
    table.SetNumberOfColors(top + 1)
    rng = np.random.default_rng(0)  # fixed colours: the same label always looks the same
    for v in range(top + 1):
        table.SetColor(v, names.get(v, ""), *rng.uniform(0.2, 1.0, 3).tolist(), 1.0 if v in names else 0.0)
    return table


def labels_to_segmentation(labels: Volume, scene: vtkMRMLScene, name: str, names: Mapping[int, str] | None = None,
                           node: vtkMRMLSegmentationNode | None = None) -> vtkMRMLSegmentationNode:
    """A segmentation node with one segment per non-zero label value of ``labels``.

    ``names`` gives segment names (default ``label_<value>``); every segment carries its value
    in the :data:`VALUE_TAG` tag. Returns the segmentation node.
    """
    values = [int(v) for v in np.unique(labels.array) if v != 0]
    if not values:
        raise InputError(f"{name}: the label map is empty (only background 0)")
    names = {v: (names or {}).get(v, f"label_{v}") for v in values}
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    node.GetSegmentation().RemoveAllSegments()
    with _scratch_nodes(scene):
        labelmap = volume_to_node(labels, scene, f"__{name}_labels__", node_class="vtkMRMLLabelMapVolumeNode")
        table = _color_table(scene, names, f"__{name}_names__")
        labelmap.GetDisplayNode().SetAndObserveColorNodeID(table.GetID())
        node.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node):
            raise InputError(f"{name}: Slicer could not import the label map into a segmentation")
    segmentation = node.GetSegmentation()
    by_name = {n: v for v, n in names.items()}
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        segment.SetTag(VALUE_TAG, str(by_name[segment.GetName()]))
    return node


def _segment_value(segment, sid: str, values: Mapping[str, int] | None) -> tuple[int | None, bool]:
    """(label value of ``segment`` (ID ``sid``) or None, whether it came from a ``Label_<value>`` name)."""
    tag = vtk.mutable("")
    for key in (segment.GetName(), sid):
        if values is not None and key in values:
            return int(values[key]), False
    if segment.GetTag(VALUE_TAG, tag):
        return int(str(tag)), False
    if match := _VALUE_NAME.match(segment.GetName()):
        return int(match.group(1)), True
    return None, False


def segment_values(node: vtkMRMLSegmentationNode, values: Mapping[str, int] | None = None,
                   skip_unknown: bool = False) -> dict[str, int]:
    """Segment ID -> label value, from ``values`` (by segment name, then by ID) first, then the
    :data:`VALUE_TAG` tag, then a ``Label_<value>`` name. Segments with none of these raise
    :class:`InputError` listing them, unless ``skip_unknown``."""
    segmentation = node.GetSegmentation()
    names = Counter(segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments()))
    twice = sorted(n for n, count in names.items() if count > 1)
    if twice:
        raise InputError(f"segmentation {node.GetName()!r}: several segments are named {twice}; "
                         "rename them so that each name stands for one object")
    out, unknown, by_name = {}, [], []
    for i in range(segmentation.GetNumberOfSegments()):
        sid = segmentation.GetNthSegmentID(i)
        segment = segmentation.GetSegment(sid)
        value, from_name = _segment_value(segment, sid, values)
        if value is None:
            unknown.append(segment.GetName())
            continue
        out[sid] = value
        if from_name:
            by_name.append(f"{segment.GetName()} -> {value}")
    if by_name:
        logging.warning("segmentation %r: label values taken from segment names: %s",
                        node.GetName(), ", ".join(by_name))
    if unknown and not skip_unknown:
        raise InputError(
            f"segmentation {node.GetName()!r}: segments {unknown} have no label value; name them "
            f"after the object map (e.g. 'femur_left') or pass a name -> value mapping")
    return out


def unmatched_segments(node: vtkMRMLSegmentationNode, values: Mapping[str, int]) -> list[str]:
    """Names of the segments that stand for no label value of ``values`` (an object map's, by
    name): first those without a value (see :func:`segment_values`; most likely misnamed
    objects), then those with a value not among them. Such segments are left out of every
    object, so they show in no DRR layer."""
    wanted = set(values.values())
    segmentation = node.GetSegmentation()
    ids = (segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments()))
    found = [(segmentation.GetSegment(sid).GetName(), _segment_value(segmentation.GetSegment(sid), sid, values)[0])
             for sid in ids]
    return [name for name, value in sorted(found, key=lambda f: f[1] is not None) if value not in wanted]


def labels_from_segmentation(node: vtkMRMLSegmentationNode, reference_node: vtkMRMLVolumeNode,
                             values: Mapping[str, int] | None = None, skip_unknown: bool = False) -> Volume:
    """Label map (backend :class:`Volume`) of a segmentation on the grid of ``reference_node``.

    Label values come from :func:`segment_values`. Where segments overlap, the later segment wins.
    A segmentation under another transform than the reference is refused: the export would
    move its labels against the CT's voxels (e.g. one placed under a registered pose node).
    """
    if node is None or node.GetSegmentation().GetNumberOfSegments() == 0:
        raise InputError("segmentation: no segmentation selected, or it has no segments")
    if reference_node is None or reference_node.GetImageData() is None:
        raise InputError("segmentation: a reference volume (the CT) is needed to export it")
    if node.GetTransformNodeID() != reference_node.GetTransformNodeID():
        moved, ref = (n.GetParentTransformNode() for n in (node, reference_node))
        name = lambda t: "no transform" if t is None else f"transform {t.GetName()!r}"
        raise InputError(f"segmentation {node.GetName()!r}: it is under {name(moved)}, the CT "
                         f"{reference_node.GetName()!r} under {name(ref)}; its labels must lie on the CT's "
                         "voxels: put both under the same transform (or none), and a copy under a pose node")
    ids_to_value = segment_values(node, values, skip_unknown)
    if not ids_to_value:
        raise InputError(f"segmentation {node.GetName()!r}: no segment has a label value")
    scene = node.GetScene()
    segmentation = node.GetSegmentation()
    names = {v: segmentation.GetSegment(sid).GetName() for sid, v in ids_to_value.items()}
    if len(names) != len(ids_to_value):
        raise InputError(f"segmentation {node.GetName()!r}: two segments map to the same label value")
    ids = vtk.vtkStringArray()
    for sid in ids_to_value:
        ids.InsertNextValue(sid)
    with _scratch_nodes(scene):
        table = _color_table(scene, names, "__export_names__")
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__export_labels__")
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            node, ids, labelmap, reference_node, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, table)
        if not ok:
            raise InputError(f"segmentation {node.GetName()!r}: export to a label map failed")
        return labels_from_node(labelmap, f"segmentation {node.GetName()!r}")
