"""Point clouds, splats and depth back-projection: attribute values, geometry nodes, bad files."""

from __future__ import annotations

import bpy
import numpy as np
import plyfile
import pytest
from blender_inputs import write_predictions

from da3_nerfstudio.formats.ply import SplatData, write_point_cloud_ply, write_splat_ply

# Native Gaussian splats came with PointCloud.resize (Blender 5.3); the add-on switches on that feature.
NATIVE_SPLATS = "resize" in bpy.types.PointCloud.bl_rna.functions


def attribute(data: bpy.types.ID, name: str, key: str, width: int) -> np.ndarray:
    attr = data.attributes[name]
    out = np.empty(len(attr.data) * width, np.float32)
    attr.data.foreach_get(key, out)
    return out.reshape(-1, width) if width > 1 else out


def evaluated(obj: bpy.types.Object) -> bpy.types.Object:
    depsgraph = bpy.context.evaluated_depsgraph_get()
    depsgraph.update()
    return obj.evaluated_get(depsgraph)


def only_object(kind: tuple[str, ...] = ("POINTCLOUD", "MESH")) -> bpy.types.Object:
    objs = [o for o in bpy.context.scene.objects if o.type in kind]
    assert len(objs) == 1
    return objs[0]


def evaluated_attributes(obj: bpy.types.Object, kind: str, names: dict[str, tuple[str, int]]) -> dict[str, np.ndarray]:
    """Attributes of the non-empty ``kind`` ('MESH' or 'POINTCLOUD') geometry the modifiers of ``obj`` output.

    Geometry of another type than the carrier's appears as an instance of the evaluated object, so
    those are searched too; values are copied out while the instance structs are valid. {} if none.
    """
    depsgraph = bpy.context.evaluated_depsgraph_get()
    depsgraph.update()

    def read(candidate: bpy.types.Object) -> dict[str, np.ndarray]:
        if candidate.type != kind or not len(candidate.data.attributes["position"].data):
            return {}
        return {name: attribute(candidate.data, name, key, width) for name, (key, width) in names.items()}

    found = read(obj.evaluated_get(depsgraph))
    for inst in depsgraph.object_instances:
        if not found and inst.is_instance and inst.parent is not None and inst.parent.original == obj:
            found = read(inst.object)
    return found


def random_cloud(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n, 3)).astype(np.float32),
        rng.integers(0, 256, size=(n, 3), dtype=np.uint8),
        rng.uniform(1.0, 5.0, size=n).astype(np.float32),
    )


def test_register_unregister_cleanly(addon):
    import addon_utils

    names = [
        "import_dataset",
        "import_colmap",
        "import_predictions",
        "import_points",
        "import_splats",
        "export_cameras",
        "run_process",
        "cancel_process",
        "backproject_depth",
    ]
    for name in names:
        assert getattr(bpy.ops.da3, name).idname() == f"DA3_OT_{name}"
        assert hasattr(bpy.types, f"DA3_OT_{name}")
    assert hasattr(bpy.types, "DA3_PT_sidebar") and hasattr(bpy.types.Scene, "da3")
    assert bpy.types.DA3_PT_sidebar.bl_category == "DA3"
    addon_utils.disable("da3_blender", default_set=True)
    assert not hasattr(bpy.types, "DA3_PT_sidebar") and not hasattr(bpy.types.Scene, "da3")
    assert not any(hasattr(bpy.types, f"DA3_OT_{name}") for name in names)
    assert addon_utils.enable("da3_blender", default_set=True) is not None  # and again
    assert hasattr(bpy.types, "DA3_OT_import_points")


def test_points_from_project_writer_keep_colour_and_confidence(addon, tmp_path):
    points, colors, conf = random_cloud(5000)
    path = tmp_path / "cloud.ply"
    write_point_cloud_ply(path, points, colors, conf)
    assert bpy.ops.da3.import_points(filepath=str(path), z_up=False) == {"FINISHED"}
    obj = only_object()
    # A vertex-only mesh carrier, with Col as the colour Solid view and renders pick.
    assert obj.type == "MESH" and len(obj.data.edges) == len(obj.data.polygons) == 0
    assert obj.data.color_attributes.active_color.name == "Col"
    assert obj.data.attributes.default_color_name == "Col"
    np.testing.assert_array_equal(attribute(obj.data, "position", "vector", 3), points)
    np.testing.assert_array_equal(attribute(obj.data, "conf", "value", 1), conf)
    # Blender's own linear -> sRGB conversion gives back the file's 8-bit colours.
    srgb = attribute(obj.data, "Col", "color_srgb", 4)[:, :3]
    np.testing.assert_allclose(srgb * 255.0, colors, atol=0.05)
    assert obj.data.color_attributes.get("Col") is not None
    assert obj.parent is not None and obj.parent.get("da3_root")


