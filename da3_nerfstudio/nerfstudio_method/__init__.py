"""The nerfstudio method ``da3-splat`` and the ``da3-data`` dataparser (the only code importing nerfstudio).

Importing this package also lets ``torch.load``'s safe (``weights_only``) unpickler read nerfstudio
checkpoints: torch >= 2.6 loads with ``weights_only=True`` by default, and nerfstudio 1.1.5 pickles
a few numpy scalars (step counters, scheduler state) into every checkpoint, so ``ns-export``,
``ns-eval``, ``ns-render`` and ``--load-dir`` would otherwise fail with an ``UnpicklingError``.
Allow-listing exactly those numpy types keeps safe loading on for everything else.

It also makes the project's errors (a broken dataset found by the ``da3-data`` parser) end nerfstudio's
own scripts with one ``error: ...`` line: ``ns-eval``, ``ns-export``, ``ns-render`` and ``ns-viewer``
build the parser and let its error escape uncaught, which printed a traceback around our message.
"""

from __future__ import annotations

import sys
from types import TracebackType

import numpy as np
import torch

from da3_nerfstudio.errors import DA3Error


def _allow_numpy_scalars_in_checkpoints() -> None:
    """Add the numpy types nerfstudio checkpoints contain to torch's weights-only allow-list."""
    if int(np.__version__.split(".")[0]) >= 2:
        from numpy._core.multiarray import scalar
    else:
        from numpy.core.multiarray import scalar
    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    torch.serialization.add_safe_globals([scalar, np.dtype, *dtypes])


_allow_numpy_scalars_in_checkpoints()


def _report_project_errors_in_one_line() -> None:
    """An uncaught :class:`DA3Error` prints ``error: <message>`` (the exit status stays 1); every other
    uncaught exception goes to the hook that was there before."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, traceback: TracebackType | None) -> None:
        if issubclass(kind, DA3Error):
            print(f"error: {value}", file=sys.stderr)
        else:
            previous(kind, value, traceback)

    sys.excepthook = hook


_report_project_errors_in_one_line()
