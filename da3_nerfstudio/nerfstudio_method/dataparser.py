"""``da3-data``: nerfstudio-data for folders written by ``da3-process-data``.

It is the ``nerfstudio-data`` parser with DA3 defaults (float depth in the units of the poses, so
``depth_unit_scale_factor=1``; seed points on) plus the feed-forward Gaussians of ``splat_init.ply``.
Those are moved into nerfstudio's normalised frame with exactly the orientation/centring transform
and scale applied to the poses and seed points, so that positions, sizes, orientations and
view-dependent colour stay consistent with the cameras. Depth maps are scaled by the same factor
in :class:`~da3_nerfstudio.nerfstudio_method.dataset.DA3DepthDataset`.

``--data`` may also be a plain folder of photos: the parser then runs ``da3-process-data images`` into
a cache folder inside it (:data:`CACHE_DIR`) and trains on that, reusing the cache while its manifest's
fingerprint matches the photos (names, sizes, mtimes) and the settings (model, resolution).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig
from nerfstudio.utils.io import load_from_json
from nerfstudio.utils.rich_utils import CONSOLE

from da3_nerfstudio.errors import InputError
from da3_nerfstudio.formats.ply import SplatData, read_point_cloud_ply, read_splat_ply
from da3_nerfstudio.formats.transforms import applied_transform, read_transforms_json, saved_to_training_frame
from da3_nerfstudio.model.presets import DEFAULT_MODEL
from da3_nerfstudio.splat_init import transform_splats

#: Where a plain image folder's dataset is cached (hidden, so the image listing skips it).
CACHE_DIR = ".da3-dataset"
#: Camera keys nerfstudio's parser needs on every frame or at the top level (it has no defaults for them).
NERFSTUDIO_CAMERA_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
#: Datasets already checked by this process: (transforms.json, its mtime, splat_init.ply).
_CHECKED: set[tuple[Path, int, Path]] = set()
#: Initial Gaussians read by the check, handed to the first load instead of reading the PLY again.
_CHECKED_SPLATS: dict[Path, SplatData] = {}


def _check_map(path: Path, what: str, where: str) -> None:
    """A depth or confidence map must be a readable 2-D array of finite values >= 0."""
    if not path.is_file():
        raise InputError(f"{path}: {what} file does not exist ({where})")
    try:
        if path.suffix == ".npy":
            values = np.load(path, mmap_mode="r", allow_pickle=False)
        else:  # nerfstudio reads other depth files with OpenCV (16-bit PNG in millimetres)
            values = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH)
            if values is None:
                raise ValueError("OpenCV cannot decode it")
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable {what} file ({err})") from err
    if values.ndim != 2 or not np.issubdtype(values.dtype, np.number):
        raise InputError(f"{path}: {what} must be a 2-D numeric array, got {values.dtype} {values.shape}")
    if not np.isfinite(values).all():
        raise InputError(f"{path}: {what} has NaN or infinite values (use 0 for pixels without {what})")
    if (values < 0).any():
        raise InputError(f"{path}: {what} has negative values (use 0 for pixels without {what})")


def check_dataset(meta_path: Path, splat_path: Path, *, load_points: bool) -> None:
    """Refuse, with one line naming the file and the problem, a dataset nerfstudio would fail on deep
    inside or train into NaN: unreadable JSON, missing or non-finite cameras, missing images, depth or
    confidence files, non-finite depth, seed points or initial Gaussians."""
    read_transforms_json(meta_path)  # JSON, frames, finite rigid poses, finite positive intrinsics
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    data_dir = meta_path.parent
    for index, frame in enumerate(meta["frames"]):
        where = f"frame {index} of {meta_path}"
        missing = [k for k in NERFSTUDIO_CAMERA_KEYS if k not in frame and k not in meta]
        if missing:
            raise InputError(
                f"{meta_path}: frame {index}: no {', '.join(missing)} (nerfstudio needs fl_x, fl_y, cx, cy, w, h)"
            )
        image = data_dir / frame["file_path"]
        if not image.is_file():
            raise InputError(f"{image}: image file does not exist ({where})")
        for key, what in (("depth_file_path", "depth"), ("confidence_file_path", "confidence")):
            if key in frame:
                _check_map(data_dir / str(frame[key]), what, where)
    names = {frame["file_path"] for frame in meta["frames"]}
    for split in ("train", "val", "test"):
        unknown = [name for name in meta.get(f"{split}_filenames", []) if name not in names]
        if unknown:
            raise InputError(f"{meta_path}: {split}_filenames lists {unknown[0]}, which is no frame's file_path")
    applied_transform(meta, meta_path)
    if load_points and "ply_file_path" in meta:
        ply = data_dir / str(meta["ply_file_path"])
        read_point_cloud_ply(ply)  # refuses non-finite points itself
    if splat_path.is_file():
        _CHECKED_SPLATS[splat_path] = read_splat_ply(splat_path)  # refuses non-finite Gaussians itself


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
    da3_model: str = DEFAULT_MODEL
    """When --data is a plain image folder: the DA3 model (Hugging Face repo id or local checkpoint folder)
    that da3-process-data runs to make the dataset cached in DATA/.da3-dataset."""
    da3_process_res: int = 504
    """When --data is a plain image folder: da3-process-data's network input resolution."""


