"""The official Gaussian adapter: raw GS-head channels -> world-space 3D Gaussians.

Channel layout of the 37 raw channels: [0:2] sub-pixel xy offset, [2:5] scale logits, [5:9]
rotation, [9:36] SH (channel 9 + 9c + k = colour c, coefficient k), [36] depth offset. The
rotation convention is the official one, reproduced literally (see :func:`adapter_rotations`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from da3_nerfstudio.geometry import invert_rigid
from da3_nerfstudio.model.presets import GaussianAdapterConfig
from da3_nerfstudio.rotation import matrix_to_quat_xyzw, quat_xyzw_to_matrix, rotate_sh


def adapter_rotations(raw_rotation: Tensor, c2w_rotation: Tensor) -> Tensor:
    """World rotations in the official (historical) convention.

    The head's 4 numbers are normalised and read as xyzw, permuted to wxyz, and that 4-vector is then
    fed to a scalar-last quaternion->matrix routine; the camera rotation is applied and the result is
    turned back into a scalar-last quaternion (real part >= 0), which downstream consumers (gsplat,
    PLY writers) read as wxyz. This is what the trained weights expect.
    """
    q = raw_rotation / (raw_rotation.norm(dim=-1, keepdim=True) + 1e-8)
    local = quat_xyzw_to_matrix(q[..., [3, 0, 1, 2]])
    return matrix_to_quat_xyzw(c2w_rotation @ local)


def gaussian_adapter(
    raw: Tensor,
    opacity: Tensor,
    depth: Tensor,
    extrinsics: Tensor,
    intrinsics: Tensor,
    cfg: GaussianAdapterConfig,
    depth_scale: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-pixel Gaussians (B,S,H,W,...) -> world-space Gaussians flattened to (B, S*H*W, ...).

    ``extrinsics`` are world-to-camera (B,S,3,4), ``intrinsics`` pixels (B,S,3,3), ``depth`` the
    depth head's output; ``depth_scale`` (B,) optionally rescales translations and depths.
    """
    b, s, h, w, _ = raw.shape
    c2w = invert_rigid(extrinsics)[..., :3, :]  # (B,S,3,4)
    rot, centre = c2w[..., :3], c2w[..., 3]
    if depth_scale is not None:
        centre = centre * depth_scale[:, None, None]
        depth = depth * depth_scale[:, None, None, None]
    k_norm = intrinsics.clone()
    k_norm[..., 0, :] = k_norm[..., 0, :] / w
    k_norm[..., 1, :] = k_norm[..., 1, :] / h
    k_inv = torch.linalg.inv(k_norm)  # (B,S,3,3)

    gs_depth = depth + raw[..., 36]
    xs = (torch.arange(w, dtype=raw.dtype, device=raw.device) + 0.5) / w
    ys = (torch.arange(h, dtype=raw.dtype, device=raw.device) + 0.5) / h
    px = xs + raw[..., 0] / w
    py = ys[:, None] + raw[..., 1] / h
    pix = torch.stack([px, py, torch.ones_like(px)], dim=-1)  # (B,S,H,W,3)
    dirs = torch.einsum("bsij,bshwj->bshwi", k_inv, pix)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    dirs = torch.einsum("bsij,bshwj->bshwi", rot, dirs)
    means = centre[:, :, None, None] + dirs * gs_depth[..., None]

    pixel_size = torch.tensor([1.0 / w, 1.0 / h], dtype=raw.dtype, device=raw.device)
    multiplier = 0.1 * torch.einsum("bsij,j->bsi", k_inv[..., :2, :2], pixel_size).sum(-1)  # (B,S)
    unit_scales = cfg.scale_min + (cfg.scale_max - cfg.scale_min) * torch.sigmoid(raw[..., 2:5])
    scales = unit_scales * gs_depth[..., None] * multiplier[:, :, None, None, None]

    rotations = adapter_rotations(raw[..., 5:9], rot[:, :, None, None])

    d_sh = (cfg.sh_degree + 1) ** 2
    sh = raw[..., 9 : 9 + 3 * d_sh].reshape(b, s, h, w, 3, d_sh)
    mask = torch.tensor(
        [1.0] + [0.1 * 0.25**deg for deg in range(1, cfg.sh_degree + 1) for _ in range(2 * deg + 1)],
        dtype=raw.dtype,
        device=raw.device,
    )
    sh = rotate_sh(sh * mask, rot[:, :, None, None])

    return {
        "means": means.reshape(b, -1, 3),
        "scales": scales.reshape(b, -1, 3),
        "rotations": rotations.reshape(b, -1, 4),
        "harmonics": sh.reshape(b, -1, 3, d_sh),
        "opacities": opacity.reshape(b, -1),
    }
