"""Ray map -> cameras: the robust solver behind ``use_ray_pose`` (DA3's ray head gives, per cell, a viewing
direction and the camera centre it comes from).

It lives next to the network because only the network calls it; it follows the conventions of
:mod:`da3_nerfstudio.geometry` (w2c OpenCV extrinsics, continuous-pixel intrinsics) and works in float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from da3_nerfstudio.geometry import Array, like, to_torch

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
    r = to_torch(rays)
    wt = to_torch(weights, r)
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
    return like(w2c.to(r.dtype), rays), like(K.to(r.dtype), rays)
