"""Scalar and label-map volume nodes <-> backend :class:`Volume` (array ``[k, j, i]``, LPS mm).

Voxel values and geometry round-trip exactly: the array is copied as is (same dtype) and the
geometry goes through :mod:`MSKdeXLib.coordinates` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import slicer.util

from MSKdeXTraining.errors import InputError
from MSKdeXTraining.imaging.volume import Volume, check_labels

from .coordinates import node_geometry, set_node_geometry

if TYPE_CHECKING:
    from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScene, vtkMRMLVolumeNode

#: numpy dtypes that VTK renders; int64 volumes are refused by Slicer (see slicer.util).
_WIDEN = {np.dtype(np.int64): np.int32, np.dtype(np.uint64): np.uint32, np.dtype(bool): np.uint8}


def volume_to_node(volume: Volume, scene: vtkMRMLScene, name: str, node: vtkMRMLVolumeNode | None = None,
                   node_class: str = "vtkMRMLScalarVolumeNode") -> vtkMRMLVolumeNode:
    """Put ``volume`` into ``node`` (a new ``node_class`` node in ``scene`` when None); returns the node.

    int64 arrays are stored as int32 after checking that no value changes.
    """
    array = np.ascontiguousarray(volume.array)
    target = _WIDEN.get(array.dtype)
    if target is not None:
        narrow = array.astype(target)
        if not np.array_equal(narrow, array):
            raise InputError(f"{name}: voxel values do not fit {np.dtype(target).name} "
                             f"(range {array.min()}..{array.max()})")
        array = narrow
    if array.ndim != 3:
        raise InputError(f"{name}: expected a 3D array [k, j, i], got shape {array.shape}")
    if node is None:
        node = scene.AddNewNodeByClass(node_class, name)
    slicer.util.updateVolumeFromArray(node, array)
    set_node_geometry(node, volume.spacing, volume.origin, volume.direction)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def volume_from_node(node: vtkMRMLVolumeNode | None, what: str = "volume") -> Volume:
    """Backend :class:`Volume` (a copy of the voxels, LPS geometry) of a scalar/label-map volume node."""
    if node is None or node.GetImageData() is None:
        raise InputError(f"{what}: no volume selected, or the node holds no image data")
    array = np.array(slicer.util.arrayFromVolume(node), copy=True)
    spacing, origin, direction = node_geometry(node)
    return Volume(array, spacing, origin, direction)


def labels_from_node(node: vtkMRMLLabelMapVolumeNode, what: str = "label map") -> Volume:
    """Backend label :class:`Volume` of a label-map node; refuses non-integer or negative values."""
    return check_labels(volume_from_node(node, what), f"{what} ({node.GetName()})")