"""COLMAP sparse-model reader (``cameras``/``images``/``points3D``, .bin or .txt), numpy only.

pycolmap is not available inside Blender, so the documented COLMAP file layouts are parsed directly.
Lens distortion cannot be represented by a Blender camera; it is reported as a warning.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from .errors import InputError
from .scene_data import CameraView, ImportedScene, PointData, c2w_from_opencv_w2c

# model id -> (name, number of parameters)
_MODELS = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
    12: ("SIMPLE_DIVISION", 4),
    13: ("DIVISION", 5),
}
_BY_NAME = {name: (mid, n) for mid, (name, n) in _MODELS.items()}
# Models whose first parameter is a single focal length f (fx = fy = f).
_SINGLE_F = {"SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "SIMPLE_DIVISION"}
_FISHEYE = {
    "OPENCV_FISHEYE",
    "SIMPLE_RADIAL_FISHEYE",
    "RADIAL_FISHEYE",
    "THIN_PRISM_FISHEYE",
    "RAD_TAN_THIN_PRISM_FISHEYE",
    "FOV",
}
# Smallest record sizes in bytes, to refuse a count that the file cannot hold before allocating for it.
_MIN_CAMERA_BYTES = struct.calcsize("<iiQQ")
_MIN_IMAGE_BYTES = struct.calcsize("<i7di") + 1 + 8  # pose, empty name's NUL, points2D count
_POINT_BYTES = struct.calcsize("<Q3d3BdQ")


# (image id, name, camera id, quaternion w x y z, translation): one registered image.
_Image = tuple[int, str, int, np.ndarray, np.ndarray]


class _Camera:
    def __init__(self, model: str, width: int, height: int, params: np.ndarray) -> None:
        self.model, self.width, self.height, self.params = model, width, height, params

    def pinhole(self) -> tuple[float, float, float, float]:
        p = self.params
        if self.model in _SINGLE_F:
            return p[0], p[0], p[1], p[2]
        return p[0], p[1], p[2], p[3]

    def has_distortion(self) -> bool:
        extra = self.params[3:] if self.model in _SINGLE_F else self.params[4:]
        return bool(np.any(extra != 0)) or self.model in _FISHEYE


def find_model_dir(path: str | os.PathLike) -> tuple[Path, str]:
    """The folder holding the model and its extension; ``path`` may be the folder or any file in it."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    for candidate in (folder, folder / "sparse" / "0", folder / "sparse", folder / "0"):
        for ext in (".bin", ".txt"):
            if (candidate / f"cameras{ext}").is_file() and (candidate / f"images{ext}").is_file():
                return candidate, ext
    raise InputError(f"{path}: no COLMAP model here (need cameras.bin/images.bin or cameras.txt/images.txt)")


