"""scripts/demo_scene.py: the demo's rendered input scene, checked against the geometry it was built from.

The script runs as a subprocess (bpy can be imported only once per process). Its ground truth is
checked against facts that do not go through its own conversions: the ground is the plane z = 0 and
the walls are the planes |x| = ROOM_HALF, |y| = ROOM_HALF, so every unprojected depth pixel must lie
on a plane or inside the object area (which catches a distance-vs-z-depth mix-up, a wrong focal
length, principal point or axis flip); a point seen in one view must reappear at the same depth and
colour in the next view; the cameras sit on the documented ring, looking at the documented target.
"""

from __future__ import annotations

import importlib.util
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from PIL import Image

from da3_nerfstudio.geometry import project_points, unproject_depth
from da3_nerfstudio.prediction import Prediction

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "demo_scene.py"
VIEWS, WIDTH, HEIGHT = 6, 96, 72
SMALL = ["--views", str(VIEWS), "--width", str(WIDTH), "--height", str(HEIGHT), "--samples", "4", "--threads", "2"]
#: Objects stand within this distance of the vertical axis through the target (the script places
#: them at most 1.6 m out, plus their own size); outside it, only ground and walls exist.
OBJECT_AREA_RADIUS = 2.5

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("bpy") is None, reason="bpy (Blender as a Python module) is not installed"
)


#: The script's documented layout (ring, target, room); running its module body does not import bpy.
LAYOUT = SimpleNamespace(**runpy.run_path(str(SCRIPT), run_name="demo_scene"))


def _run(output: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--output", str(output), *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scene")
    result = _run(out, *SMALL)
    assert result.returncode == 0, result.stderr
    return out


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "ground_truth.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Sample ``image`` at continuous-convention pixel coordinates (cv2 puts pixel centres at integers)."""
    map_x = (uv[..., 0] - 0.5).astype(np.float32)
    map_y = (uv[..., 1] - 0.5).astype(np.float32)
    return cv2.remap(image.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR)


def test_files_and_layout(scene: Path) -> None:
    a = _arrays(scene)
    names = [f"frame_{i:04d}.png" for i in range(VIEWS)]
    assert list(a["names"]) == names
    assert a["image"].shape == (VIEWS, HEIGHT, WIDTH, 3) and a["image"].dtype == np.uint8
    assert a["depth"].shape == a["conf"].shape == (VIEWS, HEIGHT, WIDTH)
    assert a["depth"].dtype == a["conf"].dtype == np.float32
    assert a["extrinsics"].shape == (VIEWS, 3, 4) and a["intrinsics"].shape == (VIEWS, 3, 3)
    # The yard encloses every view: every ray hits a surface, so all depths are finite and confident.
    assert np.all(a["conf"] == 1.0) and np.all(np.isfinite(a["depth"])) and np.all(a["depth"] > 0.1)
    for i, name in enumerate(names):
        with Image.open(scene / "images" / name) as png:
            assert png.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(png), a["image"][i])
    # The project's own reader (used by `da3-process-data predictions`) takes the file as is.
    pred = Prediction.load(scene / "ground_truth.npz")
    assert len(pred) == VIEWS and pred.names == names and pred.is_metric
    assert pred.valid_mask(percentile=0).all()


def test_depth_lands_on_the_known_planes(scene: Path) -> None:
    a = _arrays(scene)
    points = unproject_depth(a["depth"].astype(np.float64), a["intrinsics"].astype(np.float64), a["extrinsics"])
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    outside = np.hypot(x - LAYOUT.TARGET[0], y - LAYOUT.TARGET[1]) > OBJECT_AREA_RADIUS
    to_plane = np.minimum.reduce(
        [np.abs(z), np.abs(np.abs(x) - LAYOUT.ROOM_HALF), np.abs(np.abs(y) - LAYOUT.ROOM_HALF)]
    )
    # Float32 depth up to ~15 m: a millimetre is ~100x its rounding; a wrong K or range-vs-z depth is metres off.
    assert np.max(to_plane[outside]) < 1e-3
    assert outside.mean() > 0.3  # the check covers a good part of every image...
    for view in range(VIEWS):
        on_ground = np.abs(z[view]) < 1e-3
        assert on_ground.mean() > 0.2  # ...ground in every view
    # Nothing lies below the ground or beyond the walls, objects included.
    assert z.min() > -1e-3 and np.abs(x).max() < LAYOUT.ROOM_HALF + 1e-3 and np.abs(y).max() < LAYOUT.ROOM_HALF + 1e-3


