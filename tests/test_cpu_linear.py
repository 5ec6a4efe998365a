"""The backbone's oneDNN linear path: same values as ``F.linear`` (+ exact GELU), and it steps aside for
autocast, gradients and float64, where the reference path must run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from da3_nerfstudio.model import cpu_linear
from da3_nerfstudio.model.cpu_linear import linear


@pytest.fixture
def layer() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(96, 64, generator=generator) / 8, torch.randn(96, generator=generator)


def test_this_machine_has_the_onednn_path() -> None:
    """The speed path is real here (the PyTorch wheels ship oneDNN), not silently the reference path."""
    assert cpu_linear.ONEDNN_LINEAR


@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("shape", [(7, 64), (2, 5, 64), (3, 2, 4, 64)])
def test_values_match_f_linear(layer: tuple, shape: tuple[int, ...], gelu: bool) -> None:
    weight, bias = layer
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    reference = F.linear(x, weight, bias)
    reference = F.gelu(reference) if gelu else reference
    with torch.inference_mode():
        out = linear(x, weight, bias, gelu=gelu)
        strided = linear(x.transpose(0, -2).contiguous().transpose(0, -2), weight, bias, gelu=gelu)
        no_bias = linear(x, weight, None)
    assert out.shape == reference.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(strided, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(no_bias, F.linear(x, weight), rtol=1e-5, atol=1e-5)


def test_steps_aside_for_autocast_gradients_and_float64(layer: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    weight, bias = layer
    x = torch.randn(4, 64)
    calls: list[str] = []
    real = torch.ops.mkldnn._linear_pointwise

    class Spy:
        def __call__(self, *args: object) -> torch.Tensor:
            calls.append("onednn")
            return real(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", Spy())
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(x, weight, bias).dtype == torch.bfloat16
    with torch.inference_mode():
        assert linear(x.double(), weight.double(), bias.double()).dtype == torch.float64
    w = weight.clone().requires_grad_()
    linear(x, w, bias, gelu=True).sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()
    assert calls == []
    with torch.inference_mode():
        linear(x, weight, bias)
    assert calls == ["onednn"]
