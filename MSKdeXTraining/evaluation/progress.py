"""A tqdm bar driven by the library's ``progress(fraction, message)`` callbacks (CLI only)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def progress_bar(desc: str) -> Iterator[Callable[[float, str], None]]:
    """Yield a callback that moves a 0-100 % bar and shows the latest message."""
    with tqdm(total=100, desc=desc, unit="%", bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}",
              dynamic_ncols=True) as bar:
        def update(fraction: float, message: str) -> None:
            bar.n = round(100 * min(max(fraction, 0.0), 1.0), 1)
            bar.set_postfix_str(message[:60], refresh=False)
            bar.refresh()
        yield update
