"""The per-object results as a table node (units in column names and properties) and a bar chart.

Columns (as in the backend's CSV): ``object``, ``kind`` (muscle/bone), ``volume_cm3`` with
its calibrated interval ``volume_low_cm3`` / ``volume_high_cm3`` (NaN when the model has no
calibration, or for an object with too few held-out cases) and ``volume_sd_cm3``, ``mass_g``
(lean mass for muscles, bone mass for bones) with ``mass_low_g`` / ``mass_high_g`` and
``mass_sd_g`` (the SDs are the spread over test-time augmentations). Each numeric column
carries its unit (``cm3``/``g``), a title and a description, which Slicer saves in the
table's schema file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import slicer

from MSKdeXTraining.calibration import LEVEL
from MSKdeXTraining.errors import InputError

from .table_nodes import add_number_column, add_text_column, empty_table

#: (column, title, unit, description) of the numeric columns, in order.
_LEVEL = f"{100 * LEVEL:.0f} %"
_INTERVAL = (f"of the {_LEVEL} prediction interval (calibrated on the model's held-out cases; marginal "
             "over patients; not for an out-of-distribution film; without the error of an assumed "
             "magnification or a pixel spacing given by hand)")
NUMERIC_COLUMNS = (
    ("volume_cm3", "Volume", "cm3", "Object volume estimated from its VDRR"),
    ("volume_low_cm3", f"Volume {_LEVEL} low", "cm3", f"Lower end {_INTERVAL} of the volume"),
    ("volume_high_cm3", f"Volume {_LEVEL} high", "cm3", f"Upper end {_INTERVAL} of the volume"),
    ("volume_sd_cm3", "Volume TTA SD", "cm3", "Spread of the volume over test-time augmentations"),
    ("mass_g", "Mass (lean muscle / bone)", "g", "Lean muscle mass (muscles) or bone mass (bones) from the MDRR"),
    ("mass_low_g", f"Mass {_LEVEL} low", "g", f"Lower end {_INTERVAL} of the mass"),
    ("mass_high_g", f"Mass {_LEVEL} high", "g", f"Upper end {_INTERVAL} of the mass"),
    ("mass_sd_g", "Mass TTA SD", "g", "Spread of the mass over test-time augmentations"),
)
TEXT_COLUMNS = ("object", "kind")
COLUMNS = TEXT_COLUMNS + tuple(c[0] for c in NUMERIC_COLUMNS)  # = inference.TABLE_COLUMNS (tested)


def results_table(rows: Sequence[Mapping], scene, name: str, node=None):
    """Create or fill a table node with one row per object; returns the node.

    Each row needs the keys :data:`COLUMNS`; interval and SD values may be None (written as NaN).
    """
    missing = [c for c in COLUMNS if any(c not in r for r in rows)]
    if missing:
        raise InputError(f"{name}: result rows lack the fields {missing}; expected {list(COLUMNS)}")
    node = empty_table(scene, name, node)
    for column in TEXT_COLUMNS:
        add_text_column(node, column, [r[column] for r in rows])
    for column, title, unit, description in NUMERIC_COLUMNS:
        add_number_column(node, column, [r[column] for r in rows], unit, description, f"{title} ({unit})")
    node.SetUseColumnTitleAsColumnHeader(True)
    node.Modified()
    return node


def table_rows(node) -> list[dict]:
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


def results_chart(table_node, scene, name: str, column: str = "mass_g", node=None):
    """A bar chart node of ``column`` per object of ``table_node``; returns the chart node."""
    if column not in dict((c[0], c) for c in NUMERIC_COLUMNS):
        raise InputError(f"{name}: cannot chart column {column!r}; choose one of "
                         f"{[c[0] for c in NUMERIC_COLUMNS]}")
    series_name = f"{name} series"
    series = scene.GetFirstNodeByName(series_name) or scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", series_name)
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetXColumnName("object")
    series.SetLabelColumnName("object")
    series.SetYColumnName(column)
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    node.RemoveAllPlotSeriesNodeIDs()
    node.AddAndObservePlotSeriesNodeID(series.GetID())
    title = dict((c[0], f"{c[1]} ({c[2]})") for c in NUMERIC_COLUMNS)[column]
    node.SetTitle(title)
    node.SetXAxisTitle("object")
    node.SetYAxisTitle(title)
    return node


def ood_text(ood) -> str:
    """The out-of-distribution verdict of a decomposition (an ``OODResult``) for the panel: the
    flag's reasons, then every note (assumed values, checks not made, missing intervals)."""
    flags, notes = ood.split()
    text = ("Out of distribution: " + "; ".join(flags)) if ood.flag else "In distribution."
    return text + "".join(f"\nNote: {n}" for n in notes)


def write_csv(rows: Sequence[Mapping], path: str | Path, ood: bool) -> Path:
    """Write the rows (e.g. :func:`table_rows` of a results table) as ``mskdex decompose``
    writes its CSV (:func:`~MSKdeXTraining.inference.write_table_csv`), atomically."""
    from MSKdeXTraining.inference import write_table_csv

    return write_table_csv([dict(r) for r in rows], path, ood)
