"""DA3 networks: the single-branch net (any-view or metric/mono), the nested pair, and DA3Model.

Numerics follow the official model: the backbone may run under autocast, while the heads, the
camera encoder/decoder and the Gaussian adapter always run with autocast disabled in the weights'
dtype (float32, or float64 when the model was converted to float64).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import Tensor, nn

from da3_nerfstudio.geometry import align_cameras_sim3, to_homogeneous
from da3_nerfstudio.model.backbone import Backbone, patch_grid
from da3_nerfstudio.model.camera import CameraDec, CameraEnc, decode_pose
from da3_nerfstudio.model.dpt import HEADS, run_head_chunked
from da3_nerfstudio.model.gaussians import gaussian_adapter
from da3_nerfstudio.model.loading import load_state_dict_strict, read_model_name, resolve_checkpoint, weights_file
from da3_nerfstudio.model.presets import ModelPreset, NetConfig, get_preset
from da3_nerfstudio.model.ray_solver import cameras_from_rays

#: Sky threshold the official model uses internally (``Prediction.sky`` uses >= 0.5).
SKY_THRESHOLD = 0.3
#: Metric depth unit: metres = raw * focal_px / METRIC_FOCAL.
METRIC_FOCAL = 300.0
GS_SCALE_CLAMP = (1 / 3, 3.0)


def quantile(values: Tensor, q: float) -> Tensor:
    """Exact linear-interpolation quantile of a 1-D tensor of any length.

    The official code estimates these quantiles on random 100k-pixel samples; the exact value is
    deterministic and is what those samples estimate.
    """
    if values.numel() <= 1 << 24:
        return torch.quantile(values, q)
    ordered = values.sort().values
    pos = q * (ordered.numel() - 1)
    lo = int(pos)
    hi = min(lo + 1, ordered.numel() - 1)
    return ordered[lo] + (pos - lo) * (ordered[hi] - ordered[lo])


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=device.type, enabled=False)


def _param_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def fill_sky(depth: Tensor, sky: Tensor) -> Tensor:
    """Metric/mono post-step: sky pixels get the 99th percentile of the non-sky depth."""
    non_sky = sky < SKY_THRESHOLD
    if int(non_sky.sum()) > 10 and int((~non_sky).sum()) > 10:
        depth = torch.where(non_sky, depth, quantile(depth[non_sky], 0.99))
    return depth


class DA3Net(nn.Module):
    """One DA3 network: backbone + depth head (+ camera encoder/decoder, + Gaussian head)."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg.backbone)
        self.head = HEADS[cfg.head.kind](cfg.head)
        if cfg.camera:
            self.cam_enc = CameraEnc(cfg.backbone.embed_dim)
            self.cam_dec = CameraDec(2 * cfg.backbone.embed_dim)
        if cfg.gs_head is not None:
            self.gs_head = HEADS[cfg.gs_head.kind](cfg.gs_head)

    def forward(
        self,
        x: Tensor,
        extrinsics: Tensor | None = None,
        intrinsics: Tensor | None = None,
        *,
        infer_gs: bool = False,
        use_ray_pose: bool = False,
        rays: bool = False,
        ref_view_strategy: str = "saddle_balanced",
    ) -> dict[str, Tensor]:
        cfg = self.cfg
        height, width = x.shape[-2:]
        h, w = patch_grid(height, width, cfg.backbone.patch_size)
        dtype = _param_dtype(self.head)
        if infer_gs and cfg.gs_head is None:
            raise ValueError("this model has no Gaussian head (infer_gs needs da3-giant or da3nested-giant-large)")
        camera_tokens = None
        if extrinsics is not None and cfg.camera:
            if intrinsics is None:
                raise ValueError("pose conditioning needs both extrinsics and intrinsics")
            with _no_autocast(x.device):
                camera_tokens = self.cam_enc(extrinsics.to(dtype), intrinsics.to(dtype), (height, width))

        feats = self.backbone(x, camera_tokens, ref_view_strategy)
        with _no_autocast(x.device):
            patches = [p.to(dtype) for p, _ in feats]
            ray_head = {"rays": rays or use_ray_pose} if cfg.head.kind == "dualdpt" else {}
            out = run_head_chunked(self.head, patches, h, w, (height, width), **ray_head)
            if cfg.camera:
                if use_ray_pose:
                    b, s = out["ray"].shape[:2]
                    ext, ixt = cameras_from_rays(
                        out["ray"].flatten(0, 1), out["ray_conf"].flatten(0, 1), (height, width)
                    )
                    out["extrinsics"], out["intrinsics"] = ext.reshape(b, s, 3, 4), ixt.reshape(b, s, 3, 3)
                    if not rays:
                        del out["ray"], out["ray_conf"]
                else:
                    out["extrinsics"], out["intrinsics"] = decode_pose(
                        self.cam_dec(feats[-1][1].to(dtype)), (height, width)
                    )
            if infer_gs:
                gs = run_head_chunked(self.gs_head, patches, h, w, (height, width), images=x.to(dtype))
                scale = None
                if extrinsics is not None:
                    scale = _pose_scale(out["extrinsics"], extrinsics.to(dtype)).clamp(*GS_SCALE_CLAMP)
                out["gaussians"] = gaussian_adapter(
                    gs["raw"], gs["opacity"], out["depth"], out["extrinsics"], out["intrinsics"],
                    cfg.gs_adapter, depth_scale=scale,
                )  # fmt: skip
            if "sky" in out:
                out["depth"] = fill_sky(out["depth"], out["sky"])
        return out


