"""Depth Anything 3 for nerfstudio and Blender.

The core (network, predictor, geometry, file formats, splat initialisation, losses) needs only
torch and numpy; nerfstudio is imported only by :mod:`da3_nerfstudio.nerfstudio_method`. Heavy
names are imported lazily so that ``ns-*`` commands, which load this package's method config,
start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from da3_nerfstudio.errors import CheckpointError, DA3Error, InputError

if TYPE_CHECKING:
    from da3_nerfstudio.prediction import Prediction
    from da3_nerfstudio.predictor import DA3Predictor

__all__ = ["CheckpointError", "DA3Error", "DA3Predictor", "InputError", "Prediction"]


def __getattr__(name: str) -> Any:
    if name == "DA3Predictor":
        from da3_nerfstudio.predictor import DA3Predictor

        return DA3Predictor
    if name == "Prediction":
        from da3_nerfstudio.prediction import Prediction

        return Prediction
    raise AttributeError(f"module 'da3_nerfstudio' has no attribute {name!r}")
