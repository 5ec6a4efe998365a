"""Operators in the ``da3`` namespace: importers, depth back-projection, camera export, DA3 runner."""

from __future__ import annotations

import shlex
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from . import importers
from .build_points import SOLID_COLOURS_MAX_POINTS, has_point_colours, show_attribute_colours, solid_colours_note
from .build_splats import MODIFIER_NAME as SPLAT_MODIFIER
from .errors import InputError
from .exporters import export_cameras
from .process_job import ProcessJob, process_command, resolve_python


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
    coloured = any(has_point_colours(o) or has_point_colours(o, SPLAT_MODIFIER) for o in objects)
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
        try:
            points = [importers.backproject_camera(camera, self.stride) for camera in cameras]
        except InputError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
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


# Running jobs by scene name: subprocess handles cannot live in Blender properties.
JOBS: dict[str, ProcessJob] = {}
POLL_SECONDS = 0.5


def _preferences(context: bpy.types.Context) -> bpy.types.AddonPreferences | None:
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


def _redraw() -> None:
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def poll_jobs() -> float | None:
    """Timer callback: refresh progress, import finished results, report failures in the panel."""
    for scene_name, job in list(JOBS.items()):
        scene = bpy.data.scenes.get(scene_name)
        code = job.poll()
        if scene is None:
            job.cancel()
            del JOBS[scene_name]
            continue
        state = scene.da3
        if code is None:
            state.progress = job.progress or 0.0
            state.status = job.last_line[-200:]
            continue
        del JOBS[scene_name]
        state.running = False
        if job.cancelled:
            state.status, state.failed = "Cancelled", False
        elif code != 0:
            state.status, state.failed = f"da3-process-data failed: {job.error_summary()}"[:400], True
        else:
            try:
                result = importers.import_dataset(scene, job.output_dir)
                state.status, state.failed, state.progress = f"Imported {result.root.name}", False, 1.0
            except InputError as exc:
                state.status, state.failed = f"Finished, but the result could not be imported: {exc}", True
    _redraw()
    return POLL_SECONDS if JOBS else None


class DA3_OT_run_process(bpy.types.Operator):
    """Run da3-process-data on the chosen images folder or video in the DA3 environment, then import it"""

    bl_idname = "da3.run_process"
    bl_label = "Run DA3"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if context.scene.name in JOBS:
            cls.poll_message_set("DA3 is already running for this scene")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        state = context.scene.da3
        prefs = _preferences(context)
        try:
            python = resolve_python(prefs.python_path if prefs is not None else "")
            if not state.output_dir.strip():
                raise InputError("choose an output folder for DA3")
            output = Path(bpy.path.abspath(state.output_dir))
            extra = shlex.split(prefs.extra_args) if prefs is not None else []
            argv = process_command(python, bpy.path.abspath(state.input_path), output, extra)
            JOBS[context.scene.name] = ProcessJob(argv, output)
        except (InputError, OSError, ValueError) as exc:
            state.status, state.failed = str(exc), True
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        state.running, state.failed, state.progress, state.status = True, False, 0.0, "Starting DA3..."
        if not bpy.app.timers.is_registered(poll_jobs):
            bpy.app.timers.register(poll_jobs, first_interval=POLL_SECONDS)
        return {"FINISHED"}


class DA3_OT_cancel_process(bpy.types.Operator):
    """Stop the running DA3 process"""

    bl_idname = "da3.cancel_process"
    bl_label = "Cancel DA3"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.scene.name in JOBS

    def execute(self, context: bpy.types.Context) -> set[str]:
        JOBS[context.scene.name].cancel()
        poll_jobs()
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
    DA3_OT_run_process,
    DA3_OT_cancel_process,
)


def stop_all_jobs() -> None:
    """Unregister must not leave processes or timers behind."""
    for job in JOBS.values():
        job.cancel()
    JOBS.clear()
    if bpy.app.timers.is_registered(poll_jobs):
        bpy.app.timers.unregister(poll_jobs)