def test_neighbouring_views_agree_on_depth_and_colour(scene: Path) -> None:
    a = _arrays(scene)
    depth = a["depth"].astype(np.float64)
    K, w2c = a["intrinsics"].astype(np.float64), a["extrinsics"].astype(np.float64)
    points = unproject_depth(depth, K, w2c)
    for src in range(VIEWS):
        dst = (src + 1) % VIEWS
        uv, z = project_points(points[src], K[dst], w2c[dst])
        inside = (z > 0) & (uv[..., 0] > 0.5) & (uv[..., 0] < WIDTH - 0.5) & (uv[..., 1] > 0.5)
        inside &= uv[..., 1] < HEIGHT - 0.5
        assert inside.mean() > 0.5
        # Inverse depth is affine in the image over a plane, so it interpolates exactly there.
        inverse = _bilinear(1.0 / a["depth"][dst], uv)
        rel = np.full(z.shape, np.inf)
        rel[inside] = np.abs(1.0 / inverse[inside] - z[inside]) / z[inside]
        assert np.median(rel[inside]) < 0.01
        visible = inside & (rel < 0.01)
        assert visible.sum() > 0.4 * inside.sum()
        # Colour of the same surface point in both photos (matte surfaces, sun light: view-independent).
        colour = np.abs(_bilinear(a["image"][dst], uv) - a["image"][src]).mean(axis=-1)
        error = np.median(colour[visible])
        assert error < 6.0
        # Control: the same comparison two pixels off is clearly worse, so the match is not luck.
        shifted = uv + np.array([2.0, 0.0])
        off = np.abs(_bilinear(a["image"][dst], shifted) - a["image"][src]).mean(axis=-1)
        assert np.median(off[visible]) > 1.5 * error


def test_cameras_are_on_the_ring_looking_at_the_target(scene: Path) -> None:
    a = _arrays(scene)
    w2c = a["extrinsics"].astype(np.float64)
    R, t = w2c[:, :, :3], w2c[:, :, 3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-6)
    centres = -np.einsum("nji,nj->ni", R, t)
    target = np.array(LAYOUT.TARGET)
    offset = centres - target
    np.testing.assert_allclose(np.hypot(offset[:, 0], offset[:, 1]), LAYOUT.RING_RADIUS, atol=1e-4)
    lo, hi = LAYOUT.HEIGHT_RANGE
    assert np.all((centres[:, 2] >= lo - 1e-4) & (centres[:, 2] <= hi + 1e-4))
    assert np.ptp(centres[:, 2]) > 0.3 * (hi - lo)  # heights vary
    azimuth = np.unwrap(np.arctan2(offset[:, 1], offset[:, 0]))
    np.testing.assert_allclose(np.diff(azimuth), 2 * np.pi / VIEWS, atol=1e-5)
    # OpenCV axes: z (third row of R) points at the target, x is horizontal (no roll), y points down.
    towards = -offset / np.linalg.norm(offset, axis=1, keepdims=True)
    np.testing.assert_allclose(R[:, 2], towards, atol=1e-5)
    np.testing.assert_allclose(R[:, 0, 2], 0.0, atol=1e-6)
    assert np.all(R[:, 1, 2] < 0)
    K = a["intrinsics"]
    np.testing.assert_allclose(K[:, 0, 2], WIDTH / 2)
    np.testing.assert_allclose(K[:, 1, 2], HEIGHT / 2)
    np.testing.assert_allclose(K[:, 0, 0], K[:, 1, 1])


