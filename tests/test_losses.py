"""Depth losses against hand computations and numpy's correlation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from da3_nerfstudio.losses import (
    depth_l1_loss,
    depth_loss,
    depth_weight_schedule,
    downscale_depth,
    inverse_depth_l1_loss,
    pearson_depth_loss,
)

NAN = float("nan")


def _example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """2x2 depth with one zero (unknown) and one NaN target; confidences 2, 1, 1, 1."""
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[1.5, 0.0], [2.0, NAN]], dtype=torch.float64)
    conf = torch.tensor([[2.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    return pred, target, conf


def test_l1_by_hand() -> None:
    pred, target, conf = _example()
    # Valid: (0,0) with weight 2, error 0.5; (1,0) with weight 1, error 1.
    loss = depth_l1_loss(pred, target, conf)
    assert loss.item() == pytest.approx((2 * 0.5 + 1 * 1.0) / 3)
    loss.backward()
    # d/dpred of sum(w |p - t|) / sum(w): w sign(p - t) / sum(w), zero where invalid.
    np.testing.assert_allclose(pred.grad.numpy(), [[-2 / 3, 0.0], [1 / 3, 0.0]])
    assert depth_l1_loss(pred, target).item() == pytest.approx((0.5 + 1.0) / 2)


def test_inverse_l1_by_hand() -> None:
    pred, target, conf = _example()
    loss = inverse_depth_l1_loss(pred, target, conf)
    assert loss.item() == pytest.approx((2 * abs(1 / 1 - 1 / 1.5) + abs(1 / 3 - 1 / 2)) / 3)


def test_mask_excludes_pixels() -> None:
    pred, target, conf = _example()
    mask = torch.tensor([[False, True], [True, True]])
    assert depth_l1_loss(pred, target, conf, mask).item() == pytest.approx(1.0)
    assert depth_loss("l1", pred, target, conf, mask).item() == pytest.approx(1.0)


def test_invalid_pixels_never_poison_gradients() -> None:
    """NaN / inf in the render where the target is unknown must not reach the gradient."""
    target = torch.tensor([1.0, 0.0, 2.0, 3.0])
    for kind in ("l1", "inverse_l1", "pearson"):
        pred = torch.tensor([1.2, NAN, 2.5, 0.0], requires_grad=True)
        with torch.no_grad():
            pred[3] = float("inf")
        loss = depth_loss(kind, pred, target, mask=torch.tensor([True, True, True, False]))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(pred.grad).all(), kind
        assert pred.grad[1] == 0 and pred.grad[3] == 0, kind


def test_no_valid_pixel_gives_zero_that_backpropagates() -> None:
    pred = torch.ones(3, requires_grad=True)
    for kind in ("l1", "inverse_l1", "pearson"):
        loss = depth_loss(kind, pred, torch.zeros(3))
        assert loss.item() == 0.0
        loss.backward()


def test_pearson_matches_numpy_and_is_scale_shift_invariant() -> None:
    rng = np.random.default_rng(0)
    target = rng.uniform(1, 5, size=200)
    pred = target + rng.normal(0, 0.5, size=200)
    loss = pearson_depth_loss(torch.from_numpy(pred), torch.from_numpy(target))
    assert loss.item() == pytest.approx(1 - np.corrcoef(pred, target)[0, 1], abs=1e-9)
    affine = pearson_depth_loss(torch.from_numpy(3.0 * target + 7.0), torch.from_numpy(target))
    assert affine.item() == pytest.approx(0.0, abs=1e-9)
    flipped = pearson_depth_loss(torch.from_numpy(-target), torch.from_numpy(target))
    assert flipped.item() == pytest.approx(2.0, abs=1e-9)
    # Integer confidences weigh like repeated samples.
    weights = rng.integers(1, 4, size=200)
    weighted = pearson_depth_loss(
        torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(weights.astype(np.float64))
    )
    repeated = 1 - np.corrcoef(np.repeat(pred, weights), np.repeat(target, weights))[0, 1]
    assert weighted.item() == pytest.approx(repeated, abs=1e-9)


def test_unknown_loss_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown depth loss"):
        depth_loss("l2", torch.ones(2), torch.ones(2))  # type: ignore[arg-type]


def test_weight_schedule() -> None:
    assert depth_weight_schedule(0, 0.2, 0.002, 1000, warmup_steps=100) == 0.2
    assert depth_weight_schedule(100, 0.2, 0.002, 1000, warmup_steps=100) == 0.2
    assert depth_weight_schedule(600, 0.2, 0.002, 1000, warmup_steps=100) == pytest.approx(math.sqrt(0.2 * 0.002))
    assert depth_weight_schedule(1100, 0.2, 0.002, 1000, warmup_steps=100) == pytest.approx(0.002)
    assert depth_weight_schedule(50_000, 0.2, 0.002, 1000, warmup_steps=100) == pytest.approx(0.002)
    assert depth_weight_schedule(500, 0.1, 0.0, 1000) == pytest.approx(0.05)  # linear when an end is 0
    assert depth_weight_schedule(10, 0.1, 0.1, 0) == 0.1


def test_downscale_depth_averages_valid_pixels_only() -> None:
    depth = torch.tensor(
        [
            [1.0, 3.0, 0.0, 0.0, 9.0],
            [5.0, 0.0, 0.0, NAN, 9.0],
            [2.0, 2.0, 4.0, 6.0, 9.0],
        ]
    )
    out = downscale_depth(depth, 2)
    # Blocks 2x2 from the top-left; the last row and column do not fill a block (as in splatfacto).
    torch.testing.assert_close(out, torch.tensor([[3.0, 0.0]]))
    assert downscale_depth(depth, 1) is depth
    batch = downscale_depth(torch.stack([depth, 2 * depth]), 2)
    torch.testing.assert_close(batch, torch.tensor([[[3.0, 0.0]], [[6.0, 0.0]]]))
