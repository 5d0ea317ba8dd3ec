"""View layouts that show a detector image (radiograph, DRR) face on.

A radiograph or DRR node is a volume one slice thick: only the slice view whose plane is the
film's shows it, the other two cut it into a line. :func:`show_film_layout` picks that view
from the node's geometry (Slicer's coronal Green view for a film placed by MSKdeX, whatever
plane one loaded by Slicer itself lies in) and switches the scene's layout node to that view
alone, or to it beside the results table and bar chart (:func:`register_layouts` adds those
layouts). MRML only: no Qt, no layout manager.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from slicer import vtkMRMLLayoutNode

from .coordinates import world_directions

if TYPE_CHECKING:
    from slicer import vtkMRMLScene, vtkMRMLVolumeNode

#: Slice view whose default plane is normal to each RAS axis (R, A, S), as Slicer names them.
VIEW_BY_NORMAL = ("Yellow", "Green", "Red")
#: Slicer's default orientation, label and colour of each slice view.
VIEW_STYLE = {"Red": ("Axial", "R", "#F34A33"), "Yellow": ("Sagittal", "Y", "#EDD54C"),
              "Green": ("Coronal", "G", "#6EB04B")}
#: Slicer's built-in layouts of one slice view.
ONE_UP = {"Red": vtkMRMLLayoutNode.SlicerLayoutOneUpRedSliceView,
          "Yellow": vtkMRMLLayoutNode.SlicerLayoutOneUpYellowSliceView,
          "Green": vtkMRMLLayoutNode.SlicerLayoutOneUpGreenSliceView}
#: MSKdeX's results layouts (the film's view beside a table over a plot), one per view; ids
#: above Slicer's user range start (vtkMRMLLayoutNode.SlicerLayoutUserView = 100).
RESULTS_LAYOUT = {"Red": 5301, "Yellow": 5302, "Green": 5303}


def film_view(node: vtkMRMLVolumeNode) -> str:
    """Name of the slice view (Red, Yellow, Green) whose plane lies nearest the one-slice
    ``node``'s, as the views show it (under its transforms)."""
    directions = world_directions(node)
    normal = np.cross(directions[:, 0], directions[:, 1])  # the k axis may be missing or skewed
    return VIEW_BY_NORMAL[int(np.argmax(np.abs(normal)))]


def results_layout_xml(view: str) -> str:
    """Layout description: slice view ``view`` (3/5 of the width) beside Slicer's first table
    view over its first plot view."""
    orientation, label, colour = VIEW_STYLE[view]
    return (
        '<layout type="horizontal" split="true">'
        f' <item splitSize="600"><view class="vtkMRMLSliceNode" singletontag="{view}">'
        f'  <property name="orientation" action="default">{orientation}</property>'
        f'  <property name="viewlabel" action="default">{label}</property>'
        f'  <property name="viewcolor" action="default">{colour}</property>'
        ' </view></item>'
        ' <item splitSize="400"><layout type="vertical" split="true">'
        '  <item><view class="vtkMRMLTableViewNode" singletontag="TableView1">'
        '   <property name="viewlabel" action="default">T</property></view></item>'
        '  <item><view class="vtkMRMLPlotViewNode" singletontag="PlotView1">'
        '   <property name="viewlabel" action="default">P</property></view></item>'
        ' </layout></item>'
        '</layout>')


def register_layouts(scene: vtkMRMLScene) -> None:
    """Add MSKdeX's results layouts (:data:`RESULTS_LAYOUT`) to the scene's layout node, if it has
    one and they are not there yet (a scene saved with one of them shown then reopens with it)."""
    layout_node = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    for view, layout in RESULTS_LAYOUT.items() if layout_node is not None else ():
        if not layout_node.IsLayoutDescription(layout):
            layout_node.AddLayoutDescription(layout, results_layout_xml(view))


def show_film_layout(scene: vtkMRMLScene, film: vtkMRMLVolumeNode, results: bool | None = None) -> str | None:
    """Switch the scene's layout to the slice view showing ``film`` face on: beside the table and
    plot views if ``results``; alone if ``results`` is False (a new film: another patient's
    results are not shown beside it); with None, as it is if that view's results layout is shown
    (a DRR layer over the same film), else alone. Returns the view's name; None, changing
    nothing, where the scene has no layout node (headless)."""
    layout_node = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layout_node is None:
        return None
    register_layouts(scene)
    view = film_view(film)
    keep = results is None and layout_node.GetViewArrangement() == RESULTS_LAYOUT[view]
    layout_node.SetViewArrangement(RESULTS_LAYOUT[view] if results or keep else ONE_UP[view])
    return view
