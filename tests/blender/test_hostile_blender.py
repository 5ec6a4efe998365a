"""Hostile input for every Blender operator: one-line operator error, nothing created, nothing written.

Each case builds one bad file (or scene), runs the operator as a user would (``bpy.ops``, which raises
``RuntimeError("Error: <report>")`` when an operator reports an error and cancels), and asserts the exact
outcome: the single report line names the file (or camera) and contains the expected fragment, no datablock
of any kind was created or removed (names of objects, meshes, cameras, collections, materials, node groups,
images, point clouds, actions), the scene's camera, render size and frame range are as they were, and no
file around the input was created, changed or deleted.

A camera the add-on cannot represent refuses the whole import (see blender_addon/README.md).
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import bpy
import numpy as np
import plyfile
import pytest
from blender_inputs import k_matrix, random_cameras, write_colmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hostile"))
from hostile import assert_unchanged, snapshot  # noqa: E402

_DATA_KINDS = (
    "objects",
    "meshes",
    "cameras",
    "collections",
    "materials",
    "node_groups",
    "images",
    "pointclouds",
    "actions",
)


def blender_state() -> dict:
    """Every datablock name per kind plus the scene settings an import may touch."""
    scene = bpy.context.scene
    render = scene.render
    state: dict = {kind: sorted(d.name for d in getattr(bpy.data, kind)) for kind in _DATA_KINDS}
    state["scene"] = (
        scene.camera.name if scene.camera else None,
        render.resolution_x,
        render.resolution_y,
        render.pixel_aspect_x,
        render.pixel_aspect_y,
        scene.frame_start,
        scene.frame_end,
    )
    return state


def operator_error(operator: str, **kwargs: object) -> str:
    """Run ``bpy.ops.da3.<operator>`` expecting an error report; returns the report's one line."""
    with pytest.raises(RuntimeError) as info:
        getattr(bpy.ops.da3, operator)(**kwargs)
    text = str(info.value)
    assert text.startswith("Error: "), text
    line = text[len("Error: ") :].rstrip("\n")
    assert "\n" not in line and "Traceback" not in line, text
    return line


# ---------------------------------------------------------------- inputs

_INTRINSICS = {"w": 64, "h": 48, "fl_x": 50.0, "fl_y": 50.0, "cx": 32.0, "cy": 24.0}


def _frame(**changes: object) -> dict:
    return {"file_path": "images/a.png", "transform_matrix": np.eye(4).tolist(), **changes}


def _json(tmp: Path, meta: object, name: str = "transforms.json") -> Path:
    path = tmp / name
    path.write_text(json.dumps(meta))  # NaN and Infinity become JSON's non-standard literals, as Python reads them
    return path


def _transforms(tmp: Path, frame: dict | None = None, **meta: object) -> Path:
    return _json(tmp, {**_INTRINSICS, "frames": [frame or _frame()], **meta})


def _matrix_case(matrix: list) -> Callable[[Path], Path]:
    return lambda tmp: _transforms(tmp, _frame(transform_matrix=matrix))


def _ply(tmp: Path, fields: list[tuple[str, str]], rows: list[tuple], text: bool = False, name: str = "c.ply") -> Path:
    vertex = np.array(rows, dtype=fields)
    path = tmp / name
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")], text=text).write(str(path))
    return path


_XYZ = [("x", "f4"), ("y", "f4"), ("z", "f4")]
_RGB = [("red", "u1"), ("green", "u1"), ("blue", "u1")]


def _cloud(tmp: Path, x: float = 0.0, **extra: float) -> Path:
    fields = _XYZ + _RGB + [(k, "f4") for k in extra]
    return _ply(tmp, fields, [(x, 0.0, 1.0, 255, 0, 0, *extra.values()), (1.0, 1.0, 1.0, 0, 255, 0, *extra.values())])


_SPLAT_NAMES = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"] + [f"scale_{i}" for i in range(3)]
_SPLAT_NAMES += [f"rot_{i}" for i in range(4)]


def _splats(tmp: Path, rest: int = 0, count: int = 2, **values: float) -> Path:
    names = _SPLAT_NAMES + [f"f_rest_{i}" for i in range(rest)]
    row = {name: 0.0 for name in names} | {"rot_0": 1.0, "scale_0": -3.0, "scale_1": -3.0, "scale_2": -3.0}
    rows = [tuple((row | (values if i == 0 else {}))[name] for name in names) for i in range(count)]
    return _ply(tmp, [(name, "f4") for name in names], rows, name="s.ply")


