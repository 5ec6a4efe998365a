"""Blender cameras from :class:`CameraView` lists, and back (for export)."""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

from . import camera_math
from .build_common import adopt
from .errors import InputError
from .scene_data import CameraView

ANIMATED_NAME = "DA3 Animated Camera"


def apply_intrinsics(cam: bpy.types.Camera, view: CameraView) -> camera_math.BlenderIntrinsics:
    """Set lens, sensor and shift on a camera datablock; returns the settings (pixel aspect is per scene)."""
    b = camera_math.to_blender(view.fx, view.fy, view.cx, view.cy, view.width, view.height)
    cam.type = "PERSP"
    cam.lens_unit = "MILLIMETERS"
    cam.sensor_fit = b.sensor_fit
    cam.sensor_width = cam.sensor_height = b.sensor_size
    cam.lens = b.lens
    cam.shift_x, cam.shift_y = b.shift_x, b.shift_y
    # Render size and pixel aspect are scene settings; keep each camera's own values with it.
    cam["da3_width"], cam["da3_height"] = view.width, view.height
    cam["da3_pixel_aspect"] = (b.pixel_aspect_x, b.pixel_aspect_y)
    return b


def set_render_size(scene: bpy.types.Scene, b: camera_math.BlenderIntrinsics) -> None:
    """Make the scene render exactly the camera's pixel grid."""
    render = scene.render
    render.resolution_x, render.resolution_y = b.resolution_x, b.resolution_y
    render.resolution_percentage = 100
    render.pixel_aspect_x, render.pixel_aspect_y = b.pixel_aspect_x, b.pixel_aspect_y


def _image(view: CameraView) -> bpy.types.Image | None:
    if view.pixels is not None:
        h, w = view.pixels.shape[:2]
        img = bpy.data.images.new(view.name, w, h, alpha=False)
        rgba = np.ones((h, w, 4), dtype=np.float32)
        rgba[..., :3] = view.pixels[::-1, :, :3] / np.float32(255.0)  # Blender rows run bottom-up
        img.pixels.foreach_set(rgba.reshape(-1))
        img.pack()  # generated pixels would be lost on save otherwise
        return img
    if view.image_path is not None and Path(view.image_path).is_file():
        try:
            return bpy.data.images.load(str(view.image_path), check_existing=True)
        except RuntimeError:  # a file Blender cannot decode: the camera is still right, only its backdrop is missing
            return None
    return None


def _display_size(views: list[CameraView]) -> float:
    """Camera gizmo size from the spread of camera centres, since DA3 scale is arbitrary."""
    centres = np.array([v.c2w[:3, 3] for v in views])
    extent = float(np.ptp(centres, axis=0).max()) if len(views) > 1 else 1.0
    return float(np.clip(0.05 * extent, 0.01, 1.0)) if extent > 0 else 0.2


def create_cameras(
    scene: bpy.types.Scene,
    views: list[CameraView],
    collection: bpy.types.Collection,
    root: bpy.types.Object,
    *,
    load_images: bool = True,
    animated: bool = False,
) -> tuple[list[bpy.types.Object], list[str]]:
    """One camera object per view (named after the image stem), plus an optional animated camera.

    Returns the created objects and warnings (missing images, mixed image sizes).
    """
    objects, missing = [], []
    size = _display_size(views)
    first = None
    for view in views:
        data = bpy.data.cameras.new(view.name)
        b = apply_intrinsics(data, view)
        first = first or b
        data.display_size = size
        obj = bpy.data.objects.new(view.name, data)
        adopt(obj, collection, root)
        obj.matrix_basis = Matrix(np.asarray(view.c2w).tolist())
        if load_images:
            image = _image(view)
            if image is None and view.image_path is not None:
                missing.append(Path(view.image_path).name)
            elif image is not None:
                background = data.background_images.new()
                background.image = image
                data.show_background_images = True
        objects.append(obj)
    warnings = []
    if missing:
        warnings.append(
            f"{len(missing)} image(s) not found or unreadable, e.g. {missing[0]}; cameras created without them"
        )
    if len({(v.width, v.height) for v in views}) > 1:
        warnings.append("views have different image sizes; scene resolution follows the first view")
    set_render_size(scene, first)
    scene.camera = objects[0]
    if animated:
        objects.append(_animated_camera(scene, views, collection, root, size))
    return objects, warnings


