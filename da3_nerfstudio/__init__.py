"""Depth Anything 3 for nerfstudio and Blender.

The core (network, predictor, geometry, file formats, splat initialisation, losses) needs only
torch and numpy; nerfstudio is imported only by :mod:`da3_nerfstudio.nerfstudio_method`.
"""

from da3_nerfstudio.errors import CheckpointError, DA3Error, InputError

__all__ = ["CheckpointError", "DA3Error", "InputError"]