def _raw(tmp: Path, data: bytes, name: str = "c.ply") -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _header(*lines: str, fmt: str = "binary_little_endian") -> bytes:
    return ("\n".join(["ply", f"format {fmt} 1.0", *lines, "end_header"]) + "\n").encode()


def _colmap_text(tmp: Path, cameras: str = "1 PINHOLE 64 48 50 50 32 24", image: str = "1 1 0 0 0 0 0 4 1 a.png",
                 points: str = "1 0 0 1 255 0 0 0") -> Path:  # fmt: skip
    folder = tmp / "sparse" / "0"
    folder.mkdir(parents=True)
    (folder / "cameras.txt").write_text(cameras + "\n")
    (folder / "images.txt").write_text(image + "\n\n")
    (folder / "points3D.txt").write_text(points + "\n")
    return folder / "cameras.txt"


def _colmap_binary(tmp: Path, name: str, change: Callable[[bytes], bytes]) -> Path:
    w2c = random_cameras(2, seed=3)
    ks = np.stack([k_matrix(50, 50, 32, 24)] * 2)
    points = np.array([[0.0, 0.0, 1.0], [0.5, 0.0, 1.0]])
    model = write_colmap(tmp, w2c, ks, (64, 48), ["a.png", "b.png"], points, np.full((2, 3), 200))
    path = model / name
    path.write_bytes(change(path.read_bytes()))
    return model / "cameras.bin"


def _npz(tmp: Path, n: int = 2, **changes: object) -> Path:
    arrays = {
        "depth": np.ones((n, 6, 8), np.float32),
        "extrinsics": np.tile(np.eye(4)[:3], (n, 1, 1)).astype(np.float32),
        "intrinsics": np.tile(k_matrix(8.0, 8.0, 4.0, 3.0), (n, 1, 1)).astype(np.float32),
        "conf": np.ones((n, 6, 8), np.float32),
        "image": np.zeros((n, 6, 8, 3), np.uint8),
    }
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    path = tmp / "pred.npz"
    np.savez(path, **arrays)
    return path


def _k(**values: float) -> np.ndarray:
    k = np.tile(k_matrix(8.0, 8.0, 4.0, 3.0), (2, 1, 1))
    for key, value in values.items():
        k[1][{"fx": (0, 0), "fy": (1, 1), "cx": (0, 2), "skew": (0, 1), "last": (2, 2)}[key]] = value
    return k


def _extrinsics(rotation: np.ndarray | None = None, t: float = 0.0) -> np.ndarray:
    e = np.tile(np.eye(4)[:3], (2, 1, 1))
    if rotation is not None:
        e[1, :, :3] = rotation
    e[1, 0, 3] = t
    return e


def _gaussians(**changes: np.ndarray) -> dict:
    g = {
        "gaussians_means": np.zeros((3, 3)),
        "gaussians_scales": np.full((3, 3), 0.1),
        "gaussians_rotations": np.tile([1.0, 0, 0, 0], (3, 1)),
        "gaussians_harmonics": np.zeros((3, 3, 1)),
        "gaussians_opacities": np.full(3, 0.5),
    }
    return g | changes


_MIRROR = np.diag([1.0, 1.0, -1.0])

