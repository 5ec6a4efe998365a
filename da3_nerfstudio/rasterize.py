"""Pure-PyTorch Gaussian rasterizer with the semantics of ``gsplat.rasterization`` (gsplat 1.4.0).

gsplat has no CPU backend, so nerfstudio's splatfacto cannot train without CUDA. This module renders
the same images (EWA projection with a 0.3 px low-pass blur, 3-sigma radii and 16-pixel tile
truncation, front-to-back alpha compositing with gsplat's alpha clamp, 1/255 skip and transmittance
cut-off) with plain differentiable torch ops, so the same training loop runs on CPU: slowly, for
tests and small scenes. Work is done on (Gaussian, pixel) pairs restricted to where a Gaussian's
alpha can reach 1/255, in bands of image rows holding at most ``band_pairs`` pairs, so memory is bounded
by one band. On CUDA the bands are large (usually the whole image) and the band loop never waits for the
GPU: the pair counts of every row are read back once per camera, which sizes the bands and every
variable-length tensor in them; the only other read-back is the count of drawn pairs in each band.

The returned ``info`` dict carries the keys splatfacto and gsplat's ``DefaultStrategy`` read
(``means2d`` with a retainable gradient, ``radii``, ``width``, ``height``, ``n_cameras``, ...);
``absgrad=True`` also fills ``info["means2d"].absgrad`` during backward, as gsplat does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from da3_nerfstudio.rotation import quat_wxyz_to_matrix, sh_basis

# Compositing constants of gsplat's CUDA kernels (rasterize_to_pixels_fwd.cu).
ALPHA_MAX = 0.999
ALPHA_MIN = 1.0 / 255.0
TRANSMITTANCE_MIN = 1e-4

RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]

#: Default (Gaussian, pixel) pairs per band. Forward and backward keep a few hundred bytes per pair, so the
#: CPU default stays in the hundreds of MB and the CUDA one within a few GB, usually one band per image.
BAND_PAIRS = {"cpu": 1 << 20, "cuda": 1 << 24}


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Evaluate SH ``coeffs`` (..., K, 3) with K >= (degree+1)^2 along ``dirs`` (..., 3) -> (..., 3).

    Directions need not be unit length (they are normalised here, as gsplat does).
    """
    n_coeffs = (degree + 1) ** 2
    if coeffs.shape[-2] < n_coeffs:
        raise ValueError(f"SH degree {degree} needs {n_coeffs} coefficients, got {coeffs.shape[-2]}")
    basis = sh_basis(degree, torch.nn.functional.normalize(dirs, dim=-1))
    return (basis.unsqueeze(-1) * coeffs[..., :n_coeffs, :]).sum(dim=-2)


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
) -> dict[str, Tensor]:
    """EWA-project N Gaussians into C pinhole cameras (gsplat's ``fully_fused_projection``, unpacked).

    Returns ``means2d`` (C,N,2) pixels, ``depths`` (C,N) camera z, ``conics`` (C,N,3) inverse of the
    blurred 2D covariance (xx, xy, yy), ``radii`` (C,N) int32 (0 = culled) and ``compensations``
    (C,N), the opacity factor that keeps the blur energy-preserving in antialiased mode.
    """
    rot = quat_wxyz_to_matrix(quats)  # (N,3,3)
    m = rot * scales.unsqueeze(-2)  # R @ diag(s)
    covars = m @ m.transpose(-1, -2)  # (N,3,3)

    r_cam = viewmats[:, :3, :3]  # (C,3,3)
    t_cam = viewmats[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", r_cam, means) + t_cam[:, None, :]  # (C,N,3)
    covars_c = torch.einsum("cij,njk,clk->cnil", r_cam, covars, r_cam)  # (C,N,3,3)

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    x, y, z_true = means_c.unbind(-1)
    # Culled Gaussians (outside the depth range, e.g. at the camera centre) are projected at a harmless
    # depth: their values are never used, but an inf here would turn their zero gradients into NaN.
    in_range = (z_true >= near_plane) & (z_true <= far_plane)
    z = torch.where(in_range, z_true, torch.ones_like(z_true))
    # gsplat clamps the Jacobian's x/z, y/z to 1.3x the field of view to keep off-screen Gaussians sane.
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    rz = 1.0 / z
    tx = z * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x * rz))
    ty = z * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y * rz))
    zeros = torch.zeros_like(z)
    jac = torch.stack([fx * rz, zeros, -fx * tx * rz * rz, zeros, fy * rz, -fy * ty * rz * rz], dim=-1).reshape(
        *z.shape, 2, 3
    )
    cov2d = jac @ covars_c @ jac.transpose(-1, -2)  # (C,N,2,2)
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)

    a, b, c = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    compensations = torch.sqrt(torch.clamp(det_orig / det, min=0.0))
    det_ok = det > 0
    safe_det = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c / safe_det, -b / safe_det, a / safe_det], dim=-1)

    with torch.no_grad():
        half_trace = 0.5 * (a + c)
        lambda_max = half_trace + torch.sqrt(torch.clamp(half_trace * half_trace - det, min=0.01))
        radius = torch.ceil(3.0 * torch.sqrt(torch.clamp(lambda_max, min=0.0)))
        mx, my = means2d[..., 0], means2d[..., 1]
        visible = (
            det_ok
            & in_range
            & (radius > radius_clip)
            & (mx + radius > 0)
            & (mx - radius < width)
            & (my + radius > 0)
            & (my - radius < height)
        )
        radii = torch.where(visible, radius, torch.zeros_like(radius)).to(torch.int32)
    return {
        "means2d": means2d,
        "depths": z_true,
        "conics": conics,
        "radii": radii,
        "compensations": compensations,
    }


