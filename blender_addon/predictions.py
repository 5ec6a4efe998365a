"""DA3 predictions ``.npz`` (this project's and the official ``npz``/``mini_npz`` exports).

Keys: ``depth`` (N,H,W) z-depth, ``conf`` (N,H,W), ``extrinsics`` (N,3,4) OpenCV world-to-camera,
``intrinsics`` (N,3,3) in pixels of the depth map with pixel centres at +0.5, and optionally
``image``/``images`` (N,H,W,3) uint8, ``names`` (N,) image names, ``sky`` (N,H,W) bool and the
Gaussian head's world-space output ``gaussians_means`` (M,3), ``gaussians_scales`` (M,3) standard
deviations, ``gaussians_rotations`` (M,4) w x y z, ``gaussians_harmonics`` (M,3,K) SH per colour channel,
``gaussians_opacities`` (M,) in (0, 1) and ``gaussians_views`` (M,).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .scene_data import CameraView, PointData, SplatData, c2w_from_opencv_w2c, check_rigid

GAUSSIAN_PREFIX = "gaussians_"
# (key, trailing shape); -1 is the SH coefficient count K = (degree + 1)^2.
_GAUSSIAN_SHAPES = {"means": (3,), "scales": (3,), "rotations": (4,), "harmonics": (3, -1), "opacities": ()}
_SH_COUNTS = (1, 4, 9, 16)
# Activated -> raw INRIA values: keep log() and logit() finite at degenerate scales and opacities.
_MIN_SCALE = 1e-12
_OPACITY_EPS = 1e-6


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
    gaussians: dict[str, np.ndarray] | None = None


def read_predictions(path: str | os.PathLike) -> Predictions:
    """Load and validate a predictions npz; raises InputError naming the file and the bad key."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if not zipfile.is_zipfile(path):  # np.load would also take a .npy or a pickle and return no key table
        raise InputError(f"{path}: not a readable npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: not a readable npz file ({' '.join(str(exc).split())})") from exc
    missing = [k for k in ("depth", "extrinsics", "intrinsics") if k not in arrays]
    if missing:
        raise InputError(f"{path}: predictions npz lacks keys {missing} (has {sorted(arrays)})")
    for key in ("depth", "extrinsics", "intrinsics", "conf"):
        if key in arrays and arrays[key].dtype.kind not in "fiub":
            raise InputError(f"{path}: '{key}' must be numeric, got dtype {arrays[key].dtype}")
    depth = np.asarray(arrays["depth"], dtype=np.float32)
    if depth.ndim == 2:
        depth = depth[None]
    if depth.ndim != 3 or 0 in depth.shape:
        raise InputError(f"{path}: 'depth' must be (N, H, W) with N, H, W > 0, got {arrays['depth'].shape}")
    n, h, w = depth.shape
    extrinsics = np.asarray(arrays["extrinsics"], dtype=np.float64)
    if extrinsics.ndim == 2:
        extrinsics = extrinsics[None]
    if extrinsics.ndim != 3 or extrinsics.shape[0] != n or extrinsics.shape[1:] not in ((3, 4), (4, 4)):
        raise InputError(f"{path}: 'extrinsics' must be ({n}, 3, 4), got {arrays['extrinsics'].shape}")
    intrinsics = np.asarray(arrays["intrinsics"], dtype=np.float64)
    if intrinsics.ndim == 2:
        intrinsics = intrinsics[None]
    if intrinsics.shape != (n, 3, 3):
        raise InputError(f"{path}: 'intrinsics' must be ({n}, 3, 3), got {arrays['intrinsics'].shape}")
    for i in range(n):
        _check_view(path, i, extrinsics[i], intrinsics[i])
    conf = _per_pixel(path, "conf", arrays.get("conf"), depth.shape, arrays["depth"].shape)
    if conf is not None:
        if not np.isfinite(conf).all():
            raise InputError(f"{path}: 'conf' has {int((~np.isfinite(conf)).sum())} non-finite values")
        conf = conf.astype(np.float32)
    sky = _per_pixel(path, "sky", arrays.get("sky"), depth.shape, arrays["depth"].shape)
    if sky is not None:
        if not np.isfinite(sky).all():
            raise InputError(f"{path}: 'sky' has non-finite values")
        sky = sky >= 0.5 if sky.dtype.kind == "f" else sky != 0
    valid = (np.isfinite(depth) & (depth > 0) & (True if sky is None else ~sky)).any(axis=(1, 2))
    if not valid.all():
        index = int(np.flatnonzero(~valid)[0])
        raise InputError(f"{path}: view {index}: depth has no valid pixel (all NaN, inf, <= 0 or sky)")
    images = arrays.get("images", arrays.get("image"))
    if images is not None:
        images = _images(path, images, (n, h, w))
    names = [f"{path.stem}_{i:03d}" for i in range(n)]
    if "names" in arrays and arrays["names"].size:  # Prediction.save writes an empty array for no names
        if arrays["names"].size != n:
            raise InputError(f"{path}: 'names' must hold one name per view ({n}), got shape {arrays['names'].shape}")
        names = [Path(str(s)).stem for s in arrays["names"].reshape(-1)]
    gaussians = _read_gaussians(path, arrays)
    return Predictions(path, depth, conf, extrinsics, intrinsics, images, names, sky, gaussians)


