"""Leaving a process that has loaded ``bpy`` (Blender as a Python module) without hanging.

bpy's C++ static destructors can deadlock at process exit: CI once hung for the rest of its 90 minutes in
``GlobalState::~GlobalState`` -> ``pthread_cond_destroy`` inside ``bpy/__init__.so`` after every test had run.
A process that loaded bpy therefore finishes Python's own exit work (atexit handlers, stream flushes) and ends
with ``os._exit``, which skips the C++ destructors; a process without bpy exits normally. This module imports
nothing from Blender, so the core package may hold it.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn


def bpy_loaded() -> bool:
    """Whether this process has imported bpy (whose exit-time destructors can deadlock)."""
    return "bpy" in sys.modules


def end_now(code: int) -> NoReturn:
    """Flush the standard streams and end the process at once with ``code`` (no C++ destructors)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe must not turn a result into a traceback
            pass
    os._exit(code)


def exit_process(code: int) -> NoReturn:
    """Exit with ``code``; past bpy's static destructors when bpy was loaded (see the module docstring)."""
    if not bpy_loaded():
        sys.exit(code)
    atexit._run_exitfuncs()
    end_now(code)
