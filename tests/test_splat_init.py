"""Splat initialisation from depth maps and from the Gaussian head, against exact geometry."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from da3_nerfstudio.formats.ply import SplatData, read_splat_ply, write_splat_ply
from da3_nerfstudio.geometry import project_points
from da3_nerfstudio.rasterize import rasterization
from da3_nerfstudio.rotation import SH_C0
from da3_nerfstudio.rotation import quat_wxyz_to_matrix as quat_to_rotmat
from da3_nerfstudio.splat_init import (
    rotmat_to_quat,
    splats_from_depth,
    splats_from_gaussian_head,
    transform_splats,
)

SAMPLES = Path(os.environ.get("DA3_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "samples"))
ROOM = SAMPLES / "room_gt"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Rendering is many small ops; extra threads only add overhead (and contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' formula."""
    k = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def _synthetic_view() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A tilted camera with fx != fy and an off-centre principal point over a smooth depth map."""
    h, w = 30, 40
    K = np.array([[45.0, 0.0, 21.3], [0.0, 38.0, 14.1], [0.0, 0.0, 1.0]])
    w2c = np.eye(4)
    w2c[:3, :3] = _rotation([0.3, 1.0, -0.2], 0.6)
    w2c[:3, 3] = [0.4, -0.3, 1.2]
    ys, xs = np.mgrid[0:h, 0:w]
    depth = 2.0 + 0.5 * np.sin(xs / 7.0) + 0.02 * ys
    image = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
    return image, depth, w2c, K


def _render(splats: SplatData, w2c: np.ndarray, K: np.ndarray, width: int, height: int, sh_degree: int = 0):  # noqa: ANN202
    """Render splats with the PyTorch rasterizer: (colour+expected depth (H,W,4), alpha (H,W))."""
    coeffs = np.concatenate([splats.sh_dc[:, None, :], splats.sh_rest], axis=1)
    out, alpha, _ = rasterization(
        torch.from_numpy(splats.means),
        torch.from_numpy(splats.rotations),
        torch.from_numpy(np.exp(splats.scales_log)),
        torch.sigmoid(torch.from_numpy(splats.opacity_logit)),
        torch.from_numpy(coeffs),
        torch.from_numpy(np.asarray(w2c, dtype=np.float32)[None]),
        torch.from_numpy(np.asarray(K, dtype=np.float32)[None]),
        width,
        height,
        sh_degree=sh_degree,
        render_mode="RGB+ED",
    )
    return out[0].numpy(), alpha[0, ..., 0].numpy()


def test_gaussian_from_pixel_projects_back_onto_that_pixel() -> None:
    """Every Gaussian's mean projects onto its source pixel's centre at that pixel's depth."""
    image, depth, w2c, K = _synthetic_view()
    splats = splats_from_depth(image, depth, w2c, K, stride=3)
    rows, cols = np.meshgrid(np.arange(1, 30, 3), np.arange(1, 40, 3), indexing="ij")
    assert len(splats) == rows.size
    uv, z = project_points(splats.means.astype(np.float64), K, w2c)
    np.testing.assert_allclose(uv[:, 0], cols.ravel() + 0.5, atol=1e-4)
    np.testing.assert_allclose(uv[:, 1], rows.ravel() + 0.5, atol=1e-4)
    np.testing.assert_allclose(z, depth[rows, cols].ravel(), rtol=1e-6)
    # Colour is the pixel's colour, stored as the SH DC term.
    np.testing.assert_allclose(splats.sh_dc * SH_C0 + 0.5, image[rows, cols].reshape(-1, 3) / 255.0, atol=1e-6)


@pytest.mark.parametrize("stride", [1, 3])
def test_gaussian_footprint_in_its_source_view(stride: int) -> None:
    """Rendered alone in its source view, a disc Gaussian is an isotropic 2D Gaussian of std
    ``scale_mult * stride`` pixels (plus the rasterizer's 0.3 px^2 blur), centred on its pixel."""
    image, depth, w2c, K = _synthetic_view()
    scale_mult = 0.8
    splats = splats_from_depth(image, depth, w2c, K, stride=stride, scale_mult=scale_mult, thickness=1e-6)
    rng = np.random.default_rng(1)
    ys, xs = np.mgrid[0:30, 0:40] + 0.5
    for idx in rng.choice(len(splats), 5, replace=False):
        one = splats.select(np.array([idx]))
        uv, _ = project_points(one.means.astype(np.float64), K, w2c)
        _, alpha = _render(one, w2c, K, 40, 30)
        opacity = 1 / (1 + np.exp(-one.opacity_logit[0]))
        var = (scale_mult * stride) ** 2 + 0.3
        expected = opacity * np.exp(-((xs - uv[0, 0]) ** 2 + (ys - uv[0, 1]) ** 2) / (2 * var))
        expected[expected < 1 / 255] = 0
        np.testing.assert_allclose(alpha, expected, atol=2e-4)


