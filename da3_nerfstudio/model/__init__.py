"""The Depth Anything 3 network family, implemented from the official architecture description."""

from da3_nerfstudio.model.net import DA3Model
from da3_nerfstudio.model.presets import PRESETS, ModelPreset, get_preset

__all__ = ["DA3Model", "ModelPreset", "PRESETS", "get_preset"]
