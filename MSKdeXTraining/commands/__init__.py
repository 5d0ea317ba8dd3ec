"""Subcommands of the ``mskdex`` CLI, one module each (see :mod:`MSKdeXTraining.cli`)."""

from __future__ import annotations

from ..errors import InputError


def pixel_spacing_option(values: list[float] | None) -> tuple[float, float] | None:
    """``--pixel-spacing`` (one value, or row and column; mm) as (row, column), None if absent."""
    if values is None:
        return None
    if len(values) not in (1, 2):
        raise InputError(f"--pixel-spacing takes one or two values (mm), got {len(values)}")
    return (float(values[0]), float(values[-1]))
