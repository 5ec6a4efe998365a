"""Errors a user can act on.

Every error raised for bad input (a missing or corrupt file, a wrong checkpoint, a malformed
dataset) derives from :class:`DA3Error` and carries one line that names the file and the problem,
so command-line tools can print ``str(err)`` instead of a traceback.
"""


class DA3Error(Exception):
    """Base class of the project's user-facing errors."""


class InputError(DA3Error):
    """An input file or array is missing, unreadable or not what the tool expects."""


class CheckpointError(DA3Error):
    """A checkpoint folder or file cannot be loaded into the requested model."""
