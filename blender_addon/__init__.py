"""Depth Anything 3 importer for Blender: cameras, depth, point clouds and Gaussian splats.

bpy + numpy only (never torch or da3_nerfstudio) and relative imports only, because Blender loads an
extension as ``bl_ext.<repository>.da3_blender``.
"""

from __future__ import annotations

import bpy

from . import operators, run_da3, ui

_CLASSES = (*ui.CLASSES, *operators.CLASSES, *run_da3.CLASSES)


def register() -> None:
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.da3 = bpy.props.PointerProperty(type=ui.DA3SceneState)
    bpy.types.TOPBAR_MT_file_import.append(ui.menu_import)
    bpy.types.TOPBAR_MT_file_export.append(ui.menu_export)


def unregister() -> None:
    run_da3.stop_all_jobs()
    bpy.types.TOPBAR_MT_file_export.remove(ui.menu_export)
    bpy.types.TOPBAR_MT_file_import.remove(ui.menu_import)
    del bpy.types.Scene.da3
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
