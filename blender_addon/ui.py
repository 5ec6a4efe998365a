"""Sidebar tab "DA3", File menu entries, scene state and add-on preferences."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, FloatProperty, StringProperty

from . import build_points, build_splats, importers, operators, run_da3
from .build_common import SOLID_COLOURS_INPUT, draw_modifier_input


class DA3SceneState(bpy.types.PropertyGroup):
    """Runner inputs and progress, stored on the scene so the panel can draw them."""

    input_path: StringProperty(name="Input", description="Images folder or video file", subtype="FILE_PATH")
    output_dir: StringProperty(name="Output", description="Folder for the processed dataset", subtype="DIR_PATH")
    running: BoolProperty(default=False)
    failed: BoolProperty(default=False)
    progress: FloatProperty(default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    status: StringProperty(default="")


class DA3Preferences(bpy.types.AddonPreferences):
    """Where the external DA3 environment lives (torch and the model are never installed into Blender)."""

    bl_idname = __package__

    python_path: StringProperty(
        name="DA3 Python",
        description="Python executable (or environment folder) of an environment with da3-nerfstudio installed",
        subtype="FILE_PATH",
    )
    extra_args: StringProperty(name="Extra Arguments", description="Appended to the da3-process-data command")

    def draw(self, context: bpy.types.Context) -> None:
        self.layout.prop(self, "python_path")
        self.layout.prop(self, "extra_args")


class DA3_PT_sidebar(bpy.types.Panel):
    """Import, adjust, export and run DA3 from the 3D viewport's sidebar."""

    bl_idname = "DA3_PT_sidebar"
    bl_label = "Depth Anything 3"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "DA3"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        column = layout.column(align=True)
        column.label(text="Import")
        for op in operators.IMPORT_OPERATORS:
            column.operator(op.bl_idname, text=op.bl_label.replace("Import ", ""), icon="IMPORT")
        obj = context.active_object
        if obj is not None:
            box = layout.box()
            if build_points.MODIFIER_NAME in obj.modifiers:
                mod = obj.modifiers[build_points.MODIFIER_NAME]
                draw_modifier_input(box, mod, build_points.THRESHOLD_INPUT)
                draw_modifier_input(box, mod, build_points.RADIUS_INPUT)
                draw_modifier_input(box, mod, SOLID_COLOURS_INPUT)
            if build_splats.MODIFIER_NAME in obj.modifiers:
                mod = obj.modifiers[build_splats.MODIFIER_NAME]
                draw_modifier_input(box, mod, build_splats.MIN_OPACITY_INPUT)
                draw_modifier_input(box, mod, SOLID_COLOURS_INPUT)
            if obj.get(importers.NPZ_KEY):
                box.operator(operators.DA3_OT_backproject_depth.bl_idname, icon="POINTCLOUD_DATA")
        layout.operator(operators.DA3_OT_export_cameras.bl_idname, icon="EXPORT")
        self._draw_runner(context, layout.box())

    @staticmethod
    def _draw_runner(context: bpy.types.Context, box: bpy.types.UILayout) -> None:
        state = context.scene.da3
        box.label(text="Run DA3")
        box.prop(state, "input_path")
        box.prop(state, "output_dir")
        if state.running:
            row = box.row()
            if hasattr(row, "progress"):
                row.progress(factor=state.progress, text=f"{state.progress:.0%}")
            else:
                row.label(text=f"{state.progress:.0%}")
            row.operator(run_da3.DA3_OT_cancel_process.bl_idname, text="", icon="CANCEL")
        else:
            box.operator(run_da3.DA3_OT_run_process.bl_idname, icon="PLAY")
        if state.status:
            box.label(text=state.status, icon="ERROR" if state.failed else "INFO")


def menu_import(self: bpy.types.Menu, context: bpy.types.Context) -> None:
    for op in operators.IMPORT_OPERATORS:
        self.layout.operator(op.bl_idname, text=f"DA3: {op.bl_label.replace('Import ', '')}")


def menu_export(self: bpy.types.Menu, context: bpy.types.Context) -> None:
    self.layout.operator(operators.DA3_OT_export_cameras.bl_idname, text="DA3: Cameras (nerfstudio .json)")


CLASSES = (DA3SceneState, DA3Preferences, DA3_PT_sidebar)
