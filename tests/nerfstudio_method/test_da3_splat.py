"""``ns-train da3-splat`` end to end on CPU, plus the dataparser's frame and unit handling.

The dataset is room_gt at 1/4 resolution with exact poses and depth standing in for DA3 output, so
every geometric check has an independent ground truth.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from room_dataset import CPU_TRAIN_ARGS, SAMPLES
from samples import CV_TO_GL

from da3_nerfstudio.formats.ply import read_splat_ply
from da3_nerfstudio.geometry import project_points, unproject_depth

SOH = SAMPLES / "soh"

BIN = Path(sys.executable).parent


def _run(args: list[str], cwd: Path, timeout: float) -> str:
    """Run an ns-* command; fail with its output tail if it does not exit 0."""
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    env["OMP_NUM_THREADS"] = "1"  # many small ops: threads only add overhead on a shared 2-core box
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args[:2])} failed:\n{output[-4000:]}"
    return output


def _w2c_opencv(c2w_gl: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera (4,4) from a nerfstudio OpenGL camera-to-world (3,4)."""
    c2w = np.eye(4)
    c2w[:3] = c2w_gl
    return np.linalg.inv(c2w @ CV_TO_GL)


def test_ns_train_lists_the_method_and_dataparser(tmp_path: Path) -> None:
    assert "da3-splat" in _run([str(BIN / "ns-train"), "--help"], tmp_path, 300)
    method_help = _run([str(BIN / "ns-train"), "da3-splat", "--help"], tmp_path, 300)
    assert "da3-data" in method_help and "init-from" in method_help


def test_dataparser_keeps_depth_and_splats_in_normalised_pose_units(room_dataset: Path) -> None:
    """After nerfstudio's orientation/centring/scaling, depth maps, cameras and initial Gaussians
    still agree: ground-truth room points map to the camera rays at the (scaled) depth, and every
    initial Gaussian sits on its pixel at that depth."""
    from da3_nerfstudio.nerfstudio_method.dataparser import DA3DataParserConfig
    from da3_nerfstudio.nerfstudio_method.dataset import DA3DepthDataset

    outputs = DA3DataParserConfig(data=room_dataset).setup().get_dataparser_outputs("train")
    scale = float(outputs.dataparser_scale)
    assert not np.isclose(scale, 1.0)  # the room is metres across; nerfstudio rescales it to ~1
    transform = np.eye(4)
    transform[:3] = outputs.dataparser_transform.numpy()
    dataset = DA3DepthDataset(outputs)
    meta = json.loads((room_dataset / "transforms.json").read_text())
    frame0 = next(f for f in meta["frames"] if f["file_path"] == "images/frame_00000.png")
    raw = np.load(room_dataset / frame0["depth_file_path"])
    depth = dataset[0]["depth_image"][..., 0].numpy()
    np.testing.assert_allclose(depth, raw * scale, rtol=1e-6)

    # Ground truth: unproject with the saved (OpenCV) camera, then apply nerfstudio's similarity.
    w2c_saved = np.linalg.inv(np.asarray(frame0["transform_matrix"]) @ CV_TO_GL)
    K = outputs.cameras.get_intrinsics_matrices()[0].numpy().astype(np.float64)
    world = unproject_depth(raw[None].astype(np.float64), K[None], w2c_saved[None])[0].reshape(-1, 3)
    expected = scale * (world @ transform[:3, :3].T + transform[:3, 3])
    w2c_norm = _w2c_opencv(outputs.cameras.camera_to_worlds[0].numpy().astype(np.float64))
    uv, z = project_points(expected, K, w2c_norm)
    h, w = raw.shape
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    np.testing.assert_allclose(uv, np.stack([xs.ravel(), ys.ravel()], -1), atol=1e-3)
    np.testing.assert_allclose(z, depth.ravel(), rtol=1e-4)

    # Initial Gaussians of view 0 (the first block, stride 2): on their pixel, at the scaled depth,
    # and as wide as half the 2-pixel sample spacing at that depth, in normalised units.
    init = outputs.metadata["splat_init"]
    rows, cols = np.arange(1, h, 2), np.arange(1, w, 2)
    n0 = len(rows) * len(cols)
    uv, z = project_points(init["means"][:n0].numpy().astype(np.float64), K, w2c_norm)
    gy, gx = np.meshgrid(rows, cols, indexing="ij")
    np.testing.assert_allclose(uv, np.stack([gx.ravel() + 0.5, gy.ravel() + 0.5], -1), atol=1e-3)
    np.testing.assert_allclose(z, depth[gy, gx].ravel(), rtol=1e-4)
    np.testing.assert_allclose(torch.exp(init["scales"][:n0, 0]).numpy(), 0.5 * 2 * z / K[0, 0], rtol=1e-4)


