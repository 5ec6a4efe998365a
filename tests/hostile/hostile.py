"""Shared checks of the hostile-input suite: one-line errors, non-zero exits, nothing written, changed or deleted.

Every hostile case asserts the exact outcome a user sees: the one line that names the file or option and the
problem, the exit status, and that the file system around the run is as it was (listing and checksums).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

#: The project's console scripts live next to the interpreter running the tests.
BIN = Path(sys.executable).parent


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and folder below ``roots`` (the roots included): path -> sha1 of its bytes, or ``<dir>``."""
    state: dict[str, str] = {}
    for root in roots:
        if not root.exists():
            continue
        for path in [root, *root.rglob("*")]:
            if path.is_symlink():
                state[str(path)] = f"<link {os.readlink(path)}>"
            elif path.is_dir():
                state[str(path)] = "<dir>"
            else:
                state[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
    return state


def assert_unchanged(before: dict[str, str], *roots: Path) -> None:
    """Nothing below ``roots`` was created, changed or deleted since ``before = snapshot(*roots)``."""
    after = snapshot(*roots)
    created = sorted(set(after) - set(before))
    deleted = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    assert not (created or deleted or changed), f"created {created}, deleted {deleted}, changed {changed}"


def error_line(code: int, out: str, err: str) -> str:
    """The single ``error: ...`` line of a failed command (non-zero exit, no traceback anywhere)."""
    assert code != 0, f"exit status 0 for bad input\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in out + err, f"traceback instead of a one-line error:\n{out}\n{err}"
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, f"expected one 'error: ' line on stderr, got:\n{err}"
    return errors[0]


def assert_one_line_error(code: int, out: str, err: str, *needles: str) -> str:
    """A one-line error containing every needle (case-insensitive); returns the line."""
    line = error_line(code, out, err)
    for needle in needles:
        assert needle.lower() in line.lower(), f"{needle!r} not in {line!r}"
    return line


def run_tool(args: Sequence[str | Path], *, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """Run one of the project's console scripts (``da3-process-data``, ``da3-export-cameras``, ``ns-train``...)
    as a user would, in a subprocess; returns (exit status, stdout, stderr)."""
    command = [str(BIN / str(args[0])), *(str(a) for a in args[1:])]
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    return result.returncode, result.stdout, result.stderr
