"""Camera geometry shared by the network, the predictor, the dataset writers and the tests (torch or numpy).

The camera rules (:func:`~da3_nerfstudio.cameras.check_cameras`) and the transforms.json pose conversion live
in the numpy-only :mod:`da3_nerfstudio.cameras`, which the file formats use.

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
arguments are converted to match. Camera alignment works in float64 internally so it stays exact on
exact data whatever the input precision. (The ray-map -> camera solver, which only the network uses,
lives in :mod:`da3_nerfstudio.model.ray_solver`.)
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import torch
from torch import Tensor

Array: TypeAlias = np.ndarray | Tensor


def to_torch(x: Array | float, ref: Tensor | None = None) -> Tensor:
    """Tensor view of ``x``; integers become float64, and ``ref`` (if given) sets device/dtype."""
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if ref is not None:
        t = t.to(device=ref.device, dtype=ref.dtype)
    return t


def like(t: Tensor, template: Array) -> Array:
    """Return ``t`` as the array type of ``template`` (numpy callers get numpy back)."""
    return t if isinstance(template, Tensor) else t.detach().cpu().numpy()


def _check_pose(T: Tensor, name: str) -> None:
    if T.ndim < 2 or T.shape[-1] != 4 or T.shape[-2] not in (3, 4):
        raise ValueError(f"{name} must have shape (...,3,4) or (...,4,4), got {tuple(T.shape)}")


# --------------------------------------------------------------------------------------------
# Validation of cameras that come from outside (files, API arguments)

# --------------------------------------------------------------------------------------------
# Poses


def to_homogeneous(T: Array) -> Array:
    """(...,3,4) or (...,4,4) rigid transforms as (...,4,4), so they can be chained with ``@``."""
    t = to_torch(T)
    _check_pose(t, "T")
    if t.shape[-2] == 4:
        return like(t.clone(), T)
    bottom = torch.zeros(*t.shape[:-2], 1, 4, dtype=t.dtype, device=t.device)
    bottom[..., 0, 3] = 1.0
    return like(torch.cat([t, bottom], dim=-2), T)


def invert_rigid(T: Array) -> Array:
    """Inverse of rigid transforms [R|t] -> [R^T|-R^T t], keeping the input's (...,3,4)/(...,4,4) shape.

    Uses the transpose rather than a general inverse: it is exact for rotations and much cheaper.
    """
    t = to_torch(T)
    _check_pose(t, "T")
    rt = t[..., :3, :3].transpose(-1, -2)
    inv = torch.cat([rt, -rt @ t[..., :3, 3:]], dim=-1)
    if t.shape[-2] == 4:
        inv = torch.cat([inv, t[..., 3:, :]], dim=-2)
    return like(inv, T)


def opencv_c2w_to_opengl(c2w: Array) -> Array:
    """OpenCV camera-to-world (x right, y down, z forward) -> OpenGL/nerfstudio/Blender (y up, -z forward)."""
    t = to_torch(c2w)
    _check_pose(t, "c2w")
    out = t.clone()
    out[..., :3, 1:3] = -out[..., :3, 1:3]
    return like(out, c2w)


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


def align_cameras_sim3(w2c_src: Array, w2c_dst: Array) -> tuple[Array | float, Array, Array]:
    """Similarity (s, R, t) mapping the src world frame onto the dst one, from corresponding cameras.

    Camera centres alone cannot fix the rotation about the baseline of two cameras, so the rotation
    comes from the orientations: it is the chordal L2 mean of R_dst_c2w R_src_c2w^T over the
    cameras (exact when the cameras agree). Scale and translation then follow from the centres by
    least squares, falling back to the ratio of the centres' spreads when that is not positive (so
    the scale is always > 0); with a single camera (or coincident centres) the scale is 1. Works
    for N >= 1.
    """
    a = to_torch(w2c_src)
    b = to_torch(w2c_dst, a)
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
    return s_out, like(R.to(a.dtype), w2c_src), like(t.to(a.dtype), w2c_src)


def apply_sim3_to_w2c(w2c: Array, s: Array | float, R: Array, t: Array) -> Array:
    """Express cameras in the world frame X' = s R X + t; returns w2c of the same shape.

    Rotations become R_c2w' = R R_c2w and centres C' = s R C + t. Lengths scale by ``s``, so depth
    maps that go with these cameras must be multiplied by ``s`` too.
    """
    T = to_torch(w2c)
    _check_pose(T, "w2c")
    s_t, R_t, t_t = to_torch(s, T), to_torch(R, T), to_torch(t, T)
    rot_c2w = T[..., :3, :3].transpose(-1, -2)
    centre = -rot_c2w @ T[..., :3, 3:]
    new_rot_w2c = (R_t @ rot_c2w).transpose(-1, -2)
    new_centre = s_t * (R_t @ centre) + t_t[..., None]
    out = T.clone()
    out[..., :3, :3] = new_rot_w2c
    out[..., :3, 3:] = -new_rot_w2c @ new_centre
    return like(out, w2c)


# --------------------------------------------------------------------------------------------
# Depth <-> points


def unproject_depth(depth: Array, intrinsics: Array, w2c: Array) -> Array:
    """World points (N,H,W,3) of z-depth maps (N,H,W), through each pixel centre (j+0.5, i+0.5).

    Pixels with depth 0 land on the camera centre; callers mask them with ``depth > 0``.
    """
    d = to_torch(depth)
    K = to_torch(intrinsics, d)
    T = to_torch(w2c, d)
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
    return like(world.reshape(n, h, w, 3), depth)


def project_points(points: Array, intrinsics: Array, w2c: Array) -> tuple[Array, Array]:
    """Pixel coordinates (...,2) and z-depth (...) of world points in the continuous convention.

    Either one camera (intrinsics (3,3), w2c (3|4,4)) for points of any shape (...,3), or N cameras
    (N,3,3)/(N,3|4,4) for points (N,...,3), each view's points in its own camera. ``uv`` is divided
    by z as is: points with z <= 0 are behind the camera and must be masked by the caller.
    """
    p = to_torch(points)
    K = to_torch(intrinsics, p)
    T = to_torch(w2c, p)
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
    return like(uv.reshape(*p.shape[:-1], 2), points), like(z.reshape(p.shape[:-1]), points)


def rescale_intrinsics(K: Array, from_size: tuple[int, int], to_size: tuple[int, int]) -> Array:
    """Intrinsics of the same camera after resizing its image from (H,W) to (H',W').

    Under the continuous convention the resize is the map x' = x W'/W, y' = y H'/H, so the x row
    (fx, skew, cx) scales by W'/W and the y row (fy, cy) by H'/H, exactly.
    """
    k = to_torch(K)
    if k.shape[-2:] != (3, 3):
        raise ValueError(f"K must be (...,3,3), got {tuple(k.shape)}")
    (h0, w0), (h1, w1) = from_size, to_size
    out = k.clone()
    out[..., 0, :] = out[..., 0, :] * (w1 / w0)
    out[..., 1, :] = out[..., 1, :] * (h1 / h0)
    return like(out, K)
