"""Depth-prior losses for splat training: rendered depth against DA3 depth.

DA3 depth is multi-view consistent and comes with a per-pixel confidence, so it is used as a
confidence-weighted target. Three variants, all masked where the target (or the render) is invalid:

* ``l1``: |d - d*|, for depth in the units of the poses;
* ``inverse_l1``: |1/d - 1/d*|, which weights near geometry more and tames far outliers (sky, walls
  seen at grazing angles);
* ``pearson``: 1 - weighted correlation of d and d*, invariant to scale and shift, for depth whose
  scale is not trusted (e.g. monocular).

All reduce to a weighted mean over valid pixels and return 0 (still in the graph) when none is valid.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

DepthLossType = Literal["l1", "inverse_l1", "pearson"]


def valid_depth_mask(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Pixels where the target is a positive finite depth, the prediction is finite, and ``mask`` is set."""
    valid = torch.isfinite(target) & (target > 0) & torch.isfinite(pred)
    if mask is not None:
        valid = valid & mask.to(torch.bool)
    return valid


def _weights(pred: Tensor, target: Tensor, confidence: Tensor | None, mask: Tensor | None) -> Tensor:
    """Per-pixel weights: confidence (clamped at 0, non-finite -> 0) on valid pixels, else 0."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    valid = valid_depth_mask(pred, target, mask)
    if confidence is None:
        return valid.to(pred.dtype)
    if confidence.shape != target.shape:
        raise ValueError(f"confidence {tuple(confidence.shape)} must match target {tuple(target.shape)}")
    conf = torch.nan_to_num(confidence.to(pred.dtype), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
    return torch.where(valid, conf, torch.zeros_like(conf))


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Sum(w v) / Sum(w), or 0 when all weights are 0."""
    return (weights * values).sum() / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)


def _prepare(
    pred: Tensor, target: Tensor, confidence: Tensor | None, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Weights, and pred/target with 1 wherever the weight is 0.

    Replacing invalid values *before* any arithmetic keeps NaN/inf out of the graph entirely: a
    ``where`` after the fact would still send 0 * NaN = NaN gradients back into the render.
    """
    w = _weights(pred, target, confidence, mask)
    used = w > 0
    return w, torch.where(used, pred, torch.ones_like(pred)), torch.where(used, target, torch.ones_like(target))


def depth_l1_loss(pred: Tensor, target: Tensor, confidence: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """Confidence-weighted mean |pred - target| over valid pixels."""
    w, p, t = _prepare(pred, target, confidence, mask)
    return _weighted_mean((p - t).abs(), w)


def inverse_depth_l1_loss(
    pred: Tensor,
    target: Tensor,
    confidence: Tensor | None = None,
    mask: Tensor | None = None,
    min_depth: float = 1e-6,
) -> Tensor:
    """Confidence-weighted mean |1/pred - 1/target| over valid pixels (pred clamped at ``min_depth``)."""
    w, p, t = _prepare(pred, target, confidence, mask)
    return _weighted_mean((1.0 / p.clamp_min(min_depth) - 1.0 / t).abs(), w)


def pearson_depth_loss(
    pred: Tensor, target: Tensor, confidence: Tensor | None = None, mask: Tensor | None = None, eps: float = 1e-12
) -> Tensor:
    """1 - confidence-weighted Pearson correlation of pred and target over valid pixels (in [0, 2])."""
    w, p, t = _prepare(pred, target, confidence, mask)
    if not bool((w > 0).any()):
        return (p * w).sum()
    p_c = p - _weighted_mean(p, w)
    t_c = t - _weighted_mean(t, w)
    cov = _weighted_mean(p_c * t_c, w)
    var_p = _weighted_mean(p_c * p_c, w)
    var_t = _weighted_mean(t_c * t_c, w)
    return 1.0 - cov / torch.sqrt(var_p * var_t + eps)


def depth_loss(
    kind: DepthLossType,
    pred: Tensor,
    target: Tensor,
    confidence: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Dispatch to the loss named ``kind`` (``l1``, ``inverse_l1`` or ``pearson``)."""
    if kind == "l1":
        return depth_l1_loss(pred, target, confidence, mask)
    if kind == "inverse_l1":
        return inverse_depth_l1_loss(pred, target, confidence, mask)
    if kind == "pearson":
        return pearson_depth_loss(pred, target, confidence, mask)
    raise ValueError(f"unknown depth loss {kind!r}; expected 'l1', 'inverse_l1' or 'pearson'")


def downscale_depth(depth: Tensor, factor: int) -> Tensor:
    """Depth (..., H, W) averaged over factor x factor blocks, ignoring invalid (<= 0, non-finite) pixels.

    The output is (..., H // factor, W // factor), the size splatfacto renders at and downscales the
    image to during its resolution schedule (its area filter drops the remainder the same way). A plain
    area filter would blend unknown zeros into valid depth; a block with no valid pixel stays 0.
    """
    if factor == 1:
        return depth
    h, w = depth.shape[-2] // factor, depth.shape[-1] // factor
    blocks = depth[..., : h * factor, : w * factor].reshape(*depth.shape[:-2], h, factor, w, factor)
    valid = torch.isfinite(blocks) & (blocks > 0)
    total = torch.where(valid, blocks, torch.zeros_like(blocks)).sum(dim=(-3, -1))
    count = valid.sum(dim=(-3, -1))
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))


def depth_weight_schedule(step: int, initial: float, final: float, decay_steps: int, warmup_steps: int = 0) -> float:
    """Depth-loss weight at ``step``: ``initial`` until ``warmup_steps``, then log-linear to ``final``.

    The prior matters most early, when it pulls Gaussians onto the surface; later the photometric
    loss should be free to correct DA3's errors, so the weight decays (exponentially, like
    nerfstudio's learning-rate schedules) and stays at ``final`` after ``warmup_steps + decay_steps``.
    """
    if initial < 0 or final < 0:
        raise ValueError(f"weights must be >= 0, got initial={initial}, final={final}")
    if step <= warmup_steps or decay_steps <= 0:
        return initial if step <= warmup_steps else final
    t = min((step - warmup_steps) / decay_steps, 1.0)
    if initial == 0 or final == 0:
        return initial + (final - initial) * t
    return math.exp((1 - t) * math.log(initial) + t * math.log(final))