def test_runs_are_identical_and_a_rerun_replaces_the_old_frames(scene: Path, tmp_path: Path) -> None:
    result = _run(tmp_path, *SMALL)
    assert result.returncode == 0, result.stderr
    first, second = _arrays(scene), _arrays(tmp_path)
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    for name in first["names"]:
        assert (scene / "images" / name).read_bytes() == (tmp_path / "images" / name).read_bytes()
    # A shorter run into the same folder: the ground truth and the frame set both shrink to match.
    result = _run(tmp_path, "--views", "3", "--width", "48", "--height", "36", "--samples", "1")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [f"frame_{i:04d}.png" for i in range(3)]
    assert _arrays(tmp_path)["depth"].shape == (3, 36, 48)


#: Runs in a fresh Blender process: an empty world, a 1 m square facing the camera 2 m away, and the
#: script's own render settings and depth render; saves the Z-pass-derived depth and confidence.
FACING_PLANE = """
import runpy, sys
from pathlib import Path
import bpy  # first: bmesh and mathutils exist only once bpy is imported
import bmesh, numpy as np
from mathutils import Matrix
from da3_nerfstudio.process_exit import exit_process
ds = runpy.run_path(sys.argv[1], run_name="demo_scene")
bpy.ops.wm.read_factory_settings(use_empty=True)
config = ds["DemoSceneConfig"](output=Path(sys.argv[2]), width=64, height=48, samples=1, threads=1)
ds["configure_render"](config)
bm = bmesh.new()
bmesh.ops.create_grid(bm, x_segments=1, y_segments=1, size=0.5, matrix=Matrix.Translation((0.1, -0.05, -2.0)))
mesh = bpy.data.meshes.new("square")
bm.to_mesh(mesh)
bpy.context.scene.collection.objects.link(bpy.data.objects.new("square", mesh))
camera = bpy.data.cameras.new("camera")
camera.sensor_fit, camera.sensor_width, camera.lens = "HORIZONTAL", 36.0, 30.0
bpy.context.scene.camera = bpy.data.objects.new("camera", camera)  # at the origin, looking down -z
bpy.context.scene.collection.objects.link(bpy.context.scene.camera)
depth, conf = ds["depth_and_confidence"](ds["render_depth"](Path(sys.argv[2]) / "exr"))
np.savez(Path(sys.argv[2]) / "plane.npz", depth=depth, conf=conf)
exit_process(0)
"""


def test_depth_render_of_a_facing_square(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", FACING_PLANE, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "plane.npz") as data:
        depth, conf = data["depth"], data["conf"]
    # Where the square is: z-depth is the plane's distance, 2 m, in every pixel (a range would grow off-axis).
    hit = conf == 1
    np.testing.assert_allclose(depth[hit], 2.0, rtol=1e-6)
    # Where nothing is: depth 0, confidence 0.
    assert np.all(depth[~hit] == 0) and np.all(conf[~hit] == 0)
    # The square's image, by pinhole projection (f = 30/36 * 64 px, centre (32, 24), OpenCV y down):
    # x in [-0.4, 0.6] m and y_cv in [-0.45, 0.55] m at 2 m. Pixel centres clearly inside hit, outside miss.
    f = 30.0 / 36.0 * 64
    u, v = np.meshgrid(np.arange(64) + 0.5, np.arange(48) + 0.5)
    x, y = (u - 32) / f * 2.0, (v - 24) / f * 2.0
    margin = 2.0 / f  # one pixel at 2 m
    inside = (x > -0.4 + margin) & (x < 0.6 - margin) & (y > -0.45 + margin) & (y < 0.55 - margin)
    outside = (x < -0.4 - margin) | (x > 0.6 + margin) | (y < -0.45 - margin) | (y > 0.55 + margin)
    assert hit[inside].all() and not hit[outside].any()
    assert inside.sum() > 300 and outside.sum() > 1000


def test_bad_settings_give_one_line_errors(tmp_path: Path) -> None:
    result = _run(tmp_path / "out", "--views", "1")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--views 1" in result.stderr
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("keep me")
    result = _run(not_a_folder)
    assert result.returncode == 2
    assert str(not_a_folder) in result.stderr and result.stderr.strip().count("\n") == 0
    assert not_a_folder.read_text() == "keep me"
