"""Shared Blender-side helpers: the per-import root, bulk attribute writes, feature switches."""

from __future__ import annotations

from collections.abc import Callable

import bpy
import numpy as np
from mathutils import Matrix

# Rx(-90 deg): OpenCV-style worlds (y down, z forward, as DA3 and COLMAP produce) -> Blender Z-up.
Z_UP = Matrix(((1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, -1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)))
ROOT_TAG = "da3_root"
# Names shared by the point and splat carriers: their colour attribute and the modifier input that realises
# geometry so Solid view shows it.
COLOR_ATTRIBUTE = "Col"
SOLID_COLOURS_INPUT = "Solid Colours"

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


def new_point_object(
    name: str,
    positions: np.ndarray,
    attributes: list[tuple[str, str, np.ndarray]],
    collection: bpy.types.Collection,
) -> bpy.types.Object:
    """A vertex-only mesh object holding ``positions`` plus point attributes, all written with foreach_set."""
    data = bpy.data.meshes.new(name)
    data.vertices.add(len(positions))
    set_attribute(data, "position", "FLOAT_VECTOR", positions)
    for attr_name, kind, values in attributes:
        set_attribute(data, attr_name, kind, values)
    obj = bpy.data.objects.new(name, data)
    collection.objects.link(obj)
    return obj


def set_active_color(mesh: bpy.types.Mesh, name: str) -> None:
    """Make ``name`` the colour that Solid view's Attribute colouring and renders use by default."""
    colors = mesh.color_attributes
    attr = colors.get(name)
    if attr is None:
        return
    colors.active_color = attr
    colors.render_color_index = colors.find(name)


def has_point_colours(obj: bpy.types.Object, modifier: str) -> bool:
    """Whether ``obj`` is an imported point carrier (a cloud, or the splats' one, by ``modifier``) whose
    colours Solid view can show."""
    return modifier in obj.modifiers and obj.type == "MESH" and COLOR_ATTRIBUTE in obj.data.color_attributes


def show_attribute_colours(screen: bpy.types.Screen) -> int:
    """Set Solid shading of the screen's 3D viewports to Attribute colour; returns how many were set.

    Solid view colours objects by material by default, so imported point colours would stay hidden.
    """
    count = 0
    for area in screen.areas:
        if area.type == "VIEW_3D":
            area.spaces.active.shading.color_type = "VERTEX"
            count += 1
    return count


def _input_identifier(mod: bpy.types.NodesModifier, name: str) -> str:
    """Identifier of a node-group input by name (identifiers such as 'Socket_2' differ per version)."""
    for item in mod.node_group.interface.items_tree:
        if getattr(item, "in_out", None) == "INPUT" and item.name == name:
            return item.identifier
    raise KeyError(name)


def _uses_input_structs(mod: bpy.types.NodesModifier) -> bool:
    """Blender 5.x exposes modifier inputs as ``mod.properties.inputs.<id>.value``; 4.x as ID properties."""
    return "properties" in mod.bl_rna.properties


def set_modifier_input(mod: bpy.types.NodesModifier, name: str, value: object) -> None:
    """Set a geometry-nodes modifier input by its interface name, and re-evaluate the object (an ID
    property write, unlike a UI edit, tags nothing)."""
    key = _input_identifier(mod, name)
    if _uses_input_structs(mod):
        getattr(mod.properties.inputs, key).value = value
    else:
        mod[key] = value
    mod.id_data.update_tag()


def get_modifier_input(mod: bpy.types.NodesModifier, name: str) -> object:
    """A geometry-nodes modifier input's current value, by its interface name."""
    key = _input_identifier(mod, name)
    if _uses_input_structs(mod):
        return getattr(mod.properties.inputs, key).value
    return mod[key]


def draw_modifier_input(layout: bpy.types.UILayout, mod: bpy.types.NodesModifier, name: str) -> None:
    """A UI field for a modifier input, so threshold and radius can be changed from the sidebar."""
    if mod.node_group is None:
        return
    try:
        key = _input_identifier(mod, name)
    except KeyError:
        return  # a group built by an older add-on version lacks this input
    if _uses_input_structs(mod):
        layout.prop(getattr(mod.properties.inputs, key), "value", text=name)
    else:
        layout.prop(mod, f'["{key}"]', text=name)
