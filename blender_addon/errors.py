"""User-facing error for bad input files.

The add-on cannot import ``da3_nerfstudio.errors`` (it runs inside Blender's Python without the project
installed), so it carries its own equivalent: operators catch it and show the one-line message in the UI
instead of a traceback.
"""


class InputError(Exception):
    """A one-line problem with an input file; the message names the file and what is wrong."""
