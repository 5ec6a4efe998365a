"""Imported cameras reproduce OpenCV projections in Blender to 1e-3 px, from every camera source.

Ground truth is the OpenCV pinhole projection of random world points; Blender's side is
``bpy_extras.object_utils.world_to_camera_view`` scaled to pixels, which goes through the camera's
lens, sensor fit, shift, the scene's resolution and pixel aspect and the object's world matrix.
"""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np
import pytest
from blender_inputs import (
    CAMERA_CASES,
    k_matrix,
    project_opencv,
    random_cameras,
    write_colmap,
    write_dataset,
    write_predictions,
)
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Vector

TOLERANCE_PX = 1e-3


def blender_pixels(cam_obj: bpy.types.Object, points_blender_world: np.ndarray) -> np.ndarray:
    """Pixel coordinates (continuous, origin top-left) of points as the scene renders through cam_obj."""
    scene = bpy.context.scene
    w, h = scene.render.resolution_x, scene.render.resolution_y
    out = []
    for p in points_blender_world:
        ndc = world_to_camera_view(scene, cam_obj, Vector(p.tolist()))
        out.append((ndc.x * w, (1.0 - ndc.y) * h))
    return np.array(out)


def points_in_view(w2c: np.ndarray, k: np.ndarray, size: tuple[int, int], seed: int) -> np.ndarray:
    """World points in front of the camera that land inside the image (and near its corners)."""
    rng = np.random.default_rng(seed)
    w, h = size
    uv = np.concatenate([rng.uniform([0, 0], [w, h], size=(30, 2)), [[0.5, 0.5], [w - 0.5, h - 0.5]]])
    depth = rng.uniform(1.0, 8.0, size=len(uv))
    cam = np.linalg.inv(k) @ np.vstack([uv.T, np.ones(len(uv))]) * depth
    r, t = w2c[:3, :3], w2c[:3, 3]
    return (r.T @ (cam - t[:, None])).T


def assert_cameras_match(
    root: bpy.types.Object, names: list[str], w2c: np.ndarray, ks: np.ndarray, size: tuple[int, int]
) -> None:
    bpy.context.view_layer.update()
    world = np.array(root.matrix_world)
    for i, name in enumerate(names):
        cam_obj = bpy.data.objects[Path(name).stem]
        points = points_in_view(w2c[i], ks[i], size, seed=i)
        expected = project_opencv(w2c[i], ks[i], points)
        in_blender = points @ world[:3, :3].T + world[:3, 3]
        error = np.abs(blender_pixels(cam_obj, in_blender) - expected).max()
        assert error < TOLERANCE_PX, f"{name}: max reprojection error {error:.2e} px"


@pytest.mark.parametrize("case", CAMERA_CASES, ids=[c[0] for c in CAMERA_CASES])
def test_transforms_json_cameras_project_like_opencv(addon, tmp_path, case):
    _, w, h, fx, fy, cx, cy = case
    w2c = random_cameras(3, seed=1)
    ks = np.stack([k_matrix(fx, fy, cx, cy)] * 3)
    names = ["a.png", "b.png", "c.png"]
    path = write_dataset(tmp_path, w2c, ks, (w, h), names)
    assert bpy.ops.da3.import_dataset(filepath=str(path), z_up=True) == {"FINISHED"}
    root = bpy.data.objects["DA3 transforms"]
    assert_cameras_match(root, names, w2c, ks, (w, h))
    assert bpy.context.scene.render.resolution_x == w and bpy.context.scene.render.resolution_y == h


@pytest.mark.parametrize("case", CAMERA_CASES, ids=[c[0] for c in CAMERA_CASES])
def test_colmap_cameras_project_like_opencv(addon, tmp_path, case):
    _, w, h, fx, fy, cx, cy = case
    w2c = random_cameras(2, seed=2)
    ks = np.stack([k_matrix(fx, fy, cx, cy)] * 2)
    names = ["img_0.jpg", "img_1.jpg"]
    rng = np.random.default_rng(0)
    model = write_colmap(tmp_path, w2c, ks, (w, h), names, rng.normal(size=(50, 3)), rng.integers(0, 255, (50, 3)))
    assert bpy.ops.da3.import_colmap(filepath=str(model / "cameras.bin"), z_up=True) == {"FINISHED"}
    root = next(o for o in bpy.data.objects if o.get("da3_root"))
    assert_cameras_match(root, names, w2c, ks, (w, h))


@pytest.mark.parametrize("case", CAMERA_CASES, ids=[c[0] for c in CAMERA_CASES])
def test_predictions_cameras_project_like_opencv(addon, tmp_path, case):
    _, w, h, fx, fy, cx, cy = case
    ks = np.stack([k_matrix(fx, fy, cx, cy)] * 2)
    path = write_predictions(tmp_path / "pred.npz", random_cameras(2, seed=3), ks, np.ones((2, h, w)), official=True)
    assert bpy.ops.da3.import_predictions(filepath=str(path), z_up=False) == {"FINISHED"}
    with np.load(path) as npz:  # truth from the stored (float32) values
        w2c, ks = npz["extrinsics"].astype(np.float64), npz["intrinsics"].astype(np.float64)
    root = bpy.data.objects["DA3 pred"]
    assert_cameras_match(root, ["pred_000", "pred_001"], w2c, ks, (w, h))


