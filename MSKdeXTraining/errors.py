"""The exception types for input MSKdeX cannot use (bad files, fields, values), and its warning type.

Messages name the file, the field and what was expected. The CLI prints them as one line;
the Slicer module shows them in an error dialog. Subclasses say which kind of input it was.
"""

import errno


class InputError(ValueError):
    """Input data that MSKdeX cannot use; the message names the file and the field."""


class MSKdeXWarning(UserWarning):
    """Something MSKdeX assumed or did in place of what the input lacked (e.g. a source distance);
    the CLI prints it as one line naming the command."""


class TrainingDiverged(RuntimeError):
    """A training whose losses became NaN or infinite (too high a learning rate or loss weight for
    the data); the message names the epoch, the terms and the last checkpoint kept."""


#: What bad input raises (CLI exit code 2, a one-line message, no traceback): InputError, and the
#: OS errors of a missing input, an output that exists or would overwrite an input, a path of the
#: wrong kind or without permission; and a training that diverged on its config and data.
INPUT_ERRORS = (InputError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
                PermissionError, TrainingDiverged)

#: errno values of an output that cannot be written: a read-only file system, a full disk or
#: quota. Reported like :data:`INPUT_ERRORS` (nothing is half-written: writes are atomic).
STORAGE_ERRNOS = (errno.EROFS, errno.ENOSPC, errno.EDQUOT)