def test_confidence_threshold_and_radius_stay_adjustable(addon, tmp_path):
    """Default output: one tetrahedron per confident point, its edge midpoints at the point radius."""
    points, colors, conf = random_cloud(2000, seed=1)
    path = tmp_path / "cloud.ply"
    write_point_cloud_ply(path, points, colors, conf)
    bpy.ops.da3.import_points(filepath=str(path), radius=0.03, z_up=False)
    obj = only_object()
    from da3_blender.build_common import SOLID_COLOURS_INPUT, set_modifier_input
    from da3_blender.build_points import MODIFIER_NAME, RADIUS_INPUT, THRESHOLD_INPUT

    def tetrahedra() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mesh = evaluated_attributes(obj, "MESH", {"position": ("vector", 3), "conf": ("value", 1)})
        corners = mesh["position"].reshape(-1, 4, 3)  # realised instances keep their 4 vertices together
        return corners, corners.mean(axis=1), mesh["conf"].reshape(-1, 4)

    corners, centres, tetra_conf = tetrahedra()
    np.testing.assert_allclose(centres, points, atol=1e-5)  # all 2000, in file order
    midpoints = 0.5 * (corners[:, 0] + corners[:, 1])
    np.testing.assert_allclose(np.linalg.norm(midpoints - centres, axis=1), 0.03, rtol=1e-4)
    np.testing.assert_array_equal(tetra_conf, np.repeat(conf[:, None], 4, axis=1))
    mod = obj.modifiers[MODIFIER_NAME]
    set_modifier_input(mod, THRESHOLD_INPUT, 3.0)
    set_modifier_input(mod, RADIUS_INPUT, 0.01)
    obj.update_tag()
    corners, centres, tetra_conf = tetrahedra()
    np.testing.assert_allclose(centres, points[conf >= 3.0], atol=1e-5)
    assert tetra_conf.min() >= 3.0
    midpoints = 0.5 * (corners[:, 2] + corners[:, 3])
    np.testing.assert_allclose(np.linalg.norm(midpoints - centres, axis=1), 0.01, rtol=1e-4)
    # Solid Colours off: plain point primitives with the radius attribute, same filter.
    set_modifier_input(mod, SOLID_COLOURS_INPUT, False)
    obj.update_tag()
    cloud = evaluated_attributes(obj, "POINTCLOUD", {"position": ("vector", 3), "radius": ("value", 1)})
    np.testing.assert_allclose(cloud["position"], points[conf >= 3.0], atol=1e-6)
    np.testing.assert_allclose(cloud["radius"], 0.01, rtol=1e-6)
    assert not evaluated_attributes(obj, "MESH", {"position": ("vector", 3)})


def test_point_shape_is_an_outward_tetrahedron(addon, tmp_path):
    """Outward normals keep Solid view's studio lighting right; edge midpoints on the unit sphere."""
    points, colors, conf = random_cloud(10)
    write_point_cloud_ply(tmp_path / "c.ply", points, colors, conf)
    bpy.ops.da3.import_points(filepath=str(tmp_path / "c.ply"))
    shape = next(o for o in bpy.data.objects if o.get("da3_tag") == "DA3 Point Shape").data
    vertices = np.array([v.co for v in shape.vertices])
    np.testing.assert_allclose(vertices.mean(axis=0), 0.0, atol=1e-7)
    for poly in shape.polygons:
        assert np.dot(np.array(poly.normal), np.array(poly.center)) > 0
    edges = {tuple(sorted(e.vertices)) for e in shape.edges}
    assert len(edges) == 6
    for a, b in edges:
        assert np.linalg.norm(0.5 * (vertices[a] + vertices[b])) == pytest.approx(1.0, abs=1e-6)
    assert shape.attributes.active_color_name == "Col" and "Col" not in shape.attributes


