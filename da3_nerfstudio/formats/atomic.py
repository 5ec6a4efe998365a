"""Crash-safe file writing.

Writers must never leave a half-written file where a good one used to be: a failed export would
otherwise destroy the user's previous result. Writing to a temporary name in the same folder and
renaming with :func:`os.replace` (atomic on POSIX and Windows within one filesystem) gives
all-or-nothing semantics.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path``; move it onto ``path`` only if the block succeeds.

    The temporary path is in the same folder so the final :func:`os.replace` never crosses a
    filesystem boundary. It does not exist yet: the caller creates it with ordinary ``open`` (so the
    result gets the usual permissions, unlike a ``mkstemp`` file). On any exception the temporary
    file is removed and ``path`` is left as it was. The parent folder is created if needed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        # After a successful replace the temporary name no longer exists.
        tmp.unlink(missing_ok=True)
