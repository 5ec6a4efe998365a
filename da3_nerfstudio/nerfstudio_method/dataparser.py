"""``da3-data``: nerfstudio-data for folders written by ``da3-process-data``.

It is the ``nerfstudio-data`` parser with DA3 defaults (float depth in the units of the poses, so
``depth_unit_scale_factor=1``; seed points on) plus the feed-forward Gaussians of ``splat_init.ply``.
Those are moved into nerfstudio's normalised frame with exactly the orientation/centring transform
and scale applied to the poses and seed points, so that positions, sizes, orientations and
view-dependent colour stay consistent with the cameras. Depth maps are scaled by the same factor
in :class:`~da3_nerfstudio.nerfstudio_method.dataset.DA3DepthDataset`.

``--data`` may also be a plain folder of photos: the parser then runs ``da3-process-data images`` into
a cache folder inside it (:data:`CACHE_DIR`) and trains on that, reusing the cache while it is newer
than every photo and was made with the same model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig
from nerfstudio.utils.io import load_from_json
from nerfstudio.utils.rich_utils import CONSOLE

from da3_nerfstudio.errors import InputError
from da3_nerfstudio.formats.ply import read_point_cloud_ply, read_splat_ply
from da3_nerfstudio.splat_init import transform_splats

#: Where a plain image folder's dataset is cached (hidden, so the image listing skips it).
CACHE_DIR = ".da3-dataset"
#: Default network for plain image folders; same as ``da3-process-data``'s (kept literal so that
#: ``ns-train --help`` does not import the preprocessing CLI).
DEFAULT_DA3_MODEL = "depth-anything/DA3NESTED-GIANT-LARGE-1.1"


@dataclass
class DA3DataParserConfig(NerfstudioDataParserConfig):
    """nerfstudio-data with DA3 defaults and the feed-forward Gaussian initialisation."""

    _target: type = field(default_factory=lambda: DA3DataParser)
    depth_unit_scale_factor: float = 1.0
    """Depth files are float arrays in the units of the poses (DA3 output)."""
    load_3D_points: bool = True
    """Load ``ply_file_path`` as seed points (used by ``--pipeline.model.init-from sparse_points``)."""
    splat_init_file: Path = Path("splat_init.ply")
    """3DGS PLY of initial Gaussians, relative to the dataset folder, in the frame of the poses."""
    da3_model: str = DEFAULT_DA3_MODEL
    """When --data is a plain image folder: the DA3 model (Hugging Face repo id or local checkpoint folder)
    that da3-process-data runs to make the dataset cached in DATA/.da3-dataset."""
    da3_process_res: int = 504
    """When --data is a plain image folder: da3-process-data's network input resolution."""