def _tile_ranges(means2d: Tensor, radii: Tensor, tile_size: int, tiles_x: int, tiles_y: int) -> Tensor:
    """Per-Gaussian [x0, y0, x1, y1) tile ranges, computed exactly as gsplat's ``isect_tiles``."""
    with torch.no_grad():
        r = radii.to(means2d.dtype) / tile_size
        tx, ty = means2d[..., 0] / tile_size, means2d[..., 1] / tile_size
        x0 = torch.floor(tx - r).clamp(0, tiles_x)
        y0 = torch.floor(ty - r).clamp(0, tiles_y)
        x1 = torch.ceil(tx + r).clamp(0, tiles_x)
        y1 = torch.ceil(ty + r).clamp(0, tiles_y)
        return torch.stack([x0, y0, x1, y1], dim=-1).long()


def _abs_accumulator(target: Tensor, ids: Tensor) -> Callable[[Tensor], None]:
    """Backward hook adding each pair's |d loss / d offset| to ``target[ids]`` (gsplat's absgrad)."""

    def hook(grad: Tensor) -> None:
        target.index_add_(0, ids, grad.abs())

    return hook


def _pixel_boxes(
    means2d: Tensor, extent: Tensor, tiles: Tensor, width: int, height: int, tile_size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-Gaussian pixel box [x_lo, x_hi) x [y_lo, y_hi): its tiles, cut down to where its alpha can reach 1/255."""
    with torch.no_grad():
        mu = means2d.detach()
        x_lo = torch.maximum(tiles[:, 0] * tile_size, torch.floor(mu[:, 0] - extent - 0.5).long()).clamp(0, width)
        x_hi = torch.minimum(tiles[:, 2] * tile_size, torch.ceil(mu[:, 0] + extent + 0.5).long()).clamp(0, width)
        y_lo = torch.maximum(tiles[:, 1] * tile_size, torch.floor(mu[:, 1] - extent - 0.5).long()).clamp(0, height)
        y_hi = torch.minimum(tiles[:, 3] * tile_size, torch.ceil(mu[:, 1] + extent + 0.5).long()).clamp(0, height)
        return x_lo, (x_hi - x_lo).clamp_min(0), y_lo, y_hi.maximum(y_lo)


def _bands(x_width: Tensor, y_lo: Tensor, y_hi: Tensor, height: int, band_pairs: int) -> list[tuple[int, int, int]]:
    """Row bands ``(y0, y1, pairs)`` of at most ``band_pairs`` pairs each (a single row may exceed it).

    The pairs of each row (the widths of the boxes covering it) come from a difference array, read back to
    the host once: this is the camera's one synchronisation before the bands are composited.
    """
    with torch.no_grad():
        diff = torch.zeros(height + 1, dtype=torch.long, device=x_width.device)
        diff.index_add_(0, y_lo, x_width).index_add_(0, y_hi, -x_width)
        per_row = torch.cumsum(diff[:-1], 0).tolist()
    bands, y0, pairs = [], 0, 0
    for y, row in enumerate(per_row):
        if y > y0 and pairs + row > band_pairs:
            bands.append((y0, y, pairs))
            y0, pairs = y, 0
        pairs += row
    bands.append((y0, height, pairs))
    return bands


def _composite_band(
    order: Tensor,
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    features: Tensor,
    boxes: tuple[Tensor, Tensor, Tensor, Tensor],
    width: int,
    y0: int,
    y1: int,
    n_pairs: int,
    absgrad: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing of the depth-sorted Gaussians ``order`` over image rows [y0, y1).

    Works on (Gaussian, pixel) pairs: each Gaussian meets only the pixels of its box (``boxes``, in the
    order of ``order``: x_lo, box width, y_lo, y_hi), within which its alpha can reach 1/255; ``n_pairs``
    is their number in this band. Pairs are sorted by (pixel, depth) and composited per pixel with a
    segmented cumulative product (a float64 cumulative sum of log(1 - alpha)), all in vectorised torch ops.
    Returns the accumulated features (h, W, D) and alpha (h, W, 1).
    """
    h = y1 - y0
    device, dtype = means2d.device, means2d.dtype
    n_pix = h * width
    with torch.no_grad():
        x_lo, box_w, y_lo, y_hi = boxes
        y_lo, y_hi = y_lo.clamp(y0, y1), y_hi.clamp(y0, y1)
        counts = box_w * (y_hi - y_lo)
        rank = torch.repeat_interleave(torch.arange(len(order), device=device), counts, output_size=n_pairs)
        first = torch.cumsum(counts, 0) - counts
        local = torch.arange(n_pairs, device=device) - first[rank]
        px = x_lo[rank] + local % box_w[rank]
        py = y_lo[rank] + local // box_w[rank]
    g = order[rank]
    mu_pair = means2d.index_select(0, g)
    dx = mu_pair[:, 0] - (px.to(dtype) + 0.5)
    dy = mu_pair[:, 1] - (py.to(dtype) + 0.5)
    con = conics.index_select(0, g)
    sigma = 0.5 * (con[:, 0] * dx * dx + con[:, 2] * dy * dy) + con[:, 1] * dx * dy
    alpha = torch.clamp_max(opacities.index_select(0, g) * torch.exp(-sigma), ALPHA_MAX)
    with torch.no_grad():
        hit = torch.nonzero((sigma >= 0) & (alpha >= ALPHA_MIN)).squeeze(-1)
        pixel = (py[hit] - y0) * width + px[hit]
        # Pairs are generated in depth order (rank), so a stable sort by pixel gives each pixel's
        # front-to-back list (a Gaussian meets a pixel at most once).
        pixel, sort = torch.sort(pixel, stable=True)
        pair = hit[sort]
    if absgrad is not None and dx.requires_grad:
        dx.register_hook(_abs_accumulator(absgrad[:, 0], g))
        dy.register_hook(_abs_accumulator(absgrad[:, 1], g))
    alpha = alpha.index_select(0, pair)
    log_t = torch.cumsum(torch.log1p(-alpha.double()), 0)
    with torch.no_grad():
        starts = torch.ones_like(pixel, dtype=torch.bool)
        starts[1:] = pixel[1:] != pixel[:-1]
        start_idx = torch.cummax(torch.where(starts, torch.arange(len(pixel), device=device), 0), 0).values
    log_before = torch.cat([log_t.new_zeros(1), log_t[:-1]])
    seg_log_excl = log_before - log_before[start_idx]
    seg_log_incl = log_t - log_before[start_idx]
    # A Gaussian that would push transmittance to <= 1e-4 ends the pixel and is not drawn (nor any after).
    alive = seg_log_incl > math.log(TRANSMITTANCE_MIN)
    weights = torch.where(alive, alpha * torch.exp(seg_log_excl).to(dtype), torch.zeros_like(alpha))
    out = features.new_zeros(n_pix, features.shape[-1]).index_add(
        0, pixel, weights[:, None] * features.index_select(0, g.index_select(0, pair))
    )
    acc = means2d.new_zeros(n_pix).index_add(0, pixel, weights)
    return out.reshape(h, width, -1), acc.reshape(h, width, 1)


def rasterization(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    packed: bool = False,
    tile_size: int = 16,
    backgrounds: Tensor | None = None,
    render_mode: RenderMode = "RGB",
    sparse_grad: bool = False,
    absgrad: bool = False,
    rasterize_mode: Literal["classic", "antialiased"] = "classic",
    camera_model: str = "pinhole",
    band_pairs: int | None = None,
    **unused: Any,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Render N Gaussians into C cameras; a CPU stand-in for ``gsplat.rasterization`` (1.4.0 layout).

    Args follow gsplat: ``means`` (N,3), ``quats`` (N,4) wxyz, ``scales`` (N,3) and ``opacities`` (N,)
    activated, ``colors`` (N,D) / (C,N,D) or SH coefficients (N,K,3) / (C,N,K,3) with ``sh_degree``,
    ``viewmats`` (C,4,4) world-to-camera OpenCV, ``Ks`` (C,3,3) pixels. The image is composited in
    bands of rows of at most ``band_pairs`` (Gaussian, pixel) pairs (default :data:`BAND_PAIRS` for the
    device), which bounds memory. Extra gsplat keyword arguments (e.g. ``channel_chunk``) are accepted
    and ignored.

    Returns ``render_colors`` (C,H,W,D[+1]), ``render_alphas`` (C,H,W,1) and ``info``.
    """
    if packed or sparse_grad:
        raise ValueError("the PyTorch rasterizer supports packed=False and sparse_grad=False only")
    if camera_model != "pinhole":
        raise ValueError(f"the PyTorch rasterizer supports the pinhole camera model only, got {camera_model!r}")
    if render_mode not in ("RGB", "D", "ED", "RGB+D", "RGB+ED"):
        raise ValueError(f"unknown render_mode {render_mode!r}")
    if band_pairs is None:
        band_pairs = BAND_PAIRS["cuda" if means.device.type == "cuda" else "cpu"]
    if band_pairs < 1:
        raise ValueError(f"band_pairs must be positive, got {band_pairs}")
    n_cams = viewmats.shape[0]
    proj = project_gaussians(
        means, quats, scales, viewmats, Ks, width, height, eps2d, near_plane, far_plane, radius_clip
    )
    means2d, depths, conics, radii = proj["means2d"], proj["depths"], proj["conics"], proj["radii"]
    opac = opacities[None, :].expand(n_cams, -1)
    if rasterize_mode == "antialiased":
        opac = opac * proj["compensations"]
    elif rasterize_mode != "classic":
        raise ValueError(f"unknown rasterize_mode {rasterize_mode!r}")

    if sh_degree is None:
        feats = colors if colors.dim() == 3 else colors[None].expand(n_cams, -1, -1)
    else:
        shs = colors if colors.dim() == 4 else colors[None].expand(n_cams, -1, -1, -1)
        campos = torch.linalg.inv(viewmats)[:, :3, 3]
        dirs = means[None, :, :] - campos[:, None, :]
        rgb = eval_sh(sh_degree, dirs, shs) * (radii > 0)[..., None]
        feats = torch.clamp_min(rgb + 0.5, 0.0)
    if render_mode in ("D", "ED"):
        feats = depths[..., None]
    elif render_mode in ("RGB+D", "RGB+ED"):
        feats = torch.cat([feats, depths[..., None]], dim=-1)

    absgrad_buf = means2d.new_zeros(means2d.shape) if absgrad else None
    if absgrad_buf is not None:
        means2d.absgrad = absgrad_buf  # filled by hooks during backward, like gsplat's CUDA backward
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    tile_ranges = _tile_ranges(means2d, radii, tile_size, tiles_x, tiles_y)

    # Distance (in units of the 2D covariance's largest std) beyond which alpha < 1/255.
    with torch.no_grad():
        a, b, c = conics[..., 0], conics[..., 1], conics[..., 2]
        det = (a * c - b * b).clamp_min(1e-30)
        lambda_max = ((a + c) / 2 + torch.sqrt(((a - c) / 2) ** 2 + b * b)) / det  # of the covariance
        reach = 2.0 * torch.log(torch.clamp(opac.detach() / ALPHA_MIN, min=1.0))
        extent = torch.sqrt(reach * lambda_max)
    images, alphas = [], []
    for cam in range(n_cams):
        visible = torch.nonzero(radii[cam] > 0).squeeze(-1)
        order = visible[torch.argsort(depths[cam, visible].detach(), stable=True)]
        boxes = _pixel_boxes(means2d[cam, order], extent[cam, order], tile_ranges[cam, order], width, height, tile_size)
        cam_absgrad = absgrad_buf[cam] if absgrad_buf is not None else None
        bands_c, bands_a = [], []
        for y0, y1, n_pairs in _bands(boxes[1], boxes[2], boxes[3], height, band_pairs):
            c, a = _composite_band(
                order, means2d[cam], conics[cam], opac[cam], feats[cam], boxes, width, y0, y1, n_pairs, cam_absgrad
            )
            bands_c.append(c)
            bands_a.append(a)
        images.append(torch.cat(bands_c, dim=0))
        alphas.append(torch.cat(bands_a, dim=0))
    render_colors = torch.stack(images)
    render_alphas = torch.stack(alphas)

    if backgrounds is not None:
        bg = backgrounds
        if render_mode in ("RGB+D", "RGB+ED"):
            bg = torch.cat([bg, bg.new_zeros(n_cams, 1)], dim=-1)
        if render_mode not in ("D", "ED"):
            render_colors = render_colors + (1.0 - render_alphas) * bg[:, None, None, :]
    if render_mode in ("ED", "RGB+ED"):
        expected = render_colors[..., -1:] / render_alphas.clamp(min=1e-10)
        render_colors = torch.cat([render_colors[..., :-1], expected], dim=-1)

    info: dict[str, Any] = {
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": opac,
        "tile_width": tiles_x,
        "tile_height": tiles_y,
        "tiles_per_gauss": ((tile_ranges[..., 2] - tile_ranges[..., 0]) * (tile_ranges[..., 3] - tile_ranges[..., 1]))
        * (radii > 0),
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_cameras": n_cams,
    }
    return render_colors, render_alphas, info
