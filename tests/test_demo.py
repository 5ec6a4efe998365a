"""``make demo`` end to end on a tiny setting, through the same script, checked against the scene's exact geometry.

``scripts/demo.py`` runs once (8 views at 96x72, 30 iterations) with a model folder that does not exist,
so the no-weights path is the one exercised: the dataset must come from the rendered ground truth and
say so. Every artefact is then read by a real consumer (pycolmap, the project's PLY reader, bpy opening
the ``.blend``) and compared with ``scene/ground_truth.npz``, the renderer's own cameras and depth.
A second, shorter run takes the network branch with the parity fixture's (untrained) checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from samples import CV_TO_GL

from da3_nerfstudio.dataset import split_indices
from da3_nerfstudio.errors import InputError
from da3_nerfstudio.formats.ply import read_splat_ply
from da3_nerfstudio.geometry import project_points

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "scripts" / "demo.py"
DEMO_BLEND = ROOT / "scripts" / "demo_blend.py"
VIEWS, WIDTH, HEIGHT, EVAL_INTERVAL, STRIDE = 8, 96, 72, 4, 2
QUICK = [
    "--views", str(VIEWS), "--width", str(WIDTH), "--height", str(HEIGHT), "--samples", "4",
    "--eval-interval", str(EVAL_INTERVAL), "--seed-stride", str(STRIDE), "--iterations", "30",
    "--train-downscales", "0", "--preview-width", "96", "--preview-samples", "4",
]  # fmt: skip

for _module in ("bpy", "nerfstudio"):
    if importlib.util.find_spec(_module) is None:
        pytest.skip(f"{_module} is not installed (pip install -e '.[dev,nerfstudio]')", allow_module_level=True)


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The quick demo's output folder and its console output."""
    base = tmp_path_factory.mktemp("demo")
    out = base / "demo"
    proc = _run([str(DEMO), "--output", str(out), "--model", str(base / "no-weights"), *QUICK], timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return out, log


@pytest.fixture(scope="module")
def truth(demo: tuple[Path, str]) -> dict[str, np.ndarray]:
    """The renderer's exact cameras, depth and photos (world = Blender's, metres)."""
    with np.load(demo[0] / "scene" / "ground_truth.npz") as data:
        return {key: data[key] for key in data.files}


def _frames(out: Path) -> tuple[list[dict], dict]:
    """transforms.json frames in view order (the dataset numbers the scene's frames in order)."""
    meta = json.loads((out / "dataset" / "transforms.json").read_text())
    return sorted(meta["frames"], key=lambda f: f["file_path"]), meta


def test_no_weights_is_one_line_and_ground_truth_is_labelled(demo: tuple[Path, str]) -> None:
    out, log = demo
    lines = [line for line in log.splitlines() if "DA3 weights not used" in line]
    assert len(lines) == 1 and "no-weights" in lines[0] and "GROUND TRUTH" in lines[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ground_truth_geometry"] is True and "GROUND TRUTH" in summary["geometry"]
    assert "GROUND TRUTH" in (out / "summary.md").read_text()
    assert not any(out.parent.glob(".demo.*")), "the staging folder was left behind"


def test_dataset_cameras_are_the_scene_cameras(demo: tuple[Path, str], truth: dict) -> None:
    """pycolmap reads the dataset's COLMAP model; its poses and intrinsics are the renderer's."""
    import pycolmap

    out, _ = demo
    reconstruction = pycolmap.Reconstruction(str(out / "dataset" / "colmap" / "sparse" / "0"))
    images = sorted(reconstruction.images.values(), key=lambda image: image.name)
    assert len(images) == VIEWS
    for index, image in enumerate(images):
        np.testing.assert_allclose(image.cam_from_world().matrix(), truth["extrinsics"][index], atol=1e-5)
        camera = reconstruction.cameras[image.camera_id]
        np.testing.assert_allclose(camera.calibration_matrix(), truth["intrinsics"][index], atol=1e-4)
    frames, meta = _frames(out)
    _, held_out = split_indices(VIEWS, EVAL_INTERVAL)
    assert meta["test_filenames"] == [frames[i]["file_path"] for i in held_out]


def test_initial_gaussians_come_from_training_views_only(demo: tuple[Path, str], truth: dict) -> None:
    """Every seed Gaussian sits on a pixel centre of a training view, at that pixel's true depth; a seed
    from a held-out view would not (its pixels are not on the training views' pixel grids)."""
    out, _ = demo
    seeds = read_splat_ply(out / "dataset" / "splat_init.ply")
    train, held_out = split_indices(VIEWS, EVAL_INTERVAL)
    assert len(seeds) == len(train) * math.ceil(WIDTH / STRIDE) * math.ceil(HEIGHT / STRIDE)
    means = seeds.means.astype(np.float64)
    on_grid = np.zeros(len(means), dtype=bool)
    for index in train:
        uv, z = project_points(means, truth["intrinsics"][index].astype(np.float64), truth["extrinsics"][index])
        col, row = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
        inside = (z > 0) & (col >= 0) & (col < WIDTH) & (row >= 0) & (row < HEIGHT)
        depth = np.zeros(len(means))
        depth[inside] = truth["depth"][index][row[inside], col[inside]]
        centred = np.abs(uv - np.floor(uv) - 0.5).max(axis=1) < 1e-3
        on_grid |= inside & centred & (np.abs(z - depth) < 1e-4 * np.maximum(depth, 1.0))
    assert on_grid.all(), f"{(~on_grid).sum()} of {len(means)} seeds are not on a training view's pixels"
    assert held_out  # the check above is only meaningful with views held out


def test_exported_splats_read_back(demo: tuple[Path, str]) -> None:
    out, _ = demo
    splats = read_splat_ply(out / "splat.ply")
    summary = json.loads((out / "summary.json").read_text())
    assert len(splats) == summary["blender"]["splats"] > 1000
    for name in ("means", "scales_log", "rotations", "opacity_logit", "sh_dc", "sh_rest"):
        assert np.isfinite(getattr(splats, name)).all(), name


def test_summary_reports_held_out_psnr_and_every_stage(demo: tuple[Path, str]) -> None:
    out, _ = demo
    summary = json.loads((out / "summary.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())["results"]
    assert summary["psnr"] == pytest.approx(metrics["psnr"])
    assert 5.0 < summary["psnr"] < 60.0  # a finite image comparison, not a placeholder
    assert [s["stage"] for s in summary["stages"]] == ["scene", "geometry", "train", "evaluate + export", "blender"]
    assert all(s["seconds"] > 0 for s in summary["stages"])
    assert summary["total_seconds"] >= sum(s["seconds"] for s in summary["stages"])
    assert f"{summary['psnr']:.2f} dB" in (out / "summary.md").read_text()


def test_blend_holds_one_root_with_cameras_points_and_splats_on_the_scene(demo: tuple[Path, str], truth: dict) -> None:
    """bpy opens the .blend: one top-level root; its cameras are the renderer's cameras and the splats
    (moved back from nerfstudio's normalised frame by the root hierarchy) lie on the scene's surfaces."""
    import bpy

    out, _ = demo
    bpy.ops.wm.open_mainfile(filepath=str(out / "demo.blend"))
    scene = list(bpy.context.scene.objects)  # (the add-on also keeps an unlinked point-shape template)
    roots = [o for o in scene if o.parent is None]
    assert len(roots) == 1 and roots[0].get("da3_root")
    below = [o for o in scene if o is not roots[0]]
    for obj in below:  # everything hangs under the one root
        top = obj
        while top.parent is not None:
            top = top.parent
        assert top is roots[0], obj.name
    cameras = sorted((o for o in below if o.type == "CAMERA"), key=lambda o: o.name)
    points = [o for o in below if o.type == "MESH" and "conf" in o.data.attributes]
    splats = [o for o in below if o.type in ("MESH", "POINTCLOUD") and "opacity" in o.data.attributes]
    assert len(cameras) == VIEWS and len(points) == 1 and len(splats) == 1
    for index, camera in enumerate(cameras):
        expected = np.linalg.inv(np.vstack([truth["extrinsics"][index], [0, 0, 0, 1]])) @ CV_TO_GL
        np.testing.assert_allclose(np.array(camera.matrix_world), expected, atol=1e-4)

    def world(obj: bpy.types.Object) -> np.ndarray:
        local = np.empty(len(obj.data.attributes["position"].data) * 3, np.float32)
        obj.data.attributes["position"].data.foreach_get("vector", local)
        matrix = np.array(obj.matrix_world)
        return local.reshape(-1, 3) @ matrix[:3, :3].T + matrix[:3, 3]

    for obj, tolerance in ((points[0], 1e-4), (splats[0], 0.05)):
        positions = world(obj)
        if obj is splats[0]:
            opacity = np.empty(len(positions), np.float32)
            obj.data.attributes["opacity"].data.foreach_get("value", opacity)
            positions = positions[opacity > 0.5]
        best = np.full(len(positions), np.inf)
        for index in range(VIEWS):  # relative depth error in the view that sees the point best
            K, w2c = truth["intrinsics"][index].astype(np.float64), truth["extrinsics"][index]
            uv, z = project_points(positions.astype(np.float64), K, w2c)
            col, row = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
            inside = (z > 0) & (col >= 0) & (col < WIDTH) & (row >= 0) & (row < HEIGHT)
            depth = np.full(len(positions), np.nan)
            depth[inside] = truth["depth"][index][row[inside], col[inside]]
            err = np.abs(z - depth) / depth
            best = np.fmin(best, np.where(inside & (depth > 0), err, np.inf))
        assert len(positions) > 100 and np.median(best) < tolerance, (obj.name, np.median(best))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images: insensitive to the render's overall brightness and holes."""
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_preview_is_the_held_out_view(demo: tuple[Path, str], truth: dict) -> None:
    """Left half: the Cycles render of the splats through the held-out camera, which correlates with the
    held-out photo better than with any other view and better than with that photo shifted by 8 px;
    right half: the held-out photo itself."""
    out, _ = demo
    summary = json.loads((out / "summary.json").read_text())
    with Image.open(out / "preview.png") as png:
        preview = np.asarray(png.convert("RGB")).astype(np.float64)
    width, height = summary["blender"]["preview_size"]
    assert preview.shape == (height, 2 * width, 3) and width >= 64 and height >= 64
    render, photo = preview[:, :width], preview[:, width:]
    assert render.std() > 10, "the render is (nearly) uniform"
    frames, _ = _frames(out)
    index = [f["file_path"] for f in frames].index(summary["blender"]["view"])
    photos = [
        np.asarray(Image.fromarray(im).resize((width, height), Image.Resampling.LANCZOS)).astype(np.float64)
        for im in truth["image"]
    ]
    np.testing.assert_allclose(photo, photos[index], atol=1)
    scores = [_correlation(render, p) for p in photos]
    assert int(np.argmax(scores)) == index, scores
    m = 8
    centre = render[m:-m, m:-m]
    shifted = [
        _correlation(centre, photo[m + dy : height - m + dy, m + dx : width - m + dx])
        for dx in (-m, 0, m)
        for dy in (-m, 0, m)
        if (dx, dy) != (0, 0)
    ]
    assert _correlation(centre, photo[m:-m, m:-m]) > max(shifted), shifted


def test_with_weights_the_network_gives_the_geometry(tmp_path: Path) -> None:
    """The DA3 branch: with a checkpoint folder the dataset comes from the network and is labelled DA3.

    The weights are the parity fixture's deterministic, UNTRAINED ones (no trained weights can be
    downloaded here): this proves the plumbing only, and the depth is expected to be far from the truth."""
    from da3_fixtures import write_checkpoint

    checkpoint = write_checkpoint(tmp_path / "da3-small", "da3-small")
    out = tmp_path / "demo"
    settings = list(QUICK)
    settings[settings.index("--iterations") + 1] = "10"  # the training itself is checked by the run above
    proc = _run([str(DEMO), "--output", str(out), "--model", str(checkpoint), *settings], timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "DA3 weights not used" not in log and "GROUND TRUTH" not in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ground_truth_geometry"] is False and summary["geometry"] == f"DA3 ({checkpoint})"
    assert json.loads((out / "dataset" / "da3" / "dataset.json").read_text())["model"] == "da3-small"
    with np.load(out / "scene" / "ground_truth.npz") as data:
        true_depth = data["depth"][0]
    depth = np.load(out / "dataset" / "depths" / "frame_00001.npy")  # at the network's resolution
    true_depth = cv2.resize(true_depth, depth.shape[::-1], interpolation=cv2.INTER_NEAREST)
    assert np.isfinite(depth).all() and not np.allclose(depth, true_depth, rtol=1e-2)
    assert (out / "demo.blend").is_file() and (out / "splat.ply").is_file()


def test_existing_folder_not_written_by_the_demo_is_refused(tmp_path: Path) -> None:
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    proc = _run([str(DEMO), "--output", str(precious)], timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "not written by the demo" in proc.stderr
    assert [p.name for p in precious.iterdir()] == ["notes.txt"]
    assert (precious / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging folder left


def _demo_module() -> object:
    """scripts/demo.py as a module (registered first: its dataclasses look their module up)."""
    if "demo_script" not in sys.modules:
        spec = importlib.util.spec_from_file_location("demo_script", DEMO)
        sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules["demo_script"]


def test_a_new_run_replaces_an_earlier_demo_by_renames_only(tmp_path: Path) -> None:
    """An earlier demo (it has summary.json) is accepted as --output and replaced whole by the staging
    folder; nothing of either is left beside it."""
    demo = _demo_module()
    output, staging = tmp_path / "demo", tmp_path / ".demo.1234.tmp"
    output.mkdir()
    (output / "summary.json").write_text("{}")
    (output / "stale.ply").write_text("old")
    staging.mkdir()
    (staging / "summary.json").write_text('{"psnr": 20}')
    demo.validate(demo.DemoConfig(output=output, model="unused"))
    demo._swap_in(staging, output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
    assert sorted(p.name for p in output.iterdir()) == ["summary.json"]
    assert json.loads((output / "summary.json").read_text()) == {"psnr": 20}


def test_settings_without_a_held_out_view_or_preview_are_refused(tmp_path: Path) -> None:
    demo = _demo_module()
    for settings, message in (
        ({"views": 2}, "--views 2"),
        ({"views": 4, "eval_interval": 8}, "--eval-interval 8"),
        ({"preview_width": 80}, "--preview-width 80"),  # 80x60 < 64x64
    ):
        with pytest.raises(InputError, match=message):
            demo.validate(demo.DemoConfig(output=tmp_path / "out", model="unused", **settings))


def test_demo_blend_names_a_missing_input_in_one_line(demo: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = demo
    missing = tmp_path / "nothing.ply"
    args = [str(DEMO_BLEND), "--dataset", str(out / "dataset"), "--splats", str(missing), "--dataparser-transforms"]
    args += [str(next(out.glob("train/*/*/*/dataparser_transforms.json"))), "--blend", str(tmp_path / "x.blend")]
    proc = _run([*args, "--preview", str(tmp_path / "x.png")], timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"demo_blend: {missing}: not found"
    assert not (tmp_path / "x.blend").exists() and not (tmp_path / "x.png").exists()
