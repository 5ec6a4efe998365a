"""Point-cloud objects with colour and confidence attributes, filtered and sized by geometry nodes.

The carrier is a real POINTCLOUD object where Blender can make one from Python (5.3+: ``resize``;
4.5-5.2: converting a vertex-only mesh) and a vertex-only mesh otherwise (4.2-4.4). A geometry-nodes
modifier turns either into render points and exposes the confidence threshold and point radius, so
both stay adjustable after import.
"""

from __future__ import annotations

import bpy
import numpy as np

from .build_common import has_native_point_cloud_resize, set_attribute, srgb_to_linear
from .scene_data import PointData

POINTS_GROUP = "DA3 Points"
POINTS_MATERIAL = "DA3 Points"
MODIFIER_NAME = "DA3 Points"
COLOR_ATTRIBUTE = "Col"
CONF_ATTRIBUTE = "conf"
THRESHOLD_INPUT = "Confidence Threshold"
RADIUS_INPUT = "Point Radius"
_GROUP_VERSION = 1


def new_point_object(
    name: str,
    positions: np.ndarray,
    attributes: list[tuple[str, str, np.ndarray]],
    collection: bpy.types.Collection,
) -> bpy.types.Object:
    """An object holding ``positions`` plus point attributes, all written with foreach_set."""
    n = len(positions)
    if has_native_point_cloud_resize():
        data = bpy.data.pointclouds.new(name)
        data.resize(n)
    else:
        data = bpy.data.meshes.new(name)
        data.vertices.add(n)
    set_attribute(data, "position", "FLOAT_VECTOR", positions)
    for attr_name, kind, values in attributes:
        set_attribute(data, attr_name, kind, values)
    obj = bpy.data.objects.new(name, data)
    collection.objects.link(obj)
    if isinstance(data, bpy.types.Mesh) and bpy.app.version >= (4, 5, 0):
        _convert_to_point_cloud(obj)
    return obj


def _convert_to_point_cloud(obj: bpy.types.Object) -> None:
    """Mesh -> POINTCLOUD in place (4.5-5.2 have no Python way to size a point cloud); keeps attributes."""
    mesh = obj.data
    override = {"active_object": obj, "object": obj, "selected_objects": [obj], "selected_editable_objects": [obj]}
    with bpy.context.temp_override(**override):
        result = bpy.ops.object.convert(target="POINTCLOUD")
    if "FINISHED" not in result or obj.type != "POINTCLOUD":
        return  # stay a vertex mesh; the geometry nodes handle both carriers
    selection = obj.data.attributes.get(".select_vert")
    if selection is not None:
        obj.data.attributes.remove(selection)
    if mesh.users == 0:
        bpy.data.meshes.remove(mesh)


def set_active_color(data: bpy.types.ID, name: str) -> None:
    """Make ``name`` the colour Solid view's Attribute colouring shows."""
    colors = data.color_attributes
    attr = colors.get(name)
    if attr is None:
        return
    if hasattr(colors, "active_color"):
        colors.active_color = attr
    else:
        colors.active = attr
    if hasattr(colors, "render_color_index"):
        colors.render_color_index = colors.find(name)


def _link(tree: bpy.types.NodeTree, out_socket: bpy.types.NodeSocket, in_socket: bpy.types.NodeSocket) -> None:
    tree.links.new(out_socket, in_socket)