def test_train_eval_export_on_cpu(room_dataset: Path, tmp_path: Path) -> None:
    """200 CPU iterations (densification at 50, 100 and 150), then ns-eval and ns-export on the checkpoint (torch's safe
    loading left on) and the optimised-camera export; the exported splats lie on the room's surfaces."""
    iterations = 200
    log = _run(
        [
            str(BIN / "ns-train"),
            "da3-splat",
            "--data",
            str(room_dataset),
            "--output-dir",
            str(tmp_path / "outputs"),
            "--experiment-name",
            "room",
            "--timestamp",
            "run",
            "--max-num-iterations",
            str(iterations),
            *CPU_TRAIN_ARGS,
            "--pipeline.model.warmup-length",
            "50",
            "--pipeline.model.refine-every",
            "50",
            # Start at half resolution and double at step 100, so the depth target is downscaled too.
            "--pipeline.model.num-downscales",
            "1",
            "--pipeline.model.resolution-schedule",
            "100",
        ],
        tmp_path,
        timeout=600,
    )
    assert "pure-PyTorch rasterizer" in log
    assert "initial Gaussians from splat_init" in log
    run = tmp_path / "outputs" / "room" / "da3-splat" / "run"
    config = run / "config.yml"
    assert (run / "nerfstudio_models" / f"step-{iterations - 1:09d}.ckpt").is_file()

    eval_json = tmp_path / "eval.json"
    _run([str(BIN / "ns-eval"), "--load-config", str(config), "--output-path", str(eval_json)], tmp_path, 300)
    metrics = json.loads(eval_json.read_text())["results"]
    assert metrics["psnr"] > 15.0  # held-out views 1 and 6; a failed reload renders noise (< 10 dB)

    _run(
        [str(BIN / "ns-export"), "gaussian-splat", "--load-config", str(config), "--output-dir", str(tmp_path / "exp")],
        tmp_path,
        300,
    )
    splats = read_splat_ply(tmp_path / "exp" / "splat.ply")
    assert len(splats) > 1000 and splats.sh_degree == 3
    assert all(np.isfinite(getattr(splats, k)).all() for k in ("means", "scales_log", "rotations", "opacity_logit"))

    # Exported means, back in the room's metric frame, lie on a ground-truth depth surface.
    parser = json.loads((run / "dataparser_transforms.json").read_text())
    transform, scale = np.asarray(parser["transform"]), parser["scale"]
    opaque = splats.opacity_logit > np.median(splats.opacity_logit)  # the more opaque half
    world = (splats.means[opaque] / scale - transform[:, 3]) @ transform[:, :3]
    meta = json.loads((room_dataset / "transforms.json").read_text())
    best = np.full(len(world), np.inf)
    for frame in meta["frames"]:
        depth = np.load(room_dataset / frame["depth_file_path"])
        K = np.array([[frame["fl_x"], 0, frame["cx"]], [0, frame["fl_y"], frame["cy"]], [0, 0, 1]])
        w2c = np.linalg.inv(np.asarray(frame["transform_matrix"]) @ CV_TO_GL)
        uv, z = project_points(world, K, w2c)
        inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < depth.shape[1]) & (uv[:, 1] >= 0) & (uv[:, 1] < depth.shape[0])
        gt = np.zeros(len(world))
        gt[inside] = depth[uv[inside, 1].astype(int), uv[inside, 0].astype(int)]
        err = np.where(inside & (gt > 0), np.abs(z - gt) / np.where(gt > 0, gt, 1), np.inf)
        best = np.minimum(best, err)
    assert np.median(best) < 0.03

    from da3_nerfstudio.nerfstudio_method.dataparser import DA3DataParserConfig
    from da3_nerfstudio.nerfstudio_method.export_cameras import export_optimized_cameras

    out = export_optimized_cameras(config, room_dataset / "transforms_optimized.json")
    exported = {f["file_path"]: f for f in json.loads(out.read_text())["frames"]}
    original = {f["file_path"]: f for f in meta["frames"]}
    assert exported.keys() == original.keys()
    largest = 0.0
    for name, frame in exported.items():
        moved = np.abs(np.asarray(frame["transform_matrix"]) - np.asarray(original[name]["transform_matrix"])).max()
        if name in ("images/frame_00001.png", "images/frame_00006.png"):  # held out: written back exactly
            assert moved < 1e-6
        else:  # refined by 200 camera-optimiser steps: small corrections
            assert moved < 0.1
            largest = max(largest, moved)
    assert largest > 1e-5  # camera optimisation is on by default
    reparsed = DA3DataParserConfig(data=out).setup().get_dataparser_outputs("train")
    assert len(reparsed.image_filenames) == 6


