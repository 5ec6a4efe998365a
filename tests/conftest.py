"""Suite-wide: a pytest process that imported bpy ends past bpy's exit-time destructors, which can deadlock.

See :mod:`da3_nerfstudio.process_exit`: CI once hung for 90 minutes at exit after every test had run. The
session's exit status is recorded when pytest unconfigures; an exit handler registered before any test imports
bpy (so it runs after the handlers registered later, bpy's included) then ends the process with that status,
so a failing run still fails and pytest's own clean-up has all run.
"""

from __future__ import annotations

import atexit

import pytest

from da3_nerfstudio.process_exit import bpy_loaded, end_now

_SESSION = pytest.StashKey[pytest.Session]()
_EXIT_STATUS: list[int] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_SESSION] = session


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_SESSION, None)
    if session is not None:
        _EXIT_STATUS.append(int(session.exitstatus))


def _end_past_bpy_destructors() -> None:
    if _EXIT_STATUS and bpy_loaded():
        end_now(_EXIT_STATUS[-1])


atexit.register(_end_past_bpy_destructors)
