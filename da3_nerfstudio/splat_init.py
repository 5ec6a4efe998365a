"""Initial Gaussian splats from DA3 output: from depth maps, or from the network's Gaussian head.

Splatfacto normally starts from sparse SfM points with nearest-neighbour scales. DA3 gives much more:
a dense depth map per view with a confidence, and (giant models) a Gaussian head. Starting from
Gaussians that already sit on the surface, sized to what one pixel covers, lets training spend its
budget on appearance instead of on growing geometry.

Conventions are those of :mod:`da3_nerfstudio.geometry`: OpenCV world-to-camera poses, intrinsics in
the continuous pixel convention (pixel (i, j) has its centre at (j + 0.5, i + 0.5)), z-depth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from da3_nerfstudio.cameras import check_cameras
from da3_nerfstudio.errors import InputError
from da3_nerfstudio.formats.ply import SplatData
from da3_nerfstudio.geometry import unproject_depth
from da3_nerfstudio.rotation import SH_C0, matrix_to_quat_wxyz, rotate_sh

# Opacities are clipped this far inside (0, 1) so their logits stay finite.
_OPACITY_EPS = 1e-4


def rotmat_to_quat(rot: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4) in w x y z order (w >= 0) of rotation matrices (..., 3, 3)."""
    return matrix_to_quat_wxyz(torch.from_numpy(np.asarray(rot, dtype=np.float64))).numpy()


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of w x y z quaternions (the rotation b followed by a)."""
    aw, ax, ay, az = np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.asarray(b, dtype=np.float64), -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def rotate_sh_rest(sh_dc: np.ndarray, sh_rest: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Rotate the view-dependent SH coefficients (N, K, 3) of splats by a world rotation ``rot``.

    After rotating the scene by ``rot`` a splat must show in direction ``rot @ d`` the colour it showed
    in ``d`` (see :func:`da3_nerfstudio.rotation.rotate_sh`).
    """
    if sh_rest.shape[1] == 0:
        return sh_rest
    full = torch.from_numpy(np.concatenate([sh_dc[:, None], sh_rest], axis=1).astype(np.float64))
    rotated = rotate_sh(full, torch.from_numpy(np.asarray(rot, dtype=np.float64)), dim=-2)
    return rotated[:, 1:].numpy().astype(sh_rest.dtype)


def transform_splats(splats: SplatData, transform: np.ndarray, scale: float = 1.0) -> SplatData:
    """Apply the similarity x -> scale * (R x + t) to splats (``transform`` is (3,4) or (4,4) [R|t]).

    This is how nerfstudio normalises a dataset (orientation, centring, then scale): positions,
    scales, rotations and view-dependent colour all follow, so a splat renders the same from the
    correspondingly transformed camera.
    """
    t = np.asarray(transform, dtype=np.float64)
    rot, trans = t[:3, :3], t[:3, 3]
    if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-5) or np.linalg.det(rot) < 0:
        raise ValueError("transform must hold a proper rotation")
    q_rot = rotmat_to_quat(rot)
    return SplatData(
        means=scale * (splats.means.astype(np.float64) @ rot.T + trans),
        scales_log=splats.scales_log + math.log(scale),
        rotations=quat_multiply(q_rot, splats.rotations),
        opacity_logit=splats.opacity_logit,
        sh_dc=splats.sh_dc,
        sh_rest=rotate_sh_rest(splats.sh_dc, splats.sh_rest, rot),
    )


def _as_views(array: np.ndarray | Tensor, name: str, ndim: int) -> np.ndarray:
    """A (V, ...) float64 numpy array from a numpy array or tensor with ``ndim`` dims per view."""
    a = array.detach().cpu().numpy() if isinstance(array, Tensor) else np.asarray(array)
    if a.ndim == ndim:
        a = a[None]
    if a.ndim != ndim + 1:
        raise ValueError(f"{name} must have {ndim} or {ndim + 1} dimensions, got shape {a.shape}")
    return a


