"""The per-object results as a table node (units in column names and properties) and a bar chart.

The columns are the backend's, in its order (:data:`~MSKdeXTraining.decomposition_table.TABLE_COLUMNS`,
as in its CSV): ``object``, ``kind`` (muscle/bone), ``volume_cm3`` with its calibrated
interval ``volume_low_cm3`` / ``volume_high_cm3`` (NaN when the model has no calibration, or
for an object with too few held-out patients) and ``volume_sd_cm3``, ``mass_g`` (lean mass for
muscles, bone mass for bones) with ``mass_low_g`` / ``mass_high_g`` and ``mass_sd_g`` (the SDs
are the spread over test-time augmentations). This module adds what the Slicer table shows of
each numeric column (:data:`NUMBER_COLUMNS`): its unit (``cm3``/``g``), a title and a
description, which Slicer saves in the table's schema file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import slicer

from MSKdeXTraining.calibration import LEVEL
from MSKdeXTraining.decomposition_table import TABLE_COLUMNS
from MSKdeXTraining.errors import InputError

from .table_nodes import add_number_column, add_text_column, empty_table

if TYPE_CHECKING:
    from slicer import vtkMRMLPlotChartNode, vtkMRMLScene, vtkMRMLTableNode

    from MSKdeXTraining.ood import OODResult

_LEVEL = f"{100 * LEVEL:.0f} %"
_INTERVAL = (f"of the {_LEVEL} prediction interval (calibrated on the model's held-out cases; marginal "
             "over patients; not for an out-of-distribution film; without the error of an assumed "
             "magnification or a pixel spacing given by hand)")
#: The text columns of the backend's table; every other column is numeric.
TEXT_COLUMNS = ("object", "kind")
#: (title, unit, description) of each numeric column of the backend's table, by name.
NUMBER_COLUMNS = {
    "volume_cm3": ("Volume", "cm3", "Object volume estimated from its VDRR"),
    "volume_low_cm3": (f"Volume {_LEVEL} low", "cm3", f"Lower end {_INTERVAL} of the volume"),
    "volume_high_cm3": (f"Volume {_LEVEL} high", "cm3", f"Upper end {_INTERVAL} of the volume"),
    "volume_sd_cm3": ("Volume TTA SD", "cm3", "Spread of the volume over test-time augmentations"),
    "mass_g": ("Mass (lean muscle / bone)", "g", "Lean muscle mass (muscles) or bone mass (bones) from the MDRR"),
    "mass_low_g": (f"Mass {_LEVEL} low", "g", f"Lower end {_INTERVAL} of the mass"),
    "mass_high_g": (f"Mass {_LEVEL} high", "g", f"Upper end {_INTERVAL} of the mass"),
    "mass_sd_g": ("Mass TTA SD", "g", "Spread of the mass over test-time augmentations"),
}
#: The column :func:`results_chart` shows.
CHART_COLUMN = "mass_g"


def table_columns() -> tuple[str, ...]:
    """The backend's :data:`~MSKdeXTraining.decomposition_table.TABLE_COLUMNS`, once checked
    that this module describes each of them (:data:`TEXT_COLUMNS`, :data:`NUMBER_COLUMNS`) and
    no other."""
    described = set(TEXT_COLUMNS) | set(NUMBER_COLUMNS)
    if set(TABLE_COLUMNS) != described:
        raise RuntimeError(f"MSKdeXLib.results_table describes the columns {sorted(described)}, but the backend's "
                           f"table has {list(TABLE_COLUMNS)}: update TEXT_COLUMNS / NUMBER_COLUMNS")
    return TABLE_COLUMNS


def results_table(rows: Sequence[Mapping], scene: vtkMRMLScene, name: str,
                  node: vtkMRMLTableNode | None = None) -> vtkMRMLTableNode:
    """Fill ``node`` (or a new table node called ``name``) with one row per object and the
    columns of :func:`table_columns`, with their titles, units and descriptions; returns it.

    Each row needs every column's key; interval and SD values may be None (written as NaN).
    """
    columns = table_columns()
    missing = [c for c in columns if any(c not in r for r in rows)]
    if missing:
        raise InputError(f"{name}: result rows lack the fields {missing}; expected {list(columns)}")
    node = empty_table(scene, name, node)
    for column in columns:
        values = [r[column] for r in rows]
        if column in TEXT_COLUMNS:
            add_text_column(node, column, values)
        else:
            title, unit, description = NUMBER_COLUMNS[column]
            add_number_column(node, column, values, unit, description, f"{title} ({unit})")
    node.SetUseColumnTitleAsColumnHeader(True)
    node.Modified()
    return node


def table_rows(node: vtkMRMLTableNode) -> list[dict]:
    """The rows of a results table node as dicts (numbers as float)."""
    table = node.GetTable()
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for c in range(table.GetNumberOfColumns()):
            column = table.GetColumn(c)
            value = column.GetValue(r)
            row[column.GetName()] = str(value) if column.GetName() in TEXT_COLUMNS else float(value)
        rows.append(row)
    return rows


def results_chart(table_node: vtkMRMLTableNode, scene: vtkMRMLScene, name: str,
                  node: vtkMRMLPlotChartNode | None = None) -> vtkMRMLPlotChartNode:
    """A bar chart of :data:`CHART_COLUMN` (the mass, g) per object of ``table_node``, in
    ``node`` (or a new chart node called ``name``); returns the chart node."""
    series_name = f"{name} series"
    series = scene.GetFirstNodeByName(series_name) or scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", series_name)
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetXColumnName("object")
    series.SetLabelColumnName("object")
    series.SetYColumnName(CHART_COLUMN)
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    node.RemoveAllPlotSeriesNodeIDs()
    node.AddAndObservePlotSeriesNodeID(series.GetID())
    title, unit, _ = NUMBER_COLUMNS[CHART_COLUMN]
    node.SetTitle(f"{title} ({unit})")
    node.SetXAxisTitle("object")
    node.SetYAxisTitle(f"{title} ({unit})")
    return node


def ood_text(ood: OODResult) -> str:
    """The out-of-distribution verdict of a decomposition for the panel: the flag's reasons,
    then every note (assumed values, checks not made, missing intervals)."""
    flags, notes = ood.split()
    text = ("Out of distribution: " + "; ".join(flags)) if ood.flag else "In distribution."
    return text + "".join(f"\nNote: {n}" for n in notes)
