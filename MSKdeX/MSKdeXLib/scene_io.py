"""Save an MRML scene with its data files (storage nodes) and load it back, without the application.

``save_scene`` writes ``<folder>/<name>.mrml`` plus one file per storable node (volumes .nrrd,
segmentations .seg.nrrd, tables .tsv + .schema.tsv, transforms .h5), the layout Slicer's
"Save" produces; Slicer opens the folder's .mrml as any saved scene.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import slicer

from MSKdeXTraining.fileio import blocking_file

if TYPE_CHECKING:
    from slicer import vtkMRMLNode, vtkMRMLScene


def check_scene_folder(folder: str | Path) -> None:
    """Before any work: raise FileExistsError unless ``folder`` is new or an empty folder (a
    scene saved into another one would mix with, or overwrite, its files)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder}: is a file; expected a new or empty folder for the scene")
    if folder.is_dir() and any(folder.iterdir()):
        raise FileExistsError(f"{folder}: folder not empty; choose a new or empty folder for the scene "
                              "(MSKdeX does not overwrite files)")
    blocking = blocking_file(folder)  # folder itself is none, from the check above
    if blocking is not None:
        raise FileExistsError(f"{blocking}: is a file, so the scene folder {folder} cannot be made")


def save_scene(scene: vtkMRMLScene, folder: str | Path, name: str = "scene") -> Path:
    """Write every storable node's data and the .mrml file into ``folder``; returns the .mrml path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    nodes = scene.GetNodesByClass("vtkMRMLStorableNode")
    nodes.UnRegister(None)  # returned with a reference the caller owns (vtkMRMLScene.h)
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetHideFromEditors() and node.GetStorageNode() is None:
            continue  # application-internal nodes (default colour tables...)
        if not _has_data(node):
            continue
        storage = node.GetStorageNode()
        if storage is None:
            if not node.AddDefaultStorageNode():
                raise OSError(f"{node.GetName()}: Slicer has no storage for {node.GetClassName()}")
            storage = node.GetStorageNode()
        stem = _unique(re.sub(r"[^A-Za-z0-9_.-]+", "_", node.GetName()) or node.GetID(), used)
        storage.SetFileName(str(folder / f"{stem}.{storage.GetDefaultWriteFileExtension()}"))
        if not storage.WriteData(node):
            raise OSError(f"{node.GetName()}: writing {storage.GetFileName()} failed")
    scene.SetRootDirectory(str(folder))
    path = folder / f"{name}.mrml"
    scene.SetURL(str(path))
    if not scene.Commit():
        raise OSError(f"{path}: writing the scene failed")
    return path


def load_scene(path: str | Path, scene: vtkMRMLScene | None = None) -> vtkMRMLScene:
    """Read a .mrml file and its data files into ``scene`` (a new scene when None); returns it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: scene file not found")
    scene = scene or slicer.vtkMRMLScene()
    scene.SetRootDirectory(str(path.parent))
    scene.SetURL(str(path))
    if not scene.Connect():
        raise OSError(f"{path}: cannot be read as an MRML scene")
    return scene


def _has_data(node: vtkMRMLNode) -> bool:
    if node.IsA("vtkMRMLVolumeNode"):
        return node.GetImageData() is not None
    if node.IsA("vtkMRMLSegmentationNode"):
        return node.GetSegmentation().GetNumberOfSegments() > 0
    return node.IsA("vtkMRMLTableNode") or node.IsA("vtkMRMLTransformNode")


def _unique(stem: str, used: set[str]) -> str:
    out, k = stem, 1
    while out in used:
        k += 1
        out = f"{stem}_{k}"
    used.add(out)
    return out
