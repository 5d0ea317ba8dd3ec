"""Filling MRML table nodes: text columns and numeric columns with their unit and description."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import vtk

if TYPE_CHECKING:
    from slicer import vtkMRMLScene, vtkMRMLTableNode


def empty_table(scene: vtkMRMLScene, name: str, node: vtkMRMLTableNode | None = None) -> vtkMRMLTableNode:
    """``node`` (or a new ``vtkMRMLTableNode`` called ``name`` in ``scene``) with its table cleared."""
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    node.GetTable().Initialize()
    return node


def add_text_column(node: vtkMRMLTableNode, name: str, values: Iterable) -> None:
    """Append a string column."""
    array = vtk.vtkStringArray()
    array.SetName(name)
    for v in values:
        array.InsertNextValue(str(v))
    node.GetTable().AddColumn(array)


def add_number_column(node: vtkMRMLTableNode, name: str, values: Iterable, unit: str = "", description: str = "",
                      title: str | None = None) -> None:
    """Append a float column (None becomes NaN) with its unit label, description and title,
    which Slicer saves in the table's schema file."""
    array = vtk.vtkDoubleArray()
    array.SetName(name)
    for v in values:
        array.InsertNextValue(float("nan") if v is None else float(v))
    node.GetTable().AddColumn(array)
    node.SetColumnDescription(name, description)
    if unit:
        node.SetColumnUnitLabel(name, unit)
    if title:
        node.SetColumnTitle(name, title)
