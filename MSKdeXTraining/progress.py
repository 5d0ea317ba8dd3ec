"""The progress callback every long step accepts."""

from __future__ import annotations

from collections.abc import Callable

#: ``progress(fraction, message)``: the fraction done (0-1) and what is being done.
Progress = Callable[[float, str], None]


def silent(fraction: float, message: str) -> None:
    """A progress callback that shows nothing (a step's default)."""


def part(progress: Progress, start: float, span: float, prefix: str = "") -> Progress:
    """The callback of a sub-step that takes ``span`` of ``progress`` from ``start``: its fraction
    f is reported as ``start + span * f``, its messages after ``prefix``."""
    return lambda fraction, message: progress(start + span * fraction, prefix + message)
