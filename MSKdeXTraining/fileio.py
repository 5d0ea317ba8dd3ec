"""Atomic file output: a reader never sees a half-written file, and inputs are never overwritten."""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import math
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError


#: ``os.link`` errors of a filesystem without hard links.
NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary name keeps the suffixes of ``path`` (writers pick the format from them).
    On error the temporary file is removed and ``path`` is left as it was.
    """
    tmp = _new_temp(Path(path))
    mode = tmp.stat().st_mode & 0o777
    try:
        yield tmp
        os.chmod(tmp, mode)  # some writers (safetensors) recreate the file as 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_temp(path: Path) -> Path:
    """A new empty file beside ``path`` (its folder made if missing), hidden, with a unique name
    that keeps the suffixes of ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp{suffix}"
        try:  # the kernel applies the process umask to 0o666, as for any new file
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in blocks: CTs are large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def staged_folder(folder: str | Path, last: str) -> Iterator[Path]:
    """Yield a hidden folder inside ``folder`` to write a set of output files into; on success
    they are moved into ``folder``, the file named ``last`` (the set's completion mark) after
    the others, so a run killed while writing leaves no mark and can simply be run again. The
    hidden folder is removed either way, and those of runs killed earlier on entry."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale(folder, ".partial-*")
    stage = folder / f".partial-{secrets.token_hex(4)}-{os.getpid()}"
    stage.mkdir()
    try:
        yield stage
        for f in sorted(stage.iterdir(), key=lambda f: (f.name == last, f.name)):
            os.replace(f, folder / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def remove_stale(folder: str | Path, pattern: str) -> None:
    """Remove the working folders in ``folder`` matching ``pattern`` (named ``...-<pid>``) of
    processes that no longer run (a run killed while writing)."""
    for stale in Path(folder).glob(pattern):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, not ours
        return True
    return True


def write_atomic(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def _finite(data: object) -> object:
    """``data`` with every non-finite float (NaN, infinity) replaced by None."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def _json_text(data: object, indent: int | None = None) -> str:
    """``data`` as strict JSON: non-finite floats (NaN, infinity) as null, never the
    non-standard ``NaN`` / ``Infinity`` tokens."""
    return json.dumps(_finite(data), indent=indent, allow_nan=False)


def as_written(data: object) -> object:
    """``data`` as :func:`write_json` writes it and ``json.loads`` reads it back (tuples as
    lists, non-finite floats as None): to compare with what was read from a file."""
    return json.loads(_json_text(data))


def write_json(path: str | Path, data: object) -> Path:
    """Write ``data`` as indented UTF-8 JSON, non-finite numbers (NaN, infinity) as null,
    atomically."""
    return write_atomic(path, lambda p: p.write_text(_json_text(data, indent=2) + "\n", encoding="utf-8"))


def create_json(path: str | Path, data: object) -> bool:
    """Write ``data`` as :func:`write_json` does, but only if ``path`` does not exist yet, in
    one step (a hard link to the finished file): of processes racing to create it, exactly one
    does, and none sees it half-written. Returns whether this call created it. On a filesystem
    without hard links (FAT, some network mounts) it is written atomically if absent, but two
    processes starting at the same moment may then both write it."""
    path = Path(path)
    tmp = _new_temp(path)
    try:
        tmp.write_text(_json_text(data, indent=2) + "\n", encoding="utf-8")
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in NO_HARD_LINKS:
            raise
        if path.exists():
            return False
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def refuse_existing(outputs: list[str | Path], inputs: list[str | Path] = (), *,
                    chosen: str = "output folder") -> None:
    """Before any work: raise FileExistsError if an output exists (results are never silently
    replaced), would overwrite one of the ``inputs``, or lies under a path that is a file.
    ``chosen`` is what the user picked, named in the advice (the folder of the outputs, or the
    output file itself)."""
    for output in map(Path, outputs):
        refuse_overwrite(output, list(inputs))
        if output.exists():
            raise FileExistsError(f"{output}: exists; choose another {chosen} or delete it "
                                  "(MSKdeX does not overwrite results)")
        blocking = blocking_file(output)  # output itself exists not, from the check above
        if blocking is not None:
            raise FileExistsError(f"{blocking}: is a file, so {output} cannot be written; choose "
                                  f"another {chosen}")


