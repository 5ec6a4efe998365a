"""nerfstudio ``transforms.json`` datasets.

This is the dataset format ``ns-train`` reads through its ``nerfstudio-data`` dataparser: per frame
an image path, a camera-to-world matrix in **OpenGL/Blender camera axes** (x right, y up, camera
looking along -z) and pinhole intrinsics in pixels. The project itself works with OpenCV
world-to-camera poses (x right, y down, z forward); the conversion is in :mod:`da3_nerfstudio.cameras`
(``c2w_gl = inverse(w2c_cv)`` with rotation columns 1 and 2 negated). ``applied_transform``, which
nerfstudio folds into its recorded dataparser transform, is read here too.

Intrinsics are written per frame (DA3 may give every view its own focal length) and use the same
continuous pixel convention as COLMAP and nerfstudio (the top-left pixel centre is (0.5, 0.5)).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from da3_nerfstudio.cameras import check_cameras, opencv_w2c_to_opengl_c2w, opengl_c2w_to_opencv_w2c
from da3_nerfstudio.errors import InputError
from da3_nerfstudio.formats.atomic import atomic_write

_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y")
_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
# camera_model values of nerfstudio that are not a (possibly distorted) pinhole projection.
_NON_PERSPECTIVE = {
    "EQUIRECTANGULAR",
    "OMNIDIRECTIONALSTEREO_L",
    "OMNIDIRECTIONALSTEREO_R",
    "VR180_L",
    "VR180_R",
    "ORTHOPHOTO",
}


def frames_from_cameras(
    w2c_opencv: np.ndarray,
    intrinsics: np.ndarray,
    sizes: Sequence[tuple[int, int]],
    file_paths: Sequence[str | os.PathLike[str]],
    depth_paths: Sequence[str | os.PathLike[str]] | None = None,
) -> list[dict[str, Any]]:
    """Turn OpenCV world-to-camera cameras into ``transforms.json`` frame dicts.

    Args:
        w2c_opencv: (N,3,4) or (N,4,4) OpenCV world-to-camera poses.
        intrinsics: (N,3,3) pinhole matrices in pixels, for images of the given sizes.
        sizes: (width, height) of each written image.
        file_paths: image paths relative to the folder of ``transforms.json``.
        depth_paths: optional depth-map paths, relative like ``file_paths``.
    """
    w2c_opencv = np.asarray(w2c_opencv, dtype=np.float64)
    intrinsics = np.asarray(intrinsics, dtype=np.float64)
    n = len(file_paths)
    if w2c_opencv.shape not in ((n, 3, 4), (n, 4, 4)):
        raise ValueError(f"w2c_opencv must have shape ({n}, 3, 4) or ({n}, 4, 4), got {w2c_opencv.shape}")
    if intrinsics.shape != (n, 3, 3) or len(sizes) != n:
        raise ValueError(f"need ({n}, 3, 3) intrinsics and {n} sizes, got {intrinsics.shape}, {len(sizes)}")
    if np.any(intrinsics[:, 0, 1] != 0):
        raise ValueError("intrinsics with skew cannot be stored in transforms.json")
    if depth_paths is not None and len(depth_paths) != n:
        raise ValueError(f"need {n} depth paths, got {len(depth_paths)}")
    c2w_gl = opencv_w2c_to_opengl_c2w(w2c_opencv)
    frames = []
    for i in range(n):
        k = intrinsics[i]
        width, height = sizes[i]
        frame: dict[str, Any] = {
            "file_path": Path(file_paths[i]).as_posix(),
            "transform_matrix": c2w_gl[i].tolist(),
            "fl_x": float(k[0, 0]),
            "fl_y": float(k[1, 1]),
            "cx": float(k[0, 2]),
            "cy": float(k[1, 2]),
            "w": int(width),
            "h": int(height),
        }
        if depth_paths is not None:
            frame["depth_file_path"] = Path(depth_paths[i]).as_posix()
        frames.append(frame)
    return frames


def _to_json(value: Any) -> Any:
    """``json.dump`` fallback for numpy values and paths that callers put into frames or ``extra``."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return Path(value).as_posix()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_transforms_json(
    path: str | os.PathLike[str],
    frames: Sequence[dict[str, Any]],
    *,
    ply_file_path: str | os.PathLike[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a PINHOLE ``transforms.json`` atomically.

    Args:
        path: output file, usually ``<dataset>/transforms.json``.
        frames: frame dicts, e.g. from :func:`frames_from_cameras`.
        ply_file_path: seed point cloud, relative to the dataset folder, in the same world frame as the
            frames (nerfstudio applies only its own orientation/scale to it).
        extra: additional top-level keys (e.g. ``applied_transform``); they may not replace
            ``camera_model``, ``frames`` or ``ply_file_path``.
    """
    meta: dict[str, Any] = {"camera_model": "PINHOLE", "frames": list(frames)}
    if ply_file_path is not None:
        meta["ply_file_path"] = Path(ply_file_path).as_posix()
    clash = sorted(set(extra or {}) & {"camera_model", "frames", "ply_file_path"})
    if clash:
        raise ValueError(f"extra may not set {', '.join(clash)}")
    meta.update(extra or {})
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, default=_to_json)
            f.write("\n")


def _number(path: Path, where: str, key: str, value: Any) -> float:
    """A finite float from a JSON value, or :class:`InputError`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{path}: {where}: {key} must be a finite number, got {value!r}")
    return float(value)


def _angle(path: Path, where: str, key: str, value: Any) -> float:
    """A field of view in radians, strictly between 0 and pi (a pinhole camera sees less than 180 degrees)."""
    angle = _number(path, where, key, value)
    if not 0 < angle < math.pi:
        raise InputError(f"{path}: {where}: {key} must be a field of view in (0, pi) radians, got {angle!r}")
    return angle


def _image_size(path: Path, where: str, file_path: str) -> tuple[int, int]:
    """Size of a frame's image, for Blender-style files that give no ``w``/``h``."""
    image_path = path.parent / file_path
    if not image_path.suffix and not image_path.exists():
        image_path = image_path.with_name(image_path.name + ".png")  # NeRF-synthetic omits ".png"
    try:
        with Image.open(image_path) as image:
            return image.size
    except (OSError, UnidentifiedImageError) as err:
        raise InputError(f"{path}: {where}: no w/h and image {image_path} cannot be read ({err})") from err


def _frame_camera(
    path: Path, index: int, frame: dict[str, Any], defaults: dict[str, Any]
) -> tuple[np.ndarray, tuple[int, int]]:
    """Intrinsic matrix and (width, height) of one frame; per-frame keys override top-level ones."""
    where = f"frame {index}"
    values = {**defaults, **{k: frame[k] for k in _INTRINSIC_KEYS if k in frame}}
    if "w" in values and "h" in values:
        width, height = (_number(path, where, k, values[k]) for k in ("w", "h"))
    else:
        width, height = _image_size(path, where, frame["file_path"])
    if width <= 0 or height <= 0 or width != int(width) or height != int(height):
        raise InputError(f"{path}: {where}: image size must be positive integers, got {width} x {height}")
    if "fl_x" in values:
        fx = _number(path, where, "fl_x", values["fl_x"])
    elif "camera_angle_x" in values:
        fx = 0.5 * width / math.tan(0.5 * _angle(path, where, "camera_angle_x", values["camera_angle_x"]))
    else:
        raise InputError(f"{path}: {where}: no focal length (fl_x or camera_angle_x)")
    if "fl_y" in values:
        fy = _number(path, where, "fl_y", values["fl_y"])
    elif "camera_angle_y" in values:
        fy = 0.5 * height / math.tan(0.5 * _angle(path, where, "camera_angle_y", values["camera_angle_y"]))
    else:
        fy = fx
    cx = _number(path, where, "cx", values["cx"]) if "cx" in values else width / 2
    cy = _number(path, where, "cy", values["cy"]) if "cy" in values else height / 2
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]), (int(width), int(height))


