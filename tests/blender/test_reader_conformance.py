"""The add-on's readers and the core's read every shared format the same way.

The add-on must stay bpy + numpy only, so it keeps its own PLY, COLMAP, transforms.json and predictions
readers next to the core's (plyfile, pycolmap, torch-side code). This test keeps the two from drifting:
the same files, odd ones included (``red green blue`` / ``r g b`` / ``diffuse_*`` colours, uchar and
float colours, ascii and both binary byte orders, COLMAP images and points whose id order differs from
name and file order, global and per-frame intrinsics), go through both, and the results must be equal.
Where the two keep different representations the comparison maps one onto the other: the core stores
8-bit colours and OpenCV world-to-camera poses, the add-on [0, 1] colours and Blender camera-to-world
poses. The add-on's readers are loaded without bpy (a test below proves they need none).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import plyfile
import pytest
from blender_inputs import k_matrix, random_cameras

from da3_nerfstudio.errors import InputError as CoreInputError
from da3_nerfstudio.formats import colmap as core_colmap
from da3_nerfstudio.formats import ply as core_ply
from da3_nerfstudio.formats import transforms as core_transforms

REPO = Path(__file__).resolve().parents[2]
_PACKAGE = "da3_addon_readers"
_LOADER = f"""
import importlib, sys, types
package = types.ModuleType({_PACKAGE!r})
package.__path__ = [{str(REPO / "blender_addon")!r}]
sys.modules[{_PACKAGE!r}] = package
"""


def addon(module: str) -> ModuleType:
    """An add-on module imported as part of a bare package: its ``__init__`` (which registers with bpy) never runs."""
    if _PACKAGE not in sys.modules:
        package = types.ModuleType(_PACKAGE)
        package.__path__ = [str(REPO / "blender_addon")]
        sys.modules[_PACKAGE] = package
    return importlib.import_module(f"{_PACKAGE}.{module}")


READERS = ("ply", "colmap", "nerfstudio_json", "predictions", "scene_data", "camera_math")


def test_addon_readers_import_without_bpy():
    """With bpy and mathutils made unimportable, every reader module still imports."""
    code = _LOADER + (
        "sys.modules['bpy'] = sys.modules['mathutils'] = None\n"
        f"for name in {READERS!r}:\n"
        f"    importlib.import_module({_PACKAGE!r} + '.' + name)\n"
        "print('bpy-free')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "bpy-free", result.stderr


def as_uint8(colors: np.ndarray) -> np.ndarray:
    """[0, 1] colours as the 8-bit values the core keeps (float colours are rounded and clipped alike)."""
    return np.clip(np.rint(colors.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def write_ply(path: Path, vertex: np.ndarray, fmt: str) -> Path:
    """A PLY through plyfile (an independent writer) as ascii or either binary byte order."""
    element = plyfile.PlyElement.describe(vertex, "vertex")
    plyfile.PlyData([element], text=fmt == "ascii", byte_order={"ascii": "=", "le": "<", "be": ">"}[fmt]).write(
        str(path)
    )
    return path


# ---------------------------------------------------------------- point-cloud PLY

COLOURS = {
    "red": ("red", "green", "blue"),
    "rgb": ("r", "g", "b"),
    "diffuse": ("diffuse_red", "diffuse_green", "diffuse_blue"),
}
CONFIDENCE = {"red": "confidence", "rgb": "conf", "diffuse": "quality"}


@pytest.mark.parametrize("fmt", ["ascii", "le", "be"])
@pytest.mark.parametrize("kind", ["u1", "f4"])
@pytest.mark.parametrize("names", list(COLOURS))
def test_point_cloud_ply(tmp_path, names, kind, fmt):
    rng = np.random.default_rng(len(names) + len(kind) + len(fmt))
    n = 50
    fields = [("x", "f4"), ("y", "f8"), ("z", "f4")]
    fields += [(c, kind) for c in COLOURS[names]] + [(CONFIDENCE[names], "f4"), ("extra", "i2")]
    vertex = np.zeros(n, dtype=fields)
    for axis in "xyz":
        vertex[axis] = rng.normal(size=n)
    for c in COLOURS[names]:
        vertex[c] = rng.integers(0, 256, n) if kind == "u1" else rng.uniform(-0.1, 1.1, n)  # floats beyond [0, 1]
    vertex[CONFIDENCE[names]] = rng.uniform(0, 5, n)
    path = write_ply(tmp_path / "cloud.ply", vertex, fmt)

    points, colors, confidence = core_ply.read_point_cloud_ply(path)
    cloud = addon("ply").read_point_cloud_ply(path)
    np.testing.assert_array_equal(cloud.positions, points)
    np.testing.assert_array_equal(as_uint8(cloud.colors), colors)
    np.testing.assert_array_equal(cloud.confidence, confidence)
    expected = np.stack([vertex[c] for c in COLOURS[names]], axis=1)  # independent truth: the written values
    np.testing.assert_array_equal(colors, expected if kind == "u1" else as_uint8(expected))


def test_point_cloud_without_colours_is_read_by_the_addon_and_refused_by_the_core(tmp_path):
    """The one intended difference: the core reads seed points for nerfstudio, which need colours; Blender
    draws an uncoloured cloud."""
    vertex = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    path = write_ply(tmp_path / "plain.ply", vertex, "le")
    with pytest.raises(CoreInputError, match="no colour"):
        core_ply.read_point_cloud_ply(path)
    assert addon("ply").read_point_cloud_ply(path).colors is None


# ---------------------------------------------------------------- 3DGS PLY


@pytest.mark.parametrize("fmt", ["ascii", "le", "be"])
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_splat_ply(tmp_path, degree, fmt):
    """INRIA layout, properties shuffled and with extras (normals, a tool's own field)."""
    rng = np.random.default_rng(degree * 10 + len(fmt))
    n, rest = 40, 3 * ((degree + 1) ** 2 - 1)
    names = ["x", "y", "z", "nx", "ny", "nz", "opacity", "extra"] + [f"f_dc_{i}" for i in range(3)]
    names += [f"f_rest_{i}" for i in range(rest)] + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    names = [names[i] for i in rng.permutation(len(names))]
    vertex = np.zeros(n, dtype=[(name, "f4") for name in names])
    for name in names:
        vertex[name] = rng.normal(size=n)
    path = write_ply(tmp_path / "splats.ply", vertex, fmt)

    core = core_ply.read_splat_ply(path)
    mine = addon("ply").read_splat_ply(path)
    for field in ("means", "scales_log", "rotations", "opacity_logit", "sh_dc", "sh_rest"):
        np.testing.assert_array_equal(getattr(mine, field), getattr(core, field), err_msg=field)
    assert mine.sh_degree == core.sh_degree == degree
    k = rest // 3  # independent truth: f_rest is channel-major, f_rest_{c*K + j} is colour c, coefficient j + 1
    for c in range(3):
        for j in range(k):
            np.testing.assert_array_equal(mine.sh_rest[:, j, c], vertex[f"f_rest_{c * k + j}"])


# ---------------------------------------------------------------- COLMAP


def compare_colmap(model: Path, image_dir: Path) -> None:
    """Both readers on one model: poses, intrinsics, sizes, image names in the same (image-id) order, points."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        core = core_colmap.read_colmap_model(model)
    scene = addon("colmap").read_colmap_model(model, image_dir=image_dir)
    assert [v.image_path for v in scene.cameras] == [image_dir / name for name in core.image_names]
    assert [(v.width, v.height) for v in scene.cameras] == [tuple(s) for s in core.image_sizes]
    for view, w2c, k in zip(scene.cameras, core.w2c, core.intrinsics, strict=True):
        np.testing.assert_allclose(view.w2c_opencv(), w2c[:3], atol=1e-9)
        np.testing.assert_allclose(view.k_matrix(), k, atol=1e-12)
    if len(core.points):
        np.testing.assert_array_equal(scene.points.positions, core.points.astype(np.float32))
        np.testing.assert_array_equal(as_uint8(scene.points.colors), core.colors)
    else:
        assert scene.points is None
    assert bool(scene.warnings) == any("distortion" in str(w.message) for w in caught)


@pytest.mark.parametrize("text", [False, True], ids=["bin", "txt"])
def test_colmap_model_written_by_pycolmap(tmp_path, text):
    """Image ids 1, 2, 3 named c, a, b: id order and name order differ."""
    import pycolmap

    names = ["c.png", "a.png", "b.png"]
    w2c = random_cameras(3, seed=11)
    ks = np.stack([k_matrix(400 + 10 * i, 380, 250 + i, 170) for i in range(3)])
    points = np.random.default_rng(5).normal(size=(20, 3))
    colors = np.random.default_rng(6).integers(0, 256, (20, 3))
    model = tmp_path / "sparse" / "0"
    core_colmap.write_colmap_model(model, w2c, ks, [(504, 336)] * 3, names, points, colors)
    if text:
        rec = pycolmap.Reconstruction(str(model))
        for f in model.iterdir():
            f.unlink()
        rec.write_text(str(model))
    compare_colmap(model, tmp_path / "images")
    assert [Path(v.image_path).name for v in addon("colmap").read_colmap_model(model).cameras] == names


def test_colmap_text_model_out_of_order_with_distortion(tmp_path):
    """A hand-written model: images and points listed out of id order, SIMPLE_RADIAL and OPENCV cameras."""
    model = tmp_path / "sparse" / "0"
    model.mkdir(parents=True)
    (model / "cameras.txt").write_text(
        "# CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]\n"
        "2 SIMPLE_RADIAL 640 480 500 320 240 0.01\n"
        "1 OPENCV 320 200 300 310 160 100 0.1 -0.02 0.001 0.002\n"
    )
    c, h = np.cos(np.pi / 8), np.sqrt(0.5)  # full precision: both readers take unit quaternions as stored
    q = [
        " ".join(repr(float(x)) for x in v)
        for v in [(c, 0.0, np.sin(np.pi / 8), 0.0), (1.0, 0.0, 0.0, 0.0), (h, h, 0.0, 0.0)]
    ]
    lines = [f"3 {q[0]} 0 -1 2 1 z.jpg\n\n", f"1 {q[1]} 0.5 0 1 2 b.jpg\n\n", f"2 {q[2]} 0 0 3 1 a.jpg\n\n"]
    (model / "images.txt").write_text("".join(lines))
    (model / "points3D.txt").write_text("9 0 0 5 255 0 0 0.1\n2 1 2 3 0 128 255 0.2\n5 -1 0 4 10 20 30 0.3\n")
    compare_colmap(model, tmp_path / "images")
    scene = addon("colmap").read_colmap_model(model)
    assert [Path(v.image_path).name for v in scene.cameras] == ["b.jpg", "a.jpg", "z.jpg"]  # ids 1, 2, 3
    np.testing.assert_array_equal(scene.points.positions, [[1, 2, 3], [-1, 0, 4], [0, 0, 5]])  # ids 2, 5, 9


# ---------------------------------------------------------------- transforms.json


def _frames(n: int, seed: int) -> list[dict]:
    c2w = np.linalg.inv(np.concatenate([random_cameras(n, seed), np.tile([[[0, 0, 0, 1.0]]], (n, 1, 1))], axis=1))
    return [{"file_path": f"images/{i:03d}.png", "transform_matrix": (c2w[i] @ np.diag([1, -1, -1, 1.0])).tolist()}
            for i in range(n)]  # fmt: skip


TRANSFORMS = {
    "per-frame": lambda: {
        "frames": [f | {"fl_x": 500.0 + i, "fl_y": 480.0, "cx": 320.5, "cy": 239.0, "w": 640, "h": 480}
                   for i, f in enumerate(_frames(3, 1))]  # fmt: skip
    },
    "global": lambda: {
        "fl_x": 400.0, "fl_y": 410.0, "cx": 200.0, "cy": 150.0, "w": 400, "h": 300, "frames": _frames(3, 2)
    },
    "override": lambda: {
        "fl_x": 400.0, "w": 400, "h": 300,
        "frames": [f | ({"fl_x": 420.0, "cx": 190.0, "w": 380} if i == 1 else {}) for i, f in enumerate(_frames(3, 3))],
    },  # fmt: skip
    "angle": lambda: {"camera_angle_x": 0.8, "w": 800, "h": 600, "frames": _frames(2, 4)},
    "angles": lambda: {"camera_angle_x": 0.8, "camera_angle_y": 0.7, "w": 800, "h": 600, "frames": _frames(2, 5)},
    "distorted": lambda: {
        "fl_x": 300.0, "w": 320, "h": 240, "k1": 0.1, "camera_model": "OPENCV", "frames": _frames(2, 6)
    },
}  # fmt: skip


@pytest.mark.parametrize("variant", list(TRANSFORMS))
def test_transforms_json(tmp_path, variant):
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps(TRANSFORMS[variant]()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w2c, ks, sizes, file_paths = core_transforms.read_transforms_json(path)
    scene = addon("nerfstudio_json").read_nerfstudio_json(path)
    assert [v.image_path for v in scene.cameras] == [tmp_path / f for f in file_paths]
    assert [(v.width, v.height) for v in scene.cameras] == [tuple(s) for s in sizes]
    for view, pose, k in zip(scene.cameras, w2c, ks, strict=True):
        np.testing.assert_allclose(view.w2c_opencv(), pose[:3], atol=1e-9)
        np.testing.assert_allclose(view.k_matrix(), k, rtol=1e-12)
    assert bool(scene.warnings) == any("distortion" in str(w.message) for w in caught)


def test_transforms_json_written_by_the_core_with_seed_points(tmp_path):
    """The core's writer, and the ``ply_file_path`` cloud (r g b colours, conf) read by both PLY readers."""
    w2c = random_cameras(4, seed=9)
    ks = np.stack([k_matrix(300 + i, 290, 160, 120) for i in range(4)])
    frames = core_transforms.frames_from_cameras(w2c, ks, [(320, 240)] * 4, [f"images/{i}.jpg" for i in range(4)])
    cloud = np.zeros(
        10, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("r", "u1"), ("g", "u1"), ("b", "u1"), ("conf", "f4")]
    )
    for name in cloud.dtype.names:
        cloud[name] = np.arange(10) * 7 % 256
    write_ply(tmp_path / "seed.ply", cloud, "be")
    path = tmp_path / "transforms.json"
    core_transforms.write_transforms_json(path, frames, ply_file_path="seed.ply")
    core = core_transforms.read_transforms_json(path)
    scene = addon("nerfstudio_json").read_nerfstudio_json(tmp_path)
    for view, pose, k in zip(scene.cameras, core[0], core[1], strict=True):
        np.testing.assert_allclose(view.w2c_opencv(), pose[:3], atol=1e-9)
        np.testing.assert_allclose(view.k_matrix(), k, rtol=1e-12)
    np.testing.assert_allclose(np.stack([v.w2c_opencv() for v in scene.cameras]), w2c, atol=1e-9)  # the truth
    points, colors, confidence = core_ply.read_point_cloud_ply(tmp_path / "seed.ply")
    np.testing.assert_array_equal(scene.points.positions, points)
    np.testing.assert_array_equal(as_uint8(scene.points.colors), colors)
    np.testing.assert_array_equal(scene.points.confidence, confidence)


