"""Plain numpy containers passed from the file readers to the Blender builders.

Readers never touch bpy and builders never parse files, so every reader can be tested on its own and
every builder can be fed from any format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import camera_math
from .errors import InputError

# Blender and OpenGL cameras look down -Z with +Y up; OpenCV cameras look down +Z with +Y down.
# Right-multiplying a camera-to-world matrix by this flips between the two camera conventions.
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])
# Tolerance on R^T R = I and on the bottom row of a pose: generous enough for poses stored as 6-digit JSON
# floats or float32, tight enough to refuse scaled, sheared or degenerate matrices.
ROTATION_TOL = 1e-3


def check_rigid(matrix: object, where: str) -> np.ndarray:
    """``matrix`` as a 4x4 rigid pose (rotation and translation), or an InputError naming ``where``.

    Blender stores a camera's pose as location and rotation: a scale, shear, mirror or non-finite value
    would be silently changed into some other camera, so such poses are refused where they enter.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape not in ((3, 4), (4, 4)):
        raise InputError(f"{where}: pose must be a 3x4 or 4x4 matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise InputError(f"{where}: pose has non-finite values (NaN or inf)")
    pose = np.eye(4)
    pose[: m.shape[0]] = m
    r = pose[:3, :3]
    if (
        not np.allclose(r.T @ r, np.eye(3), atol=ROTATION_TOL)
        or np.linalg.det(r) <= 0
        or not np.allclose(pose[3], [0.0, 0.0, 0.0, 1.0], atol=ROTATION_TOL)
    ):
        raise InputError(f"{where}: pose is not a rotation plus translation (singular, scaled or mirrored matrix)")
    return pose


@dataclass
class CameraView:
    """One pinhole view: pose as camera-to-world with Blender/OpenGL camera axes, intrinsics in pixels.

    Pixel (i, j) has its centre at (j + 0.5, i + 0.5), the COLMAP/nerfstudio convention, which is also
    Blender's: the image spans [0, width] x [0, height].
    """

    name: str
    c2w: np.ndarray
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    image_path: Path | None = None
    pixels: np.ndarray | None = None  # (H, W, 3) uint8, for images embedded in a predictions npz

    def check(self, where: str) -> CameraView:
        """This view, or an InputError naming ``where`` if a Blender camera cannot represent it."""
        check_rigid(self.c2w, where)
        values = {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise InputError(f"{where}: intrinsics {', '.join(bad)} are not finite (NaN or inf)")
        if self.fx <= 0 or self.fy <= 0:
            raise InputError(f"{where}: focal length must be positive, got fx={self.fx:g}, fy={self.fy:g}")
        if self.width <= 0 or self.height <= 0:
            raise InputError(f"{where}: image size must be positive, got {self.width} x {self.height}")
        low, high = camera_math.RESOLUTION_RANGE
        if not (low <= self.width <= high and low <= self.height <= high):
            raise InputError(
                f"{where}: image size {self.width} x {self.height} is outside Blender's render range {low}..{high}"
            )
        b = camera_math.to_blender(self.fx, self.fy, self.cx, self.cy, self.width, self.height)
        if b.lens < camera_math.MIN_LENS_MM:
            raise InputError(
                f"{where}: field of view too wide for a Blender camera (fx={self.fx:g}, fy={self.fy:g} for "
                f"{self.width} x {self.height} need a {b.lens:.3g} mm lens, the minimum is {camera_math.MIN_LENS_MM:g})"
            )
        if max(b.pixel_aspect_x, b.pixel_aspect_y) > camera_math.MAX_PIXEL_ASPECT:
            raise InputError(
                f"{where}: fx / fy = {self.fx / self.fy:.3g} is beyond Blender's pixel aspect limit "
                f"{camera_math.MAX_PIXEL_ASPECT:g}"
            )
        return self

    def w2c_opencv(self) -> np.ndarray:
        """(3, 4) world-to-camera matrix with OpenCV camera axes, the form COLMAP and DA3 store."""
        return np.linalg.inv(self.c2w @ CV_TO_GL)[:3]

    def k_matrix(self) -> np.ndarray:
        """(3, 3) intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


def c2w_from_opencv_w2c(w2c: np.ndarray, where: str) -> np.ndarray:
    """Camera-to-world with Blender camera axes from an OpenCV world-to-camera (3,4) or (4,4) matrix,
    checked to be rigid first (a singular one cannot be inverted)."""
    return np.linalg.inv(check_rigid(w2c, where)) @ CV_TO_GL


@dataclass
class PointData:
    """A coloured point cloud: colours are sRGB in [0, 1] as stored in files, confidence is optional."""

    positions: np.ndarray  # (N, 3) float32
    colors: np.ndarray | None = None  # (N, 3) float32 sRGB
    confidence: np.ndarray | None = None  # (N,) float32


@dataclass
class SplatData:
    """3D Gaussians with raw (pre-activation) values as stored in an INRIA 3DGS PLY."""

    means: np.ndarray  # (N, 3)
    scales_log: np.ndarray  # (N, 3)
    rotations: np.ndarray  # (N, 4) wxyz, not necessarily normalised
    opacity_logit: np.ndarray  # (N,)
    sh_dc: np.ndarray  # (N, 3)
    sh_rest: np.ndarray  # (N, K, 3), K = 0, 3, 8 or 15

    @property
    def sh_degree(self) -> int:
        """Spherical-harmonics degree implied by the number of rest coefficients."""
        return int(round(np.sqrt(self.sh_rest.shape[1] + 1))) - 1


@dataclass
class ImportedScene:
    """What a dataset/model reader found: views, an optional point cloud and non-fatal warnings."""

    cameras: list[CameraView]
    points: PointData | None = None
    warnings: list[str] = field(default_factory=list)