def _view_keep(
    depth: np.ndarray, confidence: np.ndarray | None, confidence_percentile: float, opacity_range: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """One view's kept (sampled) pixels and their opacities (see :func:`splats_from_depth`)."""
    lo, hi = opacity_range
    keep = np.isfinite(depth) & (depth > 0)
    opacity = np.full(depth.shape, hi)
    if confidence is not None:
        keep &= np.isfinite(confidence)
        if confidence_percentile > 0 and keep.any():
            keep &= confidence >= np.percentile(confidence[keep], confidence_percentile)
        if keep.sum() > 1:
            ranks = np.argsort(np.argsort(confidence[keep], kind="stable"), kind="stable") / (keep.sum() - 1)
            opacity[keep] = lo + (hi - lo) * ranks
    return keep, opacity[keep]


def _view_splats(
    points: np.ndarray,
    depth: np.ndarray,
    colours: np.ndarray,
    opacity: np.ndarray,
    w2c: np.ndarray,
    K: np.ndarray,
    footprint_mult: float,
    thickness: float,
) -> dict[str, np.ndarray]:
    """The Gaussians of one view's chosen pixels (see :func:`splats_from_depth`), as raw arrays."""
    footprint = footprint_mult * depth
    scales = np.stack(
        [footprint / K[0, 0], footprint / K[1, 1], thickness * footprint / K[:2, :2].diagonal().mean()], axis=-1
    )
    return {
        "means": points,
        "scales": scales,
        "rotations": np.broadcast_to(rotmat_to_quat(w2c[:3, :3].T), (len(depth), 4)),
        "opacities": opacity,
        "rgb": colours,
    }


def splats_from_depth(
    images: np.ndarray | Tensor,
    depths: np.ndarray | Tensor,
    w2c: np.ndarray | Tensor,
    intrinsics: np.ndarray | Tensor,
    confidences: np.ndarray | Tensor | None = None,
    *,
    stride: int = 1,
    confidence_percentile: float = 0.0,
    scale_mult: float = 0.5,
    thickness: float = 1.0,
    opacity_range: tuple[float, float] = (0.5, 0.9),
    max_gaussians: int | None = None,
    seed: int = 0,
) -> SplatData:
    """One Gaussian per kept pixel of each depth map, at that pixel centre's depth.

    Args:
        images: (V,H,W,3) uint8 or float in [0,1] colours (or (H,W,3) for one view).
        depths: (V,H,W) z-depth; pixels with depth <= 0 or non-finite are skipped.
        w2c: (V,3,4) or (V,4,4) OpenCV world-to-camera poses.
        intrinsics: (V,3,3) pixel intrinsics of the depth maps' resolution.
        confidences: optional (V,H,W); higher means more reliable.
        stride: keep every ``stride``-th pixel in x and y; the Gaussians grow to cover the gap.
        confidence_percentile: per view, drop pixels whose confidence is below this percentile (0-100).
        scale_mult: in-image standard deviation in units of the sample spacing (``stride`` pixels):
            the camera-x/y scales are ``scale_mult * stride * depth / f``, so a Gaussian's footprint in
            its source view is isotropic and the same size in pixels wherever it is.
        thickness: scale along the camera's viewing axis relative to the in-image scale (1 = sphere,
            small = a disc facing the source camera).
        opacity_range: opacity of the least and the most confident kept pixel (linear in confidence
            rank within the view); without confidences every Gaussian gets the upper value.
        max_gaussians: if more pixels are kept, a random subset of this size (``seed``) is returned.

    Returns:
        :class:`SplatData` with SH degree 0 (colour as the DC term, C0 = 0.28209479177387814).

    Raises :class:`InputError` for non-finite or non-rigid cameras or colours (see
    :func:`~da3_nerfstudio.cameras.check_cameras`) and when no pixel is kept.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    lo, hi = opacity_range
    if not 0.0 < lo <= hi < 1.0:
        raise ValueError(f"opacity_range must satisfy 0 < low <= high < 1, got {opacity_range}")
    imgs = _as_views(images, "images", 3)
    deps = _as_views(depths, "depths", 2)
    poses = _as_views(w2c, "w2c", 2).astype(np.float64)
    ks = _as_views(intrinsics, "intrinsics", 2).astype(np.float64)
    confs = None if confidences is None else _as_views(confidences, "confidences", 2)
    n_views, height, width = deps.shape
    if imgs.shape[:3] != deps.shape or imgs.shape[-1] != 3:
        raise ValueError(f"images must be (V,H,W,3) matching depths {deps.shape}, got {imgs.shape}")
    if confs is not None and confs.shape != deps.shape:
        raise ValueError(f"confidences must match depths {deps.shape}, got {confs.shape}")
    check_cameras(poses, ks, "splats_from_depth")
    if np.issubdtype(imgs.dtype, np.floating) and not np.isfinite(imgs).all():
        raise InputError("splats_from_depth: images have non-finite values")

    # Which pixels become Gaussians is decided first (per view, then the random subset over all views), so
    # that points, colours and scales are built, in float64, for the chosen pixels only: every pixel of 32
    # views at 504 px held ~1 GB of per-pixel attributes to keep a million of them.
    grid = np.ix_(np.arange(stride // 2, height, stride), np.arange(stride // 2, width, stride))
    chosen = [
        _view_keep(
            deps[v][grid].astype(np.float64), None if confs is None else confs[v][grid].astype(np.float64),
            confidence_percentile, opacity_range,
        )
        for v in range(n_views)
    ]  # fmt: skip
    counts = np.array([int(keep.sum()) for keep, _ in chosen])
    if not counts.sum():
        raise InputError("splats_from_depth: no pixel has a finite, positive depth (and confidence): no Gaussians")
    pick = None
    if max_gaussians is not None and counts.sum() > max_gaussians:
        pick = np.sort(np.random.default_rng(seed).choice(int(counts.sum()), max_gaussians, replace=False))
    starts = np.concatenate([[0], np.cumsum(counts)])
    parts = []
    for v, (keep, opacity) in enumerate(chosen):
        index = np.flatnonzero(keep)
        if pick is not None:
            mine = pick[(pick >= starts[v]) & (pick < starts[v + 1])] - starts[v]
            index, opacity = index[mine], opacity[mine]
        full_depth = deps[v].astype(np.float64)
        points = unproject_depth(full_depth[None], ks[v : v + 1], poses[v : v + 1])[0][grid]
        depth = full_depth[grid]
        colours = imgs[v][grid].reshape(-1, 3)[index]
        colours = colours / 255.0 if np.issubdtype(colours.dtype, np.integer) else colours.astype(np.float64)
        parts.append(
            _view_splats(
                points.reshape(-1, 3)[index],
                depth.reshape(-1)[index],
                colours,
                opacity,
                poses[v],
                ks[v],
                scale_mult * stride,
                thickness,
            )
        )
    merged = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    opacities = np.clip(merged["opacities"], _OPACITY_EPS, 1 - _OPACITY_EPS)
    return SplatData(
        means=merged["means"],
        scales_log=np.log(np.maximum(merged["scales"], 1e-12)),
        rotations=merged["rotations"],
        opacity_logit=np.log(opacities) - np.log1p(-opacities),
        sh_dc=(merged["rgb"] - 0.5) / SH_C0,
        sh_rest=np.zeros((len(opacities), 0, 3)),
    )


def splats_from_gaussian_head(
    gaussians: Mapping[str, np.ndarray | Tensor],
    *,
    min_opacity: float = 0.0,
    max_gaussians: int | None = None,
    seed: int = 0,
) -> SplatData:
    """Convert the DA3 Gaussian head's world-space output to :class:`SplatData`.

    ``gaussians`` holds ``means`` (N,3), ``scales`` (N,3) standard deviations, ``rotations`` (N,4)
    w x y z, ``harmonics`` (N,3,9) SH degree 2 per colour channel and ``opacities`` (N,) in (0,1); a
    leading batch dimension of 1 is accepted. Gaussians with non-finite values, non-positive scales or
    a zero quaternion (which no renderer can use) or an opacity below ``min_opacity`` are dropped;
    :class:`InputError` if none is usable. ``max_gaussians`` keeps a random subset (``seed``).
    """
    missing = [k for k in ("means", "scales", "rotations", "harmonics", "opacities") if k not in gaussians]
    if missing:
        raise ValueError(f"Gaussian head output lacks {', '.join(missing)}")
    arrays: dict[str, np.ndarray] = {}
    for key, ndim in (("means", 2), ("scales", 2), ("rotations", 2), ("harmonics", 3), ("opacities", 1)):
        value = gaussians[key]
        a = value.detach().float().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
        if a.ndim == ndim + 1 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != ndim:
            raise ValueError(f"Gaussian head {key} must have {ndim} dimensions (or a batch of 1), got {a.shape}")
        arrays[key] = a.astype(np.float64)
    n = len(arrays["means"])
    flat = np.concatenate([arrays[k].reshape(n, -1) for k in arrays], axis=1)
    usable = (
        np.isfinite(flat).all(axis=1)
        & (arrays["scales"] > 0).all(axis=1)
        & (np.abs(arrays["rotations"]).sum(axis=1) > 0)
    )
    if not usable.any():
        raise InputError(f"Gaussian head output: none of the {n} Gaussians is finite with positive scales")
    index = np.flatnonzero(usable & (arrays["opacities"] >= min_opacity))
    if max_gaussians is not None and len(index) > max_gaussians:
        index = np.sort(np.random.default_rng(seed).choice(index, max_gaussians, replace=False))
    return SplatData.from_activated(
        means=arrays["means"][index],
        scales=arrays["scales"][index],
        rotations=arrays["rotations"][index],
        opacities=arrays["opacities"][index],
        sh_coeffs=arrays["harmonics"][index],
    )
