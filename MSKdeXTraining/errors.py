"""The exception types for input MSKdeX cannot use (bad files, fields, values).

Messages name the file, the field and what was expected. The CLI prints them as one line;
the Slicer module shows them in an error dialog. Subclasses say which kind of input it was.
"""


class InputError(ValueError):
    """Input data that MSKdeX cannot use; the message names the file and the field."""


#: What bad input raises (CLI exit code 2, a one-line message, no traceback): InputError, and the
#: OS errors of a missing input, an output that exists or would overwrite an input, a path of the
#: wrong kind or without permission.
INPUT_ERRORS = (InputError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
                PermissionError)