def _pose_scale(predicted_w2c: Tensor, given_w2c: Tensor) -> Tensor:
    """Per-batch Sim(3) scale mapping the predicted cameras onto the given ones (B,)."""
    scales = [torch.as_tensor(align_cameras_sim3(p, g)[0]) for p, g in zip(predicted_w2c, given_w2c, strict=True)]
    return torch.stack(scales).to(predicted_w2c)


class NestedDA3Net(nn.Module):
    """Any-view giant + metric large: the metric branch fixes the any-view output's scale."""

    def __init__(self, anyview: NetConfig, metric: NetConfig) -> None:
        super().__init__()
        self.da3 = DA3Net(anyview)
        self.da3_metric = DA3Net(metric)

    def forward(self, x: Tensor, extrinsics: Tensor | None = None, intrinsics: Tensor | None = None, **kwargs
                ) -> dict[str, Tensor]:  # fmt: skip
        out = self.da3(x, extrinsics, intrinsics, **kwargs)
        metric = self.da3_metric(x)
        with _no_autocast(x.device):
            focal = (out["intrinsics"][..., 0, 0] + out["intrinsics"][..., 1, 1]) / 2
            metric_depth = metric["depth"] * focal[..., None, None] / METRIC_FOCAL
            non_sky = metric["sky"] < SKY_THRESHOLD
            if int(non_sky.sum()) <= 10:
                raise ValueError("metric alignment needs more than 10 non-sky pixels (the image is all sky)")
            depth, conf = out["depth"], out["depth_conf"]
            median_conf = quantile(conf[non_sky], 0.5)
            mask = (conf >= median_conf) & non_sky & (metric_depth > 0.01) & (depth > 1e-3)
            scale = (metric_depth[mask] * depth[mask]).sum() / (depth[mask] * depth[mask]).sum().clamp(min=1e-12)
            depth = depth * scale
            extr = out["extrinsics"].clone()
            extr[..., :3, 3] = extr[..., :3, 3] * scale
            max_depth = quantile(depth[non_sky], 0.99).clamp(max=200.0)
            out["depth"] = torch.where(non_sky, depth, max_depth)
            out["depth_conf"] = torch.where(non_sky, conf, torch.ones_like(conf))
            out["extrinsics"] = extr
            out["scale_factor"] = scale
        return out


class DA3Model(nn.Module):
    """A DA3 model of any preset; its state dict has exactly the official checkpoint keys.

    Build it with :meth:`from_pretrained` (trained weights) or :meth:`untrained` (random weights,
    for plumbing tests and benchmarks only).
    """

    def __init__(self, preset: str | ModelPreset) -> None:
        super().__init__()
        self.preset = get_preset(preset) if isinstance(preset, str) else preset
        if self.preset.nested is not None:
            self.model: nn.Module = NestedDA3Net(*self.preset.nested)
        else:
            self.model = DA3Net(self.preset.net)

    @property
    def name(self) -> str:
        return self.preset.name

    @property
    def anyview(self) -> bool:
        return self.preset.primary.camera

    @property
    def has_gaussian_head(self) -> bool:
        return self.preset.primary.gs_head is not None

    @classmethod
    def untrained(cls, preset: str, device: str | torch.device | None = None) -> DA3Model:
        """Randomly initialised model: its outputs are meaningless (timing and plumbing only)."""
        return cls(preset).to(device or "cpu").eval()

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device | None = None) -> DA3Model:
        """Load the official layout (``config.json`` + ``model.safetensors``) from a folder or hub repo id."""
        folder = resolve_checkpoint(name_or_path)
        name = read_model_name(folder)
        weights = weights_file(folder)
        with torch.device("meta"):  # no memory for random weights that the checkpoint replaces at once
            model = cls(name)
        load_state_dict_strict(model, weights)
        return model.to(device or "cpu").eval()

    def forward(
        self,
        x: Tensor,
        extrinsics: Tensor | None = None,
        intrinsics: Tensor | None = None,
        *,
        infer_gs: bool = False,
        use_ray_pose: bool = False,
        rays: bool = False,
        ref_view_strategy: str = "saddle_balanced",
    ) -> dict[str, Tensor]:
        """Run the network on normalised images x (B,S,3,H,W).

        ``extrinsics`` (B,S,4,4) world-to-camera OpenCV and ``intrinsics`` (B,S,3,3) in pixels of x
        condition any-view models on known cameras. Returns depth (B,S,H,W) and, by model kind,
        depth_conf, ray (B,S,8h,8w,6: direction then origin) and ray_conf (only with ``rays=True``; any-view
        models), extrinsics (B,S,3,4)
        world-to-camera, intrinsics (B,S,3,3), sky, gaussians, scale_factor.
        """
        if x.dim() != 5 or x.shape[2] != 3:
            raise ValueError(f"expected images of shape (B,S,3,H,W), got {tuple(x.shape)}")
        if extrinsics is not None:
            extrinsics = to_homogeneous(extrinsics)
        return self.model(
            x, extrinsics, intrinsics, infer_gs=infer_gs, use_ray_pose=use_ray_pose, rays=rays,
            ref_view_strategy=ref_view_strategy,
        )  # fmt: skip
