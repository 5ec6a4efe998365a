"""The DA3 model family as data.

Every official preset (and the two small presets the parity fixtures use) is one
:class:`NetConfig`; the network is built from it, so adding a size never means new code. The
numbers are those of the official YAML presets (see the reference notes, section 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The model da3-process-data and the da3-data parser use by default: the best (metric) geometry, and it fits
#: about 100 views on a 24 GB GPU in bf16; licensed CC BY-NC 4.0.
DEFAULT_MODEL = "depth-anything/DA3NESTED-GIANT-LARGE-1.1"


@dataclass(frozen=True)
class BackboneConfig:
    """A DINOv2 ViT/14 with DA3's alternating local/global attention."""

    embed_dim: int
    depth: int
    num_heads: int
    out_layers: tuple[int, int, int, int]
    #: First block with cross-view attention, QK-norm and RoPE; -1 = plain DINOv2 (metric/mono).
    alt_start: int = -1
    cat_token: bool = True
    ffn: str = "mlp"  # "mlp" or "swiglu" (ViT-g)
    patch_size: int = 14
    pos_grid: int = 37  # learned absolute pos-embed grid (img_size 518 / 14)

    @property
    def anyview(self) -> bool:
        return self.alt_start >= 0


@dataclass(frozen=True)
class HeadConfig:
    """A DPT-style head (DualDPT for depth+ray, DPT for metric depth+sky, GSDPT for Gaussians)."""

    kind: str  # "dualdpt" | "dpt" | "gsdpt"
    dim_in: int
    features: int
    out_channels: tuple[int, int, int, int]
    output_dim: int


@dataclass(frozen=True)
class GaussianAdapterConfig:
    """Fixed hyper-parameters of the official Gaussian adapter."""

    sh_degree: int = 2
    scale_min: float = 1e-5
    scale_max: float = 30.0


@dataclass(frozen=True)
class NetConfig:
    """One single-branch DA3 network (any-view or metric/mono)."""

    backbone: BackboneConfig
    head: HeadConfig
    camera: bool = True  # camera encoder + decoder (any-view models)
    gs_head: HeadConfig | None = None
    gs_adapter: GaussianAdapterConfig | None = None


@dataclass(frozen=True)
class ModelPreset:
    """A named preset: a single network, or the nested any-view + metric pair."""

    name: str
    net: NetConfig | None = None
    nested: tuple[NetConfig, NetConfig] | None = None  # (da3 any-view, da3_metric)
    licence: str = ""
    hub_repos: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_nested(self) -> bool:
        return self.nested is not None

    @property
    def primary(self) -> NetConfig:
        """The network that predicts the cameras and the output's geometry (the any-view one of a nested pair)."""
        net = self.nested[0] if self.nested is not None else self.net
        assert net is not None, f"preset {self.name} has no network"
        return net


def _anyview(
    dim: int,
    depth: int,
    heads: int,
    out_layers: tuple[int, int, int, int],
    alt_start: int,
    features: int,
    out_channels: tuple[int, int, int, int],
    ffn: str = "mlp",
    gs: HeadConfig | None = None,
) -> NetConfig:
    return NetConfig(
        backbone=BackboneConfig(dim, depth, heads, out_layers, alt_start=alt_start, cat_token=True, ffn=ffn),
        head=HeadConfig("dualdpt", 2 * dim, features, out_channels, output_dim=2),
        camera=True,
        gs_head=gs,
        gs_adapter=GaussianAdapterConfig() if gs is not None else None,
    )


def _metric(dim: int, depth: int, heads: int, out_layers: tuple[int, int, int, int], features: int,
            out_channels: tuple[int, int, int, int]) -> NetConfig:  # fmt: skip
    return NetConfig(
        backbone=BackboneConfig(dim, depth, heads, out_layers, alt_start=-1, cat_token=False),
        head=HeadConfig("dpt", dim, features, out_channels, output_dim=1),
        camera=False,
    )


_LARGE_OUT = (256, 512, 1024, 1024)
_GIANT = _anyview(
    1536, 40, 24, (19, 27, 33, 39), 13, 256, _LARGE_OUT, ffn="swiglu",
    gs=HeadConfig("gsdpt", 3072, 256, _LARGE_OUT, output_dim=38),
)  # fmt: skip
_METRIC_LARGE = _metric(1024, 24, 16, (4, 11, 17, 23), 256, _LARGE_OUT)

_NC = "CC BY-NC 4.0 (non-commercial)"
_APACHE = "Apache-2.0"

PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset(
            "da3-small",
            _anyview(384, 12, 6, (5, 7, 9, 11), 4, 64, (48, 96, 192, 384)),
            licence=_APACHE,
            hub_repos=("depth-anything/DA3-SMALL",),
        ),
        ModelPreset(
            "da3-base",
            _anyview(768, 12, 12, (5, 7, 9, 11), 4, 128, (96, 192, 384, 768)),
            licence=_APACHE,
            hub_repos=("depth-anything/DA3-BASE",),
        ),
        ModelPreset(
            "da3-large",
            _anyview(1024, 24, 16, (11, 15, 19, 23), 8, 256, _LARGE_OUT),
            licence=_NC,
            hub_repos=("depth-anything/DA3-LARGE-1.1", "depth-anything/DA3-LARGE"),
        ),
        ModelPreset(
            "da3-giant",
            _GIANT,
            licence=_NC,
            hub_repos=("depth-anything/DA3-GIANT-1.1", "depth-anything/DA3-GIANT"),
        ),
        ModelPreset("da3metric-large", _METRIC_LARGE, licence=_APACHE, hub_repos=("depth-anything/DA3METRIC-LARGE",)),
        ModelPreset("da3mono-large", _METRIC_LARGE, licence=_APACHE, hub_repos=("depth-anything/DA3MONO-LARGE",)),
        ModelPreset(
            "da3nested-giant-large",
            nested=(_GIANT, _METRIC_LARGE),
            licence=_NC,
            hub_repos=("depth-anything/DA3NESTED-GIANT-LARGE-1.1", "depth-anything/DA3NESTED-GIANT-LARGE"),
        ),
        # Test presets of the parity fixtures (`custom:small-gs`, `custom:small-metric`): ViT-S sized
        # versions of the giant's Gaussian head and of the metric/mono model.
        ModelPreset(
            "test-small-gs",
            _anyview(
                384,
                12,
                6,
                (5, 7, 9, 11),
                4,
                64,
                (48, 96, 192, 384),
                gs=HeadConfig("gsdpt", 768, 64, (48, 96, 192, 384), output_dim=38),
            ),  # fmt: skip
            licence="test preset (no official weights)",
        ),
        ModelPreset(
            "test-small-metric",
            _metric(384, 12, 6, (2, 5, 8, 11), 64, (48, 96, 192, 384)),
            licence="test preset (no official weights)",
        ),
    )
}


def get_preset(name: str) -> ModelPreset:
    """Look a preset up by name, with an error that lists the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown DA3 model_name {name!r}; known: {', '.join(PRESETS)}") from None
