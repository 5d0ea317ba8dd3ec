"""The progress callback every long step accepts."""

from __future__ import annotations

from collections.abc import Callable

#: ``progress(fraction, message)``: the fraction done (0-1) and what is being done.
Progress = Callable[[float, str], None]