def points_node_group() -> bpy.types.NodeTree:
    """Geometry nodes: mesh or points -> points, drop low confidence, set radius and material."""
    group = bpy.data.node_groups.get(POINTS_GROUP)
    if group is not None and group.get("da3_version") == _GROUP_VERSION:
        return group
    group = bpy.data.node_groups.new(POINTS_GROUP, "GeometryNodeTree")
    group["da3_version"] = _GROUP_VERSION
    iface = group.interface
    iface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    threshold = iface.new_socket(THRESHOLD_INPUT, in_out="INPUT", socket_type="NodeSocketFloat")
    threshold.default_value = 0.0
    radius = iface.new_socket(RADIUS_INPUT, in_out="INPUT", socket_type="NodeSocketFloat")
    radius.default_value, radius.min_value = 0.005, 0.0
    iface.new_socket("Material", in_out="INPUT", socket_type="NodeSocketMaterial")
    iface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    nodes = group.nodes
    g_in, g_out = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    to_points = nodes.new("GeometryNodeMeshToPoints")
    separate = nodes.new("GeometryNodeSeparateComponents")
    join = nodes.new("GeometryNodeJoinGeometry")
    conf = nodes.new("GeometryNodeInputNamedAttribute")
    conf.data_type = "FLOAT"
    conf.inputs["Name"].default_value = CONF_ATTRIBUTE
    below = nodes.new("FunctionNodeCompare")
    below.data_type, below.operation = "FLOAT", "LESS_THAN"
    both = nodes.new("FunctionNodeBooleanMath")
    both.operation = "AND"
    delete = nodes.new("GeometryNodeDeleteGeometry")
    delete.domain = "POINT"
    set_radius = nodes.new("GeometryNodeSetPointRadius")
    set_material = nodes.new("GeometryNodeSetMaterial")
    # A mesh carrier becomes points; a point-cloud carrier passes through Separate Components.
    _link(group, g_in.outputs[0], to_points.inputs["Mesh"])
    _link(group, g_in.outputs[0], separate.inputs[0])
    _link(group, to_points.outputs[0], join.inputs[0])
    _link(group, separate.outputs["Point Cloud"], join.inputs[0])
    _link(group, conf.outputs["Attribute"], below.inputs[0])
    _link(group, g_in.outputs[THRESHOLD_INPUT], below.inputs[1])
    _link(group, conf.outputs["Exists"], both.inputs[0])
    _link(group, below.outputs[0], both.inputs[1])
    _link(group, join.outputs[0], delete.inputs["Geometry"])
    _link(group, both.outputs[0], delete.inputs["Selection"])
    _link(group, delete.outputs[0], set_radius.inputs["Points"])
    _link(group, g_in.outputs[RADIUS_INPUT], set_radius.inputs["Radius"])
    _link(group, set_radius.outputs[0], set_material.inputs["Geometry"])
    _link(group, g_in.outputs["Material"], set_material.inputs["Material"])
    _link(group, set_material.outputs[0], g_out.inputs[0])
    return group


def points_material() -> bpy.types.Material:
    """Emission from the point colour: photo colours appear unlit, as captured."""
    mat = bpy.data.materials.get(POINTS_MATERIAL)
    if mat is not None:
        return mat
    mat = bpy.data.materials.new(POINTS_MATERIAL)
    if bpy.app.version < (5, 0, 0):
        mat.use_nodes = True
    tree = mat.node_tree
    tree.nodes.clear()
    attr = tree.nodes.new("ShaderNodeAttribute")
    attr.attribute_type, attr.attribute_name = "GEOMETRY", COLOR_ATTRIBUTE
    emission = tree.nodes.new("ShaderNodeEmission")
    out = tree.nodes.new("ShaderNodeOutputMaterial")
    tree.links.new(attr.outputs["Color"], emission.inputs["Color"])
    tree.links.new(emission.outputs[0], out.inputs["Surface"])
    return mat


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
    """Set a geometry-nodes modifier input by its interface name."""
    key = _input_identifier(mod, name)
    if _uses_input_structs(mod):
        getattr(mod.properties.inputs, key).value = value
    else:
        mod[key] = value


def draw_modifier_input(layout: bpy.types.UILayout, mod: bpy.types.NodesModifier, name: str) -> None:
    """A UI field for a modifier input, so threshold and radius can be changed from the sidebar."""
    key = _input_identifier(mod, name)
    if _uses_input_structs(mod):
        layout.prop(getattr(mod.properties.inputs, key), "value", text=name)
    else:
        layout.prop(mod, f'["{key}"]', text=name)


def create_point_cloud(
    name: str,
    points: PointData,
    collection: bpy.types.Collection,
    root: bpy.types.Object,
    radius: float = 0.005,
    threshold: float = 0.0,
) -> bpy.types.Object:
    """A point-cloud object with ``Col`` (linear FLOAT_COLOR) and ``conf`` attributes under ``root``."""
    attributes = []
    if points.colors is not None:
        rgba = np.ones((len(points.positions), 4), dtype=np.float32)
        rgba[:, :3] = srgb_to_linear(points.colors)
        attributes.append((COLOR_ATTRIBUTE, "FLOAT_COLOR", rgba))
    if points.confidence is not None:
        attributes.append((CONF_ATTRIBUTE, "FLOAT", points.confidence))
    obj = new_point_object(name, points.positions, attributes, collection)
    obj.parent = root
    if points.colors is not None:
        set_active_color(obj.data, COLOR_ATTRIBUTE)
    mat = points_material()
    obj.data.materials.append(mat)
    mod = obj.modifiers.new(MODIFIER_NAME, "NODES")
    mod.node_group = points_node_group()
    set_modifier_input(mod, RADIUS_INPUT, float(radius))
    set_modifier_input(mod, THRESHOLD_INPUT, float(threshold))
    set_modifier_input(mod, "Material", mat)
    return obj


def default_radius(positions: np.ndarray) -> float:
    """A point radius of ~0.1% of the cloud's extent, robust to outliers."""
    lo, hi = np.percentile(positions, [2, 98], axis=0)
    extent = float(np.max(hi - lo))
    return max(extent * 1e-3, 1e-6)
