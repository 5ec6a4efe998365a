"""nerfstudio ``transforms.json`` and ``camera_path.json``: reading and writing.

Both store camera-to-world matrices with OpenGL camera axes, which are Blender's camera axes, so poses
pass through unchanged. ``camera_path.json`` (the ``ns-render`` input) only knows a vertical field of
view and a centred principal point with square pixels.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import InputError
from .ply import read_point_cloud_ply
from .scene_data import CameraView, ImportedScene

_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
# nerfstudio camera_model values that are not a (possibly distorted) pinhole projection.
_NON_PINHOLE = {
    "EQUIRECTANGULAR",
    "OMNIDIRECTIONALSTEREO_L",
    "OMNIDIRECTIONALSTEREO_R",
    "VR180_L",
    "VR180_R",
    "ORTHOPHOTO",
}


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise InputError(f"{path}: expected a JSON object at the top level")
    return meta


def _matrix(value: object, path: Path, what: str) -> np.ndarray:
    if isinstance(value, str | bytes | dict):
        raise InputError(f"{path}: {what} is not a numeric matrix")
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: {what} is not a numeric matrix") from exc
    if m.size == 16:
        return m.reshape(4, 4)
    if m.size == 12:
        return np.vstack([m.reshape(3, 4), [0.0, 0.0, 0.0, 1.0]])
    raise InputError(f"{path}: {what} must have 12 or 16 numbers, got {m.size}")


def _number(value: object, where: str, key: str) -> float:
    """A finite number from a JSON value, or an InputError naming the key."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value)


def _size(value: object, where: str, key: str) -> int:
    """An image dimension: a positive whole number."""
    number = _number(value, where, key)
    if number <= 0 or number != int(number):
        raise InputError(f"{where}: {key} must be a positive whole number, got {value!r}")
    return int(number)


def _focal(merged: dict, where: str, key: str, angle_key: str, size: int) -> float | None:
    """Focal length in pixels from ``key`` or the field of view ``angle_key`` (radians); None if neither."""
    if key in merged:
        return _number(merged[key], where, key)
    if angle_key not in merged:
        return None
    angle = _number(merged[angle_key], where, angle_key)
    if not 0.0 < angle < math.pi:
        raise InputError(f"{where}: {angle_key} must be in (0, pi) radians, got {angle!r}")
    return 0.5 * size / math.tan(0.5 * angle)


