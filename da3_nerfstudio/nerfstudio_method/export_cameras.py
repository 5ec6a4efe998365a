"""Export the cameras of a trained ``da3-splat`` run, with the optimised poses, as a ``transforms.json``.

``ns-export cameras`` writes nerfstudio's own per-split JSON in the normalised training frame. This
writes a dataset-style ``transforms.json`` in the frame of the *input* dataset instead (nerfstudio's
orientation, centring and scale undone), so the refined poses can replace DA3's in the dataset, be
imported into Blender or fed to another tool. Training cameras carry the camera-optimiser correction;
evaluation cameras are never optimised and are written as they were.

Usage: ``python -m da3_nerfstudio.nerfstudio_method.export_cameras --load-config RUN/config.yml
--output-path OUT/transforms.json``
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro
import yaml
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.eval_utils import eval_setup
from nerfstudio.utils.io import load_from_json
from nerfstudio.utils.rich_utils import CONSOLE

from da3_nerfstudio.cameras import opengl_c2w_to_opencv_w2c
from da3_nerfstudio.errors import DA3Error, InputError
from da3_nerfstudio.formats.transforms import frames_from_cameras, saved_to_training_frame, write_transforms_json


def _dataset_frames(
    cameras: Cameras,
    c2w_train_frame: np.ndarray,
    transform: np.ndarray,
    scale: float,
    image_files: list[Path],
    depth_files: list[Path] | None,
    data_dir: Path,
) -> list[dict]:
    """transforms.json frames for cameras whose OpenGL c2w (N,3,4) are in the training frame."""
    n = len(c2w_train_frame)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3] = c2w_train_frame
    c2w[:, :3, 3] /= scale
    c2w_saved = np.linalg.inv(transform) @ c2w  # rotation and translation back to the saved frame
    w2c_cv = opengl_c2w_to_opencv_w2c(c2w_saved)
    K = cameras.get_intrinsics_matrices().numpy().astype(np.float64)
    sizes = [(int(w), int(h)) for w, h in zip(cameras.width.flatten(), cameras.height.flatten(), strict=True)]
    rel = [p.relative_to(data_dir) if p.is_relative_to(data_dir) else p for p in image_files]
    depth_rel = None
    if depth_files:
        depth_rel = [p.relative_to(data_dir) if p.is_relative_to(data_dir) else p for p in depth_files]
    return frames_from_cameras(w2c_cv, K, sizes, rel, depth_rel)


def _check_output_path(output_path: Path) -> None:
    """The output must be a file name in an existing, writable folder (checked before loading anything)."""
    folder = output_path.parent
    if output_path.is_dir():
        raise InputError(f"{output_path}: is a folder; give the path of the .json file to write")
    if not folder.is_dir():
        raise InputError(f"{output_path}: output folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{output_path}: output folder {folder} is not writable")


def _check_run(load_config: Path) -> None:
    """The run's config.yml parses into a trainer config whose checkpoint and dataset exist."""
    if not load_config.is_file():
        raise InputError(f"{load_config}: config file does not exist")
    try:
        config = yaml.load(load_config.read_text(encoding="utf-8"), Loader=yaml.Loader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        problem = str(err).replace("\n", " ")
        raise InputError(f"{load_config}: not a readable nerfstudio config.yml ({problem})") from err
    if not isinstance(config, TrainerConfig):
        raise InputError(f"{load_config}: not a nerfstudio run config (no trainer configuration in it)")
    checkpoints = config.get_checkpoint_dir()
    if not checkpoints.is_dir() or not any(checkpoints.glob("step-*.ckpt")):
        raise InputError(
            f"{load_config}: the run has no checkpoint (no step-*.ckpt in {checkpoints}; "
            "paths in config.yml are relative to the folder ns-train ran in)"
        )
    parser = config.pipeline.datamanager.dataparser
    data = config.pipeline.datamanager.data or parser.data
    if hasattr(parser._target, "checked_meta_path"):
        dataclasses.replace(parser, data=Path(data)).setup().checked_meta_path()


def export_optimized_cameras(load_config: Path, output_path: Path) -> Path:
    """Write the run's cameras (optimised training poses, original eval poses) to ``output_path``."""
    _check_output_path(output_path)
    _check_run(load_config)
    config, pipeline, _, _ = eval_setup(load_config, test_mode="test")
    datamanager, model = pipeline.datamanager, pipeline.model
    data = Path(config.pipeline.datamanager.data or config.pipeline.datamanager.dataparser.data)
    data_dir = data.parent if data.suffix == ".json" else data
    train_outputs = datamanager.train_dataparser_outputs
    meta_path = data if data.suffix == ".json" else data / "transforms.json"
    meta = load_from_json(meta_path) if meta_path.is_file() else {}
    transform = saved_to_training_frame(train_outputs.dataparser_transform.numpy().astype(np.float64), meta)
    scale = float(train_outputs.dataparser_scale)
    frames: list[dict] = []
    split: dict[str, list[str]] = {}
    for name, dataset in (("train", datamanager.train_dataset), ("val", datamanager.eval_dataset)):
        cameras = dataset.cameras
        c2w = []
        with torch.no_grad():
            for i in range(len(cameras)):
                camera = cameras[i : i + 1].to(model.device)
                camera.metadata = {"cam_idx": i} if name == "train" else {}
                c2w.append(model.camera_optimizer.apply_to_camera(camera)[0].cpu().numpy())
        outputs = dataset._dataparser_outputs
        depth_files = outputs.metadata.get("depth_filenames")
        new = _dataset_frames(
            cameras,
            np.stack(c2w).astype(np.float64),
            transform,
            scale,
            list(outputs.image_filenames),
            [Path(p) for p in depth_files] if depth_files else None,
            data_dir,
        )
        split[f"{name}_filenames"] = [f["file_path"] for f in new]
        frames += [f for f in new if f["file_path"] not in {g["file_path"] for g in frames}]
    split["test_filenames"] = split["val_filenames"]
    write_transforms_json(output_path, frames, extra=split)
    CONSOLE.print(f"Wrote {len(frames)} cameras ({len(split['train_filenames'])} optimised) to {output_path}")
    return output_path


@dataclass
class ExportCameras:
    """Export the optimised cameras of a da3-splat run as a transforms.json in the dataset's frame."""

    load_config: Path
    """config.yml of the training run."""
    output_path: Path
    """transforms.json to write (atomically; an existing file is only replaced on success)."""

    def main(self) -> None:
        try:
            export_optimized_cameras(self.load_config, self.output_path)
        except DA3Error as err:
            raise SystemExit(f"error: {err}") from None


def entrypoint() -> None:
    """Command-line entry point."""
    tyro.cli(ExportCameras).main()


if __name__ == "__main__":
    entrypoint()
