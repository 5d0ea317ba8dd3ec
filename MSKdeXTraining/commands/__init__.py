"""Subcommands of the ``mskdex`` CLI, one module each (see :mod:`MSKdeXTraining.cli`)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from ..progress import Progress


@contextmanager
def progress_bar(desc: str, leave: bool = True) -> Iterator[Progress]:
    """Yield a ``progress(fraction, message)`` callback that moves a 0-100 % tqdm bar and shows
    the latest message (the one bar format the Slicer module parses from a child process).

    The bar is drawn at the first call, so an input refused before any work starts leaves no
    bar above its error."""
    from tqdm import tqdm

    bar = None

    def update(fraction: float, message: str) -> None:
        nonlocal bar
        percent = round(100 * min(max(fraction, 0.0), 1.0), 1)
        if bar is None:  # drawn once, with this report
            bar = tqdm(total=100, initial=percent, postfix=message, desc=desc, unit="%", dynamic_ncols=True,
                       leave=leave, bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")
            return
        bar.n = percent
        bar.set_postfix_str(message, refresh=False)
        bar.refresh()
    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def positive_int(text: str) -> int:
    """argparse type of a count option such as ``--workers``: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
