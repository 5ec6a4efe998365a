"""DPT-style dense heads: DualDPT (depth + ray), DPT (metric depth + sky) and GSDPT (Gaussians).

All three share the same pyramid: per-stage projection and resampling of the backbone's patch
tokens, a RefineNet fusion chain up to 8x the patch grid, then small output convolutions.
Frames are processed in chunks so head memory grows linearly with the number of views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from da3_nerfstudio.model.presets import HeadConfig

#: Views per head chunk: bounds head activation memory (full-resolution maps of 4 views, about 200 MB at
#: 504x378 for da3-small, against 8 views officially); the numbers do not depend on it.
HEAD_CHUNK = 4


def uv_embedding(channels: int, height: int, width: int, aspect: float, like: Tensor) -> Tensor:
    """Sin/cos embedding (channels, height, width) of a UV grid spanning the image's aspect ratio.

    u spans +-a/sqrt(a^2+1) and v +-1/sqrt(a^2+1) (a = W/H) at cell centres; channels are
    [sin(u w), cos(u w), sin(v w), cos(v w)] with w_j = 100^(-j/(channels/4)).
    """
    diag = (aspect**2 + 1) ** 0.5
    span_x, span_y = aspect / diag, 1 / diag
    u = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width, dtype=like.dtype,
                       device=like.device)  # fmt: skip
    v = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height,
                       dtype=like.dtype, device=like.device)  # fmt: skip
    quarter = channels // 4
    omega = 100.0 ** (-torch.arange(quarter, dtype=like.dtype, device=like.device) / quarter)
    eu, ev = u[:, None] * omega, v[:, None] * omega  # (W, q), (H, q)
    emb_u = torch.cat([eu.sin(), eu.cos()], dim=-1)[None, :, :].expand(height, width, 2 * quarter)
    emb_v = torch.cat([ev.sin(), ev.cos()], dim=-1)[:, None, :].expand(height, width, 2 * quarter)
    return torch.cat([emb_u, emb_v], dim=-1).permute(2, 0, 1)


def add_uv_embedding_(x: Tensor, image_width: int, image_height: int, ratio: float = 0.1) -> Tensor:
    """Add the scaled UV embedding in place: ``x`` must be a fresh activation no one else holds."""
    return x.add_(uv_embedding(x.shape[1], x.shape[2], x.shape[3], image_width / image_height, x).mul_(ratio))


def upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)), inplace=True)).add_(x)


class FusionBlock(nn.Module):
    """RefineNet fusion: add the lateral input (if any), refine, 1x1 conv, upsample.

    The official block upsamples before its 1x1 convolution; a 1x1 convolution commutes with bilinear
    resampling (per-pixel affine map, interpolation weights summing to one), so it runs here on the
    2x (up to 4x) smaller input instead.
    """

    def __init__(self, features: int, lateral: bool = True) -> None:
        super().__init__()
        if lateral:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, x: Tensor, lateral: Tensor | None, size: tuple[int, int]) -> Tensor:
        if lateral is not None:
            x = self.resConfUnit1(lateral).add_(x)
        return upsample(self.out_conv(self.resConfUnit2(x)), size)


class Permute(nn.Module):
    """Parameter-free permute, so that Sequential indices match the official key names."""

    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(*self.dims)


class Scratch(nn.Module):
    """Container whose attribute names reproduce the official ``head.scratch.*`` keys."""


def _make_fusion(scratch: nn.Module, features: int, suffix: str = "") -> None:
    for level in range(1, 5):
        setattr(scratch, f"refinenet{level}{suffix}", FusionBlock(features, lateral=level != 4))


class DPTBase(nn.Module):
    """Projection + resampling pyramid and the fusion chain(s) shared by every DPT head."""

    def __init__(self, cfg: HeadConfig, *, layer_norm: bool, pos_embed: bool, aux_chain: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.pos_embed = pos_embed
        oc, f = cfg.out_channels, cfg.features
        if layer_norm:
            self.norm = nn.LayerNorm(cfg.dim_in, eps=1e-5)
        else:
            self.norm = None
        self.projects = nn.ModuleList(nn.Conv2d(cfg.dim_in, c, 1) for c in oc)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(oc[0], oc[0], 4, stride=4),
                nn.ConvTranspose2d(oc[1], oc[1], 2, stride=2),
                nn.Identity(),
                nn.Conv2d(oc[3], oc[3], 3, stride=2, padding=1),
            ]
        )
        self.scratch = Scratch()
        for k, c in enumerate(oc):
            setattr(self.scratch, f"layer{k + 1}_rn", nn.Conv2d(c, f, 3, padding=1, bias=False))
        _make_fusion(self.scratch, f)
        if aux_chain:
            _make_fusion(self.scratch, f, "_aux")

    def pyramid(self, feats: list[Tensor], h: int, w: int, image_hw: tuple[int, int]) -> list[Tensor]:
        """Backbone tokens (n, P, C) of the 4 out layers -> the 4 ``layer*_rn`` maps."""
        layers = []
        for k, tokens in enumerate(feats):
            if self.norm is not None:
                tokens = self.norm(tokens)
            # (n, C, h, w) as a channels-last view of the tokens: no copy, and oneDNN's preferred layout.
            x = tokens.reshape(tokens.shape[0], h, w, tokens.shape[2]).permute(0, 3, 1, 2)
            x = self.projects[k](x)
            if self.pos_embed:
                x = add_uv_embedding_(x, image_hw[1], image_hw[0])
            x = self.resize_layers[k](x)
            layers.append(getattr(self.scratch, f"layer{k + 1}_rn")(x))
        return layers

    def fuse(self, layers: list[Tensor], suffix: str = "") -> Tensor:
        """RefineNet chain from the coarsest level; output at twice the finest level (8h x 8w)."""
        r = [getattr(self.scratch, f"refinenet{level}{suffix}") for level in range(1, 5)]
        l1, l2, l3, l4 = layers
        x = r[3](l4, None, l3.shape[-2:])
        x = r[2](x, l3, l2.shape[-2:])
        x = r[1](x, l2, l1.shape[-2:])
        return r[0](x, l1, (2 * l1.shape[-2], 2 * l1.shape[-1]))


def _conv_head(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, 32, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(32, cout, 1))


class DualDPT(DPTBase):
    """Any-view head: depth + confidence at full resolution, ray map + confidence at 8h x 8w."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__(cfg, layer_norm=True, pos_embed=True, aux_chain=True)
        f = cfg.features
        self.scratch.output_conv1 = nn.Conv2d(f, f // 2, 3, padding=1)
        self.scratch.output_conv2 = _conv_head(f // 2, cfg.output_dim)
        # The checkpoint holds 4 aux output levels; only the finest one (index 3) produces the rays.
        self.scratch.output_conv1_aux = nn.ModuleList(
            nn.Sequential(
                *(nn.Conv2d(f if j % 2 == 0 else f // 2, f // 2 if j % 2 == 0 else f, 3, padding=1) for j in range(5))
            )  # fmt: skip
            for _ in range(4)
        )
        self.scratch.output_conv2_aux = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(f // 2, 32, 3, padding=1),
                Permute(0, 2, 3, 1),
                nn.LayerNorm(32, eps=1e-5),
                Permute(0, 3, 1, 2),
                nn.ReLU(inplace=True),
                nn.Conv2d(32, 7, 1),
            )
            for _ in range(4)
        )

    def forward_chunk(
        self, feats: list[Tensor], h: int, w: int, image_hw: tuple[int, int], rays: bool = False
    ) -> dict[str, Tensor]:
        """Depth (+ the ray map only when ``rays``: its fusion chain and five full-width convolutions are
        over half of the head's work, and the official model computes them only to drop them unless
        ray poses are asked for)."""
        H, W = image_hw
        layers = self.pyramid(feats, h, w, image_hw)
        s = self.scratch
        main = s.output_conv2(add_uv_embedding_(upsample(s.output_conv1(self.fuse(layers)), (H, W)), W, H))
        out = {"depth": main[:, 0].exp(), "depth_conf": main[:, 1].exp() + 1}
        if rays:
            aux = s.output_conv2_aux[3](add_uv_embedding_(s.output_conv1_aux[3](self.fuse(layers, "_aux")), W, H))
            out.update(ray=aux[:, :6].permute(0, 2, 3, 1), ray_conf=aux[:, 6].exp() + 1)
        return out


class DPT(DPTBase):
    """Metric/mono head: depth (exp) and a sky map (ReLU of a logit, not a probability)."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__(cfg, layer_norm=False, pos_embed=False, aux_chain=False)
        f = cfg.features
        self.scratch.output_conv1 = nn.Conv2d(f, f // 2, 3, padding=1)
        self.scratch.output_conv2 = _conv_head(f // 2, cfg.output_dim)
        self.scratch.sky_output_conv2 = _conv_head(f // 2, 1)

    def forward_chunk(self, feats: list[Tensor], h: int, w: int, image_hw: tuple[int, int]) -> dict[str, Tensor]:
        s = self.scratch
        x = upsample(s.output_conv1(self.fuse(self.pyramid(feats, h, w, image_hw))), image_hw)
        return {"depth": s.output_conv2(x)[:, 0].exp(), "sky": F.relu(s.sky_output_conv2(x)[:, 0])}


class GSDPT(DPTBase):
    """Gaussian-parameter head: 37 raw channels + a confidence used as opacity."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__(cfg, layer_norm=False, pos_embed=True, aux_chain=False)
        f = cfg.features
        self.scratch.output_conv1 = nn.Conv2d(f, f // 2, 3, padding=1)
        self.scratch.output_conv2 = _conv_head(f // 2, cfg.output_dim)
        self.images_merger = nn.Sequential(
            nn.Conv2d(3, f // 8, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(f // 8, f // 4, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(f // 4, f // 2, 3, padding=1),
            nn.GELU(),
        )

    def forward_chunk(
        self, feats: list[Tensor], h: int, w: int, image_hw: tuple[int, int], images: Tensor
    ) -> dict[str, Tensor]:
        H, W = image_hw
        s = self.scratch
        x = upsample(s.output_conv1(self.fuse(self.pyramid(feats, h, w, image_hw))), (H, W))
        x = add_uv_embedding_(self.images_merger(images).add_(x), W, H)
        out = s.output_conv2(x)
        return {"raw": out[:, :-1].permute(0, 2, 3, 1), "opacity": torch.sigmoid(out[:, -1])}


def run_head_chunked(
    head: DPTBase, feats: list[Tensor], h: int, w: int, image_hw: tuple[int, int], **options: Tensor | bool
) -> dict[str, Tensor]:
    """Run a head over (B,S,P,C) features in chunks of views; returns (B,S,...) outputs.

    Chunking keeps the head's full-resolution activations to HEAD_CHUNK views at a time. ``options`` go
    to the head's ``forward_chunk``; tensor options (the GS head's images, (B,S,...)) are chunked too.
    """
    b, s = feats[0].shape[:2]
    flat = [f.flatten(0, 1) for f in feats]
    flat_options = {k: v.flatten(0, 1) if isinstance(v, Tensor) else v for k, v in options.items()}
    pieces: dict[str, list[Tensor]] = {}
    for start in range(0, b * s, HEAD_CHUNK):
        chunk = slice(start, start + HEAD_CHUNK)
        out = head.forward_chunk(
            [f[chunk] for f in flat], h, w, image_hw,
            **{k: v[chunk] if isinstance(v, Tensor) else v for k, v in flat_options.items()},
        )  # fmt: skip
        for key, value in out.items():
            pieces.setdefault(key, []).append(value)
    return {key: torch.cat(v).reshape(b, s, *v[0].shape[1:]) for key, v in pieces.items()}


HEADS: dict[str, type[DPTBase]] = {"dualdpt": DualDPT, "dpt": DPT, "gsdpt": GSDPT}
