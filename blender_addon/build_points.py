"""Point-cloud objects with colour and confidence attributes, filtered and sized by geometry nodes.

The carrier is a vertex-only mesh on every Blender version (editable in Edit Mode, writable by the PLY
exporter). A geometry-nodes modifier drops low-confidence points and turns the rest into render
geometry, so the confidence threshold and point radius stay adjustable after import.

Solid view (Workbench) draws point-cloud geometry in a single colour: it ignores colour attributes on
points in 4.5 and 5.3 alike. With "Solid Colours" on each point is therefore realised as a small
tetrahedron, a mesh whose point-domain ``Col`` Workbench's Attribute colouring shows; off, the points stay
point-cloud primitives (round in Cycles/EEVEE, cheaper, but uncoloured in Solid view).

Realising costs about 1.5-2 s per million points on 2 cores, at import and again at every threshold or
radius change; primitives cost about 0.07 s. Solid Colours therefore starts on only up to
``SOLID_COLOURS_MAX_POINTS`` (a 300k cloud imports in 0.4-0.8 s with it on a loaded 2-core machine),
and importers say how to turn it on above. Faster ways to give Workbench a coloured mesh were measured
and rejected: a tetrahedron mesh built in numpy (about 1 s to fill 4M vertices and 4M faces through
foreach_set, before any reading, and the carrier would stop being an editable vertex-only cloud),
extruding the vertices into boxes (1.1-1.8 s) and Duplicate Elements of a tetrahedron (5-25 s).
"""

from __future__ import annotations

import bpy
import numpy as np

from .build_common import (
    COLOR_ATTRIBUTE,
    SOLID_COLOURS_INPUT,
    get_modifier_input,
    has_point_colours,
    new_point_object,
    node_material,
    set_active_color,
    set_modifier_input,
    shape_object,
    srgb_to_linear,
    tag_datablock,
    tagged_datablock,
)
from .scene_data import PointData

POINTS_GROUP = "DA3 Points"
POINTS_MATERIAL = "DA3 Points"
POINT_SHAPE = "DA3 Point Shape"
MODIFIER_NAME = "DA3 Points"
CONF_ATTRIBUTE = "conf"
THRESHOLD_INPUT = "Confidence Threshold"
RADIUS_INPUT = "Point Radius"
SOLID_COLOURS_MAX_POINTS = 300_000
_GROUP_VERSION = 2
_SHAPE_VERSION = 1

# A regular tetrahedron whose edge midpoints lie on the unit sphere (midradius 1): scaled by the point
# radius it spans about the same screen area as a round point of that radius. Faces wind outwards.
_TETRA_VERTICES = ((1.0, 1.0, 1.0), (1.0, -1.0, -1.0), (-1.0, 1.0, -1.0), (-1.0, -1.0, 1.0))
_TETRA_FACES = ((0, 1, 2), (0, 3, 1), (0, 2, 3), (1, 3, 2))


def point_shape_object() -> bpy.types.Object:
    """The unit tetrahedron instanced on every point (see :func:`build_common.shape_object` for why an object)."""
    return shape_object(
        POINT_SHAPE, _SHAPE_VERSION, lambda mesh: mesh.from_pydata(_TETRA_VERTICES, [], _TETRA_FACES), COLOR_ATTRIBUTE
    )


def points_node_group() -> bpy.types.NodeTree:
    """Geometry nodes: vertices -> points, drop low confidence, then tetrahedra or sized points, material."""
    group = tagged_datablock(bpy.data.node_groups, POINTS_GROUP, _GROUP_VERSION)
    if group is not None:
        return group
    group = bpy.data.node_groups.new(POINTS_GROUP, "GeometryNodeTree")
    tag_datablock(group, POINTS_GROUP, _GROUP_VERSION)
    iface = group.interface
    iface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    threshold = iface.new_socket(THRESHOLD_INPUT, in_out="INPUT", socket_type="NodeSocketFloat")
    threshold.default_value = 0.0
    radius = iface.new_socket(RADIUS_INPUT, in_out="INPUT", socket_type="NodeSocketFloat")
    radius.default_value, radius.min_value = 0.005, 0.0
    solid = iface.new_socket(SOLID_COLOURS_INPUT, in_out="INPUT", socket_type="NodeSocketBool")
    solid.default_value = True
    solid.description = "Points as small meshes, so Solid view shows their colour (off: point primitives)"
    iface.new_socket("Material", in_out="INPUT", socket_type="NodeSocketMaterial")
    iface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    nodes, link = group.nodes, group.links.new
    g_in, g_out = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    to_points = nodes.new("GeometryNodeMeshToPoints")
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
    shape = nodes.new("GeometryNodeObjectInfo")
    shape.inputs["Object"].default_value = point_shape_object()
    instance = nodes.new("GeometryNodeInstanceOnPoints")
    realize = nodes.new("GeometryNodeRealizeInstances")
    switch = nodes.new("GeometryNodeSwitch")
    switch.input_type = "GEOMETRY"
    set_material = nodes.new("GeometryNodeSetMaterial")
    link(g_in.outputs[0], to_points.inputs["Mesh"])
    link(conf.outputs["Attribute"], below.inputs[0])
    link(g_in.outputs[THRESHOLD_INPUT], below.inputs[1])
    link(conf.outputs["Exists"], both.inputs[0])
    link(below.outputs[0], both.inputs[1])
    link(to_points.outputs[0], delete.inputs["Geometry"])
    link(both.outputs[0], delete.inputs["Selection"])
    link(delete.outputs[0], set_radius.inputs["Points"])
    link(g_in.outputs[RADIUS_INPUT], set_radius.inputs["Radius"])
    link(delete.outputs[0], instance.inputs["Points"])
    link(shape.outputs["Geometry"], instance.inputs["Instance"])
    link(g_in.outputs[RADIUS_INPUT], instance.inputs["Scale"])
    link(instance.outputs[0], realize.inputs[0])
    link(g_in.outputs[SOLID_COLOURS_INPUT], switch.inputs["Switch"])
    link(set_radius.outputs[0], switch.inputs["False"])
    link(realize.outputs[0], switch.inputs["True"])
    link(switch.outputs[0], set_material.inputs["Geometry"])
    link(g_in.outputs["Material"], set_material.inputs["Material"])
    link(set_material.outputs[0], g_out.inputs[0])
    return group