def _check_view(path: Path, index: int, extrinsics: np.ndarray, k: np.ndarray) -> None:
    """Refuse a view no Blender camera can represent: non-finite, skewed or non-positive intrinsics, or a
    world-to-camera matrix that is not a rotation plus translation."""
    where = f"{path}: view {index}"
    check_rigid(extrinsics, f"{where} extrinsics")
    if not np.isfinite(k).all():
        raise InputError(f"{where}: intrinsics have non-finite values (NaN or inf)")
    if k[0, 0] <= 0 or k[1, 1] <= 0:
        raise InputError(f"{where}: focal length must be positive, got fx={k[0, 0]:g}, fy={k[1, 1]:g}")
    if abs(k[0, 1]) > 1e-6 * k[0, 0] or np.abs(k[1, 0]) > 0 or not np.allclose(k[2], [0.0, 0.0, 1.0]):
        raise InputError(
            f"{where}: intrinsics must be a pinhole matrix [[fx 0 cx] [0 fy cy] [0 0 1]], got {k.tolist()}"
        )


def _per_pixel(
    path: Path, key: str, array: np.ndarray | None, shape: tuple[int, ...], file_shape: tuple[int, ...]
) -> np.ndarray | None:
    """An optional per-pixel map shaped like the depth (as stored, or with its view axis added)."""
    if array is None:
        return None
    if array.dtype.kind not in "fiub" or array.shape not in (shape, file_shape):
        raise InputError(f"{path}: '{key}' must be numbers shaped like 'depth' {shape}, got {array.shape}")
    return array.reshape(shape)


def _images(path: Path, images: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(N, H, W, 3) uint8 from 8-bit or [0, 1] float images, RGB, RGBA (alpha dropped) or grey (replicated).

    The same reading as the core's ``Prediction.load``: anything else would show other pixels than the
    network saw.
    """
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[:3] != shape or images.shape[3] not in (1, 3, 4):
        raise InputError(
            f"{path}: images have shape {images.shape}, expected ({', '.join(map(str, shape))}, 3), RGBA or grey"
        )
    if images.dtype.kind == "f":
        if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise InputError(f"{path}: float image values must be finite and in [0, 1]")
        images = np.rint(images.astype(np.float64) * 255.0)
    elif images.dtype.kind not in "iu" or images.min() < 0 or images.max() > 255:
        raise InputError(f"{path}: images must be uint8, integers in 0..255 or floats in [0, 1], got {images.dtype}")
    images = images.astype(np.uint8)
    return np.repeat(images, 3, axis=-1) if images.shape[3] == 1 else np.ascontiguousarray(images[..., :3])


def _read_gaussians(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """The ``gaussians_*`` arrays, shapes checked; None when the file holds no Gaussians."""
    present = {k[len(GAUSSIAN_PREFIX) :] for k in arrays if k.startswith(GAUSSIAN_PREFIX)}
    if not present:
        return None
    missing = [GAUSSIAN_PREFIX + k for k in _GAUSSIAN_SHAPES if k not in present]
    if missing:
        raise InputError(f"{path}: Gaussians are incomplete, missing keys {missing}")
    try:
        gaussians = {k: np.asarray(arrays[GAUSSIAN_PREFIX + k], dtype=np.float64) for k in _GAUSSIAN_SHAPES}
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: Gaussian arrays are not numeric ({exc})") from exc
    if gaussians["opacities"].ndim == 2 and gaussians["opacities"].shape[1] == 1:
        gaussians["opacities"] = gaussians["opacities"][:, 0]
    m = gaussians["means"].shape[0] if gaussians["means"].ndim else 0
    for key, tail in _GAUSSIAN_SHAPES.items():
        shape = gaussians[key].shape
        if (
            shape[:1] != (m,)
            or len(shape) != 1 + len(tail)
            or any(t not in (-1, d) for t, d in zip(tail, shape[1:], strict=True))
        ):
            expected = ", ".join(["M", *("K" if t < 0 else str(t) for t in tail)])
            raise InputError(f"{path}: '{GAUSSIAN_PREFIX}{key}' must be ({expected}) with M = {m}, got {shape}")
    if gaussians["harmonics"].shape[2] not in _SH_COUNTS:
        raise InputError(
            f"{path}: '{GAUSSIAN_PREFIX}harmonics' has {gaussians['harmonics'].shape[2]} SH coefficients "
            f"per channel, expected one of {_SH_COUNTS} (degree 0-3)"
        )
    return gaussians


def prediction_splats(pred: Predictions) -> SplatData | None:
    """The file's Gaussians as raw INRIA 3DGS values, the form the splat builder takes from PLY files.

    scale -> log(scale), opacity -> logit(opacity), harmonics (M, 3, K) -> DC (M, 3) and rest (M, K-1, 3).
    Gaussians with any non-finite value are dropped; None when the file holds none.
    """
    g = pred.gaussians
    if g is None:
        return None
    n = len(g["means"])
    finite = np.isfinite(np.concatenate([g[k].reshape(n, -1) for k in _GAUSSIAN_SHAPES], axis=1)).all(axis=1)
    if not finite.any():
        return None
    g = {k: g[k][finite] for k in _GAUSSIAN_SHAPES}
    opacity = np.clip(g["opacities"], _OPACITY_EPS, 1.0 - _OPACITY_EPS)
    return SplatData(
        means=g["means"].astype(np.float32),
        scales_log=np.log(np.maximum(g["scales"], _MIN_SCALE)).astype(np.float32),
        rotations=g["rotations"].astype(np.float32),
        opacity_logit=(np.log(opacity) - np.log1p(-opacity)).astype(np.float32),
        sh_dc=g["harmonics"][:, :, 0].astype(np.float32),
        sh_rest=g["harmonics"][:, :, 1:].transpose(0, 2, 1).astype(np.float32),
    )


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
                c2w=c2w_from_opencv_w2c(pred.extrinsics[i], f"{pred.path}: view {i} extrinsics"),
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