def test_room_ground_truth_cameras_and_images(addon, tmp_path, room_gt):
    """Real poses of the room sample; the embedded images become packed camera backgrounds."""
    from PIL import Image

    n, h, w = room_gt["depths"].shape
    w2c = np.linalg.inv(room_gt["poses"])[:, :3]
    images = np.stack([np.asarray(Image.open(room_gt["rgb_dir"] / f"{i}.png").convert("RGB")) for i in range(n)])
    names = [f"rgb/{i}.png" for i in range(n)]
    path = write_predictions(tmp_path / "room.npz", w2c, room_gt["intrinsics"], room_gt["depths"], images, names=names)
    assert bpy.ops.da3.import_predictions(filepath=str(path)) == {"FINISHED"}
    with np.load(path) as npz:
        w2c, ks = npz["extrinsics"].astype(np.float64), npz["intrinsics"].astype(np.float64)
    assert_cameras_match(bpy.data.objects["DA3 room"], [str(i) for i in range(n)], w2c, ks, (w, h))
    cam = bpy.data.objects["3"].data  # cameras are named after the image stems
    image = cam.background_images[0].image
    assert tuple(image.size) == (w, h) and image.packed_file is not None
    pixels = np.empty(w * h * 4, np.float32)
    image.pixels.foreach_get(pixels)
    top_row_in_blender = pixels.reshape(h, w, 4)[-1, :, :3]  # Blender stores rows bottom-up
    np.testing.assert_allclose(top_row_in_blender, images[3, 0] / 255.0, atol=1e-6)


def test_animated_camera_passes_through_every_view(addon, tmp_path):
    w2c = random_cameras(5, seed=4)
    ks = np.stack([k_matrix(500, 500, 320, 240)] * 5)
    path = write_dataset(tmp_path, w2c, ks, (640, 480), [f"{i}.png" for i in range(5)])
    assert bpy.ops.da3.import_dataset(filepath=str(path), animated_camera=True) == {"FINISHED"}
    scene = bpy.context.scene
    anim = bpy.data.objects["DA3 Animated Camera"]
    assert (scene.frame_start, scene.frame_end) == (1, 5)
    quats = []
    for frame in range(1, 6):
        scene.frame_set(frame)
        np.testing.assert_allclose(
            np.array(anim.matrix_world), np.array(bpy.data.objects[str(frame - 1)].matrix_world), atol=1e-5
        )
        quats.append(np.array(anim.rotation_quaternion))
    # continuous quaternions: no sign flips between consecutive keys
    assert all(np.dot(a, b) >= 0 for a, b in zip(quats, quats[1:], strict=False))


def test_missing_images_still_create_cameras_with_a_warning(addon, tmp_path):
    w2c = random_cameras(2, seed=5)
    ks = np.stack([k_matrix(500, 500, 320, 240)] * 2)
    path = write_dataset(tmp_path, w2c, ks, (640, 480), ["gone_0.png", "gone_1.png"])
    assert bpy.ops.da3.import_dataset(filepath=str(path)) == {"FINISHED"}
    for name in ("gone_0", "gone_1"):
        assert bpy.data.objects[name].type == "CAMERA"
        assert len(bpy.data.objects[name].data.background_images) == 0


def test_existing_images_become_backgrounds(addon, tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(tmp_path / "images" / "red.png")
    path = write_dataset(tmp_path, random_cameras(1, seed=6), k_matrix(60, 60, 32, 24)[None], (64, 48), ["red.png"])
    assert bpy.ops.da3.import_dataset(filepath=str(tmp_path)) == {"FINISHED"}  # the dataset folder works too
    cam = bpy.data.objects["red"].data
    assert cam.show_background_images
    assert Path(cam.background_images[0].image.filepath) == path.parent / "images" / "red.png"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "not valid JSON"),
        ("{}", "no 'frames'"),
        (
            '{"frames": [{"file_path": "a.png", "transform_matrix": [[1,0,0,0]]}], "w": 4, "h": 4, "fl_x": 2}',
            "12 or 16",
        ),
        ('{"frames": [{"file_path": "a.png", "transform_matrix": []}]}', "lacks 'w'"),
    ],
)
def test_bad_transforms_json_gives_one_line_error(addon, tmp_path, content, message):
    path = tmp_path / "transforms.json"
    path.write_text(content)
    with pytest.raises(RuntimeError, match=message) as info:
        bpy.ops.da3.import_dataset(filepath=str(path))
    assert str(path) in str(info.value) and "Traceback" not in str(info.value)
    assert not [o for o in bpy.data.objects if o.type == "CAMERA"]


def test_bad_predictions_npz_gives_one_line_error(addon, tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, depth=np.ones((2, 4, 4)), intrinsics=np.eye(3)[None].repeat(2, 0))
    with pytest.raises(RuntimeError, match="lacks keys \\['extrinsics'\\]"):
        bpy.ops.da3.import_predictions(filepath=str(path))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(RuntimeError, match="not a readable npz"):
        bpy.ops.da3.import_predictions(filepath=str(truncated))


def test_colmap_text_model_and_missing_model(addon, tmp_path):
    """A text model (written by pycolmap) gives the same cameras as its binary twin."""
    import pycolmap

    w2c = random_cameras(2, seed=7)
    ks = np.stack([k_matrix(400, 380, 250, 170)] * 2)
    model = write_colmap(tmp_path / "bin", w2c, ks, (504, 336), ["p.png", "q.png"], np.zeros((3, 3)), np.zeros((3, 3)))
    text = tmp_path / "txt"
    text.mkdir()
    pycolmap.Reconstruction(str(model)).write_text(str(text))
    assert bpy.ops.da3.import_colmap(filepath=str(text / "images.txt"), z_up=False) == {"FINISHED"}
    root = next(o for o in bpy.data.objects if o.get("da3_root"))
    assert_cameras_match(root, ["p.png", "q.png"], w2c, ks, (504, 336))
    with pytest.raises(RuntimeError, match="no COLMAP model"):
        bpy.ops.da3.import_colmap(filepath=str(tmp_path / "nothing" / "cameras.bin"))