#: The top-level entries (glob patterns) that mark each kind of MSKdeX output folder, and the
#: command that makes it. A folder holding another kind's marks is never written into.
OUTPUT_KINDS = {"cohort": (("cohort.json",), "mskdex cohort or assemble"),
                "dataset": (("prepare.json", "cases"), "mskdex prepare"),
                "run": (("model.json", "checkpoints"), "mskdex train"),
                "evaluation": (("fold_*", "predictions.csv"), "mskdex evaluate"),
                "ablation": (("ablation.json", "lis*_bone*"), "mskdex ablation"),
                "decomposition": (("decomposition.json", "decomposition.csv", "decomposition_*.nii.gz",
                                   "decompositions.csv"), "mskdex decompose")}


#: The files (glob pattern) that make a folder a result of a kind whose results take their inputs'
#: names (a decomposition's folder per radiograph, e.g. ``cases/`` for ``cases.dcm``, also one
#: cut short by an interruption): such a folder is that kind's own, whatever kind its name marks.
RESULT_FILES = {"decomposition": "decomposition*"}


def marked_kind(name: str) -> str | None:
    """The kind of output folder (a key of :data:`OUTPUT_KINDS`) whose marks include the file
    or folder name ``name``, or None."""
    return next((kind for kind, (patterns, _) in OUTPUT_KINDS.items()
                 if any(fnmatch.fnmatchcase(name, p) for p in patterns)), None)


def refuse_other_kind(out: str | Path, kind: str) -> None:
    """Before writing: raise FileExistsError if the folder ``out``, to hold a ``kind`` of
    output (a key of :data:`OUTPUT_KINDS`), is a file or holds another kind's marks (e.g. a
    training run's ``--out`` that is a prepared dataset): writing there would replace or mix
    that output's files."""
    out = Path(out)
    blocking = blocking_file(out)
    if blocking is not None:
        raise FileExistsError(f"{blocking}: is a file; expected a folder for the {kind} (a new one, or one to resume)")
    for entry in sorted(out.iterdir()) if out.is_dir() else ():
        other = marked_kind(entry.name)
        if other not in (None, kind) and not _holds_results(entry, kind):
            raise FileExistsError(f"{out}: holds {entry.name}, so it is the output of {OUTPUT_KINDS[other][1]} "
                                  f"({other}); writing this {kind} there would mix the two: choose another "
                                  "output folder")


def _holds_results(entry: Path, kind: str) -> bool:
    """Whether ``entry`` is a folder holding results of ``kind`` (:data:`RESULT_FILES`), at any depth."""
    result = RESULT_FILES.get(kind)
    return result is not None and entry.is_dir() and next(entry.rglob(result), None) is not None


def blocking_file(path: str | Path) -> Path | None:
    """The first of ``path`` and its parents that exists but is not a folder (so no folder
    ``path`` can be, or be made), or None."""
    path = Path(path)
    return next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)


def refuse_overwrite(output: str | Path, inputs: list[str | Path]) -> None:
    """Raise FileExistsError if ``output`` is one of the ``inputs`` (same file on disk)."""
    out = Path(output).resolve()
    for i in inputs:
        if Path(i).resolve() == out:
            raise FileExistsError(f"{output}: output would overwrite the input {i}; choose another path")


def read_format_json(path: str | Path, fmt: str, version: int, required: tuple[str, ...] = (),
                     error: type[Exception] = InputError, missing_hint: str = "") -> dict:
    """Read a versioned MSKdeX JSON file, checking its ``format``, ``version`` and fields.

    Raises ``error`` naming the file and the field when the file is absent (adding
    ``missing_hint``) or its content does not fit.
    """
    data = read_json_object(path, (), error, missing_hint)
    if data.get("format") != fmt:
        raise error(f"{path}: field 'format' must be {fmt!r}, got {data.get('format')!r}")
    if data.get("version") != version:
        raise error(f"{path}: field 'version' must be {version}, got {data.get('version')!r}")
    missing = [k for k in required if k not in data]
    if missing:
        raise error(f"{path}: missing field(s) {missing}")
    return data


def check_utf8_path(path: str | Path, what: str = "") -> None:
    """InputError unless ``path`` is valid UTF-8 text: SimpleITK, which reads and writes the
    images, aborts the whole process on another (e.g. a Latin-1 folder name from an old archive);
    ``what`` names where the path came from."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{what + ' ' if what else ''}{str(path)!r}: the path is not valid UTF-8 (a folder or file "
                         "name from another system's encoding?); rename it") from None


def read_json_object(path: str | Path, required: tuple[str, ...] = (),
                     error: type[Exception] = InputError, missing_hint: str = "") -> dict:
    """Read a JSON object with the ``required`` fields; raises ``error`` naming the file (and
    the field) when it is absent (adding ``missing_hint``), not JSON or lacks a field."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found{'; ' + missing_hint if missing_hint else ''}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in required if k not in data]
    if missing:
        raise error(f"{path}: missing field(s) {missing}")
    return data