def _workbench_render(tmp_path, name: str) -> np.ndarray:
    """64x64 Workbench (Solid view's engine) render, Attribute colouring, default studio lighting."""
    scene = bpy.context.scene
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.display.shading.color_type = "VERTEX"
    scene.view_settings.view_transform = "Standard"
    scene.render.resolution_x = scene.render.resolution_y = 64
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = str(tmp_path / name)
    bpy.ops.render.render(write_still=True)
    image = bpy.data.images.load(scene.render.filepath)
    out = np.empty(64 * 64 * 4, np.float32)
    image.pixels.foreach_get(out)
    return out.reshape(64, 64, 4)[::-1, :, :3]  # top row first


def _red_green_scene(tmp_path, **import_args) -> bpy.types.Object:
    """A camera 3 units in front of a 1.6 x 1.6 grid of points: red for x < 0, green for x > 0."""
    grid = np.stack(np.meshgrid(np.linspace(-0.8, 0.8, 60), np.linspace(-0.8, 0.8, 60)), -1).reshape(-1, 2)
    points = np.column_stack([grid, np.zeros(len(grid))]).astype(np.float32)
    colors = np.where(points[:, :1] < 0, [255, 0, 0], [0, 255, 0]).astype(np.uint8)
    write_point_cloud_ply(tmp_path / "rg.ply", points, colors)
    assert bpy.ops.da3.import_points(filepath=str(tmp_path / "rg.ply"), z_up=False, radius=0.02, **import_args) == {
        "FINISHED"
    }
    camera = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    bpy.context.scene.collection.objects.link(camera)
    camera.location = (0.0, 0.0, 3.0)  # Blender cameras look down -z
    bpy.context.scene.camera = camera
    return only_object(("MESH",))


def test_point_colours_show_in_solid_view_render(addon, tmp_path):
    """Workbench draws the imported colours: red on the left, green on the right, before and after reload."""
    _red_green_scene(tmp_path)
    for attempt in ("imported", "reloaded"):
        rgb = _workbench_render(tmp_path, f"{attempt}.png")
        left, right = rgb[22:42, 14:26].mean(axis=(0, 1)), rgb[22:42, 38:50].mean(axis=(0, 1))
        assert left[0] > 0.3 and left[0] > 4 * max(left[1], left[2]), (attempt, left)
        assert right[1] > 0.3 and right[1] > 4 * max(right[0], right[2]), (attempt, right)
        # Saved and reopened, the shape's colour names and the node group still resolve.
        bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))
        bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "scene.blend"))


def test_point_primitives_stay_uncoloured_in_solid_view(addon, tmp_path):
    """Why Solid Colours exists: Workbench ignores the colour of point-cloud geometry."""
    _red_green_scene(tmp_path, solid_colours="OFF")
    rgb = _workbench_render(tmp_path, "points.png")
    left = rgb[22:42, 14:26].mean(axis=(0, 1))
    assert left.max() > 0.3, "the points are drawn"
    np.testing.assert_allclose(left, left.mean(), atol=0.02)  # grey/white, not red


@pytest.mark.parametrize("colour_view", [True, False])
def test_import_switches_solid_view_to_attribute_colour(addon, tmp_path, colour_view):
    views = [a.spaces.active for a in bpy.context.screen.areas if a.type == "VIEW_3D"]
    assert views and all(v.shading.color_type == "MATERIAL" for v in views)
    _red_green_scene(tmp_path, colour_view=colour_view)
    assert all(v.shading.color_type == ("VERTEX" if colour_view else "MATERIAL") for v in views)


