"""The nerfstudio method ``da3-splat`` and the ``da3-data`` dataparser (the only code importing nerfstudio).

Importing this package also lets ``torch.load``'s safe (``weights_only``) unpickler read nerfstudio
checkpoints: torch >= 2.6 loads with ``weights_only=True`` by default, and nerfstudio 1.1.5 pickles
a few numpy scalars (step counters, scheduler state) into every checkpoint, so ``ns-export``,
``ns-eval``, ``ns-render`` and ``--load-dir`` would otherwise fail with an ``UnpicklingError``.
Allow-listing exactly those numpy types keeps safe loading on for everything else.
"""

from __future__ import annotations

import numpy as np
import torch


def _allow_numpy_scalars_in_checkpoints() -> None:
    """Add the numpy types nerfstudio checkpoints contain to torch's weights-only allow-list."""
    if int(np.__version__.split(".")[0]) >= 2:
        from numpy._core.multiarray import scalar
    else:
        from numpy.core.multiarray import scalar
    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    torch.serialization.add_safe_globals([scalar, np.dtype, *dtypes])


_allow_numpy_scalars_in_checkpoints()
