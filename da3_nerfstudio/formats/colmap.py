"""COLMAP sparse models (``cameras``, ``images``, ``points3D``), through pycolmap.

COLMAP is the lingua franca of photogrammetry and splatting tools (nerfstudio's ``colmap``
dataparser, INRIA 3DGS, Postshot, ...), so exporting DA3 cameras and points as a COLMAP model lets
them all consume the result. pycolmap does the byte-level work, which keeps the files exactly what
COLMAP itself writes, including the ``rigs``/``frames`` files of COLMAP >= 3.12 (older readers
ignore them). This module needs pycolmap >= 3.12 (trivial rigs and frames).

Conventions: poses are OpenCV world-to-camera ``[R|t]`` (x right, y down, z forward), intrinsics are
in pixels with the continuous pixel convention of COLMAP and this project (the centre of the top-left
pixel is at (0.5, 0.5)), so values pass through unchanged.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import struct
import tempfile
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from da3_nerfstudio.cameras import check_cameras
from da3_nerfstudio.errors import InputError


def _import_pycolmap():  # noqa: ANN202 (the module)
    """pycolmap, without its side effect on SIGTERM: importing it installs glog's failure handler, which turns
    SIGTERM into a stack dump and an abort, so a command that imports it late (after setting its own handler
    to clean up staging folders) would die on SIGTERM without cleaning up."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if in_main_thread else None
    import pycolmap

    if previous is not None:  # None: set outside Python, nothing to restore
        signal.signal(signal.SIGTERM, previous)
    return pycolmap


pycolmap = _import_pycolmap()

# Camera models whose parameters are exactly fx, fy, cx, cy (SIMPLE_PINHOLE shares one focal length).
_PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE")
# Text files of a model that would shadow a freshly written binary one in readers that prefer text.
_TEXT_MODEL_FILES = ("cameras.txt", "images.txt", "points3D.txt", "rigs.txt", "frames.txt")

Observation = tuple[int, tuple[float, float]]
"""One sighting of a 3D point: (index of the observing image, (u, v) pixel position)."""


class Observations(NamedTuple):
    """All sightings of a model's points as one table (row k: point ``point[k]`` seen by image ``image[k]``
    at pixel ``uv[k]``), so a model with a sighting per point is assembled without a Python object per
    sighting."""

    point: np.ndarray  # (K,) int, 0-based point index
    image: np.ndarray  # (K,) int, 0-based image index
    uv: np.ndarray  # (K, 2) float64 pixel positions

    @classmethod
    def from_tracks(cls, tracks: Sequence[Sequence[Observation]]) -> Observations:
        """The table of per-point lists of sightings (``tracks[i]``: the sightings of point i)."""
        rows = [(p, image, u, v) for p, sightings in enumerate(tracks) for image, (u, v) in sightings]
        table = np.array(rows, dtype=np.float64).reshape(-1, 4)
        return cls(table[:, 0].astype(np.int64), table[:, 1].astype(np.int64), table[:, 2:])


@dataclass
class ColmapModel:
    """The parts of a COLMAP model the project uses, images in ascending COLMAP image-id order."""

    w2c: np.ndarray  # (N,3,4) float64, OpenCV world-to-camera [R|t]
    intrinsics: np.ndarray  # (N,3,3) float64, pixels, pixel centres at +0.5
    image_sizes: list[tuple[int, int]]  # (width, height) per image
    image_names: list[str]  # image file names relative to the image folder
    points: np.ndarray  # (M,3) float64, world
    colors: np.ndarray  # (M,3) uint8