class DA3DataParser(Nerfstudio):
    """Adds ``splat_init`` (normalised-frame Gaussians) and per-frame confidence files to the metadata."""

    config: DA3DataParserConfig

    def checked_meta_path(self) -> Path:
        """The dataset's transforms.json (a plain photo folder is made into a dataset first), after
        :func:`check_dataset`; runs once per dataset and process (every split parses it)."""
        data = self.config.data
        if not data.exists():
            raise InputError(f"{data}: no such dataset folder or transforms.json")
        meta_path = data if data.suffix == ".json" else data / "transforms.json"
        if not meta_path.is_file() and data.is_dir():
            data = self._preprocessed(data)
            meta_path = data / "transforms.json"
            self.config.data = data
        if not meta_path.is_file():
            raise InputError(f"{meta_path}: no transforms.json; run `da3-process-data` on the image folder first")
        splat_path = meta_path.parent / self.config.splat_init_file
        key = (meta_path.resolve(), meta_path.stat().st_mtime_ns, splat_path)
        if key not in _CHECKED:
            check_dataset(meta_path, splat_path, load_points=self.config.load_3D_points)
            _CHECKED.add(key)
        return meta_path

    def _generate_dataparser_outputs(self, split: str = "train"):  # noqa: ANN202 (nerfstudio's type)
        meta_path = self.checked_meta_path()
        outputs = super()._generate_dataparser_outputs(split)
        data_dir = meta_path.parent
        meta = load_from_json(meta_path)
        outputs.metadata.update(self._confidence_filenames(meta, data_dir, outputs.image_filenames))
        splat_path = data_dir / self.config.splat_init_file
        if split == "train" and splat_path.is_file():  # only the model, built from the train split, uses them
            outputs.metadata["splat_init"] = self._load_splat_init(splat_path, meta, outputs)
        return outputs

    def _preprocessed(self, photos: Path) -> Path:
        """The dataset of a plain image folder: its cache while it was made from these photos with these settings
        (the manifest's fingerprint, as ``batch`` resumes), else made now by da3-process-data."""
        from da3_nerfstudio.output_folder import dataset_is_current
        from da3_nerfstudio.process import ImagesCommand

        cache = photos / CACHE_DIR
        command = ImagesCommand(
            data=photos, output_dir=cache, model=self.config.da3_model, process_res=self.config.da3_process_res
        )
        if dataset_is_current(cache, command.fingerprint())[0]:
            CONSOLE.log(f"da3-data: reusing the DA3 dataset cached in {cache} (made from these photos and settings)")
            return cache
        CONSOLE.log(
            f"da3-data: {photos} is a plain image folder; running da3-process-data ({self.config.da3_model}) "
            f"on its photos into {cache}"
        )
        command.main()  # a DA3Error names the photo, option or checkpoint at fault in one line
        return cache

    def _load_splat_init(self, path: Path, meta: dict, outputs) -> dict[str, torch.Tensor]:  # noqa: ANN001
        """Read ``splat_init.ply`` and move it into the normalised frame as raw tensors."""
        splats = _CHECKED_SPLATS.pop(path, None) or read_splat_ply(path)
        transform = saved_to_training_frame(outputs.dataparser_transform.numpy(), meta)
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
