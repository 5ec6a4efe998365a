"""DA3 predictions ``.npz`` (this project's and the official ``npz``/``mini_npz`` exports).

Keys: ``depth`` (N,H,W) z-depth, ``conf`` (N,H,W), ``extrinsics`` (N,3,4) OpenCV world-to-camera,
``intrinsics`` (N,3,3) in pixels of the depth map with pixel centres at +0.5, and optionally
``image``/``images`` (N,H,W,3) uint8, ``names`` (N,) image names and ``sky`` (N,H,W) bool.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .scene_data import CameraView, PointData, c2w_from_opencv_w2c


@dataclass
class Predictions:
    """Arrays of one predictions file, shapes checked against each other."""

    path: Path
    depth: np.ndarray
    conf: np.ndarray | None
    extrinsics: np.ndarray
    intrinsics: np.ndarray
    images: np.ndarray | None
    names: list[str]
    sky: np.ndarray | None = None


def read_predictions(path: str | os.PathLike) -> Predictions:
    """Load and validate a predictions npz; raises InputError naming the file and the bad key."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{path}: not a readable npz file ({exc})") from exc
    missing = [k for k in ("depth", "extrinsics", "intrinsics") if k not in arrays]
    if missing:
        raise InputError(f"{path}: predictions npz lacks keys {missing} (has {sorted(arrays)})")
    depth = np.asarray(arrays["depth"], dtype=np.float32)
    if depth.ndim == 2:
        depth = depth[None]
    if depth.ndim != 3 or depth.shape[0] == 0:
        raise InputError(f"{path}: 'depth' must be (N, H, W), got {arrays['depth'].shape}")
    n, h, w = depth.shape
    extrinsics = np.asarray(arrays["extrinsics"], dtype=np.float64).reshape(-1, *arrays["extrinsics"].shape[-2:])
    intrinsics = np.asarray(arrays["intrinsics"], dtype=np.float64).reshape(-1, 3, 3)
    if extrinsics.shape[0] != n or extrinsics.shape[1:] not in ((3, 4), (4, 4)):
        raise InputError(f"{path}: 'extrinsics' must be ({n}, 3, 4), got {arrays['extrinsics'].shape}")
    if intrinsics.shape[0] != n:
        raise InputError(f"{path}: 'intrinsics' must be ({n}, 3, 3), got {arrays['intrinsics'].shape}")
    conf = arrays.get("conf")
    if conf is not None:
        conf = np.asarray(conf, dtype=np.float32).reshape(depth.shape) if conf.size == depth.size else None
    images = arrays.get("images", arrays.get("image"))
    if images is not None and images.shape[:3] != (n, h, w):
        raise InputError(f"{path}: images have shape {images.shape}, expected ({n}, {h}, {w}, 3)")
    names = [f"{path.stem}_{i:03d}" for i in range(n)]
    if "names" in arrays and len(arrays["names"]) == n:
        names = [Path(str(s)).stem for s in arrays["names"]]
    sky = arrays.get("sky")
    sky = np.asarray(sky, dtype=bool) if sky is not None and sky.shape == depth.shape else None
    return Predictions(path, depth, conf, extrinsics, intrinsics, images, names, sky)


def prediction_cameras(pred: Predictions) -> list[CameraView]:
    """One camera per view at the depth-map resolution, images embedded when the file carries them."""
    n, h, w = pred.depth.shape
    views = []
    for i in range(n):
        k = pred.intrinsics[i]
        pixels = None if pred.images is None else np.asarray(pred.images[i][..., :3], dtype=np.uint8)
        views.append(
            CameraView(
                name=pred.names[i],
                c2w=c2w_from_opencv_w2c(pred.extrinsics[i]),
                fx=float(k[0, 0]),
                fy=float(k[1, 1]),
                cx=float(k[0, 2]),
                cy=float(k[1, 2]),
                width=w,
                height=h,
                pixels=pixels,
            )
        )
    return views


def backproject(pred: Predictions, index: int, stride: int = 1) -> PointData:
    """World points of view ``index``: pixel (i, j) at (j + 0.5, i + 0.5) lifted to its z-depth.

    Non-finite and non-positive depths and sky pixels are dropped; colours come from the embedded image.
    """
    depth = pred.depth[index, ::stride, ::stride]
    rows, cols = np.meshgrid(
        np.arange(0, pred.depth.shape[1], stride), np.arange(0, pred.depth.shape[2], stride), indexing="ij"
    )
    valid = np.isfinite(depth) & (depth > 0)
    if pred.sky is not None:
        valid &= ~pred.sky[index, ::stride, ::stride]
    k_inv = np.linalg.inv(pred.intrinsics[index])
    pix = np.stack([cols[valid] + 0.5, rows[valid] + 0.5, np.ones(int(valid.sum()))], axis=0)
    cam = (k_inv @ pix) * depth[valid]
    w2c = np.eye(4)
    w2c[:3, :4] = pred.extrinsics[index][:3, :4]
    c2w = np.linalg.inv(w2c)
    world = (c2w[:3, :3] @ cam + c2w[:3, 3:4]).T.astype(np.float32)
    colors = None
    if pred.images is not None:
        colors = pred.images[index, ::stride, ::stride, :3][valid].astype(np.float32) / 255.0
    conf = None if pred.conf is None else pred.conf[index, ::stride, ::stride][valid]
    return PointData(world, colors, conf)
