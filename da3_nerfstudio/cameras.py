"""Camera rules and the transforms.json pose convention in numpy alone, for the file formats.

The readers and writers of :mod:`da3_nerfstudio.formats` (which the Blender add-on's tests also import, in an
environment without torch) validate and convert cameras here; :mod:`da3_nerfstudio.geometry` holds the
torch-or-numpy camera geometry and follows the same conventions (OpenCV world-to-camera extrinsics; OpenGL
camera-to-world = OpenCV camera-to-world with camera axes y and z negated).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from da3_nerfstudio.errors import InputError

#: Right-multiplying a camera-to-world matrix by this swaps OpenCV (y down, z forward) and OpenGL (y up,
#: z backward) camera axes; it is its own inverse.
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


def _numpy(values: Any) -> np.ndarray:
    """A numpy view of an array or a (CPU or device) torch tensor, without importing torch."""
    return np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)


#: Tolerance on R R^T = I and on the rows [0 0 0 1] / [0 0 1]: generous enough for float32 and
#: 6-digit text formats, far below any real scale or shear.
CAMERA_TOL = 1e-3


def check_cameras(
    poses: Any,
    intrinsics: Any | None,
    source: str,
    names: Sequence[str] | None = None,
    *,
    label: str = "view",
) -> None:
    """Refuse cameras the project cannot use, with one line naming ``source`` and the first bad view.

    The single home of the camera rules every entry point applies (prediction npz, COLMAP models,
    transforms.json, the predictor's API): poses (N,3,4) or (N,4,4) must be finite rigid transforms
    (orthonormal rotation with det +1, last row 0 0 0 1) and intrinsics (N,3,3) finite pinhole
    matrices with positive focal lengths and last row 0 0 1. The rules hold for a pose and its
    inverse alike, so camera-to-world files are checked as read. Raises :class:`InputError`.
    """
    T = _numpy(poses)
    K = None if intrinsics is None else _numpy(intrinsics)
    n = len(T) if T.ndim == 3 else -1
    if T.ndim != 3 or T.shape[1:] not in ((3, 4), (4, 4)) or (K is not None and K.shape != (n, 3, 3)) or n == 0:
        got = f"{T.shape}" + ("" if K is None else f" and intrinsics {K.shape}")
        wanted = "(N,3,4) or (N,4,4)" + ("" if K is None else " with intrinsics (N,3,3)")
        raise InputError(f"{source}: camera poses must be {wanted}, N >= 1; got poses {got}")
    for array in (T, K):
        if array is not None and not (np.issubdtype(array.dtype, np.number) and not np.iscomplexobj(array)):
            raise InputError(f"{source}: camera arrays must be real numbers, got dtype {array.dtype}")
    T = T.astype(np.float64)

    def fail(index: int, problem: str) -> None:
        name = f" ({names[index]})" if names is not None and index < len(names) else ""
        raise InputError(f"{source}: {label} {index}{name}: {problem}")

    def first(bad: np.ndarray) -> int | None:
        hits = np.flatnonzero(bad)
        return int(hits[0]) if len(hits) else None

    if (i := first(~np.isfinite(T).all(axis=(1, 2)))) is not None:
        fail(i, "pose has non-finite values (NaN or inf)")
    R = T[:, :3, :3]
    gram_error = np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2))
    if (i := first(gram_error > CAMERA_TOL)) is not None:
        fail(i, f"pose is not rigid (rotation not orthonormal: |R R^T - I| = {gram_error[i]:.3g})")
    if (i := first(np.linalg.det(R) < 0)) is not None:
        fail(i, "pose rotation is a reflection (determinant -1)")
    if T.shape[1] == 4 and (i := first(np.abs(T[:, 3] - [0, 0, 0, 1]).max(axis=1) > CAMERA_TOL)) is not None:
        fail(i, f"pose's last row must be [0, 0, 0, 1], got {T[i, 3].tolist()}")
    if K is None:
        return
    K = K.astype(np.float64)
    if (i := first(~np.isfinite(K).all(axis=(1, 2)))) is not None:
        fail(i, "intrinsics have non-finite values (NaN or inf)")
    if (i := first((K[:, 0, 0] <= 0) | (K[:, 1, 1] <= 0))) is not None:
        fail(i, f"focal lengths must be positive, got fx={K[i, 0, 0]:g}, fy={K[i, 1, 1]:g}")
    if (i := first(np.abs(K[:, 2] - [0, 0, 1]).max(axis=1) + np.abs(K[:, 1, 0]) > CAMERA_TOL)) is not None:
        fail(i, f"intrinsics are not a pinhole matrix (rows 2-3 must be [0, fy, cy], [0, 0, 1]), got {K[i].tolist()}")


def _homogeneous(poses: np.ndarray) -> np.ndarray:
    out = np.tile(np.eye(4), (*poses.shape[:-2], 1, 1))
    out[..., :3, :4] = poses[..., :3, :4]
    return out


def opencv_w2c_to_opengl_c2w(w2c: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera (...,3|4,4) -> OpenGL camera-to-world (...,4,4), as transforms.json stores poses.

    A general inverse rather than R^T: float32-sourced rotations are orthonormal only to ~1e-7, and a round
    trip through :func:`opengl_c2w_to_opencv_w2c` must give back the very matrix it started from.
    """
    return np.linalg.inv(_homogeneous(np.asarray(w2c, dtype=np.float64))) @ CV_TO_GL


def opengl_c2w_to_opencv_w2c(c2w: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world (...,3|4,4) -> OpenCV world-to-camera (...,4,4); inverse of
    :func:`opencv_w2c_to_opengl_c2w`."""
    return np.linalg.inv(_homogeneous(np.asarray(c2w, dtype=np.float64)) @ CV_TO_GL)
