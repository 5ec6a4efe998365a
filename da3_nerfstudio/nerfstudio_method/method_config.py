"""``ns-train da3-splat``: the method specification (entry point ``nerfstudio.method_configs``).

Every ``ns-*`` command imports this module to build its CLI, so it only assembles configs from
modules nerfstudio loads anyway (splatfacto, the full-image datamanager) and our light ones. The
datamanager serves DA3 depth with every image.

The optimiser settings are splatfacto's except for the parameters DA3 already gets right. Splatfacto's
rates are made to move Gaussians from sparse points (opacity 0.1, kNN sizes) onto the surfaces; started
on the surfaces, with about one Gaussian per pixel, the same rates let every Gaussian's opacity, size
and position fit its few training pixels, so views between the training cameras get worse while the
training views get better. Measured on room_gt (oracle geometry, views 1 and 6 held out, 300
iterations): with splatfacto's rates the held-out PSNR peaked near iteration 50 and then fell by 2 dB,
almost all of it from opacities; with positions, opacities and sizes learning 10x, 10x and 5x more
slowly it holds (22.9/16.5 -> 24.2/18.5 dB at 300). Colours, rotations and SH keep splatfacto's rates.

Note that gsplat 1.4.0's densification strategy also resets opacities at step 0 (to 2 x
``cull_alpha_thresh`` = 0.2), so training starts from DA3's positions, sizes and colours with
translucent Gaussians; keeping the initial opacities (0.9 without confidences) measured worse on the
held-out views (22.5/16.8 dB at 300), as the overlapping views' Gaussians then hide one another.
"""

from __future__ import annotations

import torch
from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from da3_nerfstudio.nerfstudio_method.dataparser import DA3DataParserConfig
from da3_nerfstudio.nerfstudio_method.dataset import DA3DepthDataset
from da3_nerfstudio.nerfstudio_method.model import DA3SplatModelConfig
from da3_nerfstudio.nerfstudio_method.trainer import DA3TrainerConfig


def _adam(lr: float, final: float | None = None, warmup: int = 0) -> dict:
    """Splatfacto's Adam settings, with an optional exponential decay to ``final`` over 30k steps."""
    scheduler = None
    if final is not None:
        scheduler = ExponentialDecaySchedulerConfig(
            lr_final=final, max_steps=30000, warmup_steps=warmup, lr_pre_warmup=0
        )
    return {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": scheduler}


da3_splat = MethodSpecification(
    config=DA3TrainerConfig(
        method_name="da3-splat",
        steps_per_eval_image=100,
        steps_per_eval_batch=0,
        steps_per_save=2000,
        steps_per_eval_all_images=1000,
        max_num_iterations=30000,
        mixed_precision=False,
        # nerfstudio defaults to CUDA; without it, train on the CPU (pure-PyTorch rasterizer) rather than fail.
        machine=MachineConfig(device_type="cuda" if torch.cuda.is_available() else "cpu"),
        pipeline=VanillaPipelineConfig(
            datamanager=FullImageDatamanagerConfig(
                _target=FullImageDatamanager[DA3DepthDataset],
                dataparser=DA3DataParserConfig(),
                cache_images_type="uint8",
            ),
            model=DA3SplatModelConfig(),
        ),
        optimizers={
            "means": _adam(1.6e-5, final=1.6e-7),
            "features_dc": _adam(0.0025),
            "features_rest": _adam(0.0025 / 20),
            "opacities": _adam(0.005),
            "scales": _adam(0.001),
            "quats": _adam(0.001),
            "camera_opt": _adam(1e-4, final=5e-7, warmup=1000),
            "bilateral_grid": _adam(2e-3, final=1e-4, warmup=1000),
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    ),
    description="Gaussian splatting initialised from Depth Anything 3 Gaussians and regularised by DA3 depth",
)
