"""What a dataset holds besides the cameras and depth, and the confidence rule's default percentile.

A module that imports nothing, so that command lines can show and check these settings (``--help``, bad
values) before torch and the image libraries load.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The official GLB export's confidence rule: threshold = clip(1.05, P40, P90) of the confidences.
CONF_PERCENTILE = 40.0


@dataclass
class DatasetOptions:
    """What to write besides the cameras and depth."""

    conf_percentile: float = CONF_PERCENTILE
    """Confidence percentile below which pixels give no points or Gaussians (official rule, floor 1.05)."""
    num_points: int = 200_000
    """Target size of ``sparse_pc.ply`` (voxel-downsampled, most confident pixel per voxel)."""
    num_gaussians: int = 1_000_000
    """Most Gaussians in ``splat_init.ply`` (pixels are strided, then randomly thinned to this)."""
    eval_interval: int = 8
    """Every N-th view (from N/2) is held out for val/test and gives no points or Gaussians; 0, or too few
    views, evaluates on all views."""