def _build_reconstruction(
    w2c: np.ndarray,
    intrinsics: np.ndarray,
    image_sizes: Sequence[tuple[int, int]],
    image_names: Sequence[str],
    points: np.ndarray,
    colors: np.ndarray,
    observations: Observations | None,
) -> pycolmap.Reconstruction:
    """Assemble an in-memory reconstruction: one PINHOLE camera and one trivial rig/frame per image."""
    n = len(image_names)
    if w2c.shape not in ((n, 3, 4), (n, 4, 4)):
        raise ValueError(f"w2c must have shape ({n}, 3, 4), got {w2c.shape}")
    if intrinsics.shape != (n, 3, 3):
        raise ValueError(f"intrinsics must have shape ({n}, 3, 3), got {intrinsics.shape}")
    if len(image_sizes) != n or len(set(image_names)) != n:
        raise ValueError("need one (width, height) per image and unique image names")
    rotations = w2c[:, :3, :3]
    if not np.allclose(rotations @ rotations.transpose(0, 2, 1), np.eye(3), atol=1e-4) or np.any(
        np.linalg.det(rotations) <= 0
    ):
        raise ValueError("w2c rotations must be proper rotation matrices")
    if np.any(intrinsics[:, 0, 1] != 0):
        raise ValueError("intrinsics with skew cannot be stored as a COLMAP PINHOLE camera")
    m = len(points)
    if points.shape != (m, 3) or colors.shape != (m, 3):
        raise ValueError(f"points and colors must have shape (M, 3), got {points.shape} and {colors.shape}")
    obs = observations or Observations(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2)))
    if len(obs.point) and (obs.point.min() < 0 or obs.point.max() >= m):
        raise ValueError(f"observations must refer to the {m} points, got point index {obs.point.max()}")
    bad = np.flatnonzero((obs.image < 0) | (obs.image >= n))
    if len(bad):
        raise ValueError(f"point {obs.point[bad[0]]} is observed by image {obs.image[bad[0]]}, but there are {n}")

    # Each image's keypoints are its sightings in table order; a sighting's keypoint index is its rank there.
    by_image = np.argsort(obs.image, kind="stable")
    per_image = np.bincount(obs.image, minlength=n)
    image_start = np.concatenate([[0], np.cumsum(per_image)])
    keypoint = np.empty(len(by_image), np.int64)
    keypoint[by_image] = np.arange(len(by_image)) - image_start[obs.image[by_image]]
    rec = pycolmap.Reconstruction()
    for i in range(n):
        width, height = image_sizes[i]
        k = intrinsics[i]
        camera = pycolmap.Camera(
            camera_id=i + 1,
            model="PINHOLE",
            width=int(width),
            height=int(height),
            params=[k[0, 0], k[1, 1], k[0, 2], k[1, 2]],
        )
        rec.add_camera_with_trivial_rig(camera)
        image = pycolmap.Image(
            name=str(image_names[i]),
            keypoints=np.ascontiguousarray(obs.uv[by_image[image_start[i] : image_start[i + 1]]], np.float64),
            camera_id=i + 1,
            image_id=i + 1,
        )
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(np.asarray(w2c[i, :3, :4], np.float64)))
    # One track per point; coordinates and colours go to pybind as numpy rows (faster than Python lists).
    by_point = np.argsort(obs.point, kind="stable")
    track_end = np.cumsum(np.bincount(obs.point, minlength=m)).tolist()
    track_images, track_keypoints = (obs.image[by_point] + 1).tolist(), keypoint[by_point].tolist()
    start = 0
    for xyz, rgb, end in zip(points, colors, track_end, strict=True):
        track = pycolmap.Track()
        for j in range(start, end):
            track.add_element(track_images[j], track_keypoints[j])
        start = end
        rec.add_point3D(xyz, track, rgb)
    return rec