def test_footprint_matches_gsplat_projection() -> None:
    """gsplat's own projection reference sees std ``scale_mult * stride`` px for every disc Gaussian."""
    torch_impl = pytest.importorskip("gsplat.cuda._torch_impl", reason="gsplat is not installed")
    image, depth, w2c, K = _synthetic_view()
    splats = splats_from_depth(image, depth, w2c, K, stride=2, scale_mult=0.5, thickness=1e-6)
    covars, _ = torch_impl._quat_scale_to_covar_preci(
        torch.from_numpy(splats.rotations).double(),
        torch.from_numpy(np.exp(splats.scales_log)).double(),
        compute_preci=False,
        triu=False,
    )
    radii, means2d, _, conics, _ = torch_impl._fully_fused_projection(
        torch.from_numpy(splats.means).double(),
        covars,
        torch.from_numpy(w2c)[None],
        torch.from_numpy(K)[None],
        40,
        30,
        0.0,
        0.01,
        1e10,
    )
    assert bool((radii > 0).all())
    cov2d = torch.linalg.inv(
        torch.stack([conics[..., 0], conics[..., 1], conics[..., 1], conics[..., 2]], -1).reshape(-1, 2, 2)
    )
    np.testing.assert_allclose(cov2d.numpy(), np.broadcast_to(np.eye(2), cov2d.shape), rtol=1e-3, atol=1e-4)


def test_confidence_filters_pixels_and_sets_opacity() -> None:
    image, depth, w2c, K = _synthetic_view()
    confidence = np.random.default_rng(2).random(depth.shape) + 1.0
    depth = depth.copy()
    depth[0, :] = 0.0  # unknown depth: no Gaussian
    splats = splats_from_depth(image, depth, w2c, K, confidence, confidence_percentile=50, opacity_range=(0.2, 0.8))
    valid = depth > 0
    kept = confidence >= np.percentile(confidence[valid], 50)
    assert len(splats) == int((valid & kept).sum())
    opacity = 1 / (1 + np.exp(-splats.opacity_logit.astype(np.float64)))
    conf_kept = confidence[valid & kept]  # row-major order, like the splats
    assert opacity.min() == pytest.approx(0.2, abs=1e-6) and opacity.max() == pytest.approx(0.8, abs=1e-6)
    np.testing.assert_array_equal(np.argsort(opacity, kind="stable"), np.argsort(conf_kept, kind="stable"))
    assert len(splats_from_depth(image, depth, w2c, K, max_gaussians=100)) == 100


def test_rotmat_to_quat_closed_form_and_round_trip() -> None:
    angle = 0.7
    q = rotmat_to_quat(_rotation([0, 0, 1], angle))
    np.testing.assert_allclose(q, [np.cos(angle / 2), 0, 0, np.sin(angle / 2)], atol=1e-12)
    rots = quat_to_rotmat(torch.randn(500, 4, dtype=torch.float64)).numpy()
    back = quat_to_rotmat(torch.from_numpy(rotmat_to_quat(rots))).numpy()
    np.testing.assert_allclose(back, rots, atol=1e-12)


def test_transform_splats_renders_identically_from_the_transformed_camera() -> None:
    """A similarity applied to scene and camera alike leaves the image (incl. view-dependent colour)
    unchanged and multiplies depth by the scale; this is what the dataparser relies on."""
    rng = np.random.default_rng(3)
    n = 400
    splats = SplatData(
        means=rng.normal(size=(n, 3)) * [0.6, 0.4, 0.3] + [0, 0, 3.0],
        scales_log=np.log(rng.uniform(0.03, 0.12, size=(n, 3))),
        rotations=rng.normal(size=(n, 4)),
        opacity_logit=rng.normal(size=n),
        sh_dc=rng.normal(size=(n, 3)) * 0.5,
        sh_rest=rng.normal(size=(n, 8, 3)) * 0.3,
    )
    K = np.array([[50.0, 0, 32.0], [0, 50.0, 24.0], [0, 0, 1]])
    w2c = np.eye(4)
    w2c[:3, :3] = _rotation([0.2, 1.0, 0.1], 0.3)
    w2c[:3, 3] = [0.1, 0.2, 0.3]
    transform = np.eye(4)
    transform[:3, :3] = _rotation([1.0, -0.5, 0.3], 1.1)
    transform[:3, 3] = [0.5, -1.0, 2.0]
    scale = 0.37
    moved = transform_splats(splats, transform[:3], scale)
    # The camera that sees the moved scene like w2c saw the original (camera coordinates scale by s).
    w2c_moved = np.eye(4)
    w2c_moved[:3, :3] = w2c[:3, :3] @ transform[:3, :3].T
    w2c_moved[:3, 3] = scale * (w2c[:3, 3] - w2c_moved[:3, :3] @ transform[:3, 3])
    before, alpha_before = _render(splats, w2c, K, 64, 48, sh_degree=2)
    after, alpha_after = _render(moved, w2c_moved, K, 64, 48, sh_degree=2)
    assert alpha_before.mean() > 0.2  # the view is not empty
    np.testing.assert_allclose(alpha_after, alpha_before, atol=2e-4)
    np.testing.assert_allclose(after[..., :3], before[..., :3], atol=2e-4)
    covered = alpha_before > 0.05
    np.testing.assert_allclose(after[..., 3][covered], scale * before[..., 3][covered], rtol=1e-4)


