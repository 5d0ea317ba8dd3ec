"""Segmentation QC (``MSKdeXTraining.qc``) as rows and as a table node.

One row per object: volume (cm3), connected components, enclosed holes, share of the volume
in the largest component (%), flags, and a ``status``: ``failed`` (a flag that fails the
case: missing, volume_low, volume_high, sides_swapped, metal, and truncated for a muscle), ``warning``
(fragmented, holes, a truncated bone) or ``ok``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from MSKdeXTraining.qc import SegmentationQC

from .table_nodes import add_number_column, add_text_column, empty_table

if TYPE_CHECKING:
    from slicer import vtkMRMLScene, vtkMRMLTableNode

#: (column, unit, description) of the numeric columns.
NUMERIC = (
    ("volume_cm3", "cm3", "Object volume in the segmentation"),
    ("components", "", "Connected components (26-connectivity), summed over sides"),
    ("holes", "", "Enclosed background cavities"),
    ("largest_percent", "%", "Share of the volume in the largest component (smallest over sides)"),
    ("metal_cm3", "cm3", "CT voxels at or above the metal threshold near the object (blank: CT not checked)"),
)


def qc_rows(qc: SegmentationQC) -> list[dict]:
    """One dict per object: object, status, the :data:`NUMERIC` fields, flags, messages."""
    rows = []
    for name, o in qc.objects.items():
        status = "failed" if o.failing else "warning" if o.flags else "ok"
        rows.append({"object": name, "status": status, "volume_cm3": round(o.volume_cm3, 3),
                     "components": o.components, "holes": o.holes,
                     "largest_percent": round(100.0 * o.largest_fraction, 1),
                     "metal_cm3": None if o.metal_cm3 is None else round(o.metal_cm3, 3),
                     "flags": ", ".join(o.flags), "messages": "; ".join(o.messages)})
    return rows


def qc_table(qc: SegmentationQC, scene: vtkMRMLScene, name: str,
             node: vtkMRMLTableNode | None = None) -> vtkMRMLTableNode:
    """Fill ``node`` (or a new table node called ``name``) with :func:`qc_rows`, units and
    descriptions, and the attribute ``MSKdeX.QCFailed`` (1/0); returns it."""
    rows = qc_rows(qc)
    node = empty_table(scene, name, node)
    for column in ("object", "status"):
        add_text_column(node, column, [r[column] for r in rows])
    for column, unit, description in NUMERIC:
        add_number_column(node, column, [r[column] for r in rows], unit, description)
    for column in ("flags", "messages"):
        add_text_column(node, column, [r[column] for r in rows])
    node.SetAttribute("MSKdeX.QCFailed", "1" if qc.failed else "0")
    node.Modified()
    return node