def write_colmap_model(
    folder: str | os.PathLike[str],
    w2c: np.ndarray,
    intrinsics: np.ndarray,
    image_sizes: Sequence[tuple[int, int]],
    image_names: Sequence[str],
    points: np.ndarray,
    colors: np.ndarray,
    observations: Observations | Sequence[Sequence[Observation]] | None = None,
) -> None:
    """Write a binary COLMAP model (one PINHOLE camera per image) into ``folder``.

    Args:
        folder: Model folder (e.g. ``colmap/sparse/0``); created if needed. Other files in it are kept.
        w2c: (N,3,4) or (N,4,4) OpenCV world-to-camera poses.
        intrinsics: (N,3,3) pinhole matrices in pixels (pixel centres at +0.5, as in COLMAP).
        image_sizes: (width, height) per image.
        image_names: image file names, relative to the image folder the model will be used with.
        points: (M,3) world points.
        colors: (M,3) uint8 point colours.
        observations: the points' sightings with 0-based image indices into the arrays above, as an
            :class:`Observations` table or, per point, the list of its ``(image_index, (u, v))``;
            ``None`` writes points without tracks.

    The model is written into a temporary folder inside ``folder`` and each file is then moved into
    place with :func:`os.replace`, so a failure never leaves a half-written model behind. Stale text
    files of a previous model (``cameras.txt``...) are removed after the move, because readers that
    prefer text (nerfstudio's colmap dataparser among them) would otherwise read the old model.
    """
    if observations is not None and not isinstance(observations, Observations):
        if len(observations) != len(points):
            raise ValueError(f"observations must have one entry per point ({len(points)}), got {len(observations)}")
        observations = Observations.from_tracks(observations)
    rec = _build_reconstruction(
        np.asarray(w2c, np.float64),
        np.asarray(intrinsics, np.float64),
        image_sizes,
        image_names,
        np.asarray(points, np.float64),
        np.asarray(colors, np.uint8),
        observations,
    )
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".colmap-", suffix=".tmp", dir=folder))
    try:
        rec.write(tmp)
        for written in sorted(tmp.iterdir()):
            os.replace(written, folder / written.name)
        for name in _TEXT_MODEL_FILES:
            (folder / name).unlink(missing_ok=True)
    except BaseException:
        if created and not any(p != tmp for p in folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pinhole_matrix(camera: pycolmap.Camera, model_folder: Path) -> np.ndarray:
    """Pinhole matrix of a camera; distortion of perspective models is dropped with a warning."""
    if camera.model_name not in _PINHOLE_MODELS:
        if not camera.is_perspective():
            raise InputError(
                f"{model_folder}: camera {camera.camera_id} uses the non-perspective model "
                f"{camera.model_name}, which is not supported"
            )
        distortion = np.asarray(camera.params)[camera.extra_params_idxs()]
        if np.any(distortion != 0):
            warnings.warn(
                f"{model_folder}: camera {camera.camera_id} uses {camera.model_name}; its distortion "
                f"parameters {distortion.tolist()} are ignored and only fx, fy, cx, cy are used",
                stacklevel=3,
            )
    return np.array(
        [
            [camera.focal_length_x, 0.0, camera.principal_point_x],
            [0.0, camera.focal_length_y, camera.principal_point_y],
            [0.0, 0.0, 1.0],
        ]
    )


class _Cursor:
    """Bounds-checked little-endian reads of one binary model file."""

    def __init__(self, path: Path) -> None:
        self.path, self.data, self.offset = path, path.read_bytes(), 0

    def take(self, size: int, what: str) -> bytes:
        if size > len(self.data) - self.offset:
            raise InputError(
                f"{self.path}: truncated or corrupt binary COLMAP file ({what} needs {size} bytes at offset "
                f"{self.offset}, the file has {len(self.data)})"
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "little")

    def skip_records(self, count: int, size: int, what: str) -> None:
        """Skip ``count`` fixed-size records; a count the file cannot hold fails before any loop."""
        self.take(count * size, f"{count} {what}")

    def string(self, what: str) -> None:
        end = self.data.find(b"\0", self.offset)
        if end < 0:
            raise InputError(f"{self.path}: truncated or corrupt binary COLMAP file (unterminated {what})")
        self.offset = end + 1

    def done(self) -> None:
        if self.offset != len(self.data):
            raise InputError(
                f"{self.path}: corrupt binary COLMAP file ({len(self.data) - self.offset} unexpected bytes at the end)"
            )


# points3D.bin record: id u64, xyz 3 f64, colour 3 u8, error f64, track length u64 (then 8 bytes per element).
_POINT_HEAD = 8 + 3 * 8 + 3 + 8 + 8
_TRACK_LENGTH = struct.Struct("<Q")


@functools.cache
def _num_params(model_id: int) -> int | None:
    """Parameter count of a COLMAP camera model id, or None for an id pycolmap does not know."""
    try:
        return len(pycolmap.Camera.create_from_model_id(1, pycolmap.CameraModelId(model_id), 1.0, 1, 1).params)
    except (ValueError, TypeError, RuntimeError):
        return None


def _check_binary_layout(folder: Path) -> None:
    """Walk the binary files' record structure against their sizes before pycolmap reads them.

    pycolmap trusts every count it reads: an empty or truncated ``points3D.bin`` makes it loop over
    garbage for minutes or abort the process. This walk (the layout of COLMAP's
    ``reconstruction_io_binary``) turns any such file into one :class:`InputError` at once.
    """
    if (path := folder / "cameras.bin").is_file():
        f = _Cursor(path)
        for _ in range(f.uint(8, "the camera count")):
            f.take(4, "a camera id")
            model_id = f.uint(4, "a camera model")
            count = _num_params(model_id)
            if count is None:
                raise InputError(f"{path}: corrupt binary COLMAP file (unknown camera model id {model_id})")
            f.skip_records(1, 16 + 8 * count, "camera size and parameters")
        f.done()
    if (path := folder / "images.bin").is_file():
        f = _Cursor(path)
        for _ in range(f.uint(8, "the image count")):
            f.take(4 + 7 * 8 + 4, "an image pose")
            f.string("image name")
            f.skip_records(f.uint(8, "a keypoint count"), 24, "keypoints")
        f.done()
    if (path := folder / "points3D.bin").is_file():
        # Hundreds of thousands of records: the walk is inlined (about 1 us per point).
        f = _Cursor(path)
        count = f.uint(8, "the point count")
        data, offset, size, complete = f.data, f.offset, len(f.data), True
        for _ in range(count):
            if offset + _POINT_HEAD > size:
                complete = False
                break
            offset += _POINT_HEAD + 8 * _TRACK_LENGTH.unpack_from(data, offset + _POINT_HEAD - 8)[0]
        if not complete or offset > size:
            raise InputError(
                f"{path}: truncated or corrupt binary COLMAP file ({count} points announced, "
                f"the file of {size} bytes ends before them)"
            )
        f.offset = offset
        f.done()
    if (path := folder / "rigs.bin").is_file():
        f = _Cursor(path)
        for _ in range(f.uint(8, "the rig count")):
            f.take(4, "a rig id")
            sensors = f.uint(4, "a sensor count")
            if sensors:
                f.take(8, "a reference sensor")
            for _ in range(max(sensors - 1, 0)):
                f.take(8, "a sensor")
                if f.uint(1, "a sensor pose flag"):
                    f.take(7 * 8, "a sensor pose")
        f.done()
    if (path := folder / "frames.bin").is_file():
        f = _Cursor(path)
        for _ in range(f.uint(8, "the frame count")):
            f.take(4 + 4 + 7 * 8, "a frame pose")
            f.skip_records(f.uint(4, "a frame's data count"), 16, "frame data ids")
        f.done()


def read_colmap_model(folder: str | os.PathLike[str]) -> ColmapModel:
    """Read a COLMAP model (binary preferred, else text) with its registered images in image-id order.

    Cameras with distortion (OPENCV, SIMPLE_RADIAL, ...) are reduced to fx, fy, cx, cy and a
    :class:`UserWarning` says the distortion is ignored; non-perspective cameras raise
    :class:`InputError`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: COLMAP model folder does not exist")
    for stem in ("cameras", "images", "points3D"):
        if not (folder / f"{stem}.bin").is_file() and not (folder / f"{stem}.txt").is_file():
            raise InputError(f"{folder}: not a COLMAP model (no {stem}.bin or {stem}.txt)")
    _check_binary_layout(folder)
    try:
        rec = pycolmap.Reconstruction(folder)
    except Exception as err:  # pycolmap surfaces corrupt files as assorted C++ exception types
        message = " ".join(str(err).split())
        raise InputError(f"{folder}: cannot read COLMAP model ({message})") from err
    image_ids = sorted(rec.reg_image_ids())
    if not image_ids:
        raise InputError(f"{folder}: COLMAP model has no registered images")
    images = [rec.image(i) for i in image_ids]
    cameras = [rec.camera(image.camera_id) for image in images]
    names = [image.name for image in images]
    w2c = np.stack([image.cam_from_world().matrix() for image in images])
    intrinsics = np.stack([_pinhole_matrix(camera, folder) for camera in cameras])
    check_cameras(w2c, intrinsics, str(folder), names, label="image")
    for name, camera in zip(names, cameras, strict=True):
        if camera.width < 1 or camera.height < 1:
            raise InputError(
                f"{folder}: image {name}: camera {camera.camera_id} has size {camera.width}x{camera.height}"
            )
    point_ids = sorted(rec.point3D_ids())
    points = np.array([rec.point3D(p).xyz for p in point_ids], dtype=np.float64).reshape(-1, 3)
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        raise InputError(
            f"{folder}: {int(bad.sum())} 3D points have non-finite coordinates "
            f"(e.g. point id {point_ids[int(np.argmax(bad))]})"
        )
    return ColmapModel(
        w2c=w2c,
        intrinsics=intrinsics,
        image_sizes=[(camera.width, camera.height) for camera in cameras],
        image_names=names,
        points=points,
        colors=np.array([rec.point3D(p).color for p in point_ids], dtype=np.uint8).reshape(-1, 3),
    )
