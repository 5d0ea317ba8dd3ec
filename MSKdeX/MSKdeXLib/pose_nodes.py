"""Bone poses (4x4 world LPS -> camera, mm) as linear transform nodes.

A registered pose ``P`` of a bone and the reference (default AP) pose ``P0`` of the CT
differ by a motion of the bone in the world: ``M = P0^-1 @ P`` (LPS). The transform node
holds ``M`` in RAS as its transform to parent, so a bone model or a copy of the segmentation
placed under it shows where the registration put the bone (the segmentation the pipeline reads
must stay with the CT: one under another transform is refused). The raw poses are kept as node
attributes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from MSKdeXTraining.errors import InputError
from MSKdeXTraining.imaging.geometry import check_pose

from .coordinates import from_vtk_matrix, lps_to_ras_transform, ras_to_lps_transform, to_vtk_matrix

if TYPE_CHECKING:
    from slicer import vtkMRMLLinearTransformNode, vtkMRMLScene

REFERENCE_ATTRIBUTE = "MSKdeX.ReferencePose"
GC_ATTRIBUTE = "MSKdeX.GradientCorrelation"
ACCEPTED_ATTRIBUTE = "MSKdeX.Accepted"


#: Name prefix of a registration's nodes: its pose transforms and aligned bone DRR layers.
ALIGNED_PREFIX = "MSKdeX aligned"


def pose_node_name(body: str) -> str:
    """Name of the transform node holding the registered pose of ``body`` (e.g. ``pelvis``)."""
    return f"{ALIGNED_PREFIX} {body} pose"


def pose_to_transform_node(pose: np.ndarray, reference_pose: np.ndarray, scene: vtkMRMLScene, name: str,
                           gc: float | None = None) -> vtkMRMLLinearTransformNode:
    """Create or update (by ``name``) a linear transform node for ``pose`` relative to
    ``reference_pose`` (both 4x4 world LPS -> camera, mm; the node's matrix is the motion from
    the reference, which the user may edit), recording the reference and ``gc`` (the
    registration's gradient correlation) as attributes, not accepted; returns the node."""
    pose, reference_pose = check_pose(pose, name), check_pose(reference_pose, name)
    motion_lps = np.linalg.inv(reference_pose) @ pose
    node = scene.GetFirstNodeByName(name) or scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(to_vtk_matrix(lps_to_ras_transform(motion_lps)))
    node.SetAttribute(REFERENCE_ATTRIBUTE, json.dumps(reference_pose.tolist()))
    node.SetAttribute(ACCEPTED_ATTRIBUTE, "0")
    if gc is not None:
        node.SetAttribute(GC_ATTRIBUTE, repr(float(gc)))
    return node


def accept_pose(node: vtkMRMLLinearTransformNode) -> None:
    """Mark the pose of ``node`` as accepted by the user (a femur starts only from an accepted pelvis)."""
    node.SetAttribute(ACCEPTED_ATTRIBUTE, "1")


def is_accepted(node: vtkMRMLLinearTransformNode) -> bool:
    """Whether the user accepted the pose of ``node`` (every registration resets it)."""
    return node.GetAttribute(ACCEPTED_ATTRIBUTE) == "1"


def pose_from_transform_node(node: vtkMRMLLinearTransformNode | None) -> np.ndarray:
    """The world->camera pose (4x4, LPS mm) a transform node stands for (after any user edit)."""
    text = node.GetAttribute(REFERENCE_ATTRIBUTE) if node is not None else None
    if not text:
        raise InputError(f"transform {node.GetName() if node else None!r}: not a MSKdeX bone pose "
                         f"(attribute {REFERENCE_ATTRIBUTE} missing)")
    matrix = to_vtk_matrix(np.eye(4))
    node.GetMatrixTransformToParent(matrix)
    return np.array(json.loads(text)) @ ras_to_lps_transform(from_vtk_matrix(matrix))