# ---------------------------------------------------------------- predictions npz


def _prediction_arrays(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "depth": rng.uniform(0.5, 4.0, (n, 6, 8)).astype(np.float32),
        "conf": rng.uniform(0, 3, (n, 6, 8)).astype(np.float32),
        "extrinsics": random_cameras(n, seed)[:, :3].astype(np.float32),
        "intrinsics": np.stack([k_matrix(9.0 + i, 8.5, 4.0, 3.1) for i in range(n)]).astype(np.float32),
    }


def _gaussian_arrays(m: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "means": rng.normal(size=(m, 3)).astype(np.float32),
        "scales": rng.uniform(0.01, 0.1, (m, 3)).astype(np.float32),
        "rotations": rng.normal(size=(m, 4)).astype(np.float32),
        "harmonics": rng.normal(size=(m, 3, 4)).astype(np.float32),
        "opacities": rng.uniform(0, 1, m).astype(np.float32),
    }


def _official(path: Path) -> None:
    np.savez(path, **_prediction_arrays(3, 1))


def _homogeneous_with_names(path: Path) -> None:
    arrays = _prediction_arrays(2, 2)
    arrays["extrinsics"] = np.concatenate([arrays["extrinsics"], np.tile([[[0, 0, 0, 1]]], (2, 1, 1))], axis=1)
    images = np.random.default_rng(3).integers(0, 256, (2, 6, 8, 3), dtype=np.uint8)
    sky = np.zeros((2, 6, 8), bool)
    sky[:, 0] = True
    np.savez(path, **arrays, image=images, sky=sky, names=np.array(["frames/a.jpg", "frames/b.jpg"]))


