"""Plain numpy containers passed from the file readers to the Blender builders.

Readers never touch bpy and builders never parse files, so every reader can be tested on its own and
every builder can be fed from any format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Blender and OpenGL cameras look down -Z with +Y up; OpenCV cameras look down +Z with +Y down.
# Right-multiplying a camera-to-world matrix by this flips between the two camera conventions.
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


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

    def w2c_opencv(self) -> np.ndarray:
        """(3, 4) world-to-camera matrix with OpenCV camera axes, the form COLMAP and DA3 store."""
        return np.linalg.inv(self.c2w @ CV_TO_GL)[:3]

    def k_matrix(self) -> np.ndarray:
        """(3, 3) intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


def c2w_from_opencv_w2c(w2c: np.ndarray) -> np.ndarray:
    """Camera-to-world with Blender camera axes from an OpenCV world-to-camera (3,4) or (4,4) matrix."""
    m = np.eye(4)
    m[:3, :4] = np.asarray(w2c, dtype=np.float64)[:3, :4]
    return np.linalg.inv(m) @ CV_TO_GL


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
