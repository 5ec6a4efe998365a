"""Seed points of a dataset: the confident pixels of the training views, thinned to a target count.

One point per occupied voxel, not a random subset: a random pick keeps the densely seen near field and
starves far or rarely seen structure, while voxels spread the points over the scene. Each kept point is
an actual pixel's sample (the most confident in its voxel), so it still lies on that pixel's ray, and the
pixel becomes the point's COLMAP track.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from da3_nerfstudio.formats.colmap import Observations
from da3_nerfstudio.prediction import Prediction

#: Finest voxel of the point-cloud downsampling, relative to the cloud's extent (keeps keys in int64).
_MIN_VOXEL_FRACTION = 2.0**-20
#: The downsampled cloud is accepted when it has between this fraction of the target and the target.
_POINT_COUNT_TOLERANCE = 0.9
#: Voxel grids up to this many cells are counted with a bitmap (one byte per cell) instead of by sorting.
_MAX_BITMAP_CELLS = 1 << 26


class SparsePoints(NamedTuple):
    """Seed points with what COLMAP and the PLY writer need of each."""

    points: np.ndarray  # (N, 3) world
    colours: np.ndarray  # (N, 3) uint8 RGB
    confidence: np.ndarray  # (N,) float32
    tracks: Observations
    """Per point, the view and the pixel (in the written image) it was unprojected from."""


def voxel_downsample(
    points: np.ndarray, target: int, priority: np.ndarray | None = None, max_iterations: int = 40
) -> tuple[np.ndarray, float]:
    """Indices of at most ``target`` points, one per occupied voxel, and the voxel size used.

    The voxel size is searched until the occupied voxels number between 90 % and 100 % of
    ``target``: a secant step on log(count) against log(size) (counts follow a power law of the size),
    kept inside a shrinking bracket with bisection as the fallback, so a few passes over the points
    suffice. Each voxel keeps its highest-``priority`` point (an actual sample, not an average, so a
    kept point still lies on the pixel ray it came from). When all points fit, the size is 0.
    """
    n = len(points)
    if n <= target:
        return np.arange(n), 0.0
    order = np.argsort(-priority, kind="stable") if priority is not None else np.arange(n)
    pts = points[order].astype(np.float64)
    low = pts.min(axis=0)
    extent = float(np.max(pts.max(axis=0) - low))
    if extent == 0:
        return order[:1], 0.0

    def voxel_keys(size: float) -> np.ndarray:
        cells = np.floor((pts - low) / size).astype(np.int64)
        dims = cells.max(axis=0) + 1
        return (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]

    goal = math.log(0.5 * (1 + _POINT_COUNT_TOLERANCE) * target)
    lo, hi = math.log(extent * _MIN_VOXEL_FRACTION), math.log(extent)  # too many points at lo, few at hi
    count_lo = count_hi = None
    x = math.log(extent / math.sqrt(target))  # a surface fills about (extent / size)^2 voxels
    last_side = ""

    def occupied_voxels(size: float) -> int:
        keys = voxel_keys(size)
        cells = int(keys.max()) + 1
        if cells > _MAX_BITMAP_CELLS:
            return len(np.unique(keys))
        occupied = np.zeros(cells, bool)  # a bitmap of the grid counts in one pass, without sorting
        occupied[keys] = True
        return int(np.count_nonzero(occupied))

    for _ in range(max_iterations):
        occupied = occupied_voxels(math.exp(x))
        count = math.log(occupied)
        if occupied > target:
            lo, count_lo, side = x, count, "lo"
        else:
            hi, count_hi, side = x, count, "hi"
            if occupied >= _POINT_COUNT_TOLERANCE * target:
                break
        if count_lo is not None and count_hi is not None and side != last_side and count_lo != count_hi:
            x = lo + (count_lo - goal) * (hi - lo) / (count_lo - count_hi)
        elif count_lo is None or count_hi is None:
            x = x + 0.5 * (count - goal)  # power-law step with the surface exponent 2
        else:
            x = 0.5 * (lo + hi)  # the same side twice: bisect so the bracket keeps shrinking
        if not lo < x < hi:
            x = 0.5 * (lo + hi)
        last_side = side
    size = math.exp(hi)  # the finest size known to give at most `target` voxels
    first = np.unique(voxel_keys(size), return_index=True)[1][:target]
    return np.sort(order[first]), size


def sparse_points(
    pred: Prediction, train: list[int], conf_percentile: float, num_points: int, to_written: np.ndarray
) -> SparsePoints:
    """Confident pixels of the ``train`` views as at most ``num_points`` points; ``to_written`` (N, 3, 3) maps
    each view's processed pixels to its written image, where the tracks' pixels lie."""
    points, colours, view_index = pred.world_points(conf_percentile)
    mask = pred.valid_mask(conf_percentile)
    _, rows, cols = np.nonzero(mask)  # the order of world_points' masked arrays
    conf = pred.conf[mask] if pred.conf is not None else np.ones(len(points), np.float32)
    seen = np.flatnonzero(np.isin(view_index, train))
    points, colours, view_index, rows, cols, conf = (a[seen] for a in (points, colours, view_index, rows, cols, conf))
    keep, _ = voxel_downsample(points, num_points, conf)
    view_index, uv = view_index[keep], np.stack([cols[keep] + 0.5, rows[keep] + 0.5, np.ones(len(keep))], axis=1)
    uv = np.einsum("nij,nj->ni", to_written[view_index], uv)[:, :2]
    tracks = Observations(np.arange(len(keep)), view_index.astype(np.int64), uv.astype(np.float64))
    return SparsePoints(points[keep], colours[keep], conf[keep].astype(np.float32), tracks)
