"""Linear layers of the backbone through oneDNN on the CPU (float32 inference).

Why: PyTorch sends a float32 ``F.linear`` on the CPU to MKL's sgemm, which is slow for the backbone's
narrow shapes (K = 384 or 768) on AMD processors (measured 86-170 GFLOP/s on this project's 2-core EPYC),
while oneDNN's matmul, which PyTorch ships for its own fused CPU kernels, reaches 150-220 GFLOP/s on the
same shapes and can apply GELU on the tile it just computed instead of in another pass over a 4x-wide
activation. The values are the same matmul up to float32 rounding (the parity bounds hold).

Everything else (autocast, gradients, float64, other devices, a PyTorch built without oneDNN) takes
``F.linear``, so this is a pure speed path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _onednn_linear_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


ONEDNN_LINEAR = _onednn_linear_available()


def _use_onednn(x: Tensor, weight: Tensor) -> bool:
    return (
        ONEDNN_LINEAR
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
    )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, gelu: bool = False) -> Tensor:
    """``F.linear`` (then exact, erf GELU when ``gelu``) with oneDNN's float32 CPU matmul at inference."""
    if _use_onednn(x, weight):
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        if gelu:
            out = torch.ops.mkldnn._linear_pointwise(flat, weight, bias, "gelu", [], "none")
        else:
            out = torch.ops.mkldnn._linear_pointwise(flat, weight, bias, "none", [], "")
        return out.view(*x.shape[:-1], weight.shape[0])
    out = F.linear(x, weight, bias)
    return F.gelu(out) if gelu else out