def points_material() -> bpy.types.Material:
    """Emission from the point colour: photo colours appear unlit, as captured."""
    mat = tagged_datablock(bpy.data.materials, POINTS_MATERIAL, 1)
    if mat is not None:
        return mat
    mat = node_material(POINTS_MATERIAL)
    tag_datablock(mat, POINTS_MATERIAL, 1)
    tree = mat.node_tree
    attr = tree.nodes.new("ShaderNodeAttribute")
    attr.attribute_type, attr.attribute_name = "GEOMETRY", COLOR_ATTRIBUTE
    emission = tree.nodes.new("ShaderNodeEmission")
    out = tree.nodes.new("ShaderNodeOutputMaterial")
    tree.links.new(attr.outputs["Color"], emission.inputs["Color"])
    tree.links.new(emission.outputs[0], out.inputs["Surface"])
    return mat


def solid_colours_by_default(count: int) -> bool:
    """Whether a cloud of ``count`` points starts with Solid Colours: only while realising stays quick."""
    return count <= SOLID_COLOURS_MAX_POINTS


def solid_colours_note(obj: bpy.types.Object) -> str | None:
    """The info line for a coloured cloud that starts without Solid Colours, saying how to turn it on."""
    mod = obj.modifiers.get(MODIFIER_NAME)
    if mod is None or not has_point_colours(obj, MODIFIER_NAME) or get_modifier_input(mod, SOLID_COLOURS_INPUT):
        return None
    return (
        f"{obj.name}: {len(obj.data.vertices):,} points, more than {SOLID_COLOURS_MAX_POINTS:,}, so Solid "
        f"Colours starts off to keep updates fast; turn it on in Sidebar > DA3 to see point colours in Solid view"
    )


def create_point_cloud(
    name: str,
    points: PointData,
    collection: bpy.types.Collection,
    root: bpy.types.Object,
    radius: float = 0.005,
    threshold: float = 0.0,
    solid_colours: bool | None = None,
) -> bpy.types.Object:
    """A point-cloud object with ``Col`` (linear FLOAT_COLOR) and ``conf`` attributes under ``root``.

    ``solid_colours`` starts the modifier with tetrahedra (colours in Solid view) rather than point
    primitives; None decides by point count (:func:`solid_colours_by_default`).
    """
    if solid_colours is None:
        solid_colours = solid_colours_by_default(len(points.positions))
    attributes = []
    if points.colors is not None:
        rgba = np.ones((len(points.positions), 4), dtype=np.float32)
        rgba[:, :3] = srgb_to_linear(points.colors)
        attributes.append((COLOR_ATTRIBUTE, "FLOAT_COLOR", rgba))
    if points.confidence is not None:
        attributes.append((CONF_ATTRIBUTE, "FLOAT", points.confidence))
    obj = new_point_object(name, points.positions, attributes, collection)
    obj.parent = root
    set_active_color(obj.data, COLOR_ATTRIBUTE)
    mat = points_material()
    obj.data.materials.append(mat)
    mod = obj.modifiers.new(MODIFIER_NAME, "NODES")
    mod.node_group = points_node_group()
    set_modifier_input(mod, RADIUS_INPUT, float(radius))
    set_modifier_input(mod, THRESHOLD_INPUT, float(threshold))
    set_modifier_input(mod, "Material", mat)
    # Without colours there is nothing for Solid view to show: keep the cheaper point primitives.
    set_modifier_input(mod, SOLID_COLOURS_INPUT, solid_colours and points.colors is not None)
    return obj


def default_radius(positions: np.ndarray) -> float:
    """A point radius of ~0.1% of the cloud's extent, robust to outliers."""
    lo, hi = np.percentile(positions, [2, 98], axis=0)
    extent = float(np.max(hi - lo))
    return max(extent * 1e-3, 1e-6)
