"""Radiographs and other detector images as one-slice volume nodes.

A radiograph ``(H, W)`` with pixel spacing (row, column) mm becomes a volume node of one
slice: i runs along detector columns, j along rows, spacing (column, row, 1) mm. A new node
is placed in the coronal plane the way the default AP view sees the patient (columns from
the patient's right to left, rows head to foot; see ``imaging.geometry.AP_ROTATION``), centred
on the world origin, so Slicer's coronal view shows it as a radiologist hangs it. The node
keeps the reader's source record (:data:`SOURCE_ATTRIBUTE`: magnification, pixel padding, bit
depth, colour..., and the geometry of the file's ``mskdex-xray`` sidecar if it has one), which
decomposition and bone alignment use as for the file itself. A radiograph loaded by Slicer itself (DICOM DX/CR, PNG) has
no such record (its results say so) and keeps its own placement; detector layers computed from
it (DRRs, overlays) take its plane and centre via :func:`place_like`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import slicer.util

from MSKdeXTraining.imaging.geometry import AP_ROTATION, detector_origin
from MSKdeXTraining.errors import InputError
from MSKdeXTraining.imaging.volume import Volume
from MSKdeXTraining.radiograph_formats import LUMA, PLACEHOLDER_SPACING_MM
from MSKdeXTraining.radiograph_io import Radiograph, check_spacing

from .coordinates import node_geometry, set_node_geometry
from .volume_nodes import volume_to_node

if TYPE_CHECKING:
    from slicer import vtkMRMLScalarVolumeNode, vtkMRMLScene

#: Node attribute holding the radiograph's source record (JSON).
SOURCE_ATTRIBUTE = "MSKdeX.Source"
#: Note of a radiograph node without a source record (what the file held is unknown).
NOT_READ_NOTE = ("the radiograph node {name!r} was loaded by Slicer, not read by MSKdeX: the file's "
                 "magnification, pixel padding and bit depth were not read (load it with 'Load radiograph' "
                 "to use them)")


def detector_volume(image: np.ndarray, pixel_spacing: tuple[float, float]) -> Volume:
    """A one-slice :class:`Volume` of a detector image ``(H, W)`` in the default AP placement."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise InputError(f"detector image must be 2D (H, W), got shape {image.shape}")
    rows, cols = image.shape
    row_mm, col_mm = (float(s) for s in pixel_spacing)
    direction = AP_ROTATION.T  # columns: camera x, y, z axes in LPS
    corner = np.array([*detector_origin((rows, cols), (row_mm, col_mm)), 0.0])
    return Volume(image[None], (col_mm, row_mm, 1.0), direction @ corner, direction)


def radiograph_to_node(radiograph: Radiograph, scene: vtkMRMLScene, name: str) -> vtkMRMLScalarVolumeNode:
    """A new scalar volume node (one slice) called ``name`` holding ``radiograph`` with its source
    record."""
    node = volume_to_node(detector_volume(radiograph.array, radiograph.pixel_spacing), scene, name)
    node.SetAttribute(SOURCE_ATTRIBUTE, json.dumps(radiograph.source, default=str))
    display = node.GetDisplayNode()
    lo, hi = float(np.min(radiograph.array)), float(np.max(radiograph.array))
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(lo, hi if hi > lo else lo + 1.0)
    return node


def radiograph_from_node(node: vtkMRMLScalarVolumeNode) -> Radiograph:
    """The :class:`Radiograph` (array (H, W) float32, spacing (row, column) mm) of a one-slice node.

    Colour (vector) volumes are turned into grey with the BT.601 luma weights. A node that
    MSKdeX did not read (loaded by Slicer itself) must have a plausible detector spacing other
    than 1.0 x 1.0 mm, which Slicer gives a PNG or any file storing none (the backend refuses it
    as a placeholder too); its spacing is noted as given by the user, whether its channels
    differ is recorded as ``colour``, and a note (:data:`NOT_READ_NOTE`) says that the file's
    magnification, padding and bit depth are unknown.
    """
    what = "radiograph"
    if node is None or node.GetImageData() is None:
        raise InputError(f"{what}: no radiograph selected, or the node holds no image data")
    array = np.asarray(slicer.util.arrayFromVolume(node))
    colour = False
    if array.ndim == 4:
        colour = array.shape[-1] >= 3 and bool(np.ptp(array[..., :3], axis=-1).max() > 0)
        array = array[..., :3] @ LUMA if array.shape[-1] >= 3 else array[..., 0]
    if array.shape[0] != 1:
        raise InputError(f"{what} ({node.GetName()}): expected a one-slice image, got "
                         f"{array.shape[0]} slices of {array.shape[1]}x{array.shape[2]}")
    spacing, _, _ = node_geometry(node)
    pixel_spacing = (float(spacing[1]), float(spacing[0]))
    recorded = node.GetAttribute(SOURCE_ATTRIBUTE)
    source = json.loads(recorded or "{}")
    source.setdefault("node", node.GetName())
    if not recorded:
        source["spacing_field"] = "argument (the Slicer node's spacing)"
        source["colour"] = colour
        source["notes"] = [NOT_READ_NOTE.format(name=node.GetName())]
        fix = "set the node's spacing to the detector's pixel size (Volumes module, Volume Information)"
        if pixel_spacing == PLACEHOLDER_SPACING_MM:
            raise InputError(f"{what} ({node.GetName()}): pixel spacing 1.0 x 1.0 mm, what Slicer gives a file "
                             f"that stores none; {fix}")
        check_spacing(f"{what} ({node.GetName()})", array.shape[1:], pixel_spacing, source["spacing_field"], fix)
    return Radiograph(np.array(array[0], dtype=np.float32), pixel_spacing, source)


def place_like(node: vtkMRMLScalarVolumeNode, reference_node: vtkMRMLScalarVolumeNode,
               pixel_spacing: tuple[float, float]) -> None:
    """Put the one-slice ``node`` (pixel spacing (row, column) mm) in the plane of
    ``reference_node``: same orientation, same image centre (detector images are centred on
    the central ray, as ``inference.to_detector`` resamples them), under the same transform."""
    ref_spacing, ref_origin, direction = node_geometry(reference_node)
    ref_dims = np.array(reference_node.GetImageData().GetDimensions(), float)
    dims = np.array(node.GetImageData().GetDimensions(), float)
    spacing = np.array([pixel_spacing[1], pixel_spacing[0], ref_spacing[2]], float)
    centre = ref_origin + direction @ ((ref_dims - 1) / 2 * ref_spacing)
    set_node_geometry(node, spacing, centre - direction @ ((dims - 1) / 2 * spacing), direction)
    node.SetAndObserveTransformNodeID(reference_node.GetTransformNodeID())
