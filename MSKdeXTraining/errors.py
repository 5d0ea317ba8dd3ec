"""The exception types for input MSKdeX cannot use (bad files, fields, values), its warning type,
and the raising again of warnings recorded elsewhere (in a worker process, under a case's name).

Messages name the file, the field and what was expected. The CLI prints them as one line;
the Slicer module shows them in an error dialog. Subclasses say which kind of input it was.
"""

import errno
import pickle
import sys
import warnings
from collections.abc import Iterable

#: A recorded warning that pickles: (message, category, file, line, module name or None).
Recorded = tuple[str, type[Warning], str, int, str | None]


class InputError(ValueError):
    """Input data that MSKdeX cannot use; the message names the file and the field."""


class MSKdeXWarning(UserWarning):
    """Something MSKdeX assumed or did in place of what the input lacked (e.g. a source distance);
    the CLI prints it as one line naming the command."""


class TrainingDiverged(RuntimeError):
    """A training whose losses became NaN or infinite (too high a learning rate or loss weight for
    the data); the message names the epoch, the terms and the last checkpoint kept."""


class WorkerLost(RuntimeError):
    """A worker process that ended abruptly (killed from outside, e.g. by the out-of-memory killer);
    the message names the job and what to do."""


#: What bad input raises (CLI exit code 2, a one-line message, no traceback): InputError, and the
#: OS errors of a missing input, an output that exists or would overwrite an input, a path of the
#: wrong kind or without permission; a training that diverged on its config and data; and a
#: worker process lost to the machine (too many workers for its memory).
INPUT_ERRORS = (InputError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
                PermissionError, TrainingDiverged, WorkerLost)

#: errno values of an output that cannot be written: a read-only file system, a full disk or
#: quota. Reported like :data:`INPUT_ERRORS` (nothing is half-written: writes are atomic).
STORAGE_ERRNOS = (errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def recorded(caught: Iterable[warnings.WarningMessage]) -> list[Recorded]:
    """Warnings caught by ``warnings.catch_warnings(record=True)``, in a form that pickles, with
    the name of the module that warned (what a ``module=`` warning filter matches)."""
    caught = list(caught)
    modules = {getattr(m, "__file__", None): name for name, m in list(sys.modules.items())} if caught else {}
    return [(*_picklable(str(w.message), w.category), w.filename, w.lineno, modules.get(w.filename))
            for w in caught]


def _picklable(message: str, category: type[Warning]) -> tuple[str, type[Warning]]:
    """(message, category), or, for a category that does not pickle (a class defined in a
    function, say), its name put before the message and the nearest built-in base category."""
    try:
        pickle.dumps(category)
        return message, category
    except (pickle.PicklingError, AttributeError, TypeError):
        base = next(c for c in category.__mro__ if c.__module__ == "builtins")
        return f"{category.__qualname__}: {message}", base


def warn_again(caught: Iterable[Recorded], prefix: str = "", registry: dict | None = None) -> None:
    """Raise recorded warnings again here, each message after ``prefix``, so this process's
    filters and printer (the CLI's: :class:`MSKdeXWarning` as one line) see them; ``registry``
    shows a repeated one once, as at its origin."""
    for message, category, filename, lineno, module in caught:
        warnings.warn_explicit(f"{prefix}{message}", category, filename, lineno, module, registry)