def read_nerfstudio_json(path: str | os.PathLike) -> ImportedScene:
    """Cameras (and the ``ply_file_path`` points) from a transforms.json or a camera_path.json.

    ``path`` may be a dataset folder containing ``transforms.json``. Every frame is checked before any
    is returned: one camera a Blender camera cannot represent refuses the whole file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "transforms.json"
    meta = _load_json(path)
    if "camera_path" in meta:
        return _read_camera_path(path, meta)
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise InputError(f"{path}: no 'frames' list (not a nerfstudio transforms.json)")
    if str(meta.get("camera_model", "OPENCV")) in _NON_PINHOLE:
        raise InputError(f"{path}: camera_model {meta['camera_model']} is not a pinhole camera (not supported)")
    scene = ImportedScene(cameras=[])
    for i, frame in enumerate(frames):
        where = f"{path}: frame {i}"
        if not isinstance(frame, dict):
            raise InputError(f"{where}: expected a JSON object")
        merged = {**meta, **frame}
        for key in ("w", "h", "file_path"):
            if key not in merged:
                raise InputError(f"{path}: frame {i} lacks {key!r} (and no global value)")
        w, h = _size(merged["w"], where, "w"), _size(merged["h"], where, "h")
        fx = _focal(merged, where, "fl_x", "camera_angle_x", w)
        if fx is None:
            raise InputError(f"{where}: no focal length (fl_x or camera_angle_x)")
        fy = _focal(merged, where, "fl_y", "camera_angle_y", h)
        fy = fx if fy is None else fy
        cx = _number(merged["cx"], where, "cx") if "cx" in merged else w / 2
        cy = _number(merged["cy"], where, "cy") if "cy" in merged else h / 2
        file_path = frame.get("file_path", merged["file_path"])
        if not isinstance(file_path, str) or not file_path:
            raise InputError(f"{where}: file_path must be a non-empty string, got {file_path!r}")
        if "transform_matrix" not in frame:
            raise InputError(f"{path}: frame {i} lacks 'transform_matrix'")
        c2w = _matrix(frame["transform_matrix"], path, f"frame {i} transform_matrix")
        view = CameraView(Path(file_path).stem, c2w, fx, fy, cx, cy, w, h, image_path=path.parent / file_path)
        scene.cameras.append(view.check(where))
    if any(frame.get(k, meta.get(k, 0)) not in (0, None) for frame in frames for k in _DISTORTION_KEYS):
        scene.warnings.append("lens distortion ignored (Blender cameras are pinhole)")
    if meta.get("ply_file_path"):
        ply = path.parent / str(meta["ply_file_path"])
        if ply.is_file():
            scene.points = read_point_cloud_ply(ply)
        else:
            scene.warnings.append(f"{ply}: point cloud named by ply_file_path not found")
    return scene


def _read_camera_path(path: Path, meta: dict) -> ImportedScene:
    try:
        w, h = (
            _size(meta["render_width"], str(path), "render_width"),
            _size(meta["render_height"], str(path), "render_height"),
        )
        entries = list(meta["camera_path"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: camera_path.json needs render_width, render_height and camera_path") from exc
    if not entries:
        raise InputError(f"{path}: camera_path is empty")
    scene = ImportedScene(cameras=[])
    for i, entry in enumerate(entries):
        where = f"{path}: camera {i}"
        if not isinstance(entry, dict) or "fov" not in entry or "camera_to_world" not in entry:
            raise InputError(f"{where} needs 'fov' and 'camera_to_world'")
        fov = _number(entry["fov"], where, "fov")
        if not 0.0 < fov < 180.0:
            raise InputError(f"{where}: fov must be in (0, 180) degrees, got {fov:g}")
        c2w = _matrix(entry["camera_to_world"], path, f"camera {i} camera_to_world")
        f = 0.5 * h / math.tan(0.5 * math.radians(fov))
        scene.cameras.append(CameraView(f"{path.stem}_{i:04d}", c2w, f, f, w / 2, h / 2, w, h).check(where))
    return scene


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    """Write JSON to a temporary file in the same folder, then rename, so a failure never destroys
    an existing file; folders created for it are removed again on failure."""
    path = Path(path)
    created = [p for p in reversed(path.parents) if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2, allow_nan=False)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except BaseException:
        for folder in reversed(created):  # folders made for this file go again
            if folder.is_dir():
                folder.rmdir()
        raise


def transforms_dict(views: list[CameraView], base_dir: Path) -> dict:
    """A nerfstudio transforms.json with per-frame pinhole intrinsics; image paths relative to base_dir."""
    frames = []
    for view in views:
        if view.image_path is not None:
            file_path = Path(os.path.relpath(view.image_path, base_dir)).as_posix()
        else:
            file_path = f"images/{view.name}.png"
        frames.append(
            {
                "file_path": file_path,
                "transform_matrix": np.asarray(view.c2w, dtype=float).tolist(),
                "fl_x": view.fx,
                "fl_y": view.fy,
                "cx": view.cx,
                "cy": view.cy,
                "w": view.width,
                "h": view.height,
            }
        )
    return {"camera_model": "PINHOLE", "frames": frames}


def camera_path_dict(views: list[CameraView], fps: float) -> dict:
    """An ns-render camera path: vertical field of view from fy; size from the first view."""
    w, h = views[0].width, views[0].height
    path = [
        {
            "camera_to_world": np.asarray(v.c2w, dtype=float).reshape(-1).tolist(),
            "fov": math.degrees(2.0 * math.atan(0.5 * h / v.fy)),
            "aspect": w / h,
        }
        for v in views
    ]
    return {
        "camera_type": "perspective",
        "render_width": w,
        "render_height": h,
        "camera_path": path,
        "fps": fps,
        "seconds": len(views) / fps,
        "smoothness_value": 0.0,
        "is_cycle": False,
        "crop": None,
    }
