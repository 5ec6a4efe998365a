"""Operators in the ``da3`` namespace: importers, depth back-projection, camera export (the DA3 runner's are
in :mod:`run_da3`)."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from . import importers
from .build_common import has_point_colours, show_attribute_colours
from .build_points import MODIFIER_NAME as POINTS_MODIFIER
from .build_points import SOLID_COLOURS_MAX_POINTS, solid_colours_note
from .build_splats import MODIFIER_NAME as SPLAT_MODIFIER
from .errors import InputError
from .exporters import export_cameras


class _ImportOperator(bpy.types.Operator, ImportHelper):
    """Shared execute: run the import, report warnings, turn InputError into a one-line UI error."""

    bl_options = {"REGISTER", "UNDO", "PRESET"}
    colour_view: BoolProperty(
        name="Colour Solid View",
        description="Switch the 3D viewport's Solid shading to Attribute colour when points with colours arrive",
        default=True,
    )

    def run(self, context: bpy.types.Context) -> importers.ImportResult:
        raise NotImplementedError

    def notes(self, result: importers.ImportResult) -> list[str]:
        """Info lines: how to turn on Solid Colours where the point count left it off."""
        return list(filter(None, map(solid_colours_note, result.objects)))

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            result = self.run(context)
        except InputError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        for warning in result.warnings:
            self.report({"WARNING"}, warning)
        for note in self.notes(result):
            self.report({"INFO"}, note)
        for obj in context.view_layer.objects.selected:
            obj.select_set(False)
        result.root.select_set(True)
        context.view_layer.objects.active = result.root
        _colour_solid_view(context, result.objects, self.colour_view)
        self.report({"INFO"}, f"Imported {len(result.objects)} object(s) under {result.root.name}")
        return {"FINISHED"}


def _colour_solid_view(context: bpy.types.Context, objects: list[bpy.types.Object], enabled: bool) -> None:
    coloured = any(has_point_colours(o, POINTS_MODIFIER) or has_point_colours(o, SPLAT_MODIFIER) for o in objects)
    if enabled and context.screen is not None and coloured:
        show_attribute_colours(context.screen)


_Z_UP_DOC = "Rotate the OpenCV world (y down, z forward) to Blender's Z-up on the import's root empty"


class _CameraImportOperator(_ImportOperator):
    """Shared options of the importers that create cameras (one per view, or one animated camera)."""

    animated_camera: BoolProperty(name="Animated Camera", description="Add one camera keyed through all views")
    load_images: BoolProperty(name="Image Backgrounds", default=True)

    def camera_options(self) -> dict[str, bool]:
        return {"z_up": self.z_up, "animated": self.animated_camera, "load_images": self.load_images}


class DA3_OT_import_dataset(_CameraImportOperator):
    """Import cameras (and points) from a da3-process-data folder or a nerfstudio transforms.json"""

    bl_idname = "da3.import_dataset"
    bl_label = "Import DA3 / nerfstudio Dataset"
    filename_ext = ".json"
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})
    z_up: BoolProperty(name="Z-Up", description=_Z_UP_DOC, default=False)
    import_points: BoolProperty(name="Point Cloud", description="Import the dataset's ply_file_path", default=True)

    def run(self, context: bpy.types.Context) -> importers.ImportResult:
        options = self.camera_options()
        return importers.import_dataset(context.scene, self.filepath, import_points=self.import_points, **options)


class DA3_OT_import_colmap(_CameraImportOperator):
    """Import cameras and sparse points of a COLMAP model (bin or txt)"""

    bl_idname = "da3.import_colmap"
    bl_label = "Import COLMAP Model"
    filename_ext = ".bin"
    filter_glob: StringProperty(default="*.bin;*.txt", options={"HIDDEN"})
    z_up: BoolProperty(name="Z-Up", description=_Z_UP_DOC, default=True)
    import_points: BoolProperty(name="Point Cloud", default=True)

    def run(self, context: bpy.types.Context) -> importers.ImportResult:
        options = self.camera_options()
        return importers.import_colmap(context.scene, self.filepath, import_points=self.import_points, **options)


class DA3_OT_import_predictions(_CameraImportOperator):
    """Import the cameras, images, Gaussians and (optionally) depth points of a DA3 predictions npz"""

    bl_idname = "da3.import_predictions"
    bl_label = "Import DA3 Predictions"
    filename_ext = ".npz"
    filter_glob: StringProperty(default="*.npz", options={"HIDDEN"})
    z_up: BoolProperty(name="Z-Up", description=_Z_UP_DOC, default=True)
    depth_points: BoolProperty(name="Depth Points", description="Back-project every depth map now", default=False)
    stride: IntProperty(name="Pixel Stride", default=2, min=1, max=64)
    splats: BoolProperty(
        name="Gaussians", description="Import the Gaussians the file holds (DA3 Gaussian head) as splats", default=True
    )

    def run(self, context: bpy.types.Context) -> importers.ImportResult:
        return importers.import_predictions(
            context.scene,
            self.filepath,
            depth_points=self.depth_points,
            stride=self.stride,
            splats=self.splats,
            **self.camera_options(),
        )


class DA3_OT_import_points(_ImportOperator):
    """Import a point-cloud PLY with colour and confidence attributes"""

    bl_idname = "da3.import_points"
    bl_label = "Import Point Cloud PLY"
    filename_ext = ".ply"
    filter_glob: StringProperty(default="*.ply", options={"HIDDEN"})
    z_up: BoolProperty(name="Z-Up", description=_Z_UP_DOC, default=True)
    radius: FloatProperty(name="Point Radius", description="0 picks one from the cloud size", default=0.0, min=0.0)
    solid_colours: EnumProperty(
        name="Solid Colours",
        description="Points as small meshes so Solid view shows their colours; they are slower to import and "
        "update than point primitives on millions of points. Can be switched later in the DA3 panel",
        items=(
            ("AUTO", "Automatic", f"On up to {SOLID_COLOURS_MAX_POINTS:,} points, off above"),
            ("ON", "On", "Small meshes whose colours Solid view shows"),
            ("OFF", "Off", "Point primitives: fast, but one colour in Solid view"),
        ),
        default="AUTO",
    )

    def run(self, context: bpy.types.Context) -> importers.ImportResult:
        solid = {"AUTO": None, "ON": True, "OFF": False}[self.solid_colours]
        return importers.import_points(
            context.scene, self.filepath, z_up=self.z_up, radius=self.radius, solid_colours=solid
        )

    def notes(self, result: importers.ImportResult) -> list[str]:
        return super().notes(result) if self.solid_colours == "AUTO" else []


class DA3_OT_import_splats(_ImportOperator):
    """Import a 3D Gaussian splatting PLY (SH degree 0-3)"""

    bl_idname = "da3.import_splats"
    bl_label = "Import Gaussian Splats PLY"
    filename_ext = ".ply"
    filter_glob: StringProperty(default="*.ply", options={"HIDDEN"})
    z_up: BoolProperty(name="Z-Up", description=_Z_UP_DOC, default=True)

    def run(self, context: bpy.types.Context) -> importers.ImportResult:
        return importers.import_splats(context.scene, self.filepath, z_up=self.z_up)


class DA3_OT_backproject_depth(bpy.types.Operator):
    """Back-project the depth maps of the selected DA3 prediction cameras as point clouds"""

    bl_idname = "da3.backproject_depth"
    bl_label = "Depth to Points"
    bl_options = {"REGISTER", "UNDO"}
    stride: IntProperty(name="Pixel Stride", default=2, min=1, max=64)

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if any(o.get(importers.NPZ_KEY) for o in context.selected_objects):
            return True
        cls.poll_message_set("Select cameras imported from a DA3 predictions npz")
        return False

    def execute(self, context: bpy.types.Context) -> set[str]:
        cameras = [o for o in context.selected_objects if o.get(importers.NPZ_KEY)]
        try:  # every depth map is read and checked before the first cloud is created
            depth = [importers.camera_depth_points(camera, self.stride) for camera in cameras]
        except InputError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        points = [importers.add_depth_cloud(c, d, self.stride) for c, d in zip(cameras, depth, strict=True)]
        _colour_solid_view(context, points, True)
        for note in filter(None, map(solid_colours_note, points)):
            self.report({"INFO"}, note)
        self.report({"INFO"}, f"Back-projected {len(cameras)} depth map(s)")
        return {"FINISHED"}


class DA3_OT_export_cameras(bpy.types.Operator, ExportHelper):
    """Export selected (or the animated scene) cameras to nerfstudio transforms.json or camera_path.json"""

    bl_idname = "da3.export_cameras"
    bl_label = "Export Cameras (nerfstudio)"
    filename_ext = ".json"
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})
    file_format: EnumProperty(
        name="Format",
        items=(
            ("TRANSFORMS", "transforms.json", "nerfstudio dataset cameras (exact intrinsics)"),
            ("CAMERA_PATH", "camera_path.json", "ns-render camera path (vertical FOV only)"),
        ),
        default="TRANSFORMS",
    )
    source: EnumProperty(
        name="Cameras",
        items=(
            ("SELECTED", "Selected", "Every selected camera"),
            ("ANIMATED", "Animation", "The scene camera at every frame of the scene range"),
        ),
        default="SELECTED",
    )
    relative_to_root: BoolProperty(
        name="Relative to Import Root",
        description="Undo the DA3 import root (Z-up and any move) so poses match the imported files",
        default=True,
    )

    def execute(self, context: bpy.types.Context) -> set[str]:
        cameras = [o for o in context.selected_objects if o.type == "CAMERA"]
        try:
            count, warnings = export_cameras(
                context.scene,
                self.filepath,
                cameras,
                file_format=self.file_format,
                animated=self.source == "ANIMATED",
                relative_to_root=self.relative_to_root,
            )
        except InputError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        for warning in warnings:
            self.report({"WARNING"}, warning)
        self.report({"INFO"}, f"Exported {count} camera(s) to {self.filepath}")
        return {"FINISHED"}


IMPORT_OPERATORS = (
    DA3_OT_import_dataset,
    DA3_OT_import_colmap,
    DA3_OT_import_predictions,
    DA3_OT_import_points,
    DA3_OT_import_splats,
)
CLASSES = (
    *IMPORT_OPERATORS,
    DA3_OT_backproject_depth,
    DA3_OT_export_cameras,
)
