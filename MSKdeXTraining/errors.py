"""The one exception type for input MSKdeX cannot use (bad files, fields, values).

Messages name the file, the field and what was expected. The CLI prints them as one line;
the Slicer module shows them in an error dialog. Subclasses say which kind of input it was.
"""


class InputError(ValueError):
    """Input data that MSKdeX cannot use; the message names the file and the field."""