def test_gaussian_head_output_converts_to_raw_splats(tmp_path: Path) -> None:
    """Head output (activated, channel-first SH, batch of 1) -> raw 3DGS values that read back."""
    rng = np.random.default_rng(4)
    n = 50
    head = {
        "means": torch.from_numpy(rng.normal(size=(1, n, 3))).float(),
        "scales": torch.from_numpy(rng.uniform(0.01, 0.1, size=(1, n, 3))).float(),
        "rotations": torch.from_numpy(rng.normal(size=(1, n, 4))).float(),
        "harmonics": torch.from_numpy(rng.normal(size=(1, n, 3, 9))).float(),
        "opacities": torch.from_numpy(rng.uniform(0.01, 0.99, size=(1, n))).float(),
    }
    head["means"][0, 7, 1] = float("nan")
    splats = splats_from_gaussian_head(head, min_opacity=0.1)
    opac = head["opacities"][0].numpy()
    keep = (opac >= 0.1) & (np.arange(n) != 7)
    assert len(splats) == keep.sum() and splats.sh_degree == 2
    harmonics = head["harmonics"][0].numpy()[keep]
    np.testing.assert_allclose(splats.sh_dc, harmonics[:, :, 0], rtol=1e-6)
    np.testing.assert_allclose(splats.sh_rest, harmonics[:, :, 1:].transpose(0, 2, 1), rtol=1e-6)
    np.testing.assert_allclose(np.exp(splats.scales_log), head["scales"][0].numpy()[keep], rtol=1e-5)
    np.testing.assert_allclose(1 / (1 + np.exp(-splats.opacity_logit)), opac[keep], rtol=1e-4)
    write_splat_ply(tmp_path / "head.ply", splats)
    back = read_splat_ply(tmp_path / "head.ply")
    np.testing.assert_array_equal(back.sh_rest, splats.sh_rest)
    np.testing.assert_array_equal(back.rotations, head["rotations"][0].numpy()[keep])


def _room(factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """room_gt at 1/factor resolution: images, depths, OpenCV w2c, continuous-convention K."""
    if not ROOM.is_dir():
        pytest.skip(f"room_gt samples not found at {ROOM} (set DA3_SAMPLES)")
    data = np.load(ROOM / "condition.npz")
    images = [Image.open(ROOM / "rgb" / f"{i}.png").convert("RGB") for i in range(len(data["poses"]))]
    height, width = data["depths"].shape[1:]
    h, w = round(height / factor), round(width / factor)
    K = data["intrinsics"].astype(np.float64).copy()
    K[:, :2, 2] += 0.5  # the samples use pixel indices as coordinates
    K[:, 0] *= w / width
    K[:, 1] *= h / height
    small = np.stack([np.asarray(im.resize((w, h), Image.Resampling.BOX)) for im in images])
    depths = np.stack([np.asarray(Image.fromarray(d).resize((w, h), Image.Resampling.NEAREST)) for d in data["depths"]])
    return small, depths, np.linalg.inv(data["poses"].astype(np.float64)), K


def test_room_init_renders_a_held_out_view() -> None:
    """Splats from views 0 and 2 of the room (exact depth) render view 1, which they overlap, with
    its true depth and a recognisable image."""
    images, depths, w2c, K = _room(4)
    src = [0, 2]
    splats = splats_from_depth(images[src], depths[src], w2c[src], K[src])
    h, w = depths.shape[1:]
    out, alpha = _render(splats, w2c[1], K[1], w, h)
    covered = alpha > 0.5
    assert covered.mean() > 0.7
    rel = np.abs(out[..., 3][covered] - depths[1][covered]) / depths[1][covered]
    assert np.median(rel) < 0.02
    mse = np.mean((out[..., :3][covered] - images[1][covered] / 255.0) ** 2)
    assert -10 * np.log10(mse) > 20.0