def _project_writer(path: Path) -> None:
    prediction = pytest.importorskip("da3_nerfstudio.prediction", reason="the project's writer needs torch")
    arrays = _prediction_arrays(2, 4)
    images = np.random.default_rng(4).integers(0, 256, (2, 6, 8, 3), dtype=np.uint8)
    gaussians = _gaussian_arrays(30, 5)
    prediction.Prediction(**arrays, images=images, names=["x.png", "y.png"], gaussians=gaussians).save(path)


@pytest.mark.parametrize("write", [_official, _homogeneous_with_names, _project_writer])
def test_predictions_npz(tmp_path, write):
    prediction = pytest.importorskip("da3_nerfstudio.prediction", reason="the core's reader needs torch")
    path = tmp_path / "pred.npz"
    write(path)
    core = prediction.Prediction.load(path)
    preds = addon("predictions")
    mine = preds.read_predictions(path)
    np.testing.assert_array_equal(mine.depth, core.depth)
    np.testing.assert_array_equal(mine.extrinsics[:, :3].astype(np.float32), core.extrinsics)
    np.testing.assert_array_equal(mine.intrinsics.astype(np.float32), core.intrinsics)
    np.testing.assert_array_equal(mine.conf, core.conf)
    if mine.images is None:
        assert not core.images.any()  # the core fills absent images with black
    else:
        np.testing.assert_array_equal(mine.images, core.images)
    assert (mine.sky is None) == (core.sky is None)
    if core.sky is not None:
        np.testing.assert_array_equal(mine.sky, core.sky)
    if core.names:
        assert mine.names == [Path(n).stem for n in core.names]
    assert (mine.gaussians is None) == (core.gaussians is None)
    for key, values in (core.gaussians or {}).items():
        np.testing.assert_array_equal(mine.gaussians[key], values.astype(np.float64), err_msg=key)
    # Cameras: the add-on's Blender pose equals the core's OpenGL camera-to-world.
    views = preds.prediction_cameras(mine)
    np.testing.assert_allclose(np.stack([v.c2w for v in views]), core.c2w_opengl(), atol=1e-5)
    np.testing.assert_allclose(np.stack([v.k_matrix() for v in views]), core.intrinsics, rtol=1e-6)
