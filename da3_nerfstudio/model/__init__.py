"""The Depth Anything 3 network family, implemented from the official architecture description.

``DA3Model`` (and torch with it) loads on first use, so that importing :mod:`da3_nerfstudio.model.presets`
(names, defaults, licences) for a command line's ``--help`` or its option checks stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from da3_nerfstudio.model.presets import PRESETS, ModelPreset, get_preset

if TYPE_CHECKING:
    from da3_nerfstudio.model.net import DA3Model

__all__ = ["DA3Model", "ModelPreset", "PRESETS", "get_preset"]


def __getattr__(name: str) -> Any:
    if name == "DA3Model":
        from da3_nerfstudio.model.net import DA3Model

        return DA3Model
    raise AttributeError(f"module 'da3_nerfstudio.model' has no attribute {name!r}")
