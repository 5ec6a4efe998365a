"""Rotations shared by the network, the rasterizer and splat initialisation: quaternions and SH.

Quaternion helpers come in both orders because both are in use: the DA3 camera code is scalar-last
(x y z w), gsplat and the 3DGS PLY layout are scalar-first (w x y z). The spherical-harmonics basis
is the real basis of 3DGS, gsplat and nerfstudio, up to degree 3.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def quat_xyzw_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrices from scalar-last quaternions; tolerates unnormalised input (2/|q|^2)."""
    i, j, k, r = q.unbind(-1)
    two_s = 2.0 / (q * q).sum(-1)
    m = torch.stack(
        [
            1 - two_s * (j * j + k * k), two_s * (i * j - k * r), two_s * (i * k + j * r),
            two_s * (i * j + k * r), 1 - two_s * (i * i + k * k), two_s * (j * k - i * r),
            two_s * (i * k - j * r), two_s * (j * k + i * r), 1 - two_s * (i * i + j * j),
        ],
        dim=-1,
    )  # fmt: skip
    return m.reshape(*q.shape[:-1], 3, 3)


def matrix_to_quat_xyzw(m: Tensor) -> Tensor:
    """Scalar-last unit quaternion with non-negative real part, from the best-conditioned candidate."""
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.reshape(*m.shape[:-2], 9).unbind(-1)
    q_abs = torch.sqrt(
        F.relu(
            torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1)
        )
    )
    # Row c is the quaternion (r, i, j, k) scaled by 4*q_abs[c]; dividing by that is exact for the
    # largest component and numerically safest.
    candidates = torch.stack(
        [
            torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1),
        ],
        dim=-2,
    )
    candidates = candidates / (2.0 * q_abs[..., None].clamp(min=0.1))
    best = q_abs.argmax(-1)
    rijk = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    xyzw = rijk[..., [1, 2, 3, 0]]
    return torch.where(xyzw[..., 3:] < 0, -xyzw, xyzw)


def quat_wxyz_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrices from scalar-first quaternions (any norm)."""
    return quat_xyzw_to_matrix(q[..., [1, 2, 3, 0]])


def matrix_to_quat_wxyz(m: Tensor) -> Tensor:
    """Scalar-first unit quaternions (w >= 0) of rotation matrices."""
    return matrix_to_quat_xyzw(m)[..., [3, 0, 1, 2]]


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Real SH basis up to ``degree`` (<= 3) at unit directions ``dirs`` (..., 3) -> (..., (degree+1)^2)."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            SH_C2[0] * x * y,
            SH_C2[1] * y * z,
            SH_C2[2] * (2.0 * zz - xx - yy),
            SH_C2[3] * x * z,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            SH_C3[0] * y * (3.0 * xx - yy),
            SH_C3[1] * x * y * z,
            SH_C3[2] * y * (4.0 * zz - xx - yy),
            SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            SH_C3[4] * x * (4.0 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


@functools.cache
def _sphere_samples(n: int = 64) -> Tensor:
    """Fixed, well-spread unit directions (Fibonacci sphere) in float64."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    r = torch.sqrt(1 - z * z)
    phi = math.pi * (3 - math.sqrt(5)) * i
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)


def rotate_sh(coeffs: Tensor, rotation: Tensor, dim: int = -1) -> Tensor:
    """Rotate SH coefficients (all (degree+1)^2 of them along ``dim``) by rotation matrices.

    The rotated function is f'(d) = f(R^T d): after rotating a scene by R, a splat shows in direction
    R d the colour it showed in d. Each degree's block is solved exactly from Y(D) A = Y(D R) on fixed
    sample directions D, which needs no Wigner-D convention. ``rotation`` (..., 3, 3) broadcasts
    against ``coeffs`` with ``dim`` moved last and the channel axis before it, i.e. (..., C, K).
    """
    x = coeffs.movedim(dim, -1)
    degree = math.isqrt(x.shape[-1]) - 1
    if (degree + 1) ** 2 != x.shape[-1]:
        raise ValueError(f"expected (degree+1)^2 SH coefficients along dim {dim}, got {x.shape[-1]}")
    dirs = _sphere_samples().to(device=x.device, dtype=x.dtype)
    rotation = rotation.to(x.dtype)
    basis = sh_basis(degree, dirs)  # (M, K)
    rotated_basis = sh_basis(degree, dirs @ rotation)  # (..., M, K): Y(R^T d)
    out = [x[..., :1]]
    for level in range(1, degree + 1):
        band = slice(level * level, (level + 1) ** 2)
        block = torch.linalg.pinv(basis[:, band]) @ rotated_basis[..., band]  # c' = block @ c
        out.append(x[..., band] @ block.transpose(-1, -2))
    return torch.cat(out, dim=-1).movedim(-1, dim)
