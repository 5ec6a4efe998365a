"""Shared Blender-side helpers: the per-import root, bulk attribute writes, feature switches."""

from __future__ import annotations

from collections.abc import Callable

import bpy
import numpy as np
from mathutils import Matrix

# Rx(-90 deg): OpenCV-style worlds (y down, z forward, as DA3 and COLMAP produce) -> Blender Z-up.
Z_UP = Matrix(((1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, -1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)))
ROOT_TAG = "da3_root"

# foreach_set key and numpy dtype per attribute type; any other dtype falls back to a per-element copy
# that is ~150x slower, so values are always converted to exactly these first.
_ATTRIBUTE_KEYS = {
    "FLOAT": ("value", np.float32),
    "INT": ("value", np.int32),
    "BOOLEAN": ("value", np.bool_),
    "QUATERNION": ("value", np.float32),
    "FLOAT_VECTOR": ("vector", np.float32),
    "FLOAT2": ("vector", np.float32),
    "FLOAT4": ("vector", np.float32),
    "FLOAT_COLOR": ("color", np.float32),
}


def has_native_point_cloud_resize() -> bool:
    """Whether a PointCloud can be sized from Python, which arrived with native Gaussian splats (5.3).

    Checked by feature, not version number, like every switch in the add-on.
    """
    point_cloud = getattr(bpy.types, "PointCloud", None)
    return point_cloud is not None and "resize" in point_cloud.bl_rna.functions


def node_material(name: str) -> bpy.types.Material:
    """A new material with an empty node tree.

    Older Blender creates materials without a tree until ``use_nodes`` is set; 5.x always has one and
    deprecates the flag, so it is only touched when the tree is missing.
    """
    mat = bpy.data.materials.new(name)
    if mat.node_tree is None:
        mat.use_nodes = True
    mat.node_tree.nodes.clear()
    return mat


def tagged_datablock(collection: bpy.types.bpy_prop_collection, tag: str, version: int) -> bpy.types.ID | None:
    """The datablock an earlier import built as ``tag`` at ``version`` (names can gain .001 suffixes)."""
    return next((d for d in collection if d.get("da3_tag") == tag and d.get("da3_version") == version), None)


def tag_datablock(data: bpy.types.ID, tag: str, version: int) -> None:
    """Mark a shared datablock so later imports reuse it while its layout version matches."""
    data["da3_tag"], data["da3_version"] = tag, version


def shape_object(tag: str, version: int, build: Callable[[bpy.types.Mesh], None], colour_name: str) -> bpy.types.Object:
    """A mesh object outside any scene that geometry nodes instance on every point (built once, tagged).

    Its mesh names ``colour_name`` as active and default colour without storing it: realising instances
    copies these names from the instanced mesh, and the realised colour comes from the points. Geometry made
    inside a node tree carries no names, and Workbench (Solid view) would then draw it black or white.
    """
    obj = tagged_datablock(bpy.data.objects, tag, version)
    if obj is not None:
        return obj
    mesh = bpy.data.meshes.new(tag)
    build(mesh)
    mesh.attributes.active_color_name = colour_name
    mesh.attributes.default_color_name = colour_name
    obj = bpy.data.objects.new(tag, mesh)
    tag_datablock(obj, tag, version)
    return obj


def set_attribute(data: bpy.types.ID, name: str, kind: str, values: np.ndarray) -> bpy.types.Attribute:
    """Create (or reuse) a point-domain attribute and fill it with one memcpy-speed foreach_set."""
    key, dtype = _ATTRIBUTE_KEYS[kind]
    attr = data.attributes.get(name)
    if attr is None or attr.data_type != kind:
        if attr is not None:
            data.attributes.remove(attr)
        attr = data.attributes.new(name, kind, "POINT")
    attr.data.foreach_set(key, np.ascontiguousarray(values, dtype=dtype).reshape(-1))
    return attr


def get_attribute(data: bpy.types.ID, name: str, width: int = 1) -> np.ndarray:
    """Read a float point attribute back as an (N,) or (N, width) float32 array."""
    attr = data.attributes[name]
    key, dtype = _ATTRIBUTE_KEYS[attr.data_type]
    out = np.empty(len(attr.data) * width, dtype=dtype)
    attr.data.foreach_get(key, out)
    return out if width == 1 else out.reshape(-1, width)


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 decoding: Blender's colour attributes and shaders work in scene-linear values."""
    c = np.clip(np.asarray(srgb, dtype=np.float32), 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def new_import_root(
    scene: bpy.types.Scene, name: str, z_up: bool, source: str
) -> tuple[bpy.types.Collection, bpy.types.Object]:
    """A collection plus one root empty that parents everything an import creates.

    Moving or scaling the root moves the whole import; its matrix is the only place the Z-up
    re-orientation lives, so exports can undo it exactly.
    """
    collection = bpy.data.collections.new(name)
    scene.collection.children.link(collection)
    root = bpy.data.objects.new(name, None)
    root.empty_display_type = "ARROWS"
    root[ROOT_TAG] = True
    root["da3_source"] = source
    if z_up:
        root.matrix_world = Z_UP
    collection.objects.link(root)
    return collection, root


def adopt(obj: bpy.types.Object, collection: bpy.types.Collection, root: bpy.types.Object) -> None:
    """Link ``obj`` into the import collection under ``root`` (its local matrix is in file coordinates)."""
    collection.objects.link(obj)
    obj.parent = root


def find_root(obj: bpy.types.Object | None) -> bpy.types.Object | None:
    """The nearest ancestor created as an import root, or None."""
    while obj is not None:
        if obj.get(ROOT_TAG):
            return obj
        obj = obj.parent
    return None
