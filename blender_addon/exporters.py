"""Blender cameras -> nerfstudio transforms.json or camera_path.json."""

from __future__ import annotations

import os
from pathlib import Path

import bpy
from mathutils import Matrix

from .build_cameras import view_from_camera
from .build_common import find_root
from .errors import InputError
from .nerfstudio_json import camera_path_dict, transforms_dict, write_json_atomic
from .scene_data import CameraView


def _to_file(obj: bpy.types.Object, relative_to_root: bool) -> Matrix:
    """Blender world -> file coordinates: undo the import root (Z-up, user moves) when there is one."""
    root = find_root(obj) if relative_to_root else None
    return root.matrix_world.inverted() if root is not None else Matrix.Identity(4)


def collect_views(
    scene: bpy.types.Scene, cameras: list[bpy.types.Object], animated: bool, relative_to_root: bool = True
) -> list[CameraView]:
    """Views of the given cameras, or of the scene camera at every frame of the scene's range."""
    if animated:
        camera = scene.camera
        if camera is None:
            raise InputError("the scene has no active camera to export an animation from")
        cameras = [camera]
    for obj in cameras:
        if obj.type != "CAMERA" or obj.data.type != "PERSP":
            raise InputError(f"{obj.name}: only perspective cameras can be exported")
    if not cameras:
        raise InputError("no cameras selected")
    if not animated:
        return [
            view_from_camera(o, scene, _to_file(o, relative_to_root)).check(o.name)
            for o in sorted(cameras, key=lambda o: o.name)
        ]
    views, current = [], scene.frame_current
    try:
        for frame in range(scene.frame_start, scene.frame_end + 1, max(1, scene.frame_step)):
            scene.frame_set(frame)
            camera = scene.camera
            view = view_from_camera(camera, scene, _to_file(camera, relative_to_root), f"frame_{frame:05d}")
            views.append(view.check(f"{camera.name} at frame {frame}"))
    finally:
        scene.frame_set(current)
    return views


def export_cameras(
    scene: bpy.types.Scene,
    path: str | os.PathLike,
    cameras: list[bpy.types.Object],
    *,
    file_format: str = "TRANSFORMS",
    animated: bool = False,
    relative_to_root: bool = True,
) -> tuple[int, list[str]]:
    """Write the views; returns (count, warnings). Never leaves a half-written file behind."""
    path = Path(path)
    if path.is_dir() or not path.name:
        raise InputError(f"{path}: is a folder; choose a .json file name to export to")
    views = collect_views(scene, cameras, animated, relative_to_root)
    warnings = []
    if file_format == "CAMERA_PATH":
        if any(
            abs(v.fx - v.fy) > 1e-6 * v.fx or abs(v.cx - v.width / 2) > 1e-3 or abs(v.cy - v.height / 2) > 1e-3
            for v in views
        ):
            warnings.append("camera_path.json stores only a vertical FOV: lens shift and fx != fy are dropped")
        data = camera_path_dict(views, scene.render.fps / scene.render.fps_base)
    elif file_format == "TRANSFORMS":
        data = transforms_dict(views, path.parent)
    else:
        raise ValueError(f"unknown export format {file_format!r}")
    try:
        write_json_atomic(path, data)
    except OSError as exc:
        raise InputError(f"{path}: cannot write the export ({exc.strerror or exc})") from exc
    return len(views), warnings
