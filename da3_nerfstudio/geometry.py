"""Camera geometry shared by the predictor, the dataset writers and the tests.

Conventions (every function here follows them):

* **Extrinsics** are world-to-camera ("w2c") in the OpenCV/COLMAP camera frame: x right, y down,
  z forward. They are (N,3,4) or (N,4,4); functions return the same shape they were given.
* **Intrinsics** are (N,3,3) in pixels, with the **continuous pixel convention**: pixel (row i,
  col j) covers [j, j+1) x [i, i+1), so its centre is (j+0.5, i+0.5) and an image of width W has
  its centre at x = W/2. COLMAP and nerfstudio use this convention, and DA3's camera decoder
  implies it by setting cx = W/2. Under it, resizing an image scales fx, cx by W'/W and fy, cy by
  H'/H exactly.
* **Depth** is z-depth (distance along the camera's z axis), not distance along the ray.
* **OpenGL / nerfstudio / Blender** camera-to-world = OpenCV camera-to-world with the y and z axes
  (rotation columns 1 and 2) negated: those cameras look down their -z axis with y up.
* A **similarity** (s, R, t) maps world points X to s R X + t.

Array types: the public functions take numpy arrays or torch tensors. The result follows the first
array argument (torch in -> torch out on its device and dtype; numpy in -> numpy out); the other
arguments are converted to match. The solvers (rays -> cameras, Umeyama, camera alignment) work in
float64 internally so they stay exact on exact data whatever the input precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
import torch
from torch import Tensor

from da3_nerfstudio.errors import InputError

Array: TypeAlias = np.ndarray | Tensor

# Rays whose direction makes at most this cosine with the estimated optical axis are ignored: a
# pinhole camera cannot see at (or beyond) 90 degrees, and they would dominate an algebraic fit.
_MIN_Z_CAM = 1e-3
# IRLS iteration caps. The Cauchy kernel converges linearly (about 7x per iteration on noisy rays,
# much faster on exact ones); the full-resolution polish starts next to the coarse optimum, so a
# few iterations take it well below the noise of any real ray map.
_IRLS_ITERS = 30
_POLISH_ITERS = 6
# IRLS stops early once no parameter moves by more than this (M has unit norm; centres are
# compared relative to the data's extent). Data-dependent, but still reproducible bit for bit.
_TOL = 1e-10
# Residuals per view that set the robust kernel width (see _cauchy).
_SCALE_SAMPLES = 8192
# Coarse-to-fine ray fitting (see _solve_views): sub-grid size, and the fewest valid rays per view
# it needs, below which the coarse stage is skipped.
_COARSE_CELLS = 8192
_COARSE_MIN_VALID = 64
# Views solved together: bounds the float64 working set (~200 MB per 8 views of 216x288 rays).
_VIEW_CHUNK = 8
# Cauchy kernel width as a multiple of the weighted median residual (a robust scale estimate).
_CAUCHY_SCALE = 2.5
# Smallest kernel width (angles: absolute; centres: relative to the origins' magnitude): on exact
# data the residuals vanish and the width must not reach zero (0/0).
_MIN_SCALE = 1e-12


def _to_torch(x: Array | float, ref: Tensor | None = None) -> Tensor:
    """Tensor view of ``x``; integers become float64, and ``ref`` (if given) sets device/dtype."""
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if ref is not None:
        t = t.to(device=ref.device, dtype=ref.dtype)
    return t


def _like(t: Tensor, template: Array) -> Array:
    """Return ``t`` as the array type of ``template`` (numpy callers get numpy back)."""
    return t if isinstance(template, Tensor) else t.detach().cpu().numpy()


def _check_pose(T: Tensor, name: str) -> None:
    if T.ndim < 2 or T.shape[-1] != 4 or T.shape[-2] not in (3, 4):
        raise ValueError(f"{name} must have shape (...,3,4) or (...,4,4), got {tuple(T.shape)}")


# --------------------------------------------------------------------------------------------
# Validation of cameras that come from outside (files, API arguments)

#: Tolerance on R R^T = I and on the rows [0 0 0 1] / [0 0 1]: generous enough for float32 and
#: 6-digit text formats, far below any real scale or shear.
CAMERA_TOL = 1e-3


def check_cameras(
    poses: Array,
    intrinsics: Array | None,
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
    T = np.asarray(poses.detach().cpu() if isinstance(poses, Tensor) else poses)
    K = (
        None
        if intrinsics is None
        else np.asarray(intrinsics.detach().cpu() if isinstance(intrinsics, Tensor) else intrinsics)
    )
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


# --------------------------------------------------------------------------------------------
# Poses


def to_homogeneous(T: Array) -> Array:
    """(...,3,4) or (...,4,4) rigid transforms as (...,4,4), so they can be chained with ``@``."""
    t = _to_torch(T)
    _check_pose(t, "T")
    if t.shape[-2] == 4:
        return _like(t.clone(), T)
    bottom = torch.zeros(*t.shape[:-2], 1, 4, dtype=t.dtype, device=t.device)
    bottom[..., 0, 3] = 1.0
    return _like(torch.cat([t, bottom], dim=-2), T)


def invert_rigid(T: Array) -> Array:
    """Inverse of rigid transforms [R|t] -> [R^T|-R^T t], keeping the input's (...,3,4)/(...,4,4) shape.

    Uses the transpose rather than a general inverse: it is exact for rotations and much cheaper.
    """
    t = _to_torch(T)
    _check_pose(t, "T")
    rt = t[..., :3, :3].transpose(-1, -2)
    inv = torch.cat([rt, -rt @ t[..., :3, 3:]], dim=-1)
    if t.shape[-2] == 4:
        inv = torch.cat([inv, t[..., 3:, :]], dim=-2)
    return _like(inv, T)


def opencv_c2w_to_opengl(c2w: Array) -> Array:
    """OpenCV camera-to-world (x right, y down, z forward) -> OpenGL/nerfstudio/Blender (y up, -z forward)."""
    t = _to_torch(c2w)
    _check_pose(t, "c2w")
    out = t.clone()
    out[..., :3, 1:3] = -out[..., :3, 1:3]
    return _like(out, c2w)


def opengl_c2w_to_opencv(c2w: Array) -> Array:
    """OpenGL/nerfstudio/Blender camera-to-world -> OpenCV; the axis flip is its own inverse."""
    return opencv_c2w_to_opengl(c2w)


# --------------------------------------------------------------------------------------------
# Similarity alignment


def _project_to_rotation(A: Tensor) -> Tensor:
    """Closest rotation (det +1) to each 3x3 matrix in the Frobenius sense, via SVD."""
    U, _, Vh = torch.linalg.svd(A)
    d = torch.sign(torch.linalg.det(U @ Vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    S = torch.ones(*A.shape[:-2], 3, dtype=A.dtype, device=A.device)
    S[..., 2] = d
    return (U * S[..., None, :]) @ Vh


def umeyama_sim3(src: Array, dst: Array, weights: Array | None = None) -> tuple[Array | float, Array, Array]:
    """Least-squares similarity (s, R, t) with dst ~ s R src + t, for corresponding points (M,3).

    Umeyama's closed form, with the SVD sign fix so R is a rotation even when the best orthogonal
    fit would be a reflection. ``weights`` (M,) >= 0 weight each correspondence. Needs at least
    three points that are not all identical; collinear points leave the rotation about their line
    undetermined. Returns ``s`` as a Python float for numpy input, a 0-d tensor for torch input.
    """
    x = _to_torch(src)
    y = _to_torch(dst, x).to(torch.float64)
    x64 = x.to(torch.float64)
    if x64.ndim != 2 or x64.shape[-1] != 3 or y.shape != x64.shape:
        raise ValueError(f"src and dst must both be (M,3), got {tuple(x64.shape)} and {tuple(y.shape)}")
    w = torch.ones(x64.shape[0], dtype=torch.float64, device=x.device)
    if weights is not None:
        w = _to_torch(weights, x64).reshape(-1)
        if w.shape[0] != x64.shape[0] or not bool(torch.all(w >= 0)):
            raise ValueError("weights must be (M,) and non-negative")
    if int((w > 0).sum()) < 3:
        raise ValueError("umeyama_sim3 needs at least 3 points with positive weight")
    w = w / w.sum()
    mu_x, mu_y = w @ x64, w @ y
    xc, yc = x64 - mu_x, y - mu_y
    var_x = (w * (xc * xc).sum(-1)).sum()
    if var_x <= 0:
        raise ValueError("umeyama_sim3: all source points coincide, the similarity is undetermined")
    cov = (yc * w[:, None]).T @ xc
    U, D, Vh = torch.linalg.svd(cov)
    S = torch.ones(3, dtype=torch.float64, device=x.device)
    if torch.linalg.det(U) * torch.linalg.det(Vh) < 0:
        S[2] = -1.0
    R = (U * S) @ Vh
    s = (D * S).sum() / var_x
    t = mu_y - s * R @ mu_x
    s_out: Array | float = float(s) if not isinstance(src, Tensor) else s.to(x.dtype)
    return s_out, _like(R.to(x.dtype), src), _like(t.to(x.dtype), src)


def align_cameras_sim3(w2c_src: Array, w2c_dst: Array) -> tuple[Array | float, Array, Array]:
    """Similarity (s, R, t) mapping the src world frame onto the dst one, from corresponding cameras.

    Camera centres alone cannot fix the rotation about the baseline of two cameras, so the rotation
    comes from the orientations: it is the chordal L2 mean of R_dst_c2w R_src_c2w^T over the
    cameras (exact when the cameras agree). Scale and translation then follow from the centres by
    least squares, falling back to the ratio of the centres' spreads when that is not positive (so
    the scale is always > 0); with a single camera (or coincident centres) the scale is 1. Works
    for N >= 1.
    """
    a = _to_torch(w2c_src)
    b = _to_torch(w2c_dst, a)
    _check_pose(a, "w2c_src")
    _check_pose(b, "w2c_dst")
    if a.ndim != 3 or b.shape[0] != a.shape[0] or a.shape[0] == 0:
        raise ValueError(
            "w2c_src and w2c_dst must be (N,3|4,4) with the same N>=1, " f"got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    rot_src = a64[:, :3, :3].transpose(-1, -2)  # c2w rotations
    rot_dst = b64[:, :3, :3].transpose(-1, -2)
    c_src = -(rot_src @ a64[:, :3, 3:])[..., 0]  # camera centres
    c_dst = -(rot_dst @ b64[:, :3, 3:])[..., 0]
    R = _project_to_rotation((rot_dst @ rot_src.transpose(-1, -2)).sum(0))
    mu_src, mu_dst = c_src.mean(0), c_dst.mean(0)
    rs = (c_src - mu_src) @ R.T
    denom = (rs * rs).sum()
    if denom > 1e-24 * max(1.0, float((c_src * c_src).sum())):
        s = (rs * (c_dst - mu_dst)).sum() / denom
        if s <= 0:
            # Centres that disagree this badly (e.g. an untrained network) give no usable sign;
            # the ratio of the two spreads is still a positive, exact-on-exact-data scale.
            s = torch.sqrt(((c_dst - mu_dst) ** 2).sum() / denom)
    else:
        s = torch.ones((), dtype=torch.float64, device=a.device)
    t = mu_dst - s * R @ mu_src
    s_out: Array | float = float(s) if not isinstance(w2c_src, Tensor) else s.to(a.dtype)
    return s_out, _like(R.to(a.dtype), w2c_src), _like(t.to(a.dtype), w2c_src)


def apply_sim3_to_w2c(w2c: Array, s: Array | float, R: Array, t: Array) -> Array:
    """Express cameras in the world frame X' = s R X + t; returns w2c of the same shape.

    Rotations become R_c2w' = R R_c2w and centres C' = s R C + t. Lengths scale by ``s``, so depth
    maps that go with these cameras must be multiplied by ``s`` too.
    """
    T = _to_torch(w2c)
    _check_pose(T, "w2c")
    s_t, R_t, t_t = _to_torch(s, T), _to_torch(R, T), _to_torch(t, T)
    rot_c2w = T[..., :3, :3].transpose(-1, -2)
    centre = -rot_c2w @ T[..., :3, 3:]
    new_rot_w2c = (R_t @ rot_c2w).transpose(-1, -2)
    new_centre = s_t * (R_t @ centre) + t_t[..., None]
    out = T.clone()
    out[..., :3, :3] = new_rot_w2c
    out[..., :3, 3:] = -new_rot_w2c @ new_centre
    return _like(out, w2c)


# --------------------------------------------------------------------------------------------
# Depth <-> points


def unproject_depth(depth: Array, intrinsics: Array, w2c: Array) -> Array:
    """World points (N,H,W,3) of z-depth maps (N,H,W), through each pixel centre (j+0.5, i+0.5).

    Pixels with depth 0 land on the camera centre; callers mask them with ``depth > 0``.
    """
    d = _to_torch(depth)
    K = _to_torch(intrinsics, d)
    T = _to_torch(w2c, d)
    _check_pose(T, "w2c")
    if d.ndim != 3 or K.shape != (d.shape[0], 3, 3) or T.ndim != 3 or T.shape[0] != d.shape[0]:
        raise ValueError(
            f"expected depth (N,H,W), intrinsics (N,3,3), w2c (N,3|4,4); got {tuple(d.shape)}, "
            f"{tuple(K.shape)}, {tuple(T.shape)}"
        )
    n, h, w = d.shape
    ys = torch.arange(h, dtype=d.dtype, device=d.device) + 0.5
    xs = torch.arange(w, dtype=d.dtype, device=d.device) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pix = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).reshape(1, h * w, 3)
    rays = pix @ torch.linalg.inv(K).transpose(-1, -2)  # (N,HW,3) with z = 1
    cam = rays * d.reshape(n, h * w, 1)
    rot, trans = T[:, :3, :3], T[:, :3, 3]
    world = (cam - trans[:, None, :]) @ rot  # R^T (X_cam - t), row-vector form
    return _like(world.reshape(n, h, w, 3), depth)


def project_points(points: Array, intrinsics: Array, w2c: Array) -> tuple[Array, Array]:
    """Pixel coordinates (...,2) and z-depth (...) of world points in the continuous convention.

    Either one camera (intrinsics (3,3), w2c (3|4,4)) for points of any shape (...,3), or N cameras
    (N,3,3)/(N,3|4,4) for points (N,...,3), each view's points in its own camera. ``uv`` is divided
    by z as is: points with z <= 0 are behind the camera and must be masked by the caller.
    """
    p = _to_torch(points)
    K = _to_torch(intrinsics, p)
    T = _to_torch(w2c, p)
    _check_pose(T, "w2c")
    if p.shape[-1] != 3:
        raise ValueError(f"points must be (...,3), got {tuple(p.shape)}")
    if K.ndim == 2:
        flat = p.reshape(1, -1, 3)
        K, T = K[None], T[None]
    elif K.ndim == 3 and T.ndim == 3 and p.ndim >= 2 and K.shape[0] == T.shape[0] == p.shape[0]:
        flat = p.reshape(p.shape[0], -1, 3)
    else:
        raise ValueError(
            f"expected intrinsics (3,3) or (N,3,3) matching points (N,...,3); got {tuple(K.shape)}, "
            f"{tuple(T.shape)}, {tuple(p.shape)}"
        )
    cam = flat @ T[:, :3, :3].transpose(-1, -2) + T[:, None, :3, 3]
    img = cam @ K.transpose(-1, -2)
    z = cam[..., 2]
    uv = img[..., :2] / img[..., 2:3]
    return _like(uv.reshape(*p.shape[:-1], 2), points), _like(z.reshape(p.shape[:-1]), points)


def rescale_intrinsics(K: Array, from_size: tuple[int, int], to_size: tuple[int, int]) -> Array:
    """Intrinsics of the same camera after resizing its image from (H,W) to (H',W').

    Under the continuous convention the resize is the map x' = x W'/W, y' = y H'/H, so the x row
    (fx, skew, cx) scales by W'/W and the y row (fy, cy) by H'/H, exactly.
    """
    k = _to_torch(K)
    if k.shape[-2:] != (3, 3):
        raise ValueError(f"K must be (...,3,3), got {tuple(k.shape)}")
    (h0, w0), (h1, w1) = from_size, to_size
    out = k.clone()
    out[..., 0, :] = out[..., 0, :] * (w1 / w0)
    out[..., 1, :] = out[..., 1, :] * (h1 / h0)
    return _like(out, K)


# --------------------------------------------------------------------------------------------
# Ray map -> cameras


def _weighted_median(values: Tensor, weights: Tensor) -> Tensor:
    """Per-row weighted median of (N,K) values; rows must have positive total weight.

    It only sets kernel widths and weight caps, so sorting in float32 is precise enough.
    """
    v, order = torch.sort(values.float(), dim=-1)
    cw = torch.cumsum(torch.gather(weights.float(), -1, order), dim=-1)
    idx = torch.searchsorted(cw, 0.5 * cw[:, -1:])
    return torch.gather(v, -1, idx.clamp(max=values.shape[-1] - 1))[:, 0].to(values.dtype)


def _statistics_weights(base: Tensor) -> Tensor:
    """Weights capped at the median weight of the view's usable rays, for robust statistics only.

    A few extremely confident rays would otherwise own every weighted median: the kernel width
    would collapse onto them and the fit would follow a handful of (possibly degenerate) rays.
    """
    cap = _weighted_median(base, (base > 0).to(base.dtype))
    return torch.minimum(base, cap[:, None])


def _cauchy(residuals: Tensor, weights: Tensor, stat_weights: Tensor, floor: Tensor | float) -> Tensor:
    """Weights times Cauchy robust weights; the kernel width comes from the weighted median residual.

    The median uses ``stat_weights`` (see :func:`_statistics_weights`) over a fixed regular subset
    of at most ``_SCALE_SAMPLES`` residuals per view: a scale estimate needs no more, and sorting
    every ray each iteration dominated the cost.
    """
    stride = -(-residuals.shape[-1] // _SCALE_SAMPLES)
    median = _weighted_median(residuals[:, ::stride], stat_weights[:, ::stride])
    scale = torch.clamp(_CAUCHY_SCALE * median, min=floor)
    return weights / (1.0 + (residuals / scale[:, None]) ** 2)


def _dlt_solve(V: Tensor, Q_flat: Tensor, weights: Tensor) -> Tensor:
    """Row-major 3x3 M minimising sum_k w_k |u_k x (M q_k)|^2 with |M|_F = 1, per view.

    |u x Mq|^2 = |Mq|^2 - (u.Mq)^2 for unit u, so the objective is vec(M)^T A vec(M) with
    A = I (x) sum_k w_k q_k q_k^T - sum_k w_k v_k v_k^T and v_k = u_k (x) q_k; M is the
    eigenvector of A with the smallest eigenvalue.
    """
    n = weights.shape[0]
    qq = (weights @ Q_flat).reshape(n, 3, 3)
    eye = torch.eye(3, dtype=V.dtype, device=V.device)
    A = torch.einsum("ac,nbd->nabcd", eye, qq).reshape(n, 9, 9) - (V * weights[..., None]).transpose(1, 2) @ V
    _, vecs = torch.linalg.eigh(A)
    M = vecs[..., 0].reshape(n, 3, 3)
    # The true M = R K^-1 (up to a positive factor) has det > 0; this fixes the eigenvector's sign.
    return M * torch.sign(torch.linalg.det(M))[:, None, None]


def _rotation_times_upper(M: Tensor) -> tuple[Tensor, Tensor]:
    """M = Q U with Q a rotation and U upper-triangular with positive diagonal (M must have det > 0)."""
    Q, U = torch.linalg.qr(M)
    sgn = torch.sign(torch.diagonal(U, dim1=-2, dim2=-1))
    sgn = torch.where(sgn == 0, torch.ones_like(sgn), sgn)
    return Q * sgn[:, None, :], U * sgn[:, :, None]


def _conditioning(u: Tensor, weights: Tensor) -> Tensor:
    """Per-view linear map L (n,3,3) that centres the ray bundle on +z and spreads it to unit width.

    Why: in the raw frame a narrow field of view makes M's first two columns small next to the
    third, and the algebraic least-squares then prefers near rank-1 maps whenever some rays are
    garbage (the classic unnormalised-DLT failure). After L (a rotation taking the weighted mean
    direction to +z, then a scaling of x, y by the median tangent of the off-axis angle) the true
    map is well balanced, as in Hartley's normalised DLT.
    """
    mean_dir = (weights[..., None] * u).sum(1)
    axis = mean_dir / torch.linalg.norm(mean_dir, dim=-1, keepdim=True).clamp(min=1e-300)
    eye = torch.eye(3, dtype=u.dtype, device=u.device)
    helper = eye[axis.abs().argmin(-1)]  # the world axis least aligned with the bundle
    e1 = torch.linalg.cross(helper, axis)
    e1 = e1 / torch.linalg.norm(e1, dim=-1, keepdim=True)
    rot = torch.stack([e1, torch.linalg.cross(axis, e1), axis], dim=-2)  # rows: det +1, axis -> +z
    local = u @ rot.transpose(-1, -2)
    front = local[..., 2] > 0
    tangent = torch.linalg.norm(local[..., :2], dim=-1) / local[..., 2].clamp(min=1e-300)
    tangent = torch.where(front, tangent, torch.zeros_like(tangent))
    spread = _weighted_median(tangent, torch.where(front, weights, torch.zeros_like(weights))).clamp(min=1e-6)
    scale = torch.stack([1 / spread, 1 / spread, torch.ones_like(spread)], dim=-1)
    return scale[..., :, None] * rot


def _unit(x: Tensor) -> Tensor:
    """Rows scaled to unit norm (zero rows stay zero)."""
    return x / torch.linalg.norm(x, dim=-1, keepdim=True).clamp(min=1e-300)


def _fit_map(u: Tensor, base: Tensor, q: Tensor, M: Tensor | None, max_iters: int) -> Tensor:
    """IRLS fit of M ~ R_c2w K^-1 (unit norm, det > 0) for unit directions u (n,k,3) at points q (k,3).

    The linear solves run in the conditioned frame of :func:`_conditioning` (M_c = L M); the robust
    weights use the true angle between u and M q. Starts from the weighted linear solution (rays
    behind the bundle's mean direction left out) unless an initial ``M`` is given.
    """
    k = q.shape[0]
    stat = _statistics_weights(base)
    L = _conditioning(u, stat)
    L_inv = torch.linalg.inv(L)
    u_c = _unit(u @ L.transpose(-1, -2))
    Q_flat = (q[:, :, None] * q[:, None, :]).reshape(k, 9)
    V = (u_c[..., :, None] * q[:, None, :]).reshape(*u.shape[:2], 9)
    if M is None:
        M_c = _dlt_solve(V, Q_flat, torch.where(u_c[..., 2] > 0, base, torch.zeros_like(base)))
        M = _unit_frobenius(L_inv @ M_c)
    for _ in range(max_iters):
        M_c = L @ M
        # |M_c q| is bounded away from 0 for any real camera; the clamp only keeps a degenerate
        # map (from garbage rays) from producing inf weights.
        Mq_c_norm = torch.linalg.norm(q @ M_c.transpose(-1, -2), dim=-1)
        Mq_c_norm = Mq_c_norm.clamp(min=1e-6 * _frobenius(M_c)[:, None])
        # Chord |u - Mq/|Mq|| = 2 sin(angle/2): an angular residual that is exact near zero and
        # also catches rays pointing backwards, which the cross product alone cannot see.
        chord = torch.linalg.norm(u - _unit(q @ M.transpose(-1, -2)), dim=-1)
        rot, _ = _rotation_times_upper(M)
        z_cam = (u * rot[:, None, :, 2]).sum(-1)  # cosine to the optical axis
        robust = _cauchy(chord, base, stat, _MIN_SCALE)
        robust = torch.where(z_cam > _MIN_Z_CAM, robust, torch.zeros_like(robust))
        # Dividing by |M_c q|^2 turns the algebraic residual |u_c x M_c q| into a sine of the angle.
        M_new = _unit_frobenius(L_inv @ _dlt_solve(V, Q_flat, robust / Mq_c_norm**2))
        converged = float((M_new - M).abs().amax()) < _TOL
        M = M_new
        if converged:
            break
    return M


def _frobenius(M: Tensor) -> Tensor:
    return torch.linalg.norm(M.flatten(-2), dim=-1)


def _unit_frobenius(M: Tensor) -> Tensor:
    """Scale 3x3 maps to unit Frobenius norm (keeping the sign), so successive fits are comparable."""
    return M / _frobenius(M)[:, None, None]


def _fit_centre(origins: Tensor, base: Tensor, centre: Tensor | None, max_iters: int) -> Tensor:
    """Cauchy-IRLS robust weighted mean (n,3) of ray origins (n,k,3), from the weighted mean by default."""
    if centre is None:
        centre = (base[..., None] * origins).sum(1) / base.sum(1, keepdim=True)
    extent = 1.0 + origins.abs().amax(dim=(1, 2))
    stat = _statistics_weights(base)
    for _ in range(max_iters):
        dist = torch.linalg.norm(origins - centre[:, None, :], dim=-1)
        cw = _cauchy(dist, base, stat, _MIN_SCALE * extent)
        new_centre = (cw[..., None] * origins).sum(1) / cw.sum(1, keepdim=True)
        converged = bool(((new_centre - centre).abs().amax(-1) < _TOL * extent).all())
        centre = new_centre
        if converged:
            break
    return centre


def _solve_views(
    u: Tensor, origins: Tensor, base: Tensor, q: Tensor, grid: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor]:
    """Rotation c2w (n,3,3), upper factor U (n,3,3) with M ~ R U, and centre (n,3) for a chunk of views.

    Coarse to fine: IRLS first converges on a regular sub-grid of at most ~_COARSE_CELLS rays, then
    polishes on the full ray set for a few iterations from there: several times faster than
    iterating on every ray, and the same answer to far below the noise of real ray maps.
    """
    h, w = grid
    step = math.ceil(math.sqrt(h * w / _COARSE_CELLS))
    sub = torch.arange(h * w, device=u.device).reshape(h, w)[::step, ::step].reshape(-1)
    if sub.numel() == h * w or bool(((base[:, sub] > 0).sum(-1) < _COARSE_MIN_VALID).any()):
        M = _fit_map(u, base, q, None, _IRLS_ITERS)
        centre = _fit_centre(origins, base, None, _IRLS_ITERS)
    else:
        M = _fit_map(u[:, sub], base[:, sub], q[sub], None, _IRLS_ITERS)
        M = _fit_map(u, base, q, M, _POLISH_ITERS)
        centre = _fit_centre(origins[:, sub], base[:, sub], None, _IRLS_ITERS)
        centre = _fit_centre(origins, base, centre, _POLISH_ITERS)
    rot, U = _rotation_times_upper(M)
    return rot, U, centre


def cameras_from_rays(rays: Array, weights: Array, image_size: tuple[int, int]) -> tuple[Array, Array]:
    """World-to-camera (N,3,4) and pixel intrinsics (N,3,3) from per-cell ray maps (N,h,w,6).

    ``rays[..., :3]`` is each cell's world-frame viewing direction (any positive scale) and
    ``rays[..., 3:]`` the camera centre it comes from; cell (i, j) looks through the image point
    ((j+0.5) W/w, (i+0.5) H/h) of an image of ``image_size`` (H, W). ``weights`` (N,h,w) >= 0 is
    the confidence of each ray (DA3's ray confidence, >= 1 for good rays).

    Why not DA3's own solver: it fits a homography with unseeded RANSAC (not reproducible) and
    decomposes it assuming a centred principal point. Here, since d ~ R_c2w K^-1 p, the 3x3 map
    M = R_c2w K^-1 (in normalised image coordinates) is solved by weighted linear least squares on
    the cross-product constraints d x (M q) = 0, refined by IRLS with a Cauchy kernel on the angle
    between d and M q (so rays that disagree with the majority, e.g. low-confidence garbage, stop
    counting), then split into rotation times upper-triangular by QR. The centre is a Cauchy-IRLS
    robust weighted mean of the origins. Everything is deterministic, batched over views (in
    chunks, to bound memory), and exact on exact rays, including fx != fy and an off-centre
    principal point. Skew is set to 0 (pinhole cameras downstream have none).

    Invalid rays (non-finite or zero direction or origin, non-finite or non-positive weight, or a
    direction at ~90 degrees or more from the estimated optical axis) are ignored. A view with
    fewer than 4 usable rays raises ValueError.
    """
    r = _to_torch(rays)
    wt = _to_torch(weights, r)
    if r.ndim != 4 or r.shape[-1] != 6 or wt.shape != r.shape[:3]:
        raise ValueError(f"expected rays (N,h,w,6) and weights (N,h,w), got {tuple(r.shape)} and {tuple(wt.shape)}")
    n, h, w, _ = r.shape
    H, W = image_size
    f64 = {"dtype": torch.float64, "device": r.device}

    # Normalised image coordinates q = (2x/W - 1, 2y/H - 1, 1) of the cell centres, in [-1, 1]:
    # well conditioned whatever the image size. They do not depend on (H, W); K does.
    qx = (2 * torch.arange(w, **f64) + 1) / w - 1
    qy = (2 * torch.arange(h, **f64) + 1) / h - 1
    gy, gx = torch.meshgrid(qy, qx, indexing="ij")
    q = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).reshape(h * w, 3)

    rots, uppers, centres = [], [], []
    for start in range(0, n, _VIEW_CHUNK):
        r64 = r[start : start + _VIEW_CHUNK].to(torch.float64).reshape(-1, h * w, 6)
        base = wt[start : start + _VIEW_CHUNK].to(torch.float64).reshape(-1, h * w)
        norm = torch.linalg.norm(r64[..., :3], dim=-1)
        valid = torch.isfinite(r64).all(-1) & torch.isfinite(base) & (base > 0) & (norm > 0)
        counts = valid.sum(-1)
        if bool((counts < 4).any()):
            bad = int(torch.nonzero(counts < 4)[0, 0])
            raise ValueError(
                f"cameras_from_rays: view {start + bad} has {int(counts[bad])} valid rays (finite, non-zero "
                "direction and positive weight); at least 4 are needed"
            )
        base = torch.where(valid, base, torch.zeros_like(base))
        zero = torch.zeros_like(r64[..., :3])
        u = torch.where(valid[..., None], r64[..., :3] / norm.clamp(min=1e-300)[..., None], zero)
        origins = torch.where(valid[..., None], r64[..., 3:], zero)
        rot, U, centre = _solve_views(u, origins, base, q, (h, w))
        rots.append(rot)
        uppers.append(U)
        centres.append(centre)
    rot, U, centre = torch.cat(rots), torch.cat(uppers), torch.cat(centres)

    to_norm = torch.tensor([[2 / W, 0, -1], [0, 2 / H, -1], [0, 0, 1]], **f64)
    K = torch.linalg.inv(U @ to_norm)  # q = to_norm p and M q = R U q, so K^-1 ~ U to_norm
    K = torch.triu(K / K[:, 2:3, 2:3])
    K[:, 0, 1] = 0.0
    rot_w2c = rot.transpose(-1, -2)
    w2c = torch.cat([rot_w2c, -(rot_w2c @ centre[..., None])], dim=-1)
    return _like(w2c.to(r.dtype), rays), _like(K.to(r.dtype), rays)
