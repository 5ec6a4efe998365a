"""``ns-train da3-splat``'s trainer: bad datasets refused before anything is written, divergence stopped.

nerfstudio's ``ns-train`` saves ``config.yml`` into a new run folder (``TrainerConfig.save_config``) before
the dataparser reads a single file, and prints a traceback for any exception. :class:`DA3TrainerConfig`
therefore checks the dataset in ``save_config`` (which ``ns-train`` calls before writing anything), and
:class:`DA3Trainer` turns the project's errors into one ``error: ...`` line on stderr and a non-zero
exit. A loss or Gaussian that turns non-finite stops training: no checkpoint of NaN Gaussians is saved
(nerfstudio keeps only the latest checkpoint by default, so saving one would delete the last good one).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from nerfstudio.engine.trainer import Trainer, TrainerConfig

from da3_nerfstudio.errors import DA3Error, InputError
from da3_nerfstudio.gsplat_kernels import plan_rasterizer


class TrainingDiverged(DA3Error):
    """The loss or a Gaussian parameter is no longer finite; training cannot go on."""


def non_finite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the model's parameters holding NaN or infinity."""
    return [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]


@dataclass
class DA3TrainerConfig(TrainerConfig):
    """nerfstudio's trainer configuration; its ``save_config`` first checks the dataset."""

    _target: type = field(default_factory=lambda: DA3Trainer)

    def save_config(self) -> None:
        """Check the dataset and the initialisation source, then save config.yml as nerfstudio does."""
        try:
            self.check_inputs()
        except DA3Error as err:
            raise SystemExit(f"error: {err}") from None
        super().save_config()

    def check_inputs(self) -> None:
        """Raise :class:`InputError` (one line) for a dataset training would fail on or train into NaN, or a
        demanded rasterizer that cannot run here (known without loading gsplat's kernels)."""
        if getattr(self.pipeline.model, "rasterizer", None) == "gsplat":
            plan_rasterizer("gsplat", self.machine.device_type)
        datamanager = self.pipeline.datamanager
        parser_config = datamanager.dataparser
        data = datamanager.data or parser_config.data
        if not hasattr(parser_config, "_target") or not hasattr(parser_config._target, "checked_meta_path"):
            return  # another dataparser (e.g. --pipeline.datamanager.dataparser nerfstudio-data): its own checks
        parser = dataclasses.replace(parser_config, data=Path(data)).setup()
        meta_path = parser.checked_meta_path()
        model = self.pipeline.model
        init_from = getattr(model, "init_from", None)
        splat_path = meta_path.parent / parser.config.splat_init_file
        if init_from == "splat_init" and not splat_path.is_file():
            raise InputError(
                f"{splat_path}: no initial Gaussians (da3-process-data writes it); train with "
                "--pipeline.model.init-from sparse_points or random to start without it"
            )


class DA3Trainer(Trainer):
    """nerfstudio's trainer with one-line errors and no checkpoint of non-finite Gaussians."""

    config: DA3TrainerConfig

    def setup(self, test_mode: str = "val") -> None:
        """nerfstudio's set-up; a dataset error is one line and a non-zero exit."""
        try:
            super().setup(test_mode)
        except DA3Error as err:
            raise SystemExit(f"error: {err}") from None

    def train(self) -> None:
        """nerfstudio's training loop; a project error or divergence ends it with one line."""
        try:
            super().train()
        except TrainingDiverged as err:
            saved = sorted(self.checkpoint_dir.glob("step-*.ckpt")) if self.checkpoint_dir.is_dir() else []
            kept = f"the last good checkpoint is {saved[-1]}" if saved else "no checkpoint was saved"
            raise SystemExit(f"error: training stopped at step {self.step}: {err}; {kept}") from None
        except DA3Error as err:
            raise SystemExit(f"error: {err}") from None

    def save_checkpoint(self, step: int) -> None:
        """Save as nerfstudio does, unless a parameter is non-finite (that would replace the last good one)."""
        bad = non_finite_parameters(self.pipeline.model)
        if bad:
            raise TrainingDiverged(f"non-finite values in {', '.join(bad)}; not saving a checkpoint of them")
        super().save_checkpoint(step)