def test_points_without_colours_keep_point_primitives(addon, tmp_path):
    points, _, _ = random_cloud(50, seed=7)
    vertex = np.array([tuple(p) for p in points], dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")]).write(str(tmp_path / "plain.ply"))
    bpy.ops.da3.import_points(filepath=str(tmp_path / "plain.ply"))
    views = [a.spaces.active for a in bpy.context.screen.areas if a.type == "VIEW_3D"]
    assert all(v.shading.color_type == "MATERIAL" for v in views)  # no colours: Solid view left alone
    cloud = evaluated_attributes(only_object(), "POINTCLOUD", {"position": ("vector", 3)})
    np.testing.assert_allclose(cloud["position"], points, atol=1e-6)


def test_solid_colours_start_on_only_up_to_the_limit(addon, tmp_path, monkeypatch, capfd):
    """Automatic: tetrahedra up to the limit; above it point primitives and an info line saying how to
    turn Solid Colours on. An explicit choice is kept and needs no info line."""
    import addon_utils
    from da3_blender import build_points
    from da3_blender.build_common import SOLID_COLOURS_INPUT, get_modifier_input

    monkeypatch.setattr(build_points, "SOLID_COLOURS_MAX_POINTS", 100)
    cases = [(100, "AUTO", "MESH", False), (101, "AUTO", "POINTCLOUD", True)]
    cases += [(101, "ON", "MESH", False), (101, "OFF", "POINTCLOUD", False), (100, "OFF", "POINTCLOUD", False)]
    for count, choice, output, note in cases:
        bpy.ops.wm.read_factory_settings(use_empty=True)  # one object per scene; unregisters the add-on
        addon_utils.enable("da3_blender", default_set=True)
        points, colors, conf = random_cloud(count, seed=count)
        write_point_cloud_ply(tmp_path / "c.ply", points, colors, conf)
        capfd.readouterr()
        assert bpy.ops.da3.import_points(filepath=str(tmp_path / "c.ply"), solid_colours=choice) == {"FINISHED"}
        obj = only_object()
        mod = obj.modifiers[build_points.MODIFIER_NAME]
        assert get_modifier_input(mod, SOLID_COLOURS_INPUT) == (output == "MESH")
        found = evaluated_attributes(obj, output, {"position": ("vector", 3)})
        assert len(found["position"]) == count * (4 if output == "MESH" else 1), (count, choice)  # tetrahedra
        printed = capfd.readouterr().out
        assert ("Solid Colours starts off" in printed and "Sidebar > DA3" in printed) == note, (count, choice, printed)
        assert (build_points.solid_colours_note(obj) is not None) == (output == "POINTCLOUD")


def test_ascii_ply_float_colours_and_no_confidence(addon, tmp_path):
    points, colors, _ = random_cloud(20, seed=2)
    vertex = np.empty(
        20,
        dtype=[("x", "f8"), ("y", "f8"), ("z", "f8"), ("red", "f4"), ("green", "f4"), ("blue", "f4"), ("extra", "i4")],
    )
    for i, k in enumerate("xyz"):
        vertex[k] = points[:, i]
    for i, k in enumerate(("red", "green", "blue")):
        vertex[k] = colors[:, i] / 255.0
    path = tmp_path / "ascii.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")], text=True).write(str(path))
    assert bpy.ops.da3.import_points(filepath=str(path)) == {"FINISHED"}
    obj = only_object()
    np.testing.assert_allclose(attribute(obj.data, "position", "vector", 3), points, atol=1e-6)
    np.testing.assert_allclose(attribute(obj.data, "Col", "color_srgb", 4)[:, :3] * 255, colors, atol=0.05)
    assert "conf" not in obj.data.attributes


def test_points_after_a_face_element_and_big_endian(addon, tmp_path):
    """Elements before 'vertex' are skipped; big-endian binary is decoded."""
    points, _, _ = random_cloud(10, seed=3)
    meta = np.array([(1.5,)], dtype=[("scale", "f4")])
    vertex = np.array([tuple(p) for p in points], dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    path = tmp_path / "be.ply"
    data = plyfile.PlyData(
        [plyfile.PlyElement.describe(meta, "meta"), plyfile.PlyElement.describe(vertex, "vertex")], byte_order=">"
    )
    data.write(str(path))
    bpy.ops.da3.import_points(filepath=str(path))
    np.testing.assert_array_equal(attribute(only_object().data, "position", "vector", 3), points)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a PLY file"),
        (b"ply\nformat binary_little_endian 1.0\nelement vertex 3\n", "no 'end_header'"),
        (
            b"ply\nformat binary_little_endian 1.0\nelement vertex 0\nproperty float x\nproperty float y\n"
            b"property float z\nend_header\n",
            "contains no points",
        ),
        (
            b"ply\nformat binary_little_endian 1.0\nelement vertex 5\nproperty float x\nproperty float y\n"
            b"property float z\nend_header\n" + b"\0" * 30,
            "truncated PLY: 5 vertices need 60 bytes, only 30",
        ),
        (
            b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
            b"end_header\n1 2 3\n4 5 6\n",
            "truncated ASCII PLY",
        ),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float a\nend_header\n1\n", "lack coordinate"),
    ],
    ids=["empty", "no-end-header", "zero-vertices", "truncated-binary", "truncated-ascii", "no-xyz"],
)
def test_bad_point_plys_give_one_line_errors(addon, tmp_path, content, message):
    path = tmp_path / "bad.ply"
    path.write_bytes(content)
    with pytest.raises(RuntimeError, match=message) as info:
        bpy.ops.da3.import_points(filepath=str(path))
    assert str(path) in str(info.value)
    assert not [o for o in bpy.context.scene.objects if o.type in ("POINTCLOUD", "MESH")]


