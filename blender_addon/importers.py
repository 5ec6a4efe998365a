"""Import pipelines shared by the operators and the DA3 runner: read a file, build one rooted import."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import bpy

from .build_cameras import create_cameras
from .build_common import new_import_root
from .build_points import create_point_cloud, default_radius
from .build_splats import create_splats
from .colmap import read_colmap_model
from .errors import InputError
from .nerfstudio_json import read_nerfstudio_json
from .ply import read_point_cloud_ply, read_splat_ply
from .predictions import Predictions, backproject, prediction_cameras, prediction_splats, read_predictions
from .scene_data import ImportedScene, PointData

NPZ_KEY, VIEW_KEY = "da3_npz", "da3_view"


@dataclass
class ImportResult:
    """The root empty of an import, everything created under it and non-fatal warnings."""

    root: bpy.types.Object
    objects: list[bpy.types.Object] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _import_cameras(
    scene: bpy.types.Scene,
    data: ImportedScene,
    source: Path,
    *,
    z_up: bool,
    animated: bool,
    load_images: bool,
    import_points: bool,
) -> ImportResult:
    collection, root = new_import_root(scene, f"DA3 {source.stem}", z_up, str(source))
    cameras, warnings = create_cameras(
        scene, data.cameras, collection, root, load_images=load_images, animated=animated
    )
    result = ImportResult(root, cameras, data.warnings + warnings)
    if import_points and data.points is not None:
        radius = default_radius(data.points.positions)
        result.objects.append(create_point_cloud(f"{source.stem} points", data.points, collection, root, radius))
    return result


def import_dataset(
    scene: bpy.types.Scene,
    path: str | os.PathLike,
    *,
    z_up: bool = False,
    animated: bool = False,
    load_images: bool = True,
    import_points: bool = True,
) -> ImportResult:
    """A ``da3-process-data`` folder or any nerfstudio transforms.json / camera_path.json."""
    path = Path(path)
    source = path / "transforms.json" if path.is_dir() else path
    data = read_nerfstudio_json(source)
    return _import_cameras(
        scene, data, source, z_up=z_up, animated=animated, load_images=load_images, import_points=import_points
    )


def import_colmap(
    scene: bpy.types.Scene,
    path: str | os.PathLike,
    *,
    z_up: bool = True,
    animated: bool = False,
    load_images: bool = True,
    import_points: bool = True,
) -> ImportResult:
    """A COLMAP sparse model (bin or txt); ``path`` is the model folder or one of its files."""
    data = read_colmap_model(path)
    source = Path(path)
    return _import_cameras(
        scene, data, source, z_up=z_up, animated=animated, load_images=load_images, import_points=import_points
    )


def import_predictions(
    scene: bpy.types.Scene,
    path: str | os.PathLike,
    *,
    z_up: bool = True,
    animated: bool = False,
    load_images: bool = True,
    depth_points: bool = False,
    stride: int = 2,
    splats: bool = True,
) -> ImportResult:
    """Cameras of a predictions npz; each camera remembers the file and view for on-demand depth.

    With ``splats``, Gaussians the file holds (the DA3 Gaussian head's output) become one splat object,
    built exactly as a 3DGS PLY import would build it. Everything is read and checked before anything is
    created, so a bad view refuses the whole import.
    """
    path = Path(path)
    pred = read_predictions(path)
    data = ImportedScene(cameras=prediction_cameras(pred))
    clouds = [_depth_points(pred, index, stride) for index in range(len(data.cameras))] if depth_points else []
    gaussians = prediction_splats(pred) if splats else None
    result = _import_cameras(
        scene, data, path, z_up=z_up, animated=animated, load_images=load_images, import_points=False
    )
    cameras = result.objects[: len(data.cameras)]
    for index, obj in enumerate(cameras):
        obj[NPZ_KEY], obj[VIEW_KEY] = str(path.resolve()), index
    for obj, points in zip(cameras if clouds else [], clouds, strict=True):
        result.objects.append(add_depth_cloud(obj, points, stride))
    if gaussians is not None:
        collection = result.root.users_collection[0]
        result.objects.append(create_splats(f"{path.stem} splats", gaussians, collection, result.root))
        _allow_overlapping_transparency(scene)
    elif splats and pred.gaussians is not None:
        result.warnings.append(f"{path}: no Gaussian has finite values; none imported")
    return result


def _depth_points(pred: Predictions, index: int, stride: int) -> PointData:
    """The back-projected depth of one view, refused when the stride samples no valid depth pixel."""
    points = backproject(pred, index, max(1, stride))
    if len(points.positions) == 0:
        raise InputError(f"{pred.path}: view {index} has no valid depth pixel at pixel stride {max(1, stride)}")
    return points


def camera_depth_points(camera: bpy.types.Object, stride: int = 2) -> PointData:
    """Read and back-project the depth map of an imported predictions camera (nothing is created)."""
    npz, index = camera.get(NPZ_KEY), camera.get(VIEW_KEY)
    if npz is None or index is None:
        raise InputError(f"{camera.name}: not a camera imported from a DA3 predictions npz")
    pred = read_predictions(npz)
    if not 0 <= index < len(pred.names):
        raise InputError(f"{npz}: has no view {index} for camera {camera.name}")
    return _depth_points(pred, index, stride)


def add_depth_cloud(camera: bpy.types.Object, points: PointData, stride: int = 2) -> bpy.types.Object:
    """A point cloud of a camera's back-projected depth, next to the camera under its import root."""
    collection = camera.users_collection[0]
    radius = 0.5 * default_radius(points.positions) * max(1, stride)
    return create_point_cloud(f"{camera.name} depth", points, collection, camera.parent, radius)


def import_points(
    scene: bpy.types.Scene,
    path: str | os.PathLike,
    *,
    z_up: bool = True,
    radius: float = 0.0,
    solid_colours: bool | None = None,
) -> ImportResult:
    """A point-cloud PLY; ``radius`` 0 picks one from the cloud's extent, ``solid_colours`` None by size."""
    path = Path(path)
    points = read_point_cloud_ply(path)
    collection, root = new_import_root(scene, f"DA3 {path.stem}", z_up, str(path))
    radius = radius if radius > 0 else default_radius(points.positions)
    obj = create_point_cloud(path.stem, points, collection, root, radius, solid_colours=solid_colours)
    return ImportResult(root, [obj])


def import_splats(scene: bpy.types.Scene, path: str | os.PathLike, *, z_up: bool = True) -> ImportResult:
    """A 3DGS PLY (SH degree 0-3); non-3DGS files are rejected with an InputError."""
    path = Path(path)
    splats = read_splat_ply(path)
    collection, root = new_import_root(scene, f"DA3 {path.stem}", z_up, str(path))
    obj = create_splats(path.stem, splats, collection, root)
    _allow_overlapping_transparency(scene)
    return ImportResult(root, [obj])


def _allow_overlapping_transparency(scene: bpy.types.Scene) -> None:
    """Overlapping transparent ellipsoids need more transparent bounces than Cycles' default 8."""
    cycles = getattr(scene, "cycles", None)
    if cycles is not None and cycles.transparent_max_bounces < 64:
        cycles.transparent_max_bounces = 64
