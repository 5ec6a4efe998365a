"""`Prediction`: what the predictor returns, in numpy, with its conventions and helpers.

Conventions (the same as :mod:`da3_nerfstudio.geometry`):

* ``extrinsics`` (N,3,4) are world-to-camera in OpenCV axes (x right, y down, z forward), i.e.
  COLMAP's ``cam_from_world``. Without known poses the world frame is the reference view's camera
  and the scale is arbitrary (metric for nested models); with known poses it is the caller's frame.
* ``intrinsics`` (N,3,3) are in pixels of the processed images (``images``, ``depth``), with the
  continuous pixel convention: pixel (i, j) has its centre at (j + 0.5, i + 0.5).
* ``depth`` is z-depth in the units of the extrinsics; ``conf`` is the depth confidence (>= 1).
* ``transforms`` (N,3,3) map original image pixel coordinates to processed ones, so intrinsics of
  the original images are ``inv(transforms) @ intrinsics``.
* ``gaussians`` are world-space 3D Gaussians: ``means`` (M,3), ``scales`` (M,3) standard deviations,
  ``rotations`` (M,4) quaternions w x y z, ``harmonics`` (M,3,K) SH per colour, ``opacities`` (M,),
  and ``views`` (M,) the view each Gaussian comes from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from da3_nerfstudio.errors import InputError
from da3_nerfstudio.formats.atomic import atomic_write
from da3_nerfstudio.geometry import invert_rigid, opencv_c2w_to_opengl, to_homogeneous, unproject_depth

#: The official GLB export's confidence rule: threshold = clip(1.05, P40, P90) of the confidences.
CONF_PERCENTILE = 40.0
CONF_FLOOR = 1.05
CONF_CEILING_PERCENTILE = 90.0
GAUSSIAN_KEYS = ("means", "scales", "rotations", "harmonics", "opacities")


@dataclass
class Prediction:
    """DA3 output for N views (see the module docstring for conventions)."""

    depth: np.ndarray
    extrinsics: np.ndarray
    intrinsics: np.ndarray
    images: np.ndarray
    conf: np.ndarray | None = None
    sky: np.ndarray | None = None
    is_metric: bool = False
    scale_factor: float | None = None
    gaussians: dict[str, np.ndarray] | None = None
    original_sizes: np.ndarray | None = None
    transforms: np.ndarray | None = None
    names: list[str] = field(default_factory=list)
    model_name: str = ""

    def __len__(self) -> int:
        return int(self.depth.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """Processed (height, width)."""
        return int(self.depth.shape[1]), int(self.depth.shape[2])

    # ---------------------------------------------------------------- cameras
    def c2w_opencv(self) -> np.ndarray:
        """(N,4,4) camera-to-world, OpenCV axes."""
        return to_homogeneous(invert_rigid(self.extrinsics.astype(np.float64)))

    def c2w_opengl(self) -> np.ndarray:
        """(N,4,4) camera-to-world, OpenGL axes (nerfstudio, Blender)."""
        return opencv_c2w_to_opengl(self.c2w_opencv())

    def original_intrinsics(self) -> np.ndarray:
        """(N,3,3) intrinsics in pixels of the original (EXIF-oriented) images."""
        if self.transforms is None:
            return self.intrinsics.astype(np.float64)
        return np.linalg.inv(self.transforms) @ self.intrinsics.astype(np.float64)

    # ---------------------------------------------------------------- depth and points
    def depth_at_original_size(self, index: int) -> np.ndarray:
        """View ``index``'s depth resampled to its original image size (NaN outside a crop).

        Bilinear sampling through the exact original->processed pixel map, so depth stays aligned
        with the original photo under the continuous pixel convention.
        """
        if self.transforms is None or self.original_sizes is None:
            return self.depth[index].copy()
        width, height = (int(v) for v in self.original_sizes[index])
        shift = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
        # cv2 addresses pixel centres at integer coordinates: conjugate the map by a half pixel.
        to_processed = np.linalg.inv(shift) @ self.transforms[index] @ shift
        return cv2.warpAffine(
            self.depth[index].astype(np.float32),
            to_processed[:2].astype(np.float64),
            (width, height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=float("nan"),
        )

    def confidence_threshold(self, percentile: float = CONF_PERCENTILE) -> float:
        """The official GLB export's rule: max(1.05, P_percentile) capped at P90 of all confidences."""
        if self.conf is None:
            return 0.0
        lo, hi = np.percentile(self.conf, [percentile, CONF_CEILING_PERCENTILE])
        return float(np.clip(CONF_FLOOR, lo, hi))

    def valid_mask(self, percentile: float = CONF_PERCENTILE) -> np.ndarray:
        """(N,H,W) pixels with finite positive depth, confidence above the threshold, and not sky."""
        mask = np.isfinite(self.depth) & (self.depth > 0)
        if self.conf is not None:
            mask &= self.conf >= self.confidence_threshold(percentile)
        if self.sky is not None:
            mask &= ~self.sky
        return mask

    def world_points(self, percentile: float = CONF_PERCENTILE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Confident pixels as world points: (points (M,3) float32, colours (M,3) uint8, view index (M,))."""
        mask = self.valid_mask(percentile)
        points = unproject_depth(self.depth.astype(np.float64), self.intrinsics.astype(np.float64), self.extrinsics)
        views = np.broadcast_to(np.arange(len(self))[:, None, None], mask.shape)
        return points[mask].astype(np.float32), self.images[mask], views[mask]

    # ---------------------------------------------------------------- files
    def save(self, path: str | Path) -> None:
        """Write an ``.npz`` (atomically). Also readable as an official-style npz (depth, conf,
        extrinsics, intrinsics, image)."""
        arrays: dict[str, np.ndarray] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "gaussians":
                arrays.update({f"gaussians_{k}": v for k, v in value.items()})
            elif f.name == "images":
                arrays["image"] = value
            elif f.name == "names":
                arrays["names"] = np.array(value, dtype=str)
            else:
                arrays[f.name] = np.asarray(value)
        path = Path(path)
        with atomic_write(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Prediction:
        """Read this project's npz or the official DA3 npz export (keys depth, conf, extrinsics,
        intrinsics, image)."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: not a readable npz file ({err})") from None
        missing = [k for k in ("depth", "extrinsics", "intrinsics") if k not in arrays]
        if missing:
            raise InputError(f"{path}: not a DA3 prediction (missing {', '.join(missing)})")
        depth = arrays["depth"]
        n = depth.shape[0] if depth.ndim == 3 else -1
        extrinsics, intrinsics = arrays["extrinsics"], arrays["intrinsics"]
        if depth.ndim != 3 or extrinsics.shape[0] != n or intrinsics.shape != (n, 3, 3):
            raise InputError(
                f"{path}: inconsistent shapes depth {depth.shape}, extrinsics {extrinsics.shape}, "
                f"intrinsics {intrinsics.shape}"
            )
        if extrinsics.shape[1:] == (4, 4):
            extrinsics = extrinsics[:, :3]
        if extrinsics.shape[1:] != (3, 4):
            raise InputError(f"{path}: extrinsics must be (N,3,4) or (N,4,4), got {extrinsics.shape}")
        images = arrays.get("image")
        if images is None:
            images = np.zeros((*depth.shape, 3), dtype=np.uint8)
        if images.shape[:3] != depth.shape:
            raise InputError(f"{path}: image {images.shape} does not match depth {depth.shape}")
        gaussians = {k: arrays[f"gaussians_{k}"] for k in (*GAUSSIAN_KEYS, "views") if f"gaussians_{k}" in arrays}
        return cls(
            depth=depth.astype(np.float32),
            extrinsics=extrinsics.astype(np.float32),
            intrinsics=intrinsics.astype(np.float32),
            images=images.astype(np.uint8),
            conf=arrays["conf"].astype(np.float32) if "conf" in arrays else None,
            sky=arrays["sky"].astype(bool) if "sky" in arrays else None,
            is_metric=bool(arrays.get("is_metric", False)),
            scale_factor=float(arrays["scale_factor"]) if "scale_factor" in arrays else None,
            gaussians=gaussians or None,
            original_sizes=arrays.get("original_sizes"),
            transforms=arrays.get("transforms"),
            names=[str(s) for s in arrays["names"]] if "names" in arrays else [],
            model_name=str(arrays.get("model_name", "")),
        )