def random_splats(n: int, sh_rest: int, seed: int = 0) -> SplatData:
    rng = np.random.default_rng(seed)
    return SplatData(
        means=rng.normal(size=(n, 3)).astype(np.float32),
        scales_log=rng.uniform(-5, -1, size=(n, 3)).astype(np.float32),
        rotations=rng.normal(size=(n, 4)).astype(np.float32),
        opacity_logit=rng.normal(size=n).astype(np.float32),
        sh_dc=rng.normal(size=(n, 3)).astype(np.float32),
        sh_rest=rng.normal(scale=0.1, size=(n, sh_rest, 3)).astype(np.float32),
    )


@pytest.mark.parametrize("sh_rest", [0, 3, 8, 15], ids=["sh0", "sh1", "sh2", "sh3"])
def test_splat_attributes_equal_ply_values(addon, tmp_path, sh_rest):
    splats = random_splats(3000, sh_rest)
    path = tmp_path / "splats.ply"
    write_splat_ply(path, splats)
    assert bpy.ops.da3.import_splats(filepath=str(path)) == {"FINISHED"}
    assert_splat_attributes(only_object(), splats)


def test_splats_in_any_property_order_type_and_byte_order(addon, tmp_path):
    """The block-wise gather reads by property name: reversed order, big-endian doubles and a count that
    spans several blocks with a partial last one decode to the same values."""
    from da3_blender.ply import _BLOCK_ROWS

    splats = random_splats(2 * _BLOCK_ROWS + 123, 15, seed=7)
    vertex = plyfile.PlyData.read(str(_write(tmp_path / "le.ply", splats)))["vertex"].data
    names = list(reversed(vertex.dtype.names))
    swapped = np.empty(len(vertex), dtype=[(n, ">f8") for n in names])
    for name in names:
        swapped[name] = vertex[name]
    plyfile.PlyData([plyfile.PlyElement.describe(swapped, "vertex")], byte_order=">").write(str(tmp_path / "be.ply"))
    assert bpy.ops.da3.import_splats(filepath=str(tmp_path / "be.ply")) == {"FINISHED"}
    assert_splat_attributes(only_object(), splats)


def assert_splat_attributes(obj: bpy.types.Object, splats: SplatData) -> None:
    """The imported object's attributes hold exactly the file's values, activated where the layout says so."""
    sh_rest = splats.sh_rest.shape[1]
    data = obj.data
    rotations = splats.rotations / np.linalg.norm(splats.rotations, axis=1, keepdims=True)
    opacity = 1.0 / (1.0 + np.exp(-splats.opacity_logit.astype(np.float64)))
    np.testing.assert_array_equal(attribute(data, "position", "vector", 3), splats.means)
    np.testing.assert_allclose(attribute(data, "scale", "vector", 3), np.exp(splats.scales_log), rtol=1e-6)
    np.testing.assert_allclose(attribute(data, "rotation", "value", 4), rotations, atol=1e-6)
    if NATIVE_SPLATS:
        assert obj.type == "POINTCLOUD" and data.type == "GAUSSIAN_SPLAT"
        base = attribute(data, "radiance:base", "vector", 4)
        np.testing.assert_array_equal(base[:, :3], splats.sh_dc)
        np.testing.assert_allclose(base[:, 3], opacity, atol=1e-6)
        rest_name = "radiance:sh_{}"
    else:
        np.testing.assert_array_equal(attribute(data, "f_dc", "vector", 3), splats.sh_dc)
        np.testing.assert_allclose(attribute(data, "opacity", "value", 1), opacity, atol=1e-6)
        rest_name = "sh_rest_{}"
        assert obj.modifiers["DA3 Splats"].node_group.name.startswith("DA3 Splat Ellipsoids")
    for k in range(sh_rest):
        np.testing.assert_array_equal(attribute(data, rest_name.format(k), "vector", 3), splats.sh_rest[:, k])
    assert rest_name.format(sh_rest) not in data.attributes


