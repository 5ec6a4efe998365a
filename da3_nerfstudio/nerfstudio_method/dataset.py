"""Images plus DA3 depth (and confidence), without nerfstudio's ZoeDepth fallback.

nerfstudio's ``DepthDataset`` downloads ZoeDepth through ``torch.hub`` when a dataset has no depth
files, which fails offline and would silently replace the DA3 prior. This dataset loads depth only
when the dataparser found depth files, scaled like ``DepthDataset`` (``depth_unit_scale_factor`` times
the dataparser scale, so depth stays in the units of the normalised poses), plus an optional
per-pixel confidence map.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.data.utils.data_utils import get_depth_image_from_path

from da3_nerfstudio.errors import InputError


class DA3DepthDataset(InputDataset):
    """``InputDataset`` whose items carry ``depth_image`` / ``depth_confidence`` ([H,W,1]) when available."""

    exclude_batch_keys_from_device = [*InputDataset.exclude_batch_keys_from_device, "depth_image", "depth_confidence"]

    def _size(self, index: int) -> tuple[int, int]:
        cameras = self._dataparser_outputs.cameras
        return int(cameras.height[index]), int(cameras.width[index])

    def get_metadata(self, data: dict) -> dict:
        """Depth (scaled to the normalised pose units) and confidence of image ``data["image_idx"]``."""
        index = data["image_idx"]
        out: dict[str, torch.Tensor] = {}
        depth_files = self.metadata.get("depth_filenames")
        if depth_files:
            height, width = self._size(index)
            scale = self.metadata["depth_unit_scale_factor"] * self._dataparser_outputs.dataparser_scale
            path = Path(depth_files[index])
            if not path.is_file():
                raise InputError(f"{path}: depth file does not exist")
            out["depth_image"] = get_depth_image_from_path(path, height, width, scale)
        confidence_files = self.metadata.get("confidence_filenames")
        if confidence_files:
            height, width = self._size(index)
            path = Path(confidence_files[index])
            try:
                conf = np.load(path).astype(np.float32)
            except (OSError, ValueError) as err:
                raise InputError(f"{path}: not a readable .npy confidence map ({err})") from err
            if conf.ndim != 2:
                raise InputError(f"{path}: confidence map must be 2-D, got shape {conf.shape}")
            conf = cv2.resize(conf, (width, height), interpolation=cv2.INTER_NEAREST)
            out["depth_confidence"] = torch.from_numpy(conf[:, :, None])
        return out
