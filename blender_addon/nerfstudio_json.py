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

_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")


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
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: {what} is not a numeric matrix") from exc
    if m.size == 16:
        return m.reshape(4, 4)
    if m.size == 12:
        return np.vstack([m.reshape(3, 4), [0.0, 0.0, 0.0, 1.0]])
    raise InputError(f"{path}: {what} must have 12 or 16 numbers, got {m.size}")


def read_nerfstudio_json(path: str | os.PathLike) -> ImportedScene:
    """Cameras (and the ``ply_file_path`` points) from a transforms.json or a camera_path.json.

    ``path`` may be a dataset folder containing ``transforms.json``.
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
    scene = ImportedScene(cameras=[])
    for i, frame in enumerate(frames):
        merged = {**meta, **frame}
        try:
            w, h = int(merged["w"]), int(merged["h"])
            if "fl_x" in merged:
                fx = float(merged["fl_x"])
            else:
                fx = 0.5 * w / math.tan(0.5 * float(merged["camera_angle_x"]))
            if "fl_y" in merged:
                fy = float(merged["fl_y"])
            elif "camera_angle_y" in merged:
                fy = 0.5 * h / math.tan(0.5 * float(merged["camera_angle_y"]))
            else:
                fy = fx
            cx, cy = float(merged.get("cx", w / 2)), float(merged.get("cy", h / 2))
            file_path = str(frame["file_path"])
        except KeyError as exc:
            raise InputError(f"{path}: frame {i} lacks {exc.args[0]!r} (and no global value)") from exc
        except (TypeError, ValueError) as exc:
            raise InputError(f"{path}: frame {i} has a non-numeric intrinsic value") from exc
        if "transform_matrix" not in frame:
            raise InputError(f"{path}: frame {i} lacks 'transform_matrix'")
        image = path.parent / file_path
        scene.cameras.append(
            CameraView(
                name=Path(file_path).stem,
                c2w=_matrix(frame["transform_matrix"], path, f"frame {i} transform_matrix"),
                fx=fx,
                fy=fy,
                cx=cx,
                cy=cy,
                width=w,
                height=h,
                image_path=image,
            )
        )
    if any(float(meta.get(k, 0.0) or 0.0) != 0.0 for k in ("k1", "k2", "k3", "k4", "p1", "p2")):
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
        w, h = int(meta["render_width"]), int(meta["render_height"])
        entries = list(meta["camera_path"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: camera_path.json needs render_width, render_height and camera_path") from exc
    if not entries:
        raise InputError(f"{path}: camera_path is empty")
    scene = ImportedScene(cameras=[])
    for i, entry in enumerate(entries):
        try:
            fov = math.radians(float(entry["fov"]))
            c2w = _matrix(entry["camera_to_world"], path, f"camera {i} camera_to_world")
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}: camera {i} needs 'fov' and 'camera_to_world'") from exc
        f = 0.5 * h / math.tan(0.5 * fov)
        scene.cameras.append(CameraView(f"{path.stem}_{i:04d}", c2w, f, f, w / 2, h / 2, w, h))
    return scene


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    """Write JSON to a temporary file in the same folder, then rename, so a failure never destroys
    an existing file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
