"""DA3Predictor and Prediction: frames, chunking, conventions and bad input.

Frame handling is tested with an *oracle* network that returns the exact ground-truth geometry of
the room sample in an arbitrary similarity frame (as a real network does: its world frame and scale
are its own), so the predictor's alignment must recover the truth exactly. The real network runs
through the same code in the chunk-consistency and end-to-end tests with the parity fixture weights.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from da3_fixtures import write_checkpoint
from PIL import Image
from samples import ROOM, room_truth
from torch import nn

from da3_nerfstudio import DA3Predictor, InputError, Prediction
from da3_nerfstudio.geometry import align_cameras_sim3, apply_sim3_to_w2c, project_points
from da3_nerfstudio.model.presets import get_preset
from da3_nerfstudio.predictor import autocast_dtype, cpu_has_fast_bf16
from da3_nerfstudio.preprocess import preprocess_images

pytestmark = pytest.mark.skipif(not ROOM.is_dir(), reason=f"sample data not found at {ROOM}")


def room() -> tuple[list[Path], np.ndarray, np.ndarray, np.ndarray]:
    """Room images, w2c (N,4,4) OpenCV, intrinsics (continuous convention), depth (N,H,W)."""
    truth = room_truth()
    return truth.paths, truth.w2c, truth.K, truth.depth


def random_similarity(rng: np.random.Generator) -> tuple[float, np.ndarray, np.ndarray]:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    R = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    return float(rng.uniform(0.3, 3.0)), R, rng.normal(size=3)


class OracleModel(nn.Module):
    """Stands in for the network: exact room geometry, in a fresh random similarity frame per call."""

    name = "oracle"
    anyview = True
    has_gaussian_head = False
    preset = get_preset("da3-small")

    def __init__(self, process_res: int) -> None:
        super().__init__()
        paths, self.w2c, K, depth = room()
        batch = preprocess_images(paths, process_res)
        self.keys = [float(v) for v in batch.tensor.mean(dim=(1, 2, 3))]
        self.K = batch.transforms @ K
        h, w = batch.images.shape[1:3]
        self.depth = np.stack([cv2.resize(d, (w, h), interpolation=cv2.INTER_NEAREST) for d in depth])
        self.rng = np.random.default_rng(7)
        self.calls: list[tuple[float, np.ndarray, np.ndarray]] = []
        self.param = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, extrinsics=None, intrinsics=None, **_: object) -> dict[str, torch.Tensor]:
        views = [self.keys.index(float(v)) for v in x[0].mean(dim=(1, 2, 3))]
        s, R, t = random_similarity(self.rng)
        self.calls.append((s, R, t))
        ext = apply_sim3_to_w2c(self.w2c[views], s, R, t)[:, :3]
        out = {
            "depth": self.depth[views] * s,
            "depth_conf": np.full_like(self.depth[views], 2.0),
            "extrinsics": ext,
            "intrinsics": self.K[views],
        }
        return {k: torch.from_numpy(np.asarray(v, dtype=np.float32))[None] for k, v in out.items()}


def test_pose_conditioned_prediction_is_returned_in_the_callers_frame() -> None:
    paths, w2c, K, _ = room()
    oracle = OracleModel(process_res=140)
    predictor = DA3Predictor(oracle, device="cpu")
    for views in ([0, 1, 2, 3, 4, 5], [1, 2]):  # N = 2 included
        pred = predictor.predict([paths[i] for i in views], w2c[views], K[views], process_res=140)
        np.testing.assert_allclose(pred.extrinsics, w2c[views][:, :3], atol=1e-6)
        np.testing.assert_allclose(pred.original_intrinsics(), K[views], rtol=1e-6)
        # Depth in the caller's units: the oracle's random scale must have been undone.
        valid = oracle.depth[views] > 0
        np.testing.assert_allclose(pred.depth[valid], oracle.depth[views][valid], rtol=1e-4)


def test_chunked_prediction_is_aligned_into_one_frame() -> None:
    paths, w2c, _, _ = room()
    oracle = OracleModel(process_res=140)
    predictor = DA3Predictor(oracle, device="cpu")
    single = predictor.predict(paths, process_res=140)
    chunked = predictor.predict(paths, process_res=140, max_views_per_chunk=4)
    assert len(oracle.calls) == 1 + 3, "8 views in chunks of 4 with overlap 2 need 3 passes"
    # Both must be the ground truth up to one similarity each.
    for pred in (single, chunked):
        s, R, t = align_cameras_sim3(w2c, pred.extrinsics.astype(np.float64))
        mapped = apply_sim3_to_w2c(w2c, s, R, t)[:, :3]
        np.testing.assert_allclose(pred.extrinsics, mapped, atol=1e-4 * max(1.0, s))
        valid = oracle.depth > 0
        np.testing.assert_allclose(pred.depth[valid], oracle.depth[valid] * s, rtol=1e-4)


@pytest.fixture(scope="module")
def small_predictor(tmp_path_factory: pytest.TempPathFactory) -> DA3Predictor:
    folder = write_checkpoint(tmp_path_factory.mktemp("ckpt") / "da3-small", "da3-small")
    return DA3Predictor(folder, device="cpu", precision="float32")


def test_chunked_and_single_pass_agree_with_the_real_network(small_predictor: DA3Predictor) -> None:
    """Chunked and single-pass depth agree up to one global scale, view by view, within 5 %.

    Exact agreement is impossible even for the official model: a view's output depends on the other
    views in its pass (cross-view attention, reference view). With the parity weights, running the
    first 4 views alone instead of all 6 already moves per-view median depth by up to 3.2 % relative
    to the global scale, so 5 % bounds that; a chunk left in its own scale is off by its own
    arbitrary factor. (Camera alignment is checked exactly with the oracle network above: these
    untrained weights predict cameras too inconsistent to compare.)"""
    paths, _, _, _ = room()
    single = small_predictor.predict(paths[:6], process_res=112)
    chunked = small_predictor.predict(paths[:6], process_res=112, max_views_per_chunk=4)
    per_view = np.array([np.median(c / s) for c, s in zip(chunked.depth, single.depth, strict=True)])
    deviation = np.abs(per_view / np.median(per_view) - 1)
    assert deviation.max() < 0.05, per_view


def test_prediction_round_trips_through_npz(small_predictor: DA3Predictor, tmp_path: Path) -> None:
    paths, _, _, _ = room()
    pred = small_predictor.predict(paths[:3], process_res=112)
    assert pred.depth.shape == (3, 84, 112) and pred.images.shape == (3, 84, 112, 3)
    assert pred.conf is not None and (pred.conf >= 1).all()
    pred.save(tmp_path / "p.npz")
    back = Prediction.load(tmp_path / "p.npz")
    for key in ("depth", "conf", "extrinsics", "intrinsics", "images", "transforms", "original_sizes"):
        np.testing.assert_array_equal(getattr(back, key), getattr(pred, key), err_msg=key)
    assert back.names == pred.names and back.model_name == "da3-small"


def test_conventions_on_ground_truth_geometry() -> None:
    """A world point seen in view 0 projects to its pixel through both camera-to-world helpers."""
    paths, w2c, K, depth = room()
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    pred = Prediction(depth=depth, extrinsics=w2c[:, :3], intrinsics=K, images=images)
    row, col = 200, 150
    z = depth[0, row, col]
    pixel = np.array([col + 0.5, row + 0.5])
    camera_point = z * np.linalg.inv(K[0]) @ np.array([*pixel, 1.0])
    world = (pred.c2w_opencv()[0] @ np.append(camera_point, 1))[:3]
    for view in range(len(pred)):
        uv, zc = project_points(world[None], K[view], w2c[view])
        # OpenGL camera-to-world: the camera looks down -z with y up.
        cam_gl = np.linalg.inv(pred.c2w_opengl()[view]) @ np.append(world, 1)
        assert np.isclose(-cam_gl[2], zc[0]) and np.isclose(
            -cam_gl[1], (np.linalg.inv(K[view]) @ [*uv[0], 1])[1] * zc[0]
        )
    np.testing.assert_allclose(project_points(world[None], K[0], w2c[0])[0][0], pixel, atol=1e-3)
    points, colors, views = pred.world_points(percentile=0)
    assert len(points) == int((depth > 0).sum()) and colors.dtype == np.uint8
    # Every unprojected point reprojects onto its own pixel in its own view.
    uv, _ = project_points(points[views == 3], K[3], w2c[3])
    rows, cols = np.nonzero(depth[3] > 0)
    np.testing.assert_allclose(uv, np.stack([cols + 0.5, rows + 0.5], -1), atol=1e-2)  # float32 points


def test_depth_at_original_size_follows_the_pixel_map(small_predictor: DA3Predictor) -> None:
    paths, _, _, _ = room()
    pred = small_predictor.predict(paths[:1], process_res=112)
    full = pred.depth_at_original_size(0)
    assert full.shape == (350, 434)
    # The original pixel whose centre maps onto a processed pixel centre gets that pixel's depth.
    A = pred.transforms[0]
    i, j = 40, 60
    orig = np.linalg.inv(A) @ np.array([j + 0.5, i + 0.5, 1.0])
    col, row = int(orig[0]), int(orig[1])
    assert abs(full[row, col] - pred.depth[0, i, j]) < 0.05 * pred.depth[0, i, j]


def test_bad_input_is_reported_with_the_file_name(small_predictor: DA3Predictor, tmp_path: Path) -> None:
    paths, w2c, K, _ = room()
    with pytest.raises(InputError, match="missing.png"):
        small_predictor.predict([paths[0], tmp_path / "missing.png"])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(InputError, match="broken.jpg"):
        small_predictor.predict([paths[0], broken])
    with pytest.raises(InputError, match="no input images"):
        small_predictor.predict([])
    with pytest.raises(InputError, match="extrinsics: expected finite"):
        small_predictor.predict(paths[:2], w2c[:3], K[:2])
    with pytest.raises(InputError, match="without intrinsics"):
        small_predictor.predict(paths[:2], w2c[:2])
    with pytest.raises(InputError, match="no Gaussian head"):
        small_predictor.predict(paths[:2], infer_gs=True)


def test_ray_pose_path_is_deterministic(small_predictor: DA3Predictor) -> None:
    """use_ray_pose solves cameras from the ray maps (solver exactness is in test_geometry)."""
    paths, _, _, _ = room()
    a = small_predictor.predict(paths[:3], process_res=112, use_ray_pose=True)
    b = small_predictor.predict(paths[:3], process_res=112, use_ray_pose=True)
    cam = small_predictor.predict(paths[:3], process_res=112)
    assert np.isfinite(a.extrinsics).all() and np.isfinite(a.intrinsics).all()
    np.testing.assert_array_equal(a.extrinsics, b.extrinsics)
    np.testing.assert_array_equal(a.depth, cam.depth)
    assert not np.allclose(a.intrinsics, cam.intrinsics), "ray and camera-decoder paths should differ"
    rot = a.extrinsics[:, :, :3].astype(np.float64)
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_agrees_with_cpu(small_predictor: DA3Predictor, tmp_path_factory: pytest.TempPathFactory) -> None:
    """GPU check: bf16 backbone under autocast, float32 heads, background decoding: the same depth as the
    float32 CPU run within bf16's precision (8 mantissa bits: a few per cent at most per pixel, median far less)."""
    folder = write_checkpoint(tmp_path_factory.mktemp("ckpt-cuda") / "da3-small", "da3-small")
    gpu = DA3Predictor(folder, device="cuda")
    paths, _, _, _ = room()
    reference = small_predictor.predict(paths[:4], process_res=112)
    pred = gpu.predict(paths[:4], process_res=112)
    assert pred.depth.dtype == np.float32 and pred.depth.shape == reference.depth.shape
    relative = np.abs(pred.depth - reference.depth) / reference.depth
    assert np.median(relative) < 0.01 and np.percentile(relative, 99) < 0.05, (np.median(relative), relative.max())
    np.testing.assert_array_equal(pred.images, reference.images)