@pytest.mark.skipif(not NATIVE_SPLATS, reason="native Gaussian splats need Blender 5.3+ (PointCloud.resize)")
def test_native_splats_match_blenders_own_ply_importer(addon, tmp_path):
    """Blender 5.3's built-in 3DGS PLY import is the reference for the native attribute layout."""
    splats = random_splats(500, 15, seed=4)
    path = tmp_path / "ref.ply"
    write_splat_ply(path, splats)
    bpy.ops.da3.import_splats(filepath=str(path))
    ours = only_object().data
    bpy.ops.wm.ply_import(filepath=str(path))
    theirs = next(o for o in bpy.data.objects if o.type == "POINTCLOUD" and o.data != ours).data
    assert theirs.type == ours.type == "GAUSSIAN_SPLAT"
    for attr in theirs.attributes:
        if attr.name.startswith(".") or attr.name not in ours.attributes and attr.name in ("nx", "ny", "nz"):
            continue
        key = {"FLOAT": "value", "QUATERNION": "value"}.get(attr.data_type, "vector")
        width = {"FLOAT": 1, "QUATERNION": 4, "FLOAT4": 4}.get(attr.data_type, 3)
        assert ours.attributes[attr.name].data_type == attr.data_type, attr.name
        np.testing.assert_allclose(
            attribute(ours, attr.name, key, width),
            attribute(theirs, attr.name, key, width),
            atol=1e-6,
            err_msg=attr.name,
        )


@pytest.mark.skipif(NATIVE_SPLATS, reason="ellipsoid instancing is the path without native splats")
@pytest.mark.parametrize("solid_colours", [False, True], ids=["instances", "realised"])
def test_ellipsoids_carry_rotation_and_scale(addon, tmp_path, solid_colours):
    """Each splat is an ico sphere scaled to EXTENT_SIGMA standard deviations along its rotated axes: as an
    instance (its matrix), or realised for Solid view (every vertex v has |S^-1 R^T (v - mean)| = 1)."""
    from da3_blender.build_common import SOLID_COLOURS_INPUT, get_modifier_input, set_modifier_input
    from da3_blender.build_splats import EXTENT_SIGMA, MODIFIER_NAME
    from mathutils import Quaternion

    splats = random_splats(50, 0, seed=5)
    splats.opacity_logit[:] = 4.0  # all above the default minimum opacity
    path = tmp_path / "s.ply"
    write_splat_ply(path, splats)
    bpy.ops.da3.import_splats(filepath=str(path), z_up=False)
    obj = only_object()
    mod = obj.modifiers[MODIFIER_NAME]
    assert get_modifier_input(mod, SOLID_COLOURS_INPUT), "50 splats start with Solid Colours on"
    set_modifier_input(mod, SOLID_COLOURS_INPUT, solid_colours)
    depsgraph = bpy.context.evaluated_depsgraph_get()
    rotations = splats.rotations / np.linalg.norm(splats.rotations, axis=1, keepdims=True)
    extents = EXTENT_SIGMA * np.exp(splats.scales_log)
    # Instance structs are only valid while iterating, so copy their matrices out.
    matrices = [
        inst.matrix_world.copy()
        for inst in depsgraph.object_instances
        if inst.is_instance and inst.parent.original == obj
    ]
    if not solid_colours:
        assert len(matrices) == 50
        for matrix in matrices:
            loc, rot, scale = matrix.decompose()
            distances = np.linalg.norm(splats.means - np.array(loc), axis=1)
            i = int(np.argmin(distances))
            assert distances[i] < 1e-5
            np.testing.assert_allclose(np.array(scale), extents[i], rtol=1e-4)
            expected = Quaternion(rotations[i].tolist()).to_matrix()
            np.testing.assert_allclose(np.array(rot.to_matrix()), np.array(expected), atol=1e-4)
        return
    assert not matrices
    mesh = obj.evaluated_get(depsgraph).data
    vertices = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", vertices)
    blocks = vertices.reshape(50, -1, 3).astype(np.float64)  # 42 vertices per splat, splat after splat
    assert blocks.shape[1] == 42 and mesh.attributes.active_color_name == "Col"
    for block in blocks:
        i = int(np.argmin(np.linalg.norm(splats.means - block.mean(axis=0), axis=1)))
        R = np.array(Quaternion(rotations[i].tolist()).to_matrix())
        local = (block - splats.means[i]) @ R / extents[i]
        np.testing.assert_allclose(np.linalg.norm(local, axis=1), 1.0, atol=1e-4)


