"""How the DRR layer nodes are named and tagged in a scene, and finding them again.

A layer is named ``<prefix> <object> <TYPE>`` and carries the attributes :data:`OBJECT_ATTRIBUTE`,
:data:`TYPE_ATTRIBUTE` and :data:`UNIT_ATTRIBUTE`. This module imports nothing of the backend, so
the panel lists a scene's layers (a saved scene's too) before *Check dependencies* has installed
PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slicer import vtkMRMLScalarVolumeNode, vtkMRMLScene

#: Name prefix of the layers of *Compute DRRs*.
DRR_PREFIX = "MSKdeX DRR"
OBJECT_ATTRIBUTE = "MSKdeX.Object"
TYPE_ATTRIBUTE = "MSKdeX.DRRType"
UNIT_ATTRIBUTE = "MSKdeX.Unit"


def layer_name(prefix: str, name: str, drr_type: str) -> str:
    """Name of the layer node of object ``name`` and ``drr_type``, e.g. ``MSKdeX DRR pelvis VDRR``."""
    return f"{prefix} {name} {drr_type.upper()}"


def layers_of(scene: vtkMRMLScene, prefix: str) -> list[vtkMRMLScalarVolumeNode]:
    """The layer nodes named and tagged with ``prefix`` in ``scene``, in the scene's order."""
    nodes = (scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()))
    return [n for n in nodes if (name := n.GetAttribute(OBJECT_ATTRIBUTE)) and (t := n.GetAttribute(TYPE_ATTRIBUTE))
            and n.GetName() == layer_name(prefix, name, t)]


def drr_objects(scene: vtkMRMLScene) -> list[str]:
    """The objects that have layers of *Compute DRRs* in ``scene`` (computed now or in a saved
    scene loaded since), each once, in the scene's order."""
    return list(dict.fromkeys(n.GetAttribute(OBJECT_ATTRIBUTE) for n in layers_of(scene, DRR_PREFIX)))