def rotation_angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle (degrees) of the relative rotation between the world-to-camera rotations of a and b (N,3,4)."""
    rel = a[:, :, :3].astype(np.float64) @ b[:, :, :3].astype(np.float64).transpose(0, 2, 1)
    return np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1.0, 1.0)))


def test_cpu_bf16_path_agrees_with_float32(small_predictor: DA3Predictor) -> None:
    """The CPU bf16 backbone (what precision="auto" picks on CPUs with AVX-512 BF16 or AMX; forced here, so it
    runs on any CPU) against the float32 run, with the CUDA path's bounds: depth median relative difference
    under 1 %, 99th percentile under 5 %; cameras within 1 degree, centres within 5 % of the scene's camera
    spread, focal lengths within 2 %."""
    bf16 = DA3Predictor(small_predictor.model, device="cpu", precision="bfloat16")
    assert bf16.autocast_dtype == torch.bfloat16 and small_predictor.autocast_dtype is None
    paths, _, _, _ = room()
    reference = small_predictor.predict(paths[:4], process_res=112)
    pred = bf16.predict(paths[:4], process_res=112)
    assert pred.depth.dtype == np.float32 and pred.depth.shape == reference.depth.shape
    assert not np.array_equal(pred.depth, reference.depth), "bf16 run gave bit-identical depth: not in bf16"
    relative = np.abs(pred.depth - reference.depth) / reference.depth
    assert np.median(relative) < 0.01 and np.percentile(relative, 99) < 0.05, (np.median(relative), relative.max())
    assert rotation_angles_deg(pred.extrinsics, reference.extrinsics).max() < 1.0
    centres = [-np.einsum("nji,nj->ni", e[:, :, :3], e[:, :, 3]) for e in (pred.extrinsics, reference.extrinsics)]
    spread = np.linalg.norm(centres[1] - centres[1].mean(0), axis=-1).max()
    assert np.linalg.norm(centres[0] - centres[1], axis=-1).max() < 0.05 * spread
    focal = lambda k: k[:, [0, 1], [0, 1]]  # noqa: E731
    np.testing.assert_allclose(focal(pred.intrinsics), focal(reference.intrinsics), rtol=0.02)
    np.testing.assert_array_equal(pred.images, reference.images)


@pytest.mark.parametrize(
    ("flags", "fast"),
    [("fpu sse avx2 avx512f avx512_bf16", True), ("fpu avx512f amx_bf16 amx_tile", True), ("fpu avx2 avx512f", False)],
    ids=["avx512_bf16", "amx", "no-bf16"],
)
def test_auto_precision_follows_the_cpu_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: str, fast: bool
) -> None:
    """precision="auto" picks bf16 on a CPU exactly when /proc/cpuinfo lists AVX-512 BF16 or AMX-BF16."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert cpu_has_fast_bf16(cpuinfo) is fast
    monkeypatch.setattr("da3_nerfstudio.predictor.cpu_has_fast_bf16", lambda: cpu_has_fast_bf16(cpuinfo))
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) == (torch.bfloat16 if fast else None)
    assert autocast_dtype("float32", cpu) is None and autocast_dtype("bfloat16", cpu) == torch.bfloat16
    assert cpu_has_fast_bf16(tmp_path / "missing") is False


def test_unknown_precision_is_refused_before_loading(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="^precision must be one of auto, float32, bfloat16, got 'float16'$"):
        DA3Predictor(tmp_path / "not-a-checkpoint", device="cpu", precision="float16")