def test_non_splat_ply_is_rejected_clearly(addon, tmp_path):
    points, colors, conf = random_cloud(10)
    path = tmp_path / "cloud.ply"
    write_point_cloud_ply(path, points, colors, conf)
    with pytest.raises(RuntimeError, match="not a 3D Gaussian splatting PLY .*import it as a point cloud"):
        bpy.ops.da3.import_splats(filepath=str(path))
    bad_rest = random_splats(10, 3)
    names = [f"f_rest_{i}" for i in range(9)]
    vertex = plyfile.PlyData.read(str(_write(tmp_path / "r.ply", bad_rest)))["vertex"].data
    import numpy.lib.recfunctions as rfn

    keep = rfn.repack_fields(vertex[[n for n in vertex.dtype.names if n not in names[5:]]])
    plyfile.PlyData([plyfile.PlyElement.describe(keep, "vertex")]).write(str(tmp_path / "r5.ply"))
    with pytest.raises(RuntimeError, match="5 f_rest properties"):
        bpy.ops.da3.import_splats(filepath=str(tmp_path / "r5.ply"))


def _write(path, splats):
    write_splat_ply(path, splats)
    return path


def test_extra_splat_properties_are_tolerated(addon, tmp_path):
    splats = random_splats(100, 3, seed=6)
    vertex = plyfile.PlyData.read(str(_write(tmp_path / "a.ply", splats)))["vertex"].data
    import numpy.lib.recfunctions as rfn

    extended = rfn.append_fields(
        vertex, ["semantic", "age"], [np.arange(100, dtype="i4"), np.ones(100, "f8")], usemask=False
    )
    plyfile.PlyData([plyfile.PlyElement.describe(extended, "vertex")]).write(str(tmp_path / "extra.ply"))
    assert bpy.ops.da3.import_splats(filepath=str(tmp_path / "extra.ply")) == {"FINISHED"}
    np.testing.assert_array_equal(attribute(only_object().data, "position", "vector", 3), splats.means)


def test_depth_backprojection_is_consistent_across_room_views(addon, tmp_path, room_gt):
    """Depth of view 0 lifted to 3D with the pixel-centre convention lands on view 1's depth surface."""
    from da3_blender.build_common import get_attribute

    w2c = np.linalg.inv(room_gt["poses"])[:, :3]
    ks = room_gt["intrinsics"]
    path = write_predictions(tmp_path / "room.npz", w2c, ks, room_gt["depths"])
    bpy.ops.da3.import_predictions(filepath=str(path), z_up=False)
    cam = bpy.data.objects["room_000"]
    bpy.ops.object.select_all(action="DESELECT")
    cam.select_set(True)
    with bpy.context.temp_override(selected_objects=[cam]):
        assert bpy.ops.da3.backproject_depth(stride=4) == {"FINISHED"}
    obj = bpy.data.objects["room_000 depth"]
    world = get_attribute(obj.data, "position", 3).astype(np.float64)
    # Into view 1 with the ground-truth camera: compare z with view 1's depth map where visible.
    cam1 = world @ w2c[1][:, :3].T + w2c[1][:, 3]
    uv = cam1 @ ks[1].T
    uv = uv[:, :2] / uv[:, 2:3]
    h, w = room_gt["depths"].shape[1:]
    inside = (cam1[:, 2] > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    assert inside.mean() > 0.3
    depth1 = room_gt["depths"][1][uv[inside, 1].astype(int), uv[inside, 0].astype(int)]
    rel = np.abs(cam1[inside, 2] - depth1) / depth1
    assert np.median(rel) < 0.01, np.median(rel)
    # and into view 0 itself: exactly the pixel centres it came from
    cam0 = world @ w2c[0][:, :3].T + w2c[0][:, 3]
    uv0 = cam0 @ ks[0].T
    uv0 = uv0[:, :2] / uv0[:, 2:3]
    np.testing.assert_allclose(uv0 - np.floor(uv0), 0.5, atol=5e-3)  # positions are float32 in Blender
    assert "conf" in obj.data.attributes