def test_plain_image_folder_is_preprocessed_into_a_cached_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--data PHOTOS runs da3-process-data (tiny fixture checkpoint) into PHOTOS/.da3-dataset, says so,
    trains on that dataset, and reuses it until a photo changes."""
    from da3_fixtures import write_checkpoint
    from nerfstudio.utils.rich_utils import CONSOLE

    from da3_nerfstudio.model.presets import DEFAULT_MODEL
    from da3_nerfstudio.nerfstudio_method import dataparser as dp
    from da3_nerfstudio.output_folder import MANIFEST

    assert dp.DA3DataParserConfig().da3_model == DEFAULT_MODEL
    if not SOH.is_dir():
        pytest.skip(f"soh samples not found at {SOH} (set DA3_SAMPLES)")
    photos = tmp_path / "photos"
    photos.mkdir()
    for source in sorted(SOH.glob("*.png")):
        shutil.copy2(source, photos / source.name)
    checkpoint = write_checkpoint(tmp_path / "da3-small", "da3-small")
    config = dp.DA3DataParserConfig(data=photos, da3_model=str(checkpoint), da3_process_res=112)

    monkeypatch.setattr(CONSOLE, "width", 1000)  # one log message per line

    def parse() -> tuple[object, str]:
        with CONSOLE.capture() as capture:
            outputs = config.setup().get_dataparser_outputs("train")
        return outputs, capture.get()

    outputs, log = parse()
    cache = photos / dp.CACHE_DIR
    assert f"{photos} is a plain image folder; running da3-process-data" in log and str(cache) in log
    assert all(Path(name).parent == cache / "images" for name in outputs.image_filenames)
    assert len(outputs.image_filenames) == 2 and "splat_init" in outputs.metadata
    stamp = (cache / MANIFEST).stat().st_mtime_ns

    config.data = photos  # a fresh parse of the photo folder (as ns-eval does from config.yml)
    _, log = parse()
    assert "reusing the DA3 dataset cached in" in log and (cache / MANIFEST).stat().st_mtime_ns == stamp

    os.utime(photos / "010.png")  # a photo newer than the cache: made again
    config.data = photos
    _, log = parse()
    assert "running da3-process-data" in log and (cache / MANIFEST).stat().st_mtime_ns > stamp