class DA3DataParser(Nerfstudio):
    """Adds ``splat_init`` (normalised-frame Gaussians) and per-frame confidence files to the metadata."""

    config: DA3DataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train"):  # noqa: ANN202 (nerfstudio's type)
        data = self.config.data
        meta_path = data if data.suffix == ".json" else data / "transforms.json"
        if not meta_path.is_file() and data.is_dir():
            data = self._preprocessed(data)
            meta_path = data / "transforms.json"
            self.config.data = data
        if not meta_path.is_file():
            raise InputError(f"{meta_path}: no transforms.json; run `da3-process-data` on the image folder first")
        outputs = super()._generate_dataparser_outputs(split)
        data_dir = meta_path.parent
        meta = load_from_json(meta_path)
        outputs.metadata.update(self._confidence_filenames(meta, data_dir, outputs.image_filenames))
        splat_path = data_dir / self.config.splat_init_file
        if splat_path.is_file():
            outputs.metadata["splat_init"] = self._load_splat_init(splat_path, meta, outputs)
        return outputs

    def _preprocessed(self, photos: Path) -> Path:
        """The dataset of a plain image folder: its cache when still valid, else made now by da3-process-data."""
        from da3_nerfstudio.cli.process_data import list_images, main
        from da3_nerfstudio.dataset import MANIFEST

        images = list_images(photos)  # InputError (one line, naming the folder) when there are no photos
        cache = photos / CACHE_DIR
        try:
            manifest = json.loads((cache / MANIFEST).read_text(encoding="utf-8"))
            fresh = (cache / MANIFEST).stat().st_mtime > max(p.stat().st_mtime for p in images)
        except (OSError, ValueError):
            manifest, fresh = {}, False
        if fresh and manifest.get("model_source") == self.config.da3_model:
            CONSOLE.log(f"da3-data: reusing the DA3 dataset cached in {cache} (newer than the photos)")
            return cache
        CONSOLE.log(
            f"da3-data: {photos} is a plain image folder; running da3-process-data ({self.config.da3_model}) "
            f"on its {len(images)} photos into {cache}"
        )
        args = ["images", "--data", str(photos), "--output-dir", str(cache), "--model", self.config.da3_model]
        if main([*args, "--process-res", str(self.config.da3_process_res)]) != 0:
            raise InputError(f"{photos}: da3-process-data could not make a dataset of these photos (error above)")
        return cache

    def _normalising_transform(self, meta: dict, outputs) -> np.ndarray:  # noqa: ANN001
        """The 4x4 transform nerfstudio applied to the saved poses (dataparser transform without
        ``applied_transform``, which maps *original* coordinates to the saved ones)."""
        full = np.eye(4)
        full[:3] = outputs.dataparser_transform.numpy()
        if "applied_transform" in meta:
            applied = np.eye(4)
            applied[:3] = np.asarray(meta["applied_transform"], dtype=np.float64)
            full = full @ np.linalg.inv(applied)
        return full

    def _load_splat_init(self, path: Path, meta: dict, outputs) -> dict[str, torch.Tensor]:  # noqa: ANN001
        """Read ``splat_init.ply`` and move it into the normalised frame as raw tensors."""
        splats = read_splat_ply(path)
        transform = self._normalising_transform(meta, outputs)
        moved = transform_splats(splats, transform[:3], float(outputs.dataparser_scale))
        CONSOLE.log(f"da3-data: {len(moved)} initial Gaussians from {path}")
        return {
            "means": torch.from_numpy(moved.means),
            "scales": torch.from_numpy(moved.scales_log),
            "quats": torch.from_numpy(moved.rotations),
            "opacities": torch.from_numpy(moved.opacity_logit)[:, None],
            "features_dc": torch.from_numpy(moved.sh_dc),
            "features_rest": torch.from_numpy(moved.sh_rest),
        }

    def _confidence_filenames(self, meta: dict, data_dir: Path, image_filenames: list[Path]) -> dict:
        """Per-frame ``confidence_file_path`` entries, in the order of this split's images."""
        frames = meta.get("frames", [])
        with_conf = [f for f in frames if "confidence_file_path" in f]
        if not with_conf:
            return {}
        if len(with_conf) != len(frames):
            raise InputError(f"{data_dir / 'transforms.json'}: confidence_file_path is set on some frames only")
        by_image = {
            self._get_fname(Path(f["file_path"]), data_dir): data_dir / f["confidence_file_path"] for f in frames
        }
        return {"confidence_filenames": [by_image[Path(name)] for name in image_filenames]}

    def _load_3D_points(self, ply_file_path: Path, transform_matrix: torch.Tensor, scale_factor: float):  # noqa: ANN202
        """Seed points read with plyfile (no open3d needed), transformed like the poses."""
        points, colors, _ = read_point_cloud_ply(ply_file_path)
        if len(points) == 0:
            return None
        homogeneous = torch.cat([torch.from_numpy(points), torch.ones(len(points), 1)], dim=-1)
        xyz = (homogeneous @ transform_matrix.T.float()) * scale_factor
        return {"points3D_xyz": xyz, "points3D_rgb": torch.from_numpy(colors)}