class _Reader:
    """Sequential little-endian reader that turns running off the end into an InputError."""

    def __init__(self, path: Path) -> None:
        self.path, self.data, self.pos = path, path.read_bytes(), 0

    def count(self, record_bytes: int) -> int:
        """A record count, refused when the rest of the file cannot hold that many records."""
        count = self.read("<Q")[0]
        if count * record_bytes > len(self.data) - self.pos:
            raise InputError(f"{self.path}: truncated COLMAP binary file ({count} records announced)")
        return count

    def read(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise InputError(f"{self.path}: truncated COLMAP binary file")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def skip(self, nbytes: int) -> None:
        if self.pos + nbytes > len(self.data):
            raise InputError(f"{self.path}: truncated COLMAP binary file")
        self.pos += nbytes

    def name(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise InputError(f"{self.path}: truncated COLMAP binary file (unterminated image name)")
        text = self.data[self.pos : end].decode("utf-8")
        self.pos = end + 1
        return text


def _cameras_bin(path: Path) -> dict[int, _Camera]:
    r = _Reader(path)
    cameras = {}
    for _ in range(r.count(_MIN_CAMERA_BYTES)):
        cam_id, model_id, width, height = r.read("<iiQQ")
        if model_id not in _MODELS:
            raise InputError(f"{path}: unknown COLMAP camera model id {model_id}")
        name, n = _MODELS[model_id]
        cameras[cam_id] = _Camera(name, width, height, np.array(r.read(f"<{n}d")))
    return cameras


def _images_bin(path: Path) -> list[_Image]:
    r = _Reader(path)
    images = []
    for _ in range(r.count(_MIN_IMAGE_BYTES)):
        values = r.read("<i7di")
        name = r.name()
        r.skip(r.read("<Q")[0] * 24)  # points2D: x, y (double) and point3D id (int64)
        images.append((values[0], name, values[8], np.array(values[1:5]), np.array(values[5:8])))
    return images


def _points_bin(path: Path) -> PointData | None:
    r = _Reader(path)
    count = r.count(_POINT_BYTES)
    ids = np.empty(count, np.int64)
    xyz = np.empty((count, 3), np.float64)
    rgb = np.empty((count, 3), np.float64)
    for i in range(count):
        values = r.read("<Q3d3BdQ")
        ids[i], xyz[i], rgb[i] = values[0], values[1:4], values[4:7]
        r.skip(values[8] * 8)  # track: image id and point2D index (int32 each)
    return _points(path, ids, xyz, rgb)


def _points(path: Path, ids: np.ndarray, xyz: np.ndarray, rgb: np.ndarray) -> PointData | None:
    """Points in ascending point-id order (COLMAP's own order; files may list them in any order)."""
    if not len(ids):
        return None
    if not np.isfinite(xyz).all():
        raise InputError(f"{path}: {int((~np.isfinite(xyz).all(axis=1)).sum())} points have non-finite coordinates")
    if rgb.min() < 0 or rgb.max() > 255:
        raise InputError(f"{path}: point colours must be in 0..255")
    order = np.argsort(ids, kind="stable")
    return PointData(xyz[order].astype(np.float32), (rgb[order] / 255.0).astype(np.float32))


def _data_lines(path: Path) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.split() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _cameras_txt(path: Path) -> dict[int, _Camera]:
    cameras = {}
    for words in _data_lines(path):
        try:
            model = words[1]
            if model not in _BY_NAME or len(words) != 4 + _BY_NAME[model][1]:
                raise InputError(f"{path}: bad camera line {' '.join(words)!r}")
            cameras[int(words[0])] = _Camera(model, int(words[2]), int(words[3]), np.array(words[4:], float))
        except (IndexError, ValueError) as exc:
            raise InputError(f"{path}: bad camera line {' '.join(words)!r}") from exc
    return cameras


def _images_txt(path: Path) -> list[_Image]:
    images = []
    raw = path.read_text(encoding="utf-8").splitlines()
    rows = [line for line in raw if not line.lstrip().startswith("#")]
    # Each image has two lines (pose line, then points2D line, which may be empty).
    for line in rows[0::2]:
        words = line.split()
        if not words:
            continue
        try:
            q, t = np.array(words[1:5], float), np.array(words[5:8], float)
            images.append((int(words[0]), " ".join(words[9:]), int(words[8]), q, t))
        except (IndexError, ValueError) as exc:
            raise InputError(f"{path}: bad image line {line.strip()!r}") from exc
    return images


def _points_txt(path: Path) -> PointData | None:
    rows = _data_lines(path)
    if not rows:
        return None
    try:
        table = np.array([r[1:7] for r in rows], dtype=np.float64)
        ids = np.array([int(r[0]) for r in rows], dtype=np.int64)
    except ValueError as exc:
        raise InputError(f"{path}: bad points3D line (expected POINT3D_ID X Y Z R G B ...)") from exc
    if table.shape[1:] != (6,):
        raise InputError(f"{path}: bad points3D line (expected POINT3D_ID X Y Z R G B ...)")
    return _points(path, ids, table[:, :3], table[:, 3:6])


def _rotation_from_quaternion(q: np.ndarray, where: str) -> np.ndarray:
    norm = np.linalg.norm(q)
    if not np.isfinite(q).all() or norm < 1e-12:
        raise InputError(f"{where}: rotation quaternion {q.tolist()} is zero or not finite")
    w, x, y, z = q / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def read_colmap_model(path: str | os.PathLike, image_dir: str | os.PathLike | None = None) -> ImportedScene:
    """Cameras (one per registered image) and the sparse points of a COLMAP model.

    Image files are looked up in ``image_dir`` or, by default, in ``images/`` next to ``sparse/``.
    """
    folder, ext = find_model_dir(path)
    try:
        if ext == ".bin":
            intrinsics, images = _cameras_bin(folder / "cameras.bin"), _images_bin(folder / "images.bin")
            points_file = folder / "points3D.bin"
            points = _points_bin(points_file) if points_file.is_file() else None
        else:
            intrinsics, images = _cameras_txt(folder / "cameras.txt"), _images_txt(folder / "images.txt")
            points_file = folder / "points3D.txt"
            points = _points_txt(points_file) if points_file.is_file() else None
    except UnicodeDecodeError as exc:
        raise InputError(f"{folder}: COLMAP file is not valid text/UTF-8") from exc
    if image_dir is None:
        guesses = [folder.parent / "images", folder.parent.parent / "images", folder.parent.parent.parent / "images"]
        image_dir = next((g for g in guesses if g.is_dir()), guesses[0])
    scene = ImportedScene(cameras=[], points=points)
    distorted = set()
    # Ascending image id, COLMAP's own order (and the core reader's): ids follow capture or import order.
    for image_id, name, cam_id, q, t in sorted(images, key=lambda item: item[0]):
        where = f"{folder}: image {image_id} ({name!r})"
        if not name:
            raise InputError(f"{folder}: image {image_id} has an empty name")
        if cam_id not in intrinsics:
            raise InputError(f"{where} refers to missing camera id {cam_id}")
        cam = intrinsics[cam_id]
        if cam.has_distortion():
            distorted.add(cam.model)
        w2c = np.concatenate([_rotation_from_quaternion(q, where), t[:, None]], axis=1)
        fx, fy, cx, cy = cam.pinhole()
        view = CameraView(
            name=Path(name).stem,
            c2w=c2w_from_opencv_w2c(w2c, where),
            fx=float(fx),
            fy=float(fy),
            cx=float(cx),
            cy=float(cy),
            width=int(cam.width),
            height=int(cam.height),
            image_path=Path(image_dir) / name,
        )
        scene.cameras.append(view.check(f"{where}, camera {cam_id} ({cam.model})"))
    if distorted:
        scene.warnings.append(
            f"lens distortion of {', '.join(sorted(distorted))} cameras ignored (Blender cameras are pinhole)"
        )
    if not scene.cameras:
        raise InputError(f"{folder}: COLMAP model has no registered images")
    return scene
