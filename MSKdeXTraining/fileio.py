"""Atomic file output: a reader never sees a half-written file, and inputs are never overwritten."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary name keeps the suffixes of ``path`` (writers pick the format from them).
    On error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_json(path: str | Path, data: object) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return write_atomic(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n"))


def refuse_overwrite(output: str | Path, inputs: list[str | Path]) -> None:
    """Raise FileExistsError if ``output`` is one of the ``inputs`` (same file on disk)."""
    out = Path(output).resolve()
    for i in inputs:
        if Path(i).resolve() == out:
            raise FileExistsError(f"{output}: output would overwrite the input {i}; choose another path")
