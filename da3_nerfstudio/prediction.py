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
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from da3_nerfstudio.cameras import check_cameras
from da3_nerfstudio.dataset_options import CONF_PERCENTILE
from da3_nerfstudio.errors import InputError
from da3_nerfstudio.formats.atomic import atomic_write
from da3_nerfstudio.geometry import invert_rigid, opencv_c2w_to_opengl, to_homogeneous, unproject_depth

#: The official GLB export's confidence rule: threshold = clip(1.05, P40 (CONF_PERCENTILE), P90) of the confidences.
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
        intrinsics, image), refusing anything malformed with one :class:`InputError` line that names
        the file, the array and, for cameras and depth, the view.

        Images may be uint8, integers in 0..255 or floats in [0, 1] (scaled by 255 and rounded), RGB,
        grey (replicated) or RGBA (alpha dropped, as the predictor does); depth may hold NaN, inf or
        values <= 0 for unknown pixels, but every view needs at least one valid (finite, > 0, not sky)
        pixel. Pickled or object arrays are never loaded.
        """
        path = Path(path)
        arrays = _read_npz(path)
        missing = [k for k in ("depth", "extrinsics", "intrinsics") if k not in arrays]
        if missing:
            raise InputError(f"{path}: not a DA3 prediction (missing {', '.join(missing)})")
        depth = _real(path, "depth", arrays["depth"])
        if depth.ndim != 3 or 0 in depth.shape:
            raise InputError(f"{path}: depth must be (N,H,W) with N, H, W >= 1, got shape {depth.shape}")
        n = depth.shape[0]
        extrinsics = _real(path, "extrinsics", arrays["extrinsics"])
        intrinsics = _real(path, "intrinsics", arrays["intrinsics"])
        if extrinsics.shape[:1] != (n,) or intrinsics.shape[:1] != (n,):
            raise InputError(
                f"{path}: inconsistent shapes depth {depth.shape}, extrinsics {extrinsics.shape}, "
                f"intrinsics {intrinsics.shape}"
            )
        names = [str(s) for s in arrays["names"].reshape(-1)] if "names" in arrays else []
        if names and len(names) != n:
            raise InputError(f"{path}: names has {len(names)} entries for {n} views")
        check_cameras(extrinsics, intrinsics, str(path), names or None)  # (N,4,4) rows are dropped below
        conf = _per_pixel(path, "conf", arrays.get("conf"), depth.shape)
        sky = _per_pixel(path, "sky", arrays.get("sky"), depth.shape)
        if sky is not None:
            if not np.isfinite(sky).all():
                raise InputError(f"{path}: sky has non-finite values")
            sky = sky >= 0.5 if np.issubdtype(sky.dtype, np.floating) else sky != 0
        images = arrays.get("image")
        images = np.zeros((*depth.shape, 3), np.uint8) if images is None else _images_to_uint8(path, images)
        if images.shape[:3] != depth.shape:
            raise InputError(f"{path}: image {images.shape} does not match depth {depth.shape}")
        original_sizes = _optional(path, "original_sizes", arrays.get("original_sizes"), (n, 2))
        if original_sizes is not None and (
            np.any(original_sizes < 1) or np.any(original_sizes != np.rint(original_sizes))
        ):
            raise InputError(f"{path}: original_sizes must be positive integer (width, height) pairs")
        transforms = _optional(path, "transforms", arrays.get("transforms"), (n, 3, 3))
        if transforms is not None and (
            np.abs(transforms[:, 2] - [0, 0, 1]).max() > 1e-6 or np.any(np.abs(np.linalg.det(transforms)) < 1e-12)
        ):
            raise InputError(f"{path}: transforms must be invertible affine pixel maps (last row [0, 0, 1])")
        scale_factor = _optional(path, "scale_factor", arrays.get("scale_factor"), ())
        is_metric = _optional(path, "is_metric", arrays.get("is_metric"), ())
        prediction = cls(
            depth=depth.astype(np.float32),
            extrinsics=(extrinsics[:, :3] if extrinsics.shape[1] == 4 else extrinsics).astype(np.float32),
            intrinsics=intrinsics.astype(np.float32),
            images=images,
            conf=None if conf is None else conf.astype(np.float32),
            sky=sky,
            is_metric=bool(is_metric),
            scale_factor=None if scale_factor is None else float(scale_factor),
            gaussians=_gaussians(path, arrays, n),
            original_sizes=None if original_sizes is None else original_sizes.astype(np.int64),
            transforms=transforms,
            names=names,
            model_name=str(arrays.get("model_name", "")),
        )
        prediction.check(str(path))
        return prediction

    def check(self, source: str) -> None:
        """Refuse a prediction no dataset can be built from, in one :class:`InputError` line naming
        ``source`` and the view: cameras (see :func:`~da3_nerfstudio.cameras.check_cameras`), a view
        without any valid depth pixel (finite, > 0, not sky), non-finite confidences, images that are
        not (N,H,W,3) uint8, or per-pixel maps of another shape than the depth."""
        depth = self.depth
        if depth.ndim != 3 or 0 in depth.shape:
            raise InputError(f"{source}: depth must be (N,H,W) with N, H, W >= 1, got shape {depth.shape}")
        check_cameras(self.extrinsics, self.intrinsics, source, self.names or None)
        if self.images.dtype != np.uint8 or self.images.shape != (*depth.shape, 3):
            raise InputError(
                f"{source}: images must be (N,H,W,3) uint8 matching depth {depth.shape}, "
                f"got {self.images.shape} {self.images.dtype}"
            )
        for key in ("conf", "sky"):
            value = getattr(self, key)
            if value is not None and value.shape != depth.shape:
                raise InputError(f"{source}: {key} {value.shape} does not match depth {depth.shape}")
        if self.conf is not None and not np.isfinite(self.conf).all():
            raise InputError(f"{source}: conf has {int((~np.isfinite(self.conf)).sum())} non-finite values")
        valid = np.isfinite(depth) & (depth > 0)
        if self.sky is not None:
            valid &= ~self.sky
        empty = np.flatnonzero(~valid.any(axis=(1, 2)))
        if len(empty):
            name = f" ({self.names[empty[0]]})" if self.names else ""
            raise InputError(f"{source}: view {empty[0]}{name}: depth has no valid pixel (all NaN, inf, <= 0 or sky)")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an npz archive, without unpickling anything."""
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a predictions .npz file")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    arrays: dict[str, np.ndarray] = {}
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise InputError(f"{path}: a single .npy array, not an .npz archive of named arrays")
        with data:
            for key in data.files:
                try:
                    arrays[key] = data[key]
                except ValueError as err:
                    if "allow_pickle" not in str(err):
                        raise
                    raise InputError(
                        f"{path}: array '{key}' holds Python objects, which are not loaded (pickle can run code)"
                    ) from None
    except InputError:
        raise
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise InputError(
                f"{path}: not an npz archive (numpy would have to unpickle it, which is refused)"
            ) from None
        raise InputError(f"{path}: not a readable npz file ({err})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise InputError(f"{path}: not a readable npz file (truncated or corrupt: {err})") from None
    return arrays


def _real(path: Path, key: str, array: np.ndarray) -> np.ndarray:
    """``array`` if it holds real numbers (bool, int or float), else :class:`InputError`."""
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise InputError(f"{path}: {key} must hold real numbers, got dtype {array.dtype}")
    return array


def _optional(path: Path, key: str, array: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """An optional finite array of exactly ``shape`` (float64), or None when absent."""
    if array is None:
        return None
    array = _real(path, key, array)
    if array.shape != shape or not np.isfinite(array).all():
        raise InputError(f"{path}: {key} must be finite with shape {shape}, got {array.shape}")
    return array.astype(np.float64)


def _per_pixel(path: Path, key: str, array: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """An optional per-pixel map with the depth's (N,H,W) shape."""
    if array is None:
        return None
    array = _real(path, key, array)
    if array.shape != shape:
        raise InputError(f"{path}: {key} {array.shape} does not match depth {shape}")
    return array


def _images_to_uint8(path: Path, images: np.ndarray) -> np.ndarray:
    """(N,H,W,3) uint8 from uint8/integer 0..255 or float [0, 1] images, grey or RGB(A)."""
    images = _real(path, "image", images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise InputError(f"{path}: image must be (N,H,W,3) RGB, (N,H,W,4) RGBA or (N,H,W) grey, got {images.shape}")
    if images.dtype == bool:
        raise InputError(f"{path}: image is boolean; expected uint8 or floats in [0, 1]")
    if np.issubdtype(images.dtype, np.floating):
        if not np.isfinite(images).all():
            raise InputError(f"{path}: image has {int((~np.isfinite(images)).sum())} non-finite values")
        if images.size and (images.min() < 0 or images.max() > 1):
            raise InputError(f"{path}: float image values must be in [0, 1], got {images.min():g}..{images.max():g}")
        images = np.rint(images.astype(np.float64) * 255.0)
    elif images.size and (images.min() < 0 or images.max() > 255):
        raise InputError(
            f"{path}: integer image values must be in 0..255 (8-bit), "
            f"got {images.min()}..{images.max()} ({images.dtype})"
        )
    images = images.astype(np.uint8)
    if images.shape[-1] == 1:
        return np.repeat(images, 3, axis=-1)
    return np.ascontiguousarray(images[..., :3])


def _gaussians(path: Path, arrays: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray] | None:
    """The stored Gaussians (all of GAUSSIAN_KEYS, optional views) with consistent shapes, or None."""
    present = [k for k in (*GAUSSIAN_KEYS, "views") if f"gaussians_{k}" in arrays]
    if not present:
        return None
    missing = [k for k in GAUSSIAN_KEYS if k not in present]
    if missing:
        raise InputError(f"{path}: incomplete Gaussians (missing {', '.join(f'gaussians_{k}' for k in missing)})")
    g = {k: _real(path, f"gaussians_{k}", arrays[f"gaussians_{k}"]) for k in present}
    m = len(g["means"]) if g["means"].ndim else -1
    expected = {"means": (m, 3), "scales": (m, 3), "rotations": (m, 4), "opacities": (m,), "views": (m,)}
    for key, shape in expected.items():
        if key in g and g[key].shape != shape:
            raise InputError(f"{path}: gaussians_{key} must have shape {shape}, got {g[key].shape}")
    if g["harmonics"].ndim != 3 or g["harmonics"].shape[:2] != (m, 3):
        raise InputError(f"{path}: gaussians_harmonics must have shape ({m}, 3, K), got {g['harmonics'].shape}")
    if "views" in g and (
        not np.issubdtype(g["views"].dtype, np.integer) or np.any((g["views"] < 0) | (g["views"] >= n))
    ):
        raise InputError(f"{path}: gaussians_views must be view indices in 0..{n - 1}")
    return g
