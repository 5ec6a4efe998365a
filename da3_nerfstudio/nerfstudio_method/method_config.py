"""``ns-train da3-splat``: the method specification (entry point ``nerfstudio.method_configs``).

Every ``ns-*`` command imports this module to build its CLI, so it only assembles configs from
modules nerfstudio loads anyway (splatfacto, the full-image datamanager) and our light ones. The
optimiser settings are splatfacto's; the datamanager serves DA3 depth with every image.
"""

from __future__ import annotations

import torch
from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from da3_nerfstudio.nerfstudio_method.dataparser import DA3DataParserConfig
from da3_nerfstudio.nerfstudio_method.dataset import DA3DepthDataset
from da3_nerfstudio.nerfstudio_method.model import DA3SplatModelConfig


def _adam(lr: float, final: float | None = None, warmup: int = 0) -> dict:
    """Splatfacto's Adam settings, with an optional exponential decay to ``final`` over 30k steps."""
    scheduler = None
    if final is not None:
        scheduler = ExponentialDecaySchedulerConfig(
            lr_final=final, max_steps=30000, warmup_steps=warmup, lr_pre_warmup=0
        )
    return {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": scheduler}


da3_splat = MethodSpecification(
    config=TrainerConfig(
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
            "means": _adam(1.6e-4, final=1.6e-6),
            "features_dc": _adam(0.0025),
            "features_rest": _adam(0.0025 / 20),
            "opacities": _adam(0.05),
            "scales": _adam(0.005),
            "quats": _adam(0.001),
            "camera_opt": _adam(1e-4, final=5e-7, warmup=1000),
            "bilateral_grid": _adam(2e-3, final=1e-4, warmup=1000),
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    ),
    description="Gaussian splatting initialised from Depth Anything 3 Gaussians and regularised by DA3 depth",
)
