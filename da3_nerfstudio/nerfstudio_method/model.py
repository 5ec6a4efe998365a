"""``da3-splat`` model: splatfacto started from DA3's Gaussians and regularised by DA3 depth.

Differences from splatfacto (everything else, densification and SH schedule included, is inherited):

* initialisation from the dataparser's ``splat_init`` Gaussians (positions, scales, rotations,
  colours, opacities); ``init_from`` switches to the sparse point cloud or to random Gaussians;
* a confidence-weighted depth loss (L1 on depth or inverse depth, or Pearson) with a decaying
  weight, against the DA3 depth downscaled exactly like the image by splatfacto's resolution schedule;
* camera optimisation on by default;
* device-agnostic: gsplat on CUDA when its kernels load, the pure-PyTorch rasterizer of
  :mod:`da3_nerfstudio.rasterize` otherwise (chosen by :mod:`da3_nerfstudio.gsplat_kernels`, with one
  line saying why), and LPIPS is skipped with a warning when its weights are not cached (they are
  never downloaded).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import torch
from gsplat.strategy import DefaultStrategy
from nerfstudio.cameras.camera_optimizers import CameraOptimizer, CameraOptimizerConfig
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.model_components.lib_bilagrid import BilateralGrid
from nerfstudio.models.splatfacto import (
    RGB2SH,
    SplatfactoModel,
    SplatfactoModelConfig,
    num_sh_bases,
    random_quat_tensor,
)
from nerfstudio.utils.colors import get_color
from nerfstudio.utils.rich_utils import CONSOLE
from pytorch_msssim import SSIM
from torch import Tensor
from torchmetrics.image import PeakSignalNoiseRatio

from da3_nerfstudio.errors import DA3Error
from da3_nerfstudio.geometry import invert_rigid, opengl_c2w_to_opencv, to_homogeneous
from da3_nerfstudio.gsplat_kernels import select_rasterizer
from da3_nerfstudio.losses import DepthLossType, depth_loss, depth_weight_schedule, downscale_depth
from da3_nerfstudio.nerfstudio_method.trainer import TrainingDiverged
from da3_nerfstudio.rotation import SH_C0


@dataclass
class DA3SplatModelConfig(SplatfactoModelConfig):
    """Splatfacto with DA3 initialisation, a DA3 depth prior and camera optimisation."""

    _target: type = field(default_factory=lambda: DA3SplatModel)
    init_from: Literal["splat_init", "sparse_points", "random"] = "splat_init"
    """Initial Gaussians: the dataset's splat_init.ply, its sparse point cloud (splatfacto's kNN
    initialisation), or random Gaussians in a cube; falls back to the next available one."""
    max_initial_gaussians_cpu: int = 100_000
    """Without CUDA, keep at most this many initial Gaussians (an even subsample, said in one line); the
    pure-PyTorch rasterizer does about 0.5 it/s with 100k at 108x88 and a million would take days. 0 keeps all."""
    depth_loss_type: DepthLossType = "l1"
    """l1 on depth, inverse_l1 on inverse depth, or pearson (scale/shift invariant) for untrusted scale."""
    depth_loss_weight: float = 0.2
    """Initial weight of the depth loss (0 disables it)."""
    depth_loss_weight_final: float = 0.02
    """Weight reached after depth_loss_decay_steps (log-linear decay)."""
    depth_loss_decay_steps: int = 15000
    """Steps over which the depth weight decays."""
    depth_loss_min_alpha: float = 0.5
    """Pixels whose rendered opacity is below this are not supervised (no surface rendered yet)."""
    rasterizer: Literal["auto", "gsplat", "torch"] = "auto"
    """gsplat (CUDA kernels) or the pure-PyTorch rasterizer; auto picks gsplat on CUDA when its kernels load (or
    build), else the PyTorch one on the same device; gsplat refuses to run without them."""
    camera_optimizer: CameraOptimizerConfig = field(default_factory=lambda: CameraOptimizerConfig(mode="SO3xR3"))
    """DA3 poses are good, not perfect: refine them by default."""


def camera_to_viewmat(c2w: Tensor) -> Tensor:
    """World-to-camera OpenCV matrices (C,4,4) from nerfstudio's OpenGL camera-to-world (C,3,4).

    R^T rather than a general inverse: the camera optimiser keeps the rotations exact, and the transpose is
    cheaper and differentiates cleanly.
    """
    return invert_rigid(to_homogeneous(opengl_c2w_to_opencv(c2w)))


def _announce(line: str) -> None:
    """One line of the rasterizer choice, never wrapped (rich wraps at 80 columns outside a terminal)."""
    CONSOLE.print(line, style="bold yellow", soft_wrap=True, markup=False, highlight=False)


def alexnet_weights_path() -> Path:
    """Where torchvision keeps the AlexNet weights torchmetrics' LPIPS is built on (torch hub's cache)."""
    from torchvision.models import AlexNet_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(AlexNet_Weights.DEFAULT.url).path).name


def _make_lpips() -> torch.nn.Module | None:
    """torchmetrics' LPIPS when its AlexNet weights are cached, else None with one line. Building it
    without them would try to download them on every ns-* command, which hangs or fails offline."""
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    weights = alexnet_weights_path()
    if not weights.is_file():
        CONSOLE.print(
            f"da3-splat: LPIPS not reported (AlexNet weights not in {weights}; "
            "python -c 'import torchvision; torchvision.models.alexnet(weights=\"DEFAULT\")' fetches them once)"
        )
        return None
    try:
        return LearnedPerceptualImagePatchSimilarity(normalize=True)
    except Exception as err:  # noqa: BLE001 - a corrupt cache means "no LPIPS", not "no training"
        CONSOLE.print(f"da3-splat: LPIPS not reported ({type(err).__name__}: {err})")
        return None


class DA3SplatModel(SplatfactoModel):
    """Splatfacto subclass; see the module docstring."""

    config: DA3SplatModelConfig

    def populate_modules(self) -> None:
        """Build the Gaussians, metrics, camera optimiser and densification strategy (no CUDA needed)."""
        self.gauss_params = torch.nn.ParameterDict(
            {k: torch.nn.Parameter(v.float().contiguous()) for k, v in self._initial_gaussians().items()}
        )
        self.camera_optimizer: CameraOptimizer = self.config.camera_optimizer.setup(
            num_cameras=self.num_train_data, device="cpu"
        )
        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = SSIM(data_range=1.0, size_average=True, channel=3)
        self.lpips = _make_lpips()
        self.step = 0
        self.crop_box = None
        if self.config.background_color == "random":
            # Shown outside training (viewer, eval); the same grey as splatfacto and viser.
            self.background_color = torch.tensor([0.1490, 0.1647, 0.2157])
        else:
            self.background_color = get_color(self.config.background_color)
        if self.config.use_bilateral_grid:
            self.bil_grids = BilateralGrid(
                num=self.num_train_data,
                grid_X=self.config.grid_shape[0],
                grid_Y=self.config.grid_shape[1],
                grid_W=self.config.grid_shape[2],
            )
        self.strategy = DefaultStrategy(
            prune_opa=self.config.cull_alpha_thresh,
            grow_grad2d=self.config.densify_grad_thresh,
            grow_scale3d=self.config.densify_size_thresh,
            grow_scale2d=self.config.split_screen_size,
            prune_scale3d=self.config.cull_scale_thresh,
            prune_scale2d=self.config.cull_screen_size,
            refine_scale2d_stop_iter=self.config.stop_screen_size_at,
            refine_start_iter=self.config.warmup_length,
            refine_stop_iter=self.config.stop_split_at,
            reset_every=self.config.reset_alpha_every * self.config.refine_every,
            refine_every=self.config.refine_every,
            pause_refine_after_reset=self.num_train_data + self.config.refine_every,
            absgrad=self.config.use_absgrad,
            revised_opacity=False,
            verbose=True,
        )
        self.strategy_state = self.strategy.initialize_state(scene_scale=1.0)
        self._rasterizer: Callable[..., tuple[Tensor, Tensor, dict]] | None = None

    # -- initialisation ---------------------------------------------------------------------------

    def _initial_gaussians(self) -> dict[str, Tensor]:
        """Raw Gaussian parameters for ``init_from``, falling back splat_init -> sparse -> random."""
        metadata = self.kwargs.get("metadata") or {}
        order = ["splat_init", "sparse_points", "random"]
        for source in order[order.index(self.config.init_from) :]:
            if source == "splat_init" and "splat_init" in metadata:
                params = self._from_splat_init(metadata["splat_init"])
            elif source == "sparse_points" and self.seed_points is not None and len(self.seed_points[0]) > 0:
                params = self._from_points(self.seed_points[0].float(), self.seed_points[1].float() / 255.0)
            elif source == "random":
                means = (torch.rand(self.config.num_random, 3) - 0.5) * self.config.random_scale
                params = self._from_points(means, torch.rand(self.config.num_random, 3))
            else:
                continue
            if source != self.config.init_from:
                CONSOLE.print(f"[bold yellow]da3-splat: no {self.config.init_from} data; initialising from {source}")
            CONSOLE.log(f"da3-splat: {len(params['means'])} initial Gaussians from {source}")
            return self._sized_for_device(params)
        raise AssertionError("random initialisation is always available")

    def _sized_for_device(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """Without CUDA, an even subsample of at most ``max_initial_gaussians_cpu`` Gaussians (said in one line)."""
        limit, count = self.config.max_initial_gaussians_cpu, len(params["means"])
        if torch.device(self.kwargs.get("device", "cpu")).type == "cuda" or limit <= 0 or count <= limit:
            return params
        keep = torch.linspace(0, count - 1, limit).round().long()
        CONSOLE.print(
            f"[bold yellow]da3-splat: no CUDA: training {limit} of the {count} initial Gaussians "
            "(--pipeline.model.max-initial-gaussians-cpu; 0 keeps all, at hours per thousand steps)"
        )
        return {k: v[keep] for k, v in params.items()}

    def _colour_features(self, rgb: Tensor) -> tuple[Tensor, Tensor]:
        """features_dc / features_rest for colours in [0,1] (logit colours when sh_degree is 0)."""
        n = len(rgb)
        if self.config.sh_degree > 0:
            dc = RGB2SH(rgb)
        else:
            dc = torch.logit(rgb.clamp(1e-4, 1 - 1e-4))
        return dc, torch.zeros(n, num_sh_bases(self.config.sh_degree) - 1, 3)

    def _from_points(self, means: Tensor, rgb: Tensor) -> dict[str, Tensor]:
        """Splatfacto's point initialisation: kNN scales, random rotations, opacity 0.1."""
        distances, _ = self.k_nearest_sklearn(means, 3)
        scales = torch.log(torch.from_numpy(distances).mean(dim=-1, keepdim=True).clamp_min(1e-7)).repeat(1, 3)
        dc, rest = self._colour_features(rgb)
        return {
            "means": means,
            "scales": scales,
            "quats": random_quat_tensor(len(means)),
            "features_dc": dc,
            "features_rest": rest,
            "opacities": torch.logit(torch.full((len(means), 1), 0.1)),
        }

    def _from_splat_init(self, splats: dict[str, Tensor]) -> dict[str, Tensor]:
        """The dataparser's Gaussians, with SH padded/truncated to this model's degree."""
        n_rest = num_sh_bases(self.config.sh_degree) - 1
        rest = splats["features_rest"][:, :n_rest]
        rest = torch.cat([rest, torch.zeros(len(rest), n_rest - rest.shape[1], 3)], dim=1)
        if self.config.sh_degree > 0:
            dc = splats["features_dc"]
        else:
            dc, rest = self._colour_features(splats["features_dc"] * SH_C0 + 0.5)
        return {**splats, "features_dc": dc, "features_rest": rest}

    # -- rendering --------------------------------------------------------------------------------

    def _rasterization(self) -> Callable[..., tuple[Tensor, Tensor, dict]]:
        """gsplat's ``rasterization`` or the pure-PyTorch one, chosen at the first render (the device is known)."""
        if self._rasterizer is None:
            try:
                backend = select_rasterizer(self.config.rasterizer, self.means.device.type, _announce)
            except DA3Error as err:  # ns-train's command line: one line, no traceback
                raise SystemExit(f"error: {err}") from None
            if backend == "gsplat":
                from gsplat.rendering import rasterization
            else:
                from da3_nerfstudio.rasterize import rasterization
            self._rasterizer = rasterization
        return self._rasterizer

    def _depth_loss_active(self) -> bool:
        return self.training and self.config.depth_loss_weight > 0

    def get_outputs(self, camera: Cameras) -> dict[str, Tensor | list]:
        """Render one camera like splatfacto does, on any device, with depth when the prior needs it."""
        if not isinstance(camera, Cameras):
            return {}
        if self.training:
            assert camera.shape[0] == 1, "Only one camera at a time"
            c2w = self.camera_optimizer.apply_to_camera(camera)
        else:
            c2w = camera.camera_to_worlds
        keep = None
        if self.crop_box is not None and not self.training:
            keep = self.crop_box.within(self.means).squeeze()
            if keep.sum() == 0:
                width, height = int(camera.width.item()), int(camera.height.item())
                return self.get_empty_outputs(width, height, self.background_color)
        params = {k: (v if keep is None else v[keep]) for k, v in self.gauss_params.items()}
        colors = torch.cat([params["features_dc"][:, None, :], params["features_rest"]], dim=1)

        downscale = self._get_downscale_factor()
        camera.rescale_output_resolution(1 / downscale)
        K = camera.get_intrinsics_matrices().to(self.device)
        width, height = int(camera.width.item()), int(camera.height.item())
        self.last_size = (height, width)
        camera.rescale_output_resolution(downscale)

        with_depth = self.config.output_depth_during_training or not self.training or self._depth_loss_active()
        if self.config.sh_degree > 0:
            sh_degree = min(self.step // self.config.sh_degree_interval, self.config.sh_degree)
        else:
            colors, sh_degree = torch.sigmoid(colors).squeeze(1), None
        render, alpha, self.info = self._rasterization()(
            means=params["means"],
            quats=params["quats"],
            scales=torch.exp(params["scales"]),
            opacities=torch.sigmoid(params["opacities"]).squeeze(-1),
            colors=colors,
            viewmats=camera_to_viewmat(c2w),
            Ks=K,
            width=width,
            height=height,
            packed=False,
            near_plane=0.01,
            far_plane=1e10,
            render_mode="RGB+ED" if with_depth else "RGB",
            sh_degree=sh_degree,
            sparse_grad=False,
            absgrad=self.strategy.absgrad,
            rasterize_mode=self.config.rasterize_mode,
        )
        if self.training:
            self.strategy.step_pre_backward(
                self.gauss_params, self.optimizers, self.strategy_state, self.step, self.info
            )
        background = self._get_background_color()
        rgb = torch.clamp(render[..., :3] + (1 - alpha) * background, 0.0, 1.0)
        if self.config.use_bilateral_grid and self.training and camera.metadata and "cam_idx" in camera.metadata:
            rgb = self._apply_bilateral_grid(rgb, camera.metadata["cam_idx"], height, width)
        depth = None
        if with_depth:
            depth = render[..., 3:4]
            depth = torch.where(alpha > 0, depth, depth.detach().max()).squeeze(0)
        if background.shape[0] == 3 and not self.training:
            background = background.expand(height, width, 3)
        return {"rgb": rgb.squeeze(0), "depth": depth, "accumulation": alpha.squeeze(0), "background": background}

    # -- losses and metrics -----------------------------------------------------------------------

    def get_loss_dict(self, outputs: dict, batch: dict, metrics_dict: dict | None = None) -> dict[str, Tensor]:
        """Splatfacto's losses plus the weighted DA3 depth prior; a non-finite loss stops training
        (:class:`TrainingDiverged`) before its gradients turn every Gaussian into NaN."""
        loss_dict = self._splat_and_depth_losses(outputs, batch, metrics_dict)
        sums = torch.stack([value.detach().float().sum() for value in loss_dict.values()])
        if self.training and not bool(torch.isfinite(sums).all()):  # one device sync per step
            bad = [name for name, value in loss_dict.items() if not bool(torch.isfinite(value).all())]
            values = ", ".join(f"{name}={float(loss_dict[name].detach().float().mean()):g}" for name in bad)
            raise TrainingDiverged(f"the loss is not finite ({values})")
        return loss_dict

    def _splat_and_depth_losses(self, outputs: dict, batch: dict, metrics_dict: dict | None) -> dict[str, Tensor]:
        """Splatfacto's losses plus the weighted DA3 depth prior."""
        loss_dict = super().get_loss_dict(outputs, batch, metrics_dict)
        if self._depth_loss_active() and "depth_image" in batch and outputs.get("depth") is not None:
            factor = self._get_downscale_factor()
            target = downscale_depth(batch["depth_image"].to(self.device)[..., 0], factor)
            confidence = batch.get("depth_confidence")
            if confidence is not None:
                confidence = downscale_depth(confidence.to(self.device)[..., 0], factor)
            pred = outputs["depth"][..., 0]
            mask = outputs["accumulation"][..., 0].detach() > self.config.depth_loss_min_alpha
            weight = depth_weight_schedule(
                self.step,
                self.config.depth_loss_weight,
                self.config.depth_loss_weight_final,
                self.config.depth_loss_decay_steps,
            )
            loss_dict["depth_loss"] = weight * depth_loss(self.config.depth_loss_type, pred, target, confidence, mask)
        return loss_dict

    def get_metrics_dict(self, outputs: dict, batch: dict) -> dict[str, Tensor]:
        """Splatfacto's metrics plus the depth error (mean |d - d*| / d*) against DA3 depth."""
        metrics = super().get_metrics_dict(outputs, batch)
        if "depth_image" in batch and outputs.get("depth") is not None:
            target = downscale_depth(batch["depth_image"].to(self.device)[..., 0], self._get_downscale_factor())
            valid = (target > 0) & (outputs["accumulation"][..., 0] > self.config.depth_loss_min_alpha)
            if bool(valid.any()):
                rel = (outputs["depth"][..., 0][valid] - target[valid]).abs() / target[valid]
                metrics["depth_abs_rel"] = rel.mean().detach()
        return metrics

    def get_image_metrics_and_images(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor]
    ) -> tuple[dict[str, float], dict[str, Tensor]]:
        """Splatfacto's eval metrics; LPIPS only when its network could be built."""
        if self.lpips is not None:
            return super().get_image_metrics_and_images(outputs, batch)
        gt = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
        pred = outputs["rgb"]
        gt_chw, pred_chw = (torch.moveaxis(x, -1, 0)[None] for x in (gt, pred))
        metrics = {"psnr": float(self.psnr(gt_chw, pred_chw).item()), "ssim": float(self.ssim(gt_chw, pred_chw))}
        return metrics, {"img": torch.cat([gt, pred], dim=1)}
