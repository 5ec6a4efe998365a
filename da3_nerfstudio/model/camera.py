"""Camera encoder (pose conditioning) and decoder (pose from the camera token).

The pose encoding shared by both is ``[t(3), q(4, xyzw), fov_h, fov_w]`` of the camera-to-world
pose, with the principal point assumed at the image centre (as the official model does).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from da3_nerfstudio.geometry import invert_rigid
from da3_nerfstudio.model.backbone import Block, Mlp
from da3_nerfstudio.rotation import matrix_to_quat_xyzw, quat_xyzw_to_matrix


def encode_pose(extrinsics: Tensor, intrinsics: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """(B,S,9) pose encoding of world-to-camera extrinsics and pixel intrinsics."""
    height, width = image_hw
    c2w = invert_rigid(extrinsics)
    fov_h = 2 * torch.atan((height / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((width / 2) / intrinsics[..., 0, 0])
    return torch.cat([c2w[..., :3, 3], matrix_to_quat_xyzw(c2w[..., :3, :3]), fov_h[..., None], fov_w[..., None]], -1)


def decode_pose(encoding: Tensor, image_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Pose encoding -> (world-to-camera (..,3,4), intrinsics (..,3,3)) at image size ``image_hw``."""
    height, width = image_hw
    c2w = torch.cat([quat_xyzw_to_matrix(encoding[..., 3:7]), encoding[..., :3, None]], dim=-1)
    fy = (height / 2) / torch.tan(encoding[..., 7] / 2).clamp(min=1e-6)
    fx = (width / 2) / torch.tan(encoding[..., 8] / 2).clamp(min=1e-6)
    intrinsics = torch.zeros(*encoding.shape[:-1], 3, 3, dtype=encoding.dtype, device=encoding.device)
    intrinsics[..., 0, 0], intrinsics[..., 1, 1] = fx, fy
    intrinsics[..., 0, 2], intrinsics[..., 1, 2], intrinsics[..., 2, 2] = width / 2, height / 2, 1.0
    return invert_rigid(c2w), intrinsics


class CameraDec(nn.Module):
    """Camera token (B,S,2C) -> pose encoding (B,S,9)."""

    def __init__(self, dim_in: int) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(), nn.Linear(dim_in, dim_in), nn.ReLU())
        self.fc_t = nn.Linear(dim_in, 3)
        self.fc_qvec = nn.Linear(dim_in, 4)
        self.fc_fov = nn.Sequential(nn.Linear(dim_in, 2), nn.ReLU())

    def forward(self, token: Tensor) -> Tensor:
        x = self.backbone(token)
        return torch.cat([self.fc_t(x), self.fc_qvec(x), self.fc_fov(x)], dim=-1)


class CameraEnc(nn.Module):
    """Known cameras -> one token per view (B,S,C) that replaces the camera token."""

    TRUNK_DEPTH = 4
    TRUNK_HEADS = 16

    def __init__(self, dim_out: int) -> None:
        super().__init__()
        self.pose_branch = Mlp(9, dim_out // 2, dim_out)
        self.token_norm = nn.LayerNorm(dim_out, eps=1e-5)
        self.trunk = nn.Sequential(*(Block(dim_out, self.TRUNK_HEADS, eps=1e-5) for _ in range(self.TRUNK_DEPTH)))
        self.trunk_norm = nn.LayerNorm(dim_out, eps=1e-5)

    def forward(self, extrinsics: Tensor, intrinsics: Tensor, image_hw: tuple[int, int]) -> Tensor:
        tokens = self.token_norm(self.pose_branch(encode_pose(extrinsics, intrinsics, image_hw)))
        return self.trunk_norm(self.trunk(tokens))
