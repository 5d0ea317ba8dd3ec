"""Training checkpoints as safetensors + JSON (format ``mskdex-checkpoint`` v1).

A checkpoint is any nested structure of dicts, lists, numbers, strings and tensors (model
and optimiser state dicts, scheduler state, RNG states, image pools). Tensors go to
``epoch_XXXX.safetensors`` under their path in the structure; the rest goes to
``epoch_XXXX.json`` with ``{"__tensor__": key}`` placeholders. The JSON is written last, so
a checkpoint exists only when both files are complete. Loading never unpickles. A run folder
keeps its :data:`KEEP` newest checkpoints.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from ..errors import MSKdeXWarning
from ..fileio import read_format_json, write_json
from ..modelio import ModelFormatError, read_safetensors, write_safetensors

FORMAT = "mskdex-checkpoint"
VERSION = 1
_NAME = re.compile(r"^epoch_(\d{4,})\.json$")

#: Checkpoints a run keeps: the newest, which a resume needs, and the one before, which
#: :func:`load_newest_checkpoint` falls back to when the newest is damaged. The paper
#: configuration's take 1.8 GB each once the image pools are full (0.35 GB of networks and
#: AdamW moments, 1.47 GB of pools: 50 DRR stacks (27, 512, 512) and 50 radiographs in fp32).
KEEP = 2


def split_tensors(obj: object, prefix: str = "", tensors: dict[str, torch.Tensor] | None = None
                  ) -> tuple[object, dict[str, torch.Tensor]]:
    """(JSON-able structure, {key: tensor}) for a nested structure containing tensors."""
    tensors = {} if tensors is None else tensors
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}, tensors
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: split_tensors(v, f"{prefix}.{k}", tensors)[0] for k, v in obj.items()}, tensors
        return {"__items__": [[k, split_tensors(v, f"{prefix}.{k}", tensors)[0]]
                              for k, v in obj.items()]}, tensors
    if isinstance(obj, tuple):
        return {"__tuple__": [split_tensors(v, f"{prefix}.{i}", tensors)[0]
                              for i, v in enumerate(obj)]}, tensors
    if isinstance(obj, list):
        return [split_tensors(v, f"{prefix}.{i}", tensors)[0] for i, v in enumerate(obj)], tensors
    return obj, tensors


def join_tensors(obj: object, tensors: dict[str, torch.Tensor]) -> object:
    """Inverse of :func:`split_tensors`."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__items__"}:
            return {k: join_tensors(v, tensors) for k, v in obj["__items__"]}
        if set(obj) == {"__tuple__"}:
            return tuple(join_tensors(v, tensors) for v in obj["__tuple__"])
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


def save_checkpoint(folder: str | Path, epoch: int, state: dict) -> Path:
    """Write ``folder/epoch_XXXX.{safetensors,json}``; returns the JSON path."""
    folder = Path(folder)
    structure, tensors = split_tensors(state)
    stem = f"epoch_{epoch:04d}"
    write_safetensors(folder / f"{stem}.safetensors", tensors)
    return write_json(folder / f"{stem}.json", {"format": FORMAT, "version": VERSION, "epoch": epoch,
                                                 "tensors": f"{stem}.safetensors", "state": structure})


def _checkpoints(folder: str | Path) -> list[Path]:
    """JSON paths of the checkpoints in ``folder``, oldest epoch first."""
    found = sorted((int(m.group(1)), p) for p in Path(folder).glob("epoch_*.json")
                   if (m := _NAME.match(p.name)))
    return [p for _, p in found]


def latest_checkpoint(folder: str | Path) -> Path | None:
    """JSON path of the checkpoint with the highest epoch in ``folder`` (None if none)."""
    found = _checkpoints(folder)
    return found[-1] if found else None


def prune_checkpoints(folder: str | Path, keep: int = KEEP) -> list[Path]:
    """Delete all but the ``keep`` (>= 1) newest checkpoints in ``folder``, and the temporary
    files of checkpoint writes killed midway (up to GBs each); returns the JSON paths deleted.
    Each JSON goes first, so a prune cut short leaves no checkpoint without its tensors. Call it
    when no checkpoint is being written to ``folder``."""
    old = _checkpoints(folder)[:-max(keep, 1)]
    for path in old:
        path.unlink()
        path.with_suffix(".safetensors").unlink(missing_ok=True)
    for tmp in Path(folder).glob(".epoch_*.tmp.*"):  # fileio.atomic_path's temporary names
        tmp.unlink(missing_ok=True)
    return old


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; refuses unknown formats."""
    path = Path(path)
    head = read_format_json(path, FORMAT, VERSION, ("tensors", "state"), ModelFormatError)
    if not isinstance(head["tensors"], str) or Path(head["tensors"]).name != head["tensors"]:
        raise ModelFormatError(f"{path}: field 'tensors' must name a file beside it, got {head['tensors']!r}")
    tensors = read_safetensors(path.parent / head["tensors"])
    try:
        return join_tensors(head["state"], tensors)
    except KeyError as e:
        raise ModelFormatError(f"{path.parent / head['tensors']}: lacks the tensor {e}, which {path.name} "
                               "names; expected the checkpoint's own tensors file") from None


def load_newest_checkpoint(folder: str | Path) -> tuple[Path, dict]:
    """(JSON path, state) of the newest checkpoint in ``folder`` that can be read.

    A damaged one (cut short, not a checkpoint, its tensors missing) is skipped with a warning
    naming it and why; raises FileNotFoundError when there are none and ModelFormatError,
    naming each and why, when none can be read."""
    found = _checkpoints(folder)
    if not found:
        raise FileNotFoundError(f"{folder}: no checkpoints (epoch_*.json)")
    damaged = []
    for path in reversed(found):
        try:
            state = load_checkpoint(path)
        except (ModelFormatError, FileNotFoundError) as e:
            damaged.append(str(e))
            continue
        for why in damaged:
            warnings.warn(f"{why}; resuming from the older {path.name}", MSKdeXWarning, stacklevel=2)
        return path, state
    raise ModelFormatError(f"{folder}: no checkpoint can be read ({'; '.join(damaged)})")