# (case id, operator, input builder, expected fragment of the one-line error)
CASES: list[tuple[str, str, Callable[[Path], Path], str]] = [
    # transforms.json / camera_path.json -> da3.import_dataset
    ("json-syntax", "import_dataset", lambda t: _raw(t, b'{"frames": [', "transforms.json"), "not valid JSON"),
    ("json-binary", "import_dataset", lambda t: _raw(t, b"\xff\xfe\x00garbage", "transforms.json"), "not valid JSON"),
    ("json-top-list", "import_dataset", lambda t: _json(t, []), "expected a JSON object"),
    ("json-no-frames", "import_dataset", lambda t: _json(t, {"w": 4}), "no 'frames'"),
    ("json-empty-frames", "import_dataset", lambda t: _json(t, {"frames": []}), "no 'frames'"),
    ("json-frame-number", "import_dataset", lambda t: _json(t, {**_INTRINSICS, "frames": [3]}), "expected a JSON obj"),
    ("json-no-w", "import_dataset", lambda t: _json(t, {"fl_x": 5, "h": 4, "frames": [_frame()]}), "lacks 'w'"),
    ("json-no-focal", "import_dataset", lambda t: _json(t, {"w": 4, "h": 4, "frames": [_frame()]}), "no focal"),
    ("json-zero-focal", "import_dataset", lambda t: _transforms(t, fl_x=0.0), "focal length must be positive"),
    ("json-negative-fy", "import_dataset", lambda t: _transforms(t, fl_y=-50.0), "focal length must be positive"),
    ("json-nan-focal", "import_dataset", lambda t: _transforms(t, fl_x=float("nan")), "fl_x must be a finite number"),
    ("json-string-focal", "import_dataset", lambda t: _transforms(t, fl_x="50"), "fl_x must be a finite number"),
    ("json-inf-cx", "import_dataset", lambda t: _transforms(t, cx=float("inf")), "cx must be a finite number"),
    ("json-zero-width", "import_dataset", lambda t: _transforms(t, w=0), "w must be a positive whole number"),
    ("json-tiny-image", "import_dataset", lambda t: _transforms(t, w=3), "3 x 48 is outside Blender's render range"),
    ("json-huge-image", "import_dataset", lambda t: _transforms(t, h=70000), "outside Blender's render range 4..65536"),
    ("json-fov-too-wide", "import_dataset", lambda t: _transforms(t, fl_x=1.0, fl_y=1.0), "field of view too wide"),
    ("json-pixel-aspect", "import_dataset", lambda t: _transforms(t, fl_x=12500.0), "fx / fy = 250 is beyond"),
    ("json-fractional-h", "import_dataset", lambda t: _transforms(t, h=47.5), "h must be a positive whole number"),
    (
        "json-zero-angle",
        "import_dataset",
        lambda t: _json(t, {"w": 4, "h": 4, "camera_angle_x": 0.0, "frames": [_frame()]}),
        "camera_angle_x must be in (0, pi)",
    ),
    ("json-singular-pose", "import_dataset", _matrix_case(np.diag([0.0, 0, 0, 1]).tolist()), "not a rotation plus"),
    ("json-scaled-pose", "import_dataset", _matrix_case(np.diag([2.0, 2, 2, 1]).tolist()), "not a rotation plus"),
    ("json-mirrored-pose", "import_dataset", _matrix_case(np.diag([1.0, 1, -1, 1]).tolist()), "not a rotation plus"),
    ("json-nan-pose", "import_dataset", _matrix_case([[float("nan")] * 4] * 4), "non-finite"),
    ("json-pose-size", "import_dataset", _matrix_case([[1, 0, 0, 0]]), "12 or 16"),
    ("json-pose-string", "import_dataset", _matrix_case("eye(4)"), "not a numeric matrix"),
    (
        "json-second-frame-bad",
        "import_dataset",
        lambda t: _json(t, {**_INTRINSICS, "frames": [_frame(), _frame(fl_x=-1.0)]}),
        "frame 1: focal length must be positive",
    ),
    ("json-equirect", "import_dataset", lambda t: _transforms(t, camera_model="EQUIRECTANGULAR"), "not a pinhole"),
    (
        "json-nan-seed-points",
        "import_dataset",
        lambda t: _transforms(t, ply_file_path=_cloud(t, x=float("nan")).name),
        "non-finite coordinates",
    ),
    (
        "camera-path-zero-fov",
        "import_dataset",
        lambda t: _json(
            t,
            {"render_width": 64, "render_height": 48, "camera_path": [{"fov": 0, "camera_to_world": [0] * 16}]},
            "camera_path.json",
        ),
        "fov must be in (0, 180)",
    ),
    # COLMAP -> da3.import_colmap
    ("colmap-empty-cameras", "import_colmap", lambda t: _colmap_binary(t, "cameras.bin", lambda b: b""), "truncated"),
    ("colmap-empty-images", "import_colmap", lambda t: _colmap_binary(t, "images.bin", lambda b: b""), "truncated"),
    ("colmap-empty-points", "import_colmap", lambda t: _colmap_binary(t, "points3D.bin", lambda b: b""), "truncated"),
    (
        "colmap-cut-images",
        "import_colmap",
        lambda t: _colmap_binary(t, "images.bin", lambda b: b[: len(b) // 2]),
        "truncated COLMAP binary",
    ),
    (
        "colmap-huge-point-count",
        "import_colmap",
        lambda t: _colmap_binary(t, "points3D.bin", lambda b: struct.pack("<Q", 1 << 60) + b[8:]),
        "records announced",
    ),
    (
        "colmap-unknown-model",
        "import_colmap",
        lambda t: _colmap_binary(t, "cameras.bin", lambda b: b[:12] + struct.pack("<i", 99) + b[16:]),
        "unknown COLMAP camera model id 99",
    ),
    ("colmap-zero-focal", "import_colmap", lambda t: _colmap_text(t, "1 PINHOLE 64 48 0 50 32 24"), "focal length"),
    ("colmap-nan-focal", "import_colmap", lambda t: _colmap_text(t, "1 PINHOLE 64 48 nan 50 32 24"), "not finite"),
    ("colmap-zero-width", "import_colmap", lambda t: _colmap_text(t, "1 PINHOLE 0 48 50 50 32 24"), "image size"),
    ("colmap-bad-model", "import_colmap", lambda t: _colmap_text(t, "1 PINHOLEX 64 48 50 50 32 24"), "bad camera"),
    (
        "colmap-zero-quaternion",
        "import_colmap",
        lambda t: _colmap_text(t, image="1 0 0 0 0 0 0 4 1 a.png"),
        "quaternion [0.0, 0.0, 0.0, 0.0] is zero",
    ),
    ("colmap-nan-translation", "import_colmap", lambda t: _colmap_text(t, image="1 1 0 0 0 nan 0 4 1 a.png"), "non-f"),
    ("colmap-missing-camera", "import_colmap", lambda t: _colmap_text(t, image="1 1 0 0 0 0 0 4 7 a.png"), "camera id"),
    ("colmap-nan-point", "import_colmap", lambda t: _colmap_text(t, points="1 nan 0 1 9 9 9 0"), "non-finite coord"),
    ("colmap-short-point", "import_colmap", lambda t: _colmap_text(t, points="1 0 0 1 9"), "bad points3D line"),
    ("colmap-no-model", "import_colmap", lambda t: _raw(t, b"", "cameras.bin"), "no COLMAP model"),
    # predictions npz -> da3.import_predictions
    ("npz-text", "import_predictions", lambda t: _raw(t, b"depth,extrinsics\n1,2\n", "p.npz"), "not a readable npz"),
    ("npz-npy", "import_predictions", lambda t: _raw(t, b"\x93NUMPY\x01\x00" + b"\0" * 120, "p.npz"), "not a readable"),
    ("npz-cut", "import_predictions", lambda t: _raw(t, _npz(t).read_bytes()[:300], "p.npz"), "not a readable npz"),
    ("npz-no-extrinsics", "import_predictions", lambda t: _npz(t, extrinsics=None), "lacks keys ['extrinsics']"),
    ("npz-depth-1d", "import_predictions", lambda t: _npz(t, depth=np.ones(5)), "'depth' must be (N, H, W)"),
    ("npz-depth-empty", "import_predictions", lambda t: _npz(t, depth=np.ones((0, 6, 8))), "'depth' must be"),
    ("npz-depth-text", "import_predictions", lambda t: _npz(t, depth=np.array(["a", "b"])), "must be numeric"),
    ("npz-extr-3x3", "import_predictions", lambda t: _npz(t, extrinsics=np.tile(np.eye(3), (2, 1, 1))), "'extrinsics'"),
    ("npz-extr-count", "import_predictions", lambda t: _npz(t, extrinsics=np.eye(4)[None, :3]), "'extrinsics' must"),
    ("npz-intr-shape", "import_predictions", lambda t: _npz(t, intrinsics=np.ones((2, 9))), "'intrinsics' must be"),
    ("npz-zero-focal", "import_predictions", lambda t: _npz(t, intrinsics=_k(fx=0.0)), "view 1: focal length"),
    ("npz-negative-fy", "import_predictions", lambda t: _npz(t, intrinsics=_k(fy=-8.0)), "view 1: focal length"),
    ("npz-nan-intr", "import_predictions", lambda t: _npz(t, intrinsics=_k(cx=np.nan)), "intrinsics have non-finite"),
    ("npz-skew", "import_predictions", lambda t: _npz(t, intrinsics=_k(skew=0.5)), "must be a pinhole matrix"),
    ("npz-not-k", "import_predictions", lambda t: _npz(t, intrinsics=_k(last=0.0)), "must be a pinhole matrix"),
    ("npz-singular", "import_predictions", lambda t: _npz(t, extrinsics=_extrinsics(np.zeros((3, 3)))), "not a rot"),
    ("npz-scaled", "import_predictions", lambda t: _npz(t, extrinsics=_extrinsics(2 * np.eye(3))), "not a rotation"),
    ("npz-mirrored", "import_predictions", lambda t: _npz(t, extrinsics=_extrinsics(_MIRROR)), "not a rotation"),
    ("npz-nan-pose", "import_predictions", lambda t: _npz(t, extrinsics=_extrinsics(t=np.inf)), "non-finite"),
    ("npz-image-5ch", "import_predictions", lambda t: _npz(t, image=np.zeros((2, 6, 8, 5), np.uint8)), "images have"),
    ("npz-bool-image", "import_predictions", lambda t: _npz(t, image=np.ones((2, 6, 8, 3), bool)), "must be uint8"),
    ("npz-16bit-image", "import_predictions", lambda t: _npz(t, image=np.full((2, 6, 8, 3), 300)), "must be uint8"),
    ("npz-nan-conf", "import_predictions", lambda t: _npz(t, conf=np.full((2, 6, 8), np.nan)), "'conf' has 96 non-f"),
    (
        "npz-no-valid-depth",
        "import_predictions",
        lambda t: _npz(t, depth=np.stack([np.ones((6, 8)), np.full((6, 8), np.nan)])),
        "view 1: depth has no valid pixel (all NaN, inf, <= 0 or sky)",
    ),
    (
        "npz-all-sky",
        "import_predictions",
        lambda t: _npz(t, sky=np.stack([np.zeros((6, 8)), np.ones((6, 8))])),
        "view 1: depth has no valid pixel",
    ),
    ("npz-image-size", "import_predictions", lambda t: _npz(t, image=np.zeros((2, 5, 8, 3), np.uint8)), "images have"),
    ("npz-float-image", "import_predictions", lambda t: _npz(t, image=np.full((2, 6, 8, 3), 2.0)), "in [0, 1]"),
    ("npz-conf-shape", "import_predictions", lambda t: _npz(t, conf=np.ones((2, 3))), "'conf' must be numbers shaped"),
    ("npz-names", "import_predictions", lambda t: _npz(t, names=np.array(["a", "b", "c"])), "'names' must hold one"),
    ("npz-gauss-partial", "import_predictions", lambda t: _npz(t, gaussians_means=np.zeros((2, 3))), "incomplete"),
    (
        "npz-gauss-shape",
        "import_predictions",
        lambda t: _npz(t, **_gaussians(gaussians_scales=np.ones((3, 2)))),
        "'gaussians_scales' must be (M, 3)",
    ),
    # point-cloud PLY -> da3.import_points
    ("ply-empty-file", "import_points", lambda t: _raw(t, b""), "not a PLY file"),
    ("ply-text", "import_points", lambda t: _raw(t, b"x y z\n0 0 0\n"), "not a PLY file"),
    ("ply-no-end-header", "import_points", lambda t: _raw(t, b"ply\nformat ascii 1.0\nelement vertex 1\n"), "end_hea"),
    ("ply-format", "import_points", lambda t: _raw(t, _header(fmt="binary_middle_endian")), "unsupported PLY format"),
    ("ply-type", "import_points", lambda t: _raw(t, _header("element vertex 1", "property quad x")), "malformed PLY"),
    ("ply-negative-count", "import_points", lambda t: _raw(t, _header("element vertex -3", "property float x")), "ne"),
    ("ply-zero-vertices", "import_points", lambda t: _ply(t, _XYZ, []), "contains no points"),
    ("ply-no-z", "import_points", lambda t: _ply(t, _XYZ[:2], [(0.0, 1.0)]), "lack coordinate properties ['z']"),
    (
        "ply-truncated",
        "import_points",
        lambda t: _raw(t, _header("element vertex 10", "property float x", "property float y", "property float z")),
        "truncated PLY: 10 vertices need 120 bytes",
    ),
    ("ply-nan-position", "import_points", lambda t: _cloud(t, x=float("nan")), "1 of 2 vertices have non-finite coord"),
    ("ply-inf-position", "import_points", lambda t: _cloud(t, x=float("-inf")), "non-finite coordinates"),
    ("ply-nan-confidence", "import_points", lambda t: _cloud(t, confidence=float("nan")), "non-finite confidence"),
    (
        "ply-nan-colour",
        "import_points",
        lambda t: _ply(t, _XYZ + [(c, "f4") for c in "rgb"], [(0.0, 0.0, 0.0, np.nan, 0.0, 0.0)]),
        "non-finite colours",
    ),
    (
        "ply-ascii-short-row",
        "import_points",
        lambda t: _raw(t, _header("element vertex 2", *(f"property float {c}" for c in "xyz"), fmt="ascii") + b"0 0"),
        "truncated ASCII PLY",
    ),
    (
        "ply-ascii-words",
        "import_points",
        lambda t: _raw(t, _header("element vertex 1", *(f"property float {c}" for c in "xyz"), fmt="ascii") + b"a b c"),
        "non-numeric",
    ),
    (
        "ply-list-vertex",
        "import_points",
        lambda t: _raw(t, _header("element vertex 1", "property float x", "property list uchar int idx")),
        "list properties",
    ),
    # 3DGS PLY -> da3.import_splats
    (
        "splat-point-cloud",
        "import_splats",
        _cloud,
        "not a 3D Gaussian splatting PLY (missing properties: opacity, f_dc_0",
    ),
    ("splat-zero", "import_splats", lambda t: _splats(t, count=0), "contains no splats"),
    ("splat-nan-position", "import_splats", lambda t: _splats(t, y=np.nan), "1 of 2 vertices have non-finite posit"),
    ("splat-nan-scale", "import_splats", lambda t: _splats(t, scale_1=np.nan), "non-finite scales"),
    ("splat-inf-opacity", "import_splats", lambda t: _splats(t, opacity=np.inf), "non-finite opacities"),
    ("splat-nan-rotation", "import_splats", lambda t: _splats(t, rot_2=np.nan), "non-finite rotations"),
    ("splat-nan-dc", "import_splats", lambda t: _splats(t, f_dc_0=np.nan), "non-finite f_dc colours"),
    ("splat-zero-quaternion", "import_splats", lambda t: _splats(t, rot_0=0.0), "1 of 2 vertices have a zero rot"),
    ("splat-nan-rest", "import_splats", lambda t: _splats(t, rest=9, f_rest_4=np.nan), "non-finite f_rest"),
    ("splat-rest-count", "import_splats", lambda t: _splats(t, rest=5), "5 f_rest properties"),
    ("splat-truncated", "import_splats", lambda t: _raw(t, _splats(t).read_bytes()[:-9], "s.ply"), "truncated PLY"),
]


@pytest.mark.parametrize(("operator", "build", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_one_line_and_creates_nothing(addon, tmp_path, operator, build, fragment):
    path = build(tmp_path)
    files, state = snapshot(tmp_path), blender_state()
    line = operator_error(operator, filepath=str(path))
    assert fragment in line, line
    assert str(path.parent) in line, line  # names the file, or the model folder it is in
    assert blender_state() == state
    assert_unchanged(files, tmp_path)


def _sparse_depth_npz(tmp: Path) -> Path:
    """Two views; the second has one valid depth pixel, at odd row and column: stride 2 never samples it."""
    depth = np.ones((2, 6, 8), np.float32)
    depth[1] = np.nan
    depth[1, 3, 5] = 2.0
    return _npz(tmp, depth=depth)


def test_depth_points_refuse_the_whole_import_when_one_view_has_none(addon, tmp_path):
    path = _sparse_depth_npz(tmp_path)
    files, state = snapshot(tmp_path), blender_state()
    line = operator_error("import_predictions", filepath=str(path), depth_points=True, stride=2)
    assert line == f"{path}: view 1 has no valid depth pixel at pixel stride 2"
    assert blender_state() == state
    assert_unchanged(files, tmp_path)


def _select(objects: list[bpy.types.Object]) -> None:
    bpy.context.view_layer.update()  # objects linked through bpy.data join the view layer's list only now
    for obj in bpy.context.view_layer.objects:
        obj.select_set(obj in objects)


def test_depth_to_points_checks_every_selected_camera_before_creating_any_cloud(addon, tmp_path):
    path = _sparse_depth_npz(tmp_path)
    assert bpy.ops.da3.import_predictions(filepath=str(path), splats=False) == {"FINISHED"}
    cameras = sorted((o for o in bpy.data.objects if o.type == "CAMERA"), key=lambda o: o.name)
    _select(cameras)
    state = blender_state()
    line = operator_error("backproject_depth", stride=2)
    assert line == f"{path.resolve()}: view 1 has no valid depth pixel at pixel stride 2"
    assert blender_state() == state
    path.unlink()
    assert operator_error("backproject_depth") == f"{path.resolve()}: file not found"
    assert blender_state() == state


def _camera(name: str, kind: str = "PERSP", scale: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> bpy.types.Object:
    data = bpy.data.cameras.new(name)
    data.type = kind
    obj = bpy.data.objects.new(name, data)
    obj.scale = scale
    bpy.context.scene.collection.objects.link(obj)
    return obj


EXPORT_CASES = [
    ("nothing-selected", lambda t: ([], t / "out.json"), "no cameras selected"),
    ("orthographic", lambda t: ([_camera("Ortho", "ORTHO")], t / "out.json"), "Ortho: only perspective cameras"),
    ("zero-scale", lambda t: ([_camera("Flat", scale=(1.0, 0.0, 1.0))], t / "out.json"), "Flat: zero or mirroring"),
    ("mirrored", lambda t: ([_camera("Mirror", scale=(-1.0, 1.0, 1.0))], t / "out.json"), "Mirror: zero or mirroring"),
    ("folder", lambda t: ([_camera("Cam")], t), "is a folder"),
    ("parent-is-file", lambda t: ([_camera("Cam")], _raw(t, b"notes", "notes.txt") / "out.json"), "cannot write"),
]


@pytest.mark.parametrize(("build", "fragment"), [c[1:] for c in EXPORT_CASES], ids=[c[0] for c in EXPORT_CASES])
def test_bad_export_is_refused_with_one_line_and_writes_nothing(addon, tmp_path, build, fragment):
    (tmp_path / "transforms.json").write_text('{"frames": "an earlier export the user keeps"}')
    cameras, path = build(tmp_path)
    _select(cameras)
    files, state = snapshot(tmp_path), blender_state()
    line = operator_error("export_cameras", filepath=str(path))
    assert fragment in line, line
    assert blender_state() == state
    assert_unchanged(files, tmp_path)


RUN_CASES = [
    ("python-unset", lambda t: ("", t / "images", t / "out", ""), "DA3 Python environment is not set"),
    ("python-missing", lambda t: (t / "nope" / "python", t / "images", t / "out", ""), "interpreter not found"),
    ("python-folder", lambda t: (t / "images", t / "images", t / "out", ""), "no Python interpreter in this env"),
    ("input-unset", lambda t: (sys.executable, "", t / "out", ""), "choose an images folder or a video"),
    ("input-missing", lambda t: (sys.executable, t / "nope", t / "out", ""), "input images folder or video not"),
    ("output-unset", lambda t: (sys.executable, t / "images", "", ""), "choose an output folder"),
    ("output-file", lambda t: (sys.executable, t / "images", t / "images" / "a.jpg", ""), "is a file; choose a"),
    ("extra-quote", lambda t: (sys.executable, t / "images", t / "out", '--views "4'), "Extra Arguments (add-on"),
]


@pytest.mark.parametrize(("build", "fragment"), [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_bad_run_settings_are_refused_before_any_process_starts(addon, tmp_path, build, fragment):
    from da3_blender.run_da3 import JOBS

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"\xff\xd8 a user's photo")
    python, source, output, extra = build(tmp_path)
    prefs = bpy.context.preferences.addons["da3_blender"].preferences
    prefs.python_path, prefs.extra_args = str(python), extra
    state = bpy.context.scene.da3
    state.input_path, state.output_dir = str(source), str(output)
    files, before = snapshot(tmp_path), blender_state()
    line = operator_error("run_process")
    assert fragment in line, line
    assert not JOBS and not state.running and state.failed and state.status == line
    assert blender_state() == before
    assert_unchanged(files, tmp_path)