def _animated_camera(
    scene: bpy.types.Scene,
    views: list[CameraView],
    collection: bpy.types.Collection,
    root: bpy.types.Object,
    size: float,
) -> bpy.types.Object:
    """One camera keyed through every view at frames 1..N with sign-continuous quaternions.

    keyframe_insert (rather than raw fcurves) creates the action slot on 4.4+ and the channelbag on 5.x.
    """
    data = bpy.data.cameras.new(ANIMATED_NAME)
    apply_intrinsics(data, views[0])
    data.display_size = size
    obj = bpy.data.objects.new(ANIMATED_NAME, data)
    adopt(obj, collection, root)
    obj.rotation_mode = "QUATERNION"
    matrices = [Matrix(np.asarray(v.c2w).tolist()) for v in views]
    quats = camera_math.continuous_quaternions(np.array([list(m.to_quaternion()) for m in matrices]))
    varying = len({(v.fx, v.fy, v.cx, v.cy) for v in views}) > 1
    for frame, (view, m, q) in enumerate(zip(views, matrices, quats, strict=True), start=1):
        obj.location = m.to_translation()
        obj.rotation_quaternion = q
        obj.keyframe_insert("location", frame=frame)
        obj.keyframe_insert("rotation_quaternion", frame=frame)
        if varying:
            apply_intrinsics(data, view)
            for path in ("lens", "shift_x", "shift_y"):
                data.keyframe_insert(path, frame=frame)
    scene.frame_start, scene.frame_end = 1, len(views)
    return obj


def view_from_camera(
    obj: bpy.types.Object, scene: bpy.types.Scene, to_file: Matrix, name: str | None = None
) -> CameraView:
    """A pinhole view of a Blender camera as the scene renders it, in the frame given by ``to_file``.

    ``to_file`` maps Blender world to file coordinates (the inverse of the import root's matrix).
    """
    render = scene.render
    scale = render.resolution_percentage / 100.0
    w, h = round(render.resolution_x * scale), round(render.resolution_y * scale)
    cam = obj.data
    pax, pay = render.pixel_aspect_x, render.pixel_aspect_y
    fit = cam.sensor_fit
    if fit == "AUTO":
        fit = camera_math.resolve_auto_fit(w, h, pax, pay)
        sensor = cam.sensor_width
    else:
        sensor = cam.sensor_width if fit == "HORIZONTAL" else cam.sensor_height
    b = camera_math.BlenderIntrinsics(cam.lens, fit, sensor, cam.shift_x, cam.shift_y, pax, pay, w, h)
    fx, fy, cx, cy = camera_math.from_blender(b)
    m = to_file @ obj.matrix_world
    if not m.to_3x3().determinant() > 1e-12:  # also false for NaN
        raise InputError(f"{obj.name}: zero or mirroring scale leaves the camera without a pose to export")
    loc, rot, _ = m.decompose()  # drop any object scale: a camera pose is rigid
    pose = Matrix.LocRotScale(loc, rot, None)
    image_path = None
    for background in cam.background_images:
        if background.image is not None and background.image.filepath:
            image_path = Path(bpy.path.abspath(background.image.filepath))
            break
    return CameraView(
        name=name or obj.name,
        c2w=np.array(pose, dtype=np.float64),
        fx=fx,
        fy=fy,
        cx=cx,
        cy=cy,
        width=w,
        height=h,
        image_path=image_path,
    )
