"""The one place where Slicer's RAS meets the backend's LPS (both in millimetres).

Slicer stores a volume's index -> world transform as ``IJKToRAS``; the backend
(:class:`MSKdeXTraining.imaging.volume.Volume`, SimpleITK, DICOM) uses index -> LPS. The two
differ by a flip of x and y: ``RAS = diag(-1, -1, 1) @ LPS``. Every conversion of a
position, direction, affine or rigid transform goes through this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import vtk

from MSKdeXTraining.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from slicer import vtkMRMLTransformableNode, vtkMRMLVolumeNode

#: 4x4 change of frame LPS -> RAS (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras_transform(transform_lps: np.ndarray) -> np.ndarray:
    """A 4x4 rigid motion written in LPS coordinates, rewritten in RAS coordinates."""
    return LPS_TO_RAS @ np.asarray(transform_lps, float) @ LPS_TO_RAS


def ras_to_lps_transform(transform_ras: np.ndarray) -> np.ndarray:
    """A 4x4 rigid motion written in RAS coordinates, rewritten in LPS coordinates."""
    return lps_to_ras_transform(transform_ras)


def to_vtk_matrix(m: np.ndarray) -> vtk.vtkMatrix4x4:
    """A vtkMatrix4x4 holding the 4x4 numpy matrix ``m``."""
    out = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(m[r, c]))
    return out


def from_vtk_matrix(m: vtk.vtkMatrix4x4) -> np.ndarray:
    """The 4x4 numpy matrix of a vtkMatrix4x4."""
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def set_node_geometry(node: vtkMRMLVolumeNode, spacing: Sequence[float] | np.ndarray,
                      origin_lps: Sequence[float] | np.ndarray, direction_lps: np.ndarray) -> None:
    """Give a volume node the LPS geometry of a backend image (spacing/origin in (i, j, k) order, mm;
    ``direction_lps`` columns are the i, j, k axes in LPS)."""
    spacing = np.asarray(spacing, float).reshape(3)
    direction_ras = LPS_TO_RAS[:3, :3] @ np.asarray(direction_lps, float).reshape(3, 3)
    node.SetSpacing(*spacing.tolist())
    node.SetOrigin(*(LPS_TO_RAS[:3, :3] @ np.asarray(origin_lps, float).reshape(3)).tolist())
    node.SetIJKToRASDirections(*[float(direction_ras[r, c]) for r in range(3) for c in range(3)])


def node_geometry(node: vtkMRMLVolumeNode) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(spacing (i, j, k) mm, origin LPS mm, direction LPS 3x3) of a volume node."""
    spacing = np.array(node.GetSpacing(), float)
    origin_ras = np.array(node.GetOrigin(), float)
    direction_ras = np.zeros((3, 3))
    node.GetIJKToRASDirections(direction_ras)
    flip = LPS_TO_RAS[:3, :3]
    return spacing, flip @ origin_ras, flip @ direction_ras


def to_world_matrix(node: vtkMRMLTransformableNode) -> np.ndarray | None:
    """The 4x4 RAS matrix of the transforms ``node`` lies under (the identity under none);
    None for a chain that is not linear (a grid or B-spline transform)."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        return None
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return from_vtk_matrix(m)


def check_untransformed(node: vtkMRMLTransformableNode, what: str) -> None:
    """Raise InputError for a ``node`` under a transform other than the identity: MSKdeX reads a
    volume in its own geometry, where the views show it moved by the transform."""
    m = to_world_matrix(node)
    if m is not None and np.allclose(m, np.eye(4), atol=1e-9):
        return
    raise InputError(f"{what} {node.GetName()!r}: it lies under transform {node.GetParentTransformNode().GetName()!r}, "
                     "which MSKdeX would not apply (it reads the voxels in their own geometry); harden the "
                     "transform (Data module: right-click the node, Harden transform) or take the node out "
                     "from under it")


def world_directions(node: vtkMRMLVolumeNode) -> np.ndarray:
    """RAS 3x3 whose columns are the i, j, k axes of a volume node as the views show it (its
    linear parent transforms applied; a non-linear chain is left out)."""
    directions = np.zeros((3, 3))
    node.GetIJKToRASDirections(directions)
    m = to_world_matrix(node)
    return directions if m is None else m[:3, :3] @ directions
