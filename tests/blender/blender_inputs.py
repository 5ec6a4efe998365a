"""Test inputs written by the project's own writers, plus ground-truth camera geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from da3_nerfstudio.formats.colmap import write_colmap_model
from da3_nerfstudio.formats.transforms import frames_from_cameras, write_transforms_json

try:  # the predictor's writer needs torch, which the Blender 5.x test environment does not carry
    from da3_nerfstudio.prediction import Prediction
except ImportError:
    Prediction = None

# (name, width, height, fx, fy, cx, cy): the cases where Blender camera mappings usually go wrong.
CAMERA_CASES = [
    ("landscape", 640, 480, 500.0, 500.0, 320.0, 240.0),
    ("portrait", 480, 640, 520.0, 520.0, 240.0, 320.0),
    ("off_centre", 640, 480, 500.0, 500.0, 291.3, 265.7),
    ("fx_ne_fy", 504, 336, 400.0, 380.0, 250.0, 170.0),
    ("portrait_fy_gt_fx_off_centre", 336, 504, 380.0, 410.0, 150.5, 270.25),
]


def look_at_w2c(centre: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera (3,4) of a camera at ``centre`` looking at ``target`` (world y down)."""
    z = target - centre
    z /= np.linalg.norm(z)
    x = np.cross(np.array([0.0, -1.0, 0.0]), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    r = np.stack([x, y, z])
    return np.concatenate([r, (-r @ centre)[:, None]], axis=1)


def random_cameras(n: int, seed: int) -> np.ndarray:
    """(n,3,4) OpenCV world-to-camera poses around the origin, looking at it."""
    rng = np.random.default_rng(seed)
    poses = []
    for _ in range(n):
        centre = rng.normal(size=3)
        centre = 4.0 * centre / np.linalg.norm(centre)
        poses.append(look_at_w2c(centre, rng.normal(scale=0.2, size=3)))
    return np.stack(poses)


def project_opencv(w2c: np.ndarray, k: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(M,2) pixel coordinates of world points (continuous convention, pixel centres at +0.5)."""
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    uvw = cam @ k.T
    return uvw[:, :2] / uvw[:, 2:3]


def k_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def write_dataset(
    folder: Path,
    w2c: np.ndarray,
    ks: np.ndarray,
    size: tuple[int, int],
    names: list[str],
    ply_file_path: str | None = None,
) -> Path:
    """A nerfstudio transforms.json through the project's writer; returns its path."""
    frames = frames_from_cameras(w2c, ks, [size] * len(names), [f"images/{n}" for n in names])
    path = folder / "transforms.json"
    write_transforms_json(path, frames, ply_file_path=ply_file_path)
    return path


def write_colmap(
    folder: Path,
    w2c: np.ndarray,
    ks: np.ndarray,
    size: tuple[int, int],
    names: list[str],
    points: np.ndarray,
    colors: np.ndarray,
) -> Path:
    """A binary COLMAP model (pycolmap, through the project's writer) in ``folder/sparse/0``."""
    model = folder / "sparse" / "0"
    write_colmap_model(model, w2c, ks, [size] * len(names), names, points, colors)
    return model


def write_predictions(
    path: Path,
    w2c: np.ndarray,
    ks: np.ndarray,
    depth: np.ndarray,
    images: np.ndarray | None = None,
    conf: np.ndarray | None = None,
    names: list[str] | None = None,
    official: bool = False,
    gaussians: dict[str, np.ndarray] | None = None,
) -> Path:
    """A predictions npz: by the project's ``Prediction.save``, or the official mini_npz keys only.

    Without torch (the Blender 5.x environment) the project's layout is written with ``np.savez``
    (``gaussians`` as ``gaussians_<key>``); the main environment's run checks the add-on against the
    real writer.
    """
    depth = depth.astype(np.float32)
    conf = (np.ones_like(depth) if conf is None else conf).astype(np.float32)
    if official:
        np.savez(
            path, depth=depth, conf=conf, extrinsics=w2c[:, :3, :4].astype(np.float32), intrinsics=ks.astype(np.float32)
        )
        return path
    if images is None:
        images = np.zeros((*depth.shape, 3), np.uint8)
    arrays = {"depth": depth, "extrinsics": w2c[:, :3, :4].astype(np.float32), "intrinsics": ks.astype(np.float32)}
    if Prediction is None:
        extra = {f"gaussians_{k}": v for k, v in (gaussians or {}).items()}
        np.savez(path, **arrays, image=images, conf=conf, **({"names": np.array(names)} if names else {}), **extra)
    else:
        Prediction(**arrays, images=images, conf=conf, names=names or [], gaussians=gaussians).save(path)
    return path
