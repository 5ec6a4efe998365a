"""DINOv2 backbone with DA3's alternating per-view / cross-view attention.

Module and parameter names follow the official checkpoint layout
(``backbone.pretrained.blocks.{i}.attn.qkv`` ...), so a state dict loads without any key mapping.
Everything is written dtype-agnostic: float64 weights and inputs stay float64 throughout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from da3_nerfstudio.model.cpu_linear import linear
from da3_nerfstudio.model.presets import BackboneConfig

REF_VIEW_STRATEGIES = ("first", "middle", "saddle_balanced", "saddle_sim_range")
#: Reference-view selection only runs for this many views or more (as officially).
MIN_VIEWS_FOR_REF_SELECTION = 3
ROPE_BASE = 100.0


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: Tensor) -> Tensor:
        return linear(linear(x, self.fc1.weight, self.fc1.bias, gelu=True), self.fc2.weight, self.fc2.bias)


class SwiGLUFFN(nn.Module):
    """ViT-g feed-forward: packed gate+value projection ``w12``, output ``w3``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = (int(4 * dim * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = linear(x, self.w12.weight, self.w12.bias).chunk(2, dim=-1)
        return linear(F.silu(gate) * value, self.w3.weight, self.w3.bias)


#: Tokens per pass through a block's feed-forward network at inference: its 4x-wide hidden layer is then
#: held for this many tokens only, instead of for every token of every view at once.
FFN_TOKEN_CHUNK = 4096


class RopeTable:
    """Cos/sin tables of the 2D rotary embedding for one set of token positions, built once per forward
    and dtype instead of once per block (the official code recomputes the angles in every block).

    The head dim's first half encodes y, the second x; within a half, dims k and k + d/4 form a rotation
    pair (rotate-half layout) with frequencies ``100^(-2k/(d/2))``. The rotate-half sign is folded into
    the sine table, so applying it is one swap of quarters and two multiplies.
    """

    def __init__(self, pos: Tensor) -> None:
        self.pos = pos
        self._tables: dict[tuple[torch.dtype, int], tuple[Tensor, Tensor]] = {}

    def tables(self, dtype: torch.dtype, head_dim: int) -> tuple[Tensor, Tensor]:
        """(cos, signed sin), each (N, 1, head_dim), for tokens laid out (B, N, heads, head_dim)."""
        key = (dtype, head_dim)
        if key not in self._tables:
            half = head_dim // 2
            inv_freq = ROPE_BASE ** (-torch.arange(0, half, 2, dtype=dtype, device=self.pos.device) / half)
            angles = self.pos.to(dtype)[:, :, None] * inv_freq  # (N, 2 axes, d/4)
            cos, sin = angles.cos(), angles.sin()
            cos = torch.stack([cos, cos], dim=2).reshape(-1, 1, head_dim)
            sin = torch.stack([-sin, sin], dim=2).reshape(-1, 1, head_dim)
            self._tables[key] = (cos, sin)
        return self._tables[key]

    def __call__(self, t: Tensor) -> Tensor:
        """Rotate q or k laid out (B, N, heads, head_dim)."""
        cos, sin = self.tables(t.dtype, t.shape[-1])
        quarters = t.unflatten(-1, (2, 2, -1))
        swapped = quarters.flip(-2).flatten(-3)  # per axis: [a, b] -> [b, a]
        return torch.addcmul(t * cos, swapped, sin)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        head_dim = dim // num_heads
        if qk_norm:
            self.q_norm = nn.LayerNorm(head_dim, eps=1e-5)
            self.k_norm = nn.LayerNorm(head_dim, eps=1e-5)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: Tensor, rope: RopeTable | None = None) -> Tensor:
        b, n, c = x.shape
        heads = (self.num_heads, c // self.num_heads)
        # q, k and v from slices of the packed projection: each is its own tensor, so q and k are freed
        # once normalised and rotated instead of keeping the packed (B, N, 3C) output alive.
        weight, bias = self.qkv.weight, self.qkv.bias
        q, k, v = (linear(x, weight[i * c : (i + 1) * c], bias[i * c : (i + 1) * c]).unflatten(-1, heads)
                   for i in range(3))  # fmt: skip
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        # Under autocast the QK-norm returns float32 while v is low precision: attend in v's dtype, as
        # autocast does for the official model's attention on CUDA (a no-op without autocast).
        q, k = q.to(v.dtype), k.to(v.dtype)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        del q, k, v
        return linear(out.transpose(1, 2).reshape(b, n, c), self.proj.weight, self.proj.bias)


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale."""

    def __init__(self, dim: int, num_heads: int, *, eps: float, qk_norm: bool = False, ffn: str = "mlp") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = SwiGLUFFN(dim) if ffn == "swiglu" else Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: Tensor, rope: RopeTable | None = None) -> Tensor:
        x = torch.addcmul(x, self.attn(self.norm1(x), rope), self.ls1.gamma).contiguous()
        if torch.is_grad_enabled():
            return torch.addcmul(x, self.mlp(self.norm2(x)), self.ls2.gamma)
        # Inference: x is this block's own tensor, so the feed-forward residual is added in place, a
        # chunk of tokens at a time (the hidden layer is 4x the width of x).
        flat = x.view(-1, x.shape[-1])
        for rows in flat.split(FFN_TOKEN_CHUNK):
            rows.addcmul_(self.mlp(self.norm2(rows)), self.ls2.gamma)
        return x


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def select_reference_view(cls_tokens: Tensor, strategy: str) -> Tensor:
    """Index (B,) of the reference view per batch element from the views' cls features (B,S,C)."""
    b, s, _ = cls_tokens.shape
    if strategy == "first":
        return torch.zeros(b, dtype=torch.long, device=cls_tokens.device)
    if strategy == "middle":
        return torch.full((b,), s // 2, dtype=torch.long, device=cls_tokens.device)
    unit = F.normalize(cls_tokens, dim=-1)
    gram = unit @ unit.transpose(1, 2) - torch.eye(s, dtype=unit.dtype, device=unit.device)
    if strategy == "saddle_sim_range":
        return (gram.amax(-1) - gram.amin(-1)).argmax(-1)
    if strategy != "saddle_balanced":
        raise ValueError(f"unknown ref_view_strategy {strategy!r}; valid: {', '.join(REF_VIEW_STRATEGIES)}")

    def minmax(m: Tensor) -> Tensor:
        lo, hi = m.amin(-1, keepdim=True), m.amax(-1, keepdim=True)
        return (m - lo) / (hi - lo + 1e-8)

    similarity = gram.sum(-1) / (s - 1)
    norm = cls_tokens.norm(dim=-1)
    variance = unit.var(dim=-1)
    score = (minmax(similarity) - 0.5).abs() + (minmax(norm) - 0.5).abs() + (minmax(variance) - 0.5).abs()
    return score.argmin(-1)


def reference_first_order(ref: Tensor, s: int) -> Tensor:
    """Permutation (B,S) putting view ``ref`` first and keeping the others' relative order."""
    idx = torch.arange(s, device=ref.device).expand(ref.shape[0], s)
    others = idx[idx != ref[:, None]].reshape(ref.shape[0], s - 1)
    return torch.cat([ref[:, None], others], dim=1)


def _gather_views(x: Tensor, order: Tensor) -> Tensor:
    """x (B,S,...) reordered along the view axis per batch element."""
    index = order.reshape(*order.shape, *([1] * (x.dim() - 2))).expand(*order.shape, *x.shape[2:])
    return torch.gather(x, 1, index)


class DinoVisionTransformer(nn.Module):
    """The ``backbone.pretrained`` module."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(dim, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if cfg.anyview:
            self.camera_token = nn.Parameter(torch.zeros(1, 2, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.pos_grid**2 + 1, dim))
        self.blocks = nn.ModuleList(
            Block(dim, cfg.num_heads, eps=1e-6, qk_norm=cfg.anyview and i >= cfg.alt_start, ffn=cfg.ffn)
            for i in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-5)

    def _pos_embed(self, h: int, w: int, dtype: torch.dtype) -> Tensor:
        """Absolute pos-embed for an h x w patch grid (DINOv2's scale-factor interpolation)."""
        g = self.cfg.pos_grid
        if h == g and w == g:
            return self.pos_embed.to(dtype)
        cls_pos, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid = grid.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((h + 0.1) / g, (w + 0.1) / g), mode="bicubic", align_corners=False)
        assert grid.shape[-2:] == (h, w)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat([cls_pos, grid], dim=1).to(dtype)

    def block_is_global(self, i: int) -> bool:
        return self.cfg.anyview and i >= self.cfg.alt_start and i % 2 == 1

    def forward(
        self, images: Tensor, camera_tokens: Tensor | None = None, ref_view_strategy: str = "saddle_balanced"
    ) -> list[tuple[Tensor, Tensor]]:
        """Run the blocks; returns, per out layer, (patch tokens (B,S,P,C'), camera token (B,S,C')).

        C' is 2C for concatenated (local, global) features, C otherwise. Views reordered for the
        reference view come back in the caller's order.
        """
        cfg = self.cfg
        b, s, _, height, width = images.shape
        h, w = patch_grid(height, width, cfg.patch_size)
        x = self.patch_embed(images.flatten(0, 1))
        x = torch.cat([self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self._pos_embed(h, w, x.dtype)
        n, c = x.shape[1], x.shape[2]
        x = x.reshape(b, s, n, c)

        local_rope = global_rope = None
        if cfg.anyview:
            rows, cols = torch.meshgrid(
                torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij"
            )
            local_pos = torch.cat(
                [torch.zeros(1, 2, dtype=torch.long, device=x.device), torch.stack([rows, cols], -1).reshape(-1, 2) + 1]
            )
            view_pos = torch.ones_like(local_pos)
            view_pos[0] = 0
            local_rope, global_rope = RopeTable(local_pos), RopeTable(view_pos.repeat(s, 1))

        order = None
        local_x = x
        outputs: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            if cfg.anyview and i == cfg.alt_start - 1 and camera_tokens is None and s >= MIN_VIEWS_FOR_REF_SELECTION:
                order = reference_first_order(select_reference_view(x[:, :, 0], ref_view_strategy), s)
                x, local_x = _gather_views(x, order), _gather_views(local_x, order)
            if cfg.anyview and i == cfg.alt_start:
                x = x.clone()
                if camera_tokens is not None:
                    x[:, :, 0] = camera_tokens.to(x.dtype)
                else:
                    token = self.camera_token.to(x.dtype)
                    x[:, :1, 0] = token[:, 0]
                    x[:, 1:, 0] = token[:, 1]
            use_rope = cfg.anyview and i >= cfg.alt_start
            if self.block_is_global(i):
                x = block(x.reshape(b, s * n, c), global_rope if use_rope else None).reshape(b, s, n, c)
            else:
                x = block(x.reshape(b * s, n, c), local_rope if use_rope else None).reshape(b, s, n, c)
                local_x = x
            if i in cfg.out_layers:
                outputs.append(torch.cat([local_x, x], dim=-1) if cfg.cat_token else x)

        # Build the results in place of the raw outputs so no out layer is held twice.
        inverse = torch.argsort(order, dim=1) if order is not None else None
        results: list[tuple[Tensor, Tensor]] = []
        while outputs:
            out = outputs.pop(0)
            if inverse is not None:
                out = _gather_views(out, inverse)
            patches = out[:, :, 1:]
            if cfg.cat_token:
                patches = torch.cat([patches[..., :c], self.norm(patches[..., c:])], dim=-1)
            else:
                patches = self.norm(patches)
            results.append((patches, out[:, :, 0].clone()))
            del out
        return results


class Backbone(nn.Module):
    """Wrapper whose only child is ``pretrained`` (the official key prefix)."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.pretrained = DinoVisionTransformer(cfg)

    def forward(
        self, images: Tensor, camera_tokens: Tensor | None = None, ref_view_strategy: str = "saddle_balanced"
    ) -> list[tuple[Tensor, Tensor]]:
        return self.pretrained(images, camera_tokens, ref_view_strategy)


def patch_grid(height: int, width: int, patch: int = 14) -> tuple[int, int]:
    """Patch grid of an input, which must be a multiple of the patch size."""
    if height % patch or width % patch:
        raise ValueError(f"input size {height}x{width} is not a multiple of the patch size {patch}")
    return height // patch, width // patch
