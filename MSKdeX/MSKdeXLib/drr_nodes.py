"""Object-wise DRR stacks ``(3, N, H, W)`` as overlay layers: one volume node per object and type.

Each layer is a one-slice scalar volume named and tagged as :mod:`.layer_names` says (units WVDRR 1,
VDRR cm, MDRR g/cm2), windowed from 0 to its maximum, with a colour map when the scene has one, and
filed in a subject-hierarchy folder named ``prefix``. Running again with the same prefix updates
the same nodes and removes the layers of objects no longer in the stack (unless told to keep them:
the aligned bones, registered one at a time).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import slicer

from MSKdeXTraining.drr_types import DRR_SHORT_UNITS, DRR_TYPES
from MSKdeXTraining.errors import InputError

from .layer_names import OBJECT_ATTRIBUTE, TYPE_ATTRIBUTE, UNIT_ATTRIBUTE, layer_name, layers_of
from .radiograph_nodes import detector_volume, place_like
from .volume_nodes import volume_from_node, volume_to_node

if TYPE_CHECKING:
    from slicer import vtkMRMLScalarVolumeNode, vtkMRMLScene

#: Colour maps tried for each type (Slicer's built-in colour nodes; grey when absent).
COLOR_NODE = {"wvdrr": "vtkMRMLColorTableNodeGrey", "vdrr": "vtkMRMLColorTableNodeFileViridis.txt",
              "mdrr": "vtkMRMLColorTableNodeFileInferno.txt"}


def drr_layers(data: np.ndarray, names: Sequence[str], pixel_spacing: tuple[float, float], scene: vtkMRMLScene,
               prefix: str, reference_node: vtkMRMLScalarVolumeNode | None = None, prune: bool = True
               ) -> dict[tuple[str, str], vtkMRMLScalarVolumeNode]:
    """Create or update the 3N layer nodes of ``data`` (3, N, H, W) in physical units; with
    ``prune``, the ``prefix``'s layers of other objects (an earlier run's) are removed.

    ``pixel_spacing`` (row, column) mm of the DRR detector; with ``reference_node`` (a
    radiograph node) the layers lie in its plane, centred on it.
    Returns {(object, type): node}.
    """
    data = np.asarray(data)
    if data.ndim != 4 or data.shape[0] != len(DRR_TYPES) or data.shape[1] != len(names):
        raise InputError(f"{prefix}: DRR stack must be (3, {len(names)}, H, W), got {data.shape}")
    nodes = {}
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    folder = hierarchy.GetItemChildWithName(hierarchy.GetSceneItemID(), prefix) or \
        hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), prefix)
    for t, drr_type in enumerate(DRR_TYPES):
        for n, name in enumerate(names):
            label = layer_name(prefix, name, drr_type)
            node = scene.GetFirstNodeByName(label)
            image = np.ascontiguousarray(data[t, n], dtype=np.float32)
            node = volume_to_node(detector_volume(image, pixel_spacing), scene, label, node)
            if reference_node is not None:
                place_like(node, reference_node, pixel_spacing)
            node.SetAttribute(OBJECT_ATTRIBUTE, name)
            node.SetAttribute(TYPE_ATTRIBUTE, drr_type)
            node.SetAttribute(UNIT_ATTRIBUTE, DRR_SHORT_UNITS[drr_type])
            _display(node, image, drr_type, scene)
            hierarchy.SetItemParent(hierarchy.GetItemByDataNode(node) or hierarchy.CreateItem(folder, node), folder)
            nodes[(name, drr_type)] = node
    for node in layers_of(scene, prefix) if prune else ():
        if (node.GetAttribute(OBJECT_ATTRIBUTE), node.GetAttribute(TYPE_ATTRIBUTE)) not in nodes:
            scene.RemoveNode(node)
    return nodes


def place_over(layer: vtkMRMLScalarVolumeNode, radiograph_node: vtkMRMLScalarVolumeNode) -> None:
    """Put a layer of :func:`drr_layers` in the plane of ``radiograph_node``, centred on it, at
    the layer's own pixel spacing (as :func:`drr_layers` with that ``reference_node`` does)."""
    spacing = layer.GetSpacing()
    place_like(layer, radiograph_node, (spacing[1], spacing[0]))


def stack_from_layers(nodes: dict[tuple[str, str], vtkMRMLScalarVolumeNode], names: Sequence[str]) -> np.ndarray:
    """(3, N, H, W) float32 stack back from the layer nodes of :func:`drr_layers`."""
    return np.stack([np.stack([volume_from_node(nodes[(n, t)]).array[0] for n in names])
                     for t in DRR_TYPES])


def _display(node, image: np.ndarray, drr_type: str, scene) -> None:
    display = node.GetDisplayNode()
    color = COLOR_NODE[drr_type]
    if scene.GetNodeByID(color) is not None:
        display.SetAndObserveColorNodeID(color)
    top = float(image.max())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, top if top > 0 else 1.0)
