"""Gaussian splats: native GAUSSIAN_SPLAT point clouds on Blender 5.3+, ellipsoids on 4.2-5.2.

The ellipsoid path instances an ico sphere per splat (geometry nodes), scaled to ``EXTENT_SIGMA`` standard
deviations along the splat axes. Up to ``SOLID_COLOURS_MAX_SPLATS`` splats the viewport realises the
instances ("Solid Colours", switchable in the DA3 panel) so that Solid view shows their colours; final
renders, and the viewport above that count, keep instances, which Cycles and EEVEE draw cheaply but Solid
view draws in one colour. Its material
fades alpha with a Gaussian in the silhouette radius: on a unit sphere seen along I, a surface point with
normal N lies at projected radius sqrt(1 - (N.I)^2), so alpha = opacity * exp(-0.5 k^2 (1 - (N.I)^2)).
"""

from __future__ import annotations

import bpy
import numpy as np

from .build_common import (
    COLOR_ATTRIBUTE,
    SOLID_COLOURS_INPUT,
    has_native_point_cloud_resize,
    new_point_object,
    node_material,
    set_active_color,
    set_attribute,
    set_modifier_input,
    shape_object,
    srgb_to_linear,
    tag_datablock,
    tagged_datablock,
)
from .scene_data import SplatData

SH_C0 = 0.28209479177387814  # Y_0^0: 3DGS colour = SH_C0 * f_dc + 0.5 (before any sRGB decoding)
EXTENT_SIGMA = 3.0
SPLAT_GROUP = "DA3 Splat Ellipsoids"
SPLAT_SHAPE = "DA3 Splat Shape"
SPLAT_MATERIAL = "DA3 Splat"
MODIFIER_NAME = "DA3 Splats"
MIN_OPACITY_INPUT = "Min Opacity"
_GROUP_VERSION = 5
_MATERIAL_VERSION = 2
#: Realised ellipsoids have 42 vertices each: 50k splats make a 2.1M-vertex mesh, about the size of the
#: 300k realised point tetrahedra (build_points.SOLID_COLOURS_MAX_POINTS).
SOLID_COLOURS_MAX_SPLATS = 50_000
# Raw SH the ellipsoids do not draw: dropped inside the node tree before any node copies the points, which
# halves the evaluation time of an SH3 cloud (the object keeps them).
_UNDRAWN_ATTRIBUTES = (("WILDCARD", "sh_rest_*"), ("EXACT", "f_dc"))


def activated(splats: SplatData) -> dict[str, np.ndarray]:
    """Rendering-space values: exp(scale), normalised wxyz rotation, sigmoid(opacity), base colour."""
    rot = splats.rotations.astype(np.float32)
    norm = np.linalg.norm(rot, axis=1, keepdims=True)
    rot = np.where(norm > 0, rot / np.maximum(norm, 1e-12), np.array([1, 0, 0, 0], np.float32))
    opacity = (1.0 / (1.0 + np.exp(-splats.opacity_logit.astype(np.float64)))).astype(np.float32)
    return {
        "scale": np.exp(splats.scales_log.astype(np.float32)),
        "rotation": rot,
        "opacity": opacity,
        "color_srgb": np.clip(SH_C0 * splats.sh_dc + 0.5, 0.0, 1.0).astype(np.float32),
    }


def create_splats(
    name: str, splats: SplatData, collection: bpy.types.Collection, root: bpy.types.Object
) -> bpy.types.Object:
    """Splat object under ``root``: native on 5.3+, otherwise geometry-nodes ellipsoids."""
    act = activated(splats)
    if has_native_point_cloud_resize():
        obj = _native(name, splats, act, collection)
    else:
        obj = _ellipsoids(name, splats, act, collection)
    obj.parent = root
    return obj


def _native(name: str, splats: SplatData, act: dict, collection: bpy.types.Collection) -> bpy.types.Object:
    """Blender 5.3 layout: ``radiance:base`` = (f_dc, sigmoid(opacity)), activated scale, unit wxyz
    ``rotation`` and ``radiance:sh_k`` = (R, G, B) of rest coefficient k."""
    data = bpy.data.pointclouds.new(name)
    data.resize(len(splats.means))
    data.type = "GAUSSIAN_SPLAT"
    set_attribute(data, "position", "FLOAT_VECTOR", splats.means)
    set_attribute(data, "radiance:base", "FLOAT4", np.concatenate([splats.sh_dc, act["opacity"][:, None]], 1))
    set_attribute(data, "scale", "FLOAT_VECTOR", act["scale"])
    set_attribute(data, "rotation", "QUATERNION", act["rotation"])
    for k in range(splats.sh_rest.shape[1]):
        set_attribute(data, f"radiance:sh_{k}", "FLOAT_VECTOR", splats.sh_rest[:, k])
    obj = bpy.data.objects.new(name, data)
    collection.objects.link(obj)
    return obj


def _ellipsoids(name: str, splats: SplatData, act: dict, collection: bpy.types.Collection) -> bpy.types.Object:
    """Points carrying activated values (what the material reads) and raw SH (for later upgrades)."""
    n = len(splats.means)
    rgba = np.ones((n, 4), dtype=np.float32)
    rgba[:, :3] = srgb_to_linear(act["color_srgb"])
    attributes = [
        ("scale", "FLOAT_VECTOR", act["scale"]),
        ("rotation", "QUATERNION", act["rotation"]),
        ("opacity", "FLOAT", act["opacity"]),
        (COLOR_ATTRIBUTE, "FLOAT_COLOR", rgba),
        ("f_dc", "FLOAT_VECTOR", splats.sh_dc),
    ]
    attributes += [(f"sh_rest_{k}", "FLOAT_VECTOR", splats.sh_rest[:, k]) for k in range(splats.sh_rest.shape[1])]
    obj = new_point_object(name, splats.means, attributes, collection)
    set_active_color(obj.data, COLOR_ATTRIBUTE)
    mat = splat_material()
    obj.data.materials.append(mat)
    mod = obj.modifiers.new(MODIFIER_NAME, "NODES")
    mod.node_group = splat_node_group()
    set_modifier_input(mod, "Material", mat)
    set_modifier_input(mod, SOLID_COLOURS_INPUT, n <= SOLID_COLOURS_MAX_SPLATS)
    return obj


def _build_ico_sphere(mesh: bpy.types.Mesh) -> None:
    """Unit ico sphere, 2 subdivisions (42 vertices), flat faces as the node tree's own sphere had."""
    import bmesh

    bm = bmesh.new()
    bmesh.ops.create_icosphere(bm, subdivisions=2, radius=1.0)
    bm.to_mesh(mesh)
    bm.free()


def splat_shape_object() -> bpy.types.Object:
    """The unit ico sphere instanced on every splat (an object, so realised splats keep the colour names)."""
    return shape_object(SPLAT_SHAPE, 1, _build_ico_sphere, COLOR_ATTRIBUTE)


def splat_node_group() -> bpy.types.NodeTree:
    """Geometry nodes: vertices without raw SH -> ico-sphere instances rotated by ``rotation``, scaled by
    k * ``scale``, realised in the viewport when the ``Solid Colours`` input is on."""
    group = tagged_datablock(bpy.data.node_groups, SPLAT_GROUP, _GROUP_VERSION)
    if group is not None:
        return group
    group = bpy.data.node_groups.new(SPLAT_GROUP, "GeometryNodeTree")
    tag_datablock(group, SPLAT_GROUP, _GROUP_VERSION)
    iface = group.interface
    iface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    min_opacity = iface.new_socket(MIN_OPACITY_INPUT, in_out="INPUT", socket_type="NodeSocketFloat")
    min_opacity.default_value, min_opacity.min_value, min_opacity.max_value = 0.02, 0.0, 1.0
    solid = iface.new_socket(SOLID_COLOURS_INPUT, in_out="INPUT", socket_type="NodeSocketBool")
    solid.description = "Realise the ellipsoids in the viewport, so Solid view shows their colours"
    iface.new_socket("Material", in_out="INPUT", socket_type="NodeSocketMaterial")
    iface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    nodes, link = group.nodes, group.links.new
    g_in, g_out = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    to_points = nodes.new("GeometryNodeMeshToPoints")
    opacity = nodes.new("GeometryNodeInputNamedAttribute")
    opacity.data_type = "FLOAT"
    opacity.inputs["Name"].default_value = "opacity"
    faint = nodes.new("FunctionNodeCompare")
    faint.data_type, faint.operation = "FLOAT", "LESS_THAN"
    delete = nodes.new("GeometryNodeDeleteGeometry")
    delete.domain = "POINT"
    sphere = nodes.new("GeometryNodeObjectInfo")
    sphere.inputs["Object"].default_value = splat_shape_object()
    set_material = nodes.new("GeometryNodeSetMaterial")
    rotation = nodes.new("GeometryNodeInputNamedAttribute")
    rotation.data_type = "QUATERNION"
    rotation.inputs["Name"].default_value = "rotation"
    scale = nodes.new("GeometryNodeInputNamedAttribute")
    scale.data_type = "FLOAT_VECTOR"
    scale.inputs["Name"].default_value = "scale"
    extent = nodes.new("ShaderNodeVectorMath")
    extent.operation = "SCALE"
    extent.inputs["Scale"].default_value = EXTENT_SIGMA
    instance = nodes.new("GeometryNodeInstanceOnPoints")
    realize = nodes.new("GeometryNodeRealizeInstances")
    # Only the viewport realises: final renders keep instances, which Cycles traces far faster (a 160x120
    # Cycles preview of 38k realised splats took 24 s instead of 1.6 s).
    viewport = nodes.new("GeometryNodeIsViewport")
    in_viewport = nodes.new("FunctionNodeBooleanMath")
    in_viewport.operation = "AND"
    switch = nodes.new("GeometryNodeSwitch")
    switch.input_type = "GEOMETRY"
    geometry = g_in.outputs[0]
    for mode, pattern in _UNDRAWN_ATTRIBUTES:
        remove = nodes.new("GeometryNodeRemoveAttribute")
        remove.pattern_mode = mode
        remove.inputs["Name"].default_value = pattern
        link(geometry, remove.inputs["Geometry"])
        geometry = remove.outputs["Geometry"]
    link(geometry, to_points.inputs["Mesh"])
    link(opacity.outputs["Attribute"], faint.inputs[0])
    link(g_in.outputs[MIN_OPACITY_INPUT], faint.inputs[1])
    link(to_points.outputs[0], delete.inputs["Geometry"])
    link(faint.outputs[0], delete.inputs["Selection"])
    link(sphere.outputs["Geometry"], set_material.inputs["Geometry"])
    link(g_in.outputs["Material"], set_material.inputs["Material"])
    link(scale.outputs["Attribute"], extent.inputs[0])
    link(delete.outputs[0], instance.inputs["Points"])
    link(set_material.outputs[0], instance.inputs["Instance"])
    link(rotation.outputs["Attribute"], instance.inputs["Rotation"])
    link(extent.outputs["Vector"], instance.inputs["Scale"])
    link(instance.outputs[0], realize.inputs[0])
    link(g_in.outputs[SOLID_COLOURS_INPUT], in_viewport.inputs[0])
    link(viewport.outputs[0], in_viewport.inputs[1])
    link(in_viewport.outputs[0], switch.inputs["Switch"])
    link(instance.outputs[0], switch.inputs["False"])
    link(realize.outputs[0], switch.inputs["True"])
    link(switch.outputs[0], g_out.inputs[0])
    return group


def splat_material() -> bpy.types.Material:
    """Emission of the splat colour, mixed with transparency by opacity times the Gaussian falloff.

    Per-splat values come from the instancer (the point the ellipsoid was instanced on) or, once realised,
    from the ellipsoid's own vertices: each lookup finds nothing (zero) where the other finds the value, so
    their sum serves both. Back faces are transparent so each splat is counted once.
    """
    mat = tagged_datablock(bpy.data.materials, SPLAT_MATERIAL, _MATERIAL_VERSION)
    if mat is not None:
        return mat
    mat = node_material(SPLAT_MATERIAL)
    tag_datablock(mat, SPLAT_MATERIAL, _MATERIAL_VERSION)
    mat.use_backface_culling = True
    if "surface_render_method" in mat.bl_rna.properties:
        mat.surface_render_method = "DITHERED"
    else:
        mat.blend_method = "HASHED"
    tree = mat.node_tree
    nodes, link = tree.nodes, tree.links.new

    def math(op: str, a: object, b: object = None) -> bpy.types.Node:
        node = nodes.new("ShaderNodeMath")
        node.operation = op
        for socket, value in zip(node.inputs, (a, b), strict=False):
            if isinstance(value, bpy.types.NodeSocket):
                link(value, socket)
            elif value is not None:
                socket.default_value = value
        return node

    def attribute(name: str, output: str, add: bpy.types.Node) -> bpy.types.NodeSocket:
        """``name`` from the instancer plus ``name`` from the geometry (one of them is zero)."""
        for slot, kind in enumerate(("INSTANCER", "GEOMETRY")):
            node = nodes.new("ShaderNodeAttribute")
            node.attribute_type, node.attribute_name = kind, name
            link(node.outputs[output], add.inputs[slot])
        return add.outputs[0]

    colour_sum = nodes.new("ShaderNodeVectorMath")
    colour_sum.operation = "ADD"
    color = attribute(COLOR_ATTRIBUTE, "Vector", colour_sum)
    opacity = attribute("opacity", "Fac", math("ADD", None))
    geometry = nodes.new("ShaderNodeNewGeometry")
    facing = nodes.new("ShaderNodeVectorMath")
    facing.operation = "DOT_PRODUCT"
    link(geometry.outputs["Normal"], facing.inputs[0])
    link(geometry.outputs["Incoming"], facing.inputs[1])
    cos2 = math("MULTIPLY", facing.outputs["Value"], facing.outputs["Value"])
    radius2 = math("SUBTRACT", 1.0, cos2.outputs[0])
    falloff = math("EXPONENT", math("MULTIPLY", radius2.outputs[0], -0.5 * EXTENT_SIGMA**2).outputs[0])
    front = math("SUBTRACT", 1.0, geometry.outputs["Backfacing"])
    alpha = math("MULTIPLY", math("MULTIPLY", falloff.outputs[0], opacity).outputs[0], front.outputs[0])
    emission = nodes.new("ShaderNodeEmission")
    link(color, emission.inputs["Color"])
    transparent = nodes.new("ShaderNodeBsdfTransparent")
    mix = nodes.new("ShaderNodeMixShader")
    link(alpha.outputs[0], mix.inputs["Fac"])
    link(transparent.outputs[0], mix.inputs[1])
    link(emission.outputs[0], mix.inputs[2])
    out = nodes.new("ShaderNodeOutputMaterial")
    link(mix.outputs[0], out.inputs["Surface"])
    return mat