def _frame_c2w(path: Path, index: int, frame: dict[str, Any]) -> np.ndarray:
    """A frame's ``transform_matrix`` as a 4x4 float array (rigidity is checked with all cameras)."""
    where = f"frame {index}"
    try:
        c2w_gl = np.array(frame["transform_matrix"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: {where}: missing or non-numeric transform_matrix") from err
    if c2w_gl.shape != (4, 4):
        raise InputError(f"{path}: {where}: transform_matrix must be 4x4, got shape {c2w_gl.shape}")
    return c2w_gl


def read_transforms_json(
    path: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]], list[str]]:
    """Read a ``transforms.json`` as ``(w2c_opencv (N,4,4), intrinsics (N,3,3), sizes [(W,H)], file_paths)``.

    Frames are returned in file order (nerfstudio itself sorts them by file name). Intrinsics may be
    per frame or top level, as ``fl_x/fl_y/cx/cy/w/h`` or Blender-style ``camera_angle_x``; missing
    ``w``/``h`` are read from the images, missing ``cx``/``cy`` default to the image centre.
    Distortion coefficients are ignored with a warning.
    """
    path = Path(path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise InputError(f"{path}: file does not exist") from err
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read file ({err})") from err
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise InputError(f"{path}: expected a JSON object with a 'frames' list")
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise InputError(f"{path}: no 'frames' list, or it is empty")
    camera_model = meta.get("camera_model", "OPENCV")
    if camera_model in _NON_PERSPECTIVE:
        raise InputError(f"{path}: camera_model {camera_model} is not a pinhole camera and is not supported")
    defaults = {k: meta[k] for k in _INTRINSIC_KEYS if k in meta}
    c2w_gl, intrinsics, sizes, file_paths, distorted = [], [], [], [], []
    for index, frame in enumerate(frames):
        if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
            raise InputError(f"{path}: frame {index}: expected an object with a 'file_path' string")
        if any(frame.get(k, meta.get(k, 0)) != 0 for k in _DISTORTION_KEYS):
            distorted.append(index)
        c2w_gl.append(_frame_c2w(path, index, frame))
        k, size = _frame_camera(path, index, frame, defaults)
        intrinsics.append(k)
        sizes.append(size)
        file_paths.append(frame["file_path"])
    if distorted:
        warnings.warn(
            f"{path}: lens distortion of {len(distorted)} frame(s) is ignored (pinhole fl/cx/cy used)",
            stacklevel=2,
        )
    # Rigidity holds for a pose and its inverse alike: the camera-to-world matrices are checked as read.
    check_cameras(np.stack(c2w_gl), np.stack(intrinsics), str(path), file_paths, label="frame")
    return opengl_c2w_to_opencv_w2c(np.stack(c2w_gl)), np.stack(intrinsics), sizes, file_paths


def applied_transform(meta: dict[str, Any], source: str | Path = "transforms.json") -> np.ndarray:
    """The 4x4 ``applied_transform`` of a transforms.json (original -> saved coordinates; identity when absent).

    Raises :class:`InputError` naming ``source`` unless it is a 3x4 matrix of finite numbers.
    """
    applied = np.eye(4)
    if "applied_transform" in meta:
        values = np.asarray(meta["applied_transform"], dtype=object)
        if values.shape != (3, 4) or not all(isinstance(v, int | float) and np.isfinite(v) for v in values.flat):
            raise InputError(f"{source}: applied_transform must be a 3x4 matrix of finite numbers")
        applied[:3] = values.astype(np.float64)
    return applied


def saved_to_training_frame(dataparser_transform: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """4x4 map from the poses as saved in transforms.json to nerfstudio's training frame (before its scale).

    nerfstudio's recorded dataparser transform also contains the file's ``applied_transform``, which the
    saved poses already carry, so it is taken out again.
    """
    full = np.eye(4)
    full[:3] = np.asarray(dataparser_transform, dtype=np.float64)[:3]
    return full @ np.linalg.inv(applied_transform(meta))
