"""Camera geometry against independent truth: synthetic cameras built here from first principles,
and the exact poses, intrinsics and depths of the ``room_gt`` sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from samples import ROOM, room_truth

from da3_nerfstudio.geometry import (
    align_cameras_sim3,
    apply_sim3_to_w2c,
    invert_rigid,
    opencv_c2w_to_opengl,
    opengl_c2w_to_opencv,
    project_points,
    rescale_intrinsics,
    to_homogeneous,
    unproject_depth,
)
from da3_nerfstudio.model.ray_solver import cameras_from_rays

TOL = 1e-4


# ---------------------------------------------------------------------------------------------
# Independent ground truth


def quat_rotation(q: np.ndarray) -> np.ndarray:
    """Rotation matrix of a (w, x, y, z) quaternion (normalised here)."""
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.stack([quat_rotation(rng.normal(size=4)) for _ in range(n)])


def random_cameras(rng: np.random.Generator, n: int, size: tuple[int, int]):
    """c2w rotations, centres and intrinsics with fx != fy and an off-centre principal point."""
    H, W = size
    rot_c2w = random_rotations(rng, n)
    centres = rng.normal(scale=3.0, size=(n, 3))
    K = np.zeros((n, 3, 3))
    K[:, 0, 0] = rng.uniform(0.6, 1.5, n) * W
    K[:, 1, 1] = K[:, 0, 0] * rng.uniform(0.8, 1.2, n)
    K[:, 0, 2] = W / 2 + rng.uniform(-0.1, 0.1, n) * W
    K[:, 1, 2] = H / 2 + rng.uniform(-0.1, 0.1, n) * H
    K[:, 2, 2] = 1.0
    return rot_c2w, centres, K


def w2c_from(rot_c2w: np.ndarray, centres: np.ndarray) -> np.ndarray:
    rot_w2c = rot_c2w.transpose(0, 2, 1)
    return np.concatenate([rot_w2c, -(rot_w2c @ centres[..., None])], axis=-1)


def ray_map(rng, rot_c2w, centres, K, size, grid) -> np.ndarray:
    """(N,h,w,6) world directions (random positive scale per cell) through the cell centres + origins."""
    (H, W), (h, w) = size, grid
    jj, ii = np.meshgrid(np.arange(w), np.arange(h))
    pix = np.stack([(jj + 0.5) * W / w, (ii + 0.5) * H / h, np.ones((h, w))], axis=-1)
    dirs = np.einsum("nab,nbc,hwc->nhwa", rot_c2w, np.linalg.inv(K), pix)
    dirs *= rng.uniform(0.2, 5.0, size=(*dirs.shape[:3], 1))
    origins = np.broadcast_to(centres[:, None, None, :], dirs.shape)
    return np.concatenate([dirs, origins], axis=-1)


def assert_cameras(w2c, K, rot_c2w, centres, K_true, tol: float = TOL) -> None:
    w2c, K = np.asarray(w2c, dtype=np.float64), np.asarray(K, dtype=np.float64)
    rot_est = w2c[:, :, :3].transpose(0, 2, 1)
    centre_est = -np.einsum("nba,nb->na", w2c[:, :, :3], w2c[:, :, 3])
    assert np.abs(rot_est - rot_c2w).max() < tol
    assert np.abs(centre_est - centres).max() < tol
    for r, c in [(0, 0), (1, 1), (0, 2), (1, 2)]:  # fx, fy, cx, cy in pixels
        assert np.abs(K[:, r, c] - K_true[:, r, c]).max() < tol
    assert np.all(K[:, [1, 2, 2, 0], [0, 0, 1, 1]] == 0) and np.all(K[:, 2, 2] == 1)


# ---------------------------------------------------------------------------------------------
# cameras_from_rays


@pytest.mark.parametrize(
    ("size", "grid"),
    [
        ((300, 400), (30, 40)),  # landscape
        ((480, 270), (64, 36)),  # portrait
        ((378, 504), (216, 288)),  # DA3's ray-map size at 504 px (coarse-to-fine path)
    ],
)
def test_cameras_from_rays_recovers_exact_cameras(size, grid):
    rng = np.random.default_rng(1)
    rot, centres, K = random_cameras(rng, 4, size)
    rays = ray_map(rng, rot, centres, K, size, grid)
    weights = rng.uniform(1.0, 20.0, size=rays.shape[:3])
    w2c, K_est = cameras_from_rays(rays, weights, size)
    assert isinstance(w2c, np.ndarray) and w2c.shape == (4, 3, 4) and K_est.shape == (4, 3, 3)
    assert_cameras(w2c, K_est, rot, centres, K)


def test_cameras_from_rays_intrinsics_follow_image_size():
    """The same ray map read as an image of another size gives the intrinsics of that image."""
    rng = np.random.default_rng(2)
    size, grid = (300, 400), (30, 40)
    rot, centres, K = random_cameras(rng, 2, size)
    rays = ray_map(rng, rot, centres, K, size, grid)
    weights = np.ones(rays.shape[:3])
    _, K_cells = cameras_from_rays(rays, weights, grid)
    expected = K.copy()
    expected[:, 0] *= grid[1] / size[1]
    expected[:, 1] *= grid[0] / size[0]
    assert np.abs(K_cells - expected).max() < TOL
    assert np.abs(rescale_intrinsics(K_cells, grid, size) - K).max() < TOL


def test_cameras_from_rays_torch_in_torch_out():
    rng = np.random.default_rng(3)
    size, grid = (280, 378), (40, 54)
    rot, centres, K = random_cameras(rng, 3, size)
    rays = ray_map(rng, rot, centres, K, size, grid)
    weights = rng.uniform(1.0, 20.0, size=rays.shape[:3])

    w2c, K_est = cameras_from_rays(torch.from_numpy(rays), torch.from_numpy(weights), size)
    assert w2c.dtype == K_est.dtype == torch.float64
    assert_cameras(w2c.numpy(), K_est.numpy(), rot, centres, K)

    # float32 rays (what the network gives) are solved in float64 and returned as float32; the
    # error is then set by the input's rounding, not the solver.
    w2c32, K32 = cameras_from_rays(torch.from_numpy(rays).float(), torch.from_numpy(weights).float(), size)
    assert w2c32.dtype == K32.dtype == torch.float32
    rel = np.abs(K32.double().numpy() - K)[:, :2, :] / size[1]
    assert rel.max() < 1e-5
    assert_cameras(w2c32.numpy(), K32.numpy(), rot, centres, K, tol=1e-3)


def corrupt(rng, rays: np.ndarray, weights: np.ndarray, fraction: float) -> np.ndarray:
    """Replace a fraction of rays by random directions and displaced origins; returns the mask."""
    bad = rng.random(rays.shape[:3]) < fraction
    rays[bad, :3] = rng.normal(size=(bad.sum(), 3))
    rays[bad, 3:] += rng.normal(scale=2.0, size=(bad.sum(), 3))
    weights[bad] = rng.uniform(1.0, 2.0, size=bad.sum())
    return bad


def test_cameras_from_rays_ignores_low_weight_corrupted_rays():
    rng = np.random.default_rng(4)
    size, grid = (378, 504), (54, 72)
    rot, centres, K = random_cameras(rng, 5, size)
    rays = ray_map(rng, rot, centres, K, size, grid)
    weights = rng.uniform(5.0, 20.0, size=rays.shape[:3])
    bad = corrupt(rng, rays, weights, 0.3)
    assert 0.28 < bad.mean() < 0.32

    # The corruption matters: a plain confidence-weighted mean of the origins misses by > 10 x TOL.
    naive = (weights[..., None] * rays[..., 3:]).sum((1, 2)) / weights.sum((1, 2))[:, None]
    assert np.abs(naive - centres).max() > 10 * TOL

    w2c, K_est = cameras_from_rays(rays, weights, size)
    assert_cameras(w2c, K_est, rot, centres, K)


def test_cameras_from_rays_is_robust_without_weight_hints():
    """With 30 % garbage carrying the same weight as good rays, the robust kernel alone copes."""
    rng = np.random.default_rng(5)
    size, grid = (300, 400), (60, 80)
    rot, centres, K = random_cameras(rng, 3, size)
    rays = ray_map(rng, rot, centres, K, size, grid)
    weights = np.ones(rays.shape[:3])
    corrupt(rng, rays, weights, 0.3)
    w2c, K_est = cameras_from_rays(rays, np.ones(rays.shape[:3]), size)
    assert_cameras(w2c, K_est, rot, centres, K)


def test_cameras_from_rays_is_deterministic():
    rng = np.random.default_rng(6)
    size, grid = (378, 504), (108, 144)
    rot, centres, K = random_cameras(rng, 3, size)
    rays = ray_map(rng, rot, centres, K, size, grid)
    weights = rng.uniform(5.0, 20.0, size=rays.shape[:3])
    corrupt(rng, rays, weights, 0.3)
    rays_t, weights_t = torch.from_numpy(rays).float(), torch.from_numpy(weights).float()
    first = cameras_from_rays(rays_t, weights_t, size)
    second = cameras_from_rays(rays_t.clone(), weights_t.clone(), size)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_cameras_from_rays_ignores_invalid_rays():
    rng = np.random.default_rng(7)
    size, grid = (300, 400), (30, 40)
    rot, centres, K = random_cameras(rng, 2, size)
    rays = ray_map(rng, rot, centres, K, size, grid)
    weights = rng.uniform(5.0, 20.0, size=rays.shape[:3])
    big = 1e6  # invalid rays get huge weights: they must be ignored, not merely outvoted
    rays[0, 0, :5, :3] = 0.0
    rays[0, 1, :5, :3] = np.nan
    rays[0, 2, :5, 0] = np.inf
    rays[1, 3, :5, 3:] = np.nan
    weights[:, :4, :5] = big
    weights[1, 5, :5] = np.nan
    weights[1, 6, :5] = -big
    # Rays at 90 degrees to the optical axis (camera z = 0) cannot be seen by a pinhole camera.
    side = rot[:, :, 0] + rot[:, :, 1]  # c2w of camera (1, 1, 0): z_cam = 0
    rays[:, 7, :, :3] = side[:, None, :]
    weights[:, 7, :] = 50.0
    w2c, K_est = cameras_from_rays(rays, weights, size)
    assert_cameras(w2c, K_est, rot, centres, K)


def test_cameras_from_rays_with_few_scattered_valid_rays():
    """A large ray map where only ~300 scattered rays are usable (too few for the coarse sub-grid)."""
    rng = np.random.default_rng(9)
    size, grid = (378, 504), (216, 288)
    rot, centres, K = random_cameras(rng, 2, size)
    rays = ray_map(rng, rot, centres, K, size, grid)
    weights = rng.uniform(5.0, 20.0, size=rays.shape[:3])
    keep = rng.random(rays.shape[:3]) < 0.005
    rays[~keep, :3] = np.nan
    w2c, K_est = cameras_from_rays(rays, weights, size)
    assert_cameras(w2c, K_est, rot, centres, K)


def test_cameras_from_rays_survives_garbage():
    """Pure noise (an untrained network) yields finite, well-formed cameras rather than an exception."""
    rays = torch.randn(3, 40, 56, 6, generator=torch.Generator().manual_seed(0))
    weights = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(1)) + 1.0
    w2c, K = cameras_from_rays(rays, weights, (280, 392))
    assert torch.isfinite(w2c).all() and torch.isfinite(K).all()
    rot = w2c[:, :, :3].double()
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(3, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(3, dtype=torch.float64), atol=1e-5)
    assert (K[:, 0, 0] > 0).all() and (K[:, 1, 1] > 0).all() and (K[:, 2, 2] == 1).all()


def test_cameras_from_rays_rejects_unusable_views():
    rng = np.random.default_rng(8)
    size, grid = (300, 400), (30, 40)
    rot, centres, K = random_cameras(rng, 3, size)
    rays = ray_map(rng, rot, centres, K, size, grid)
    weights = np.ones(rays.shape[:3])
    rays[1, ..., :3] = np.nan
    with pytest.raises(ValueError, match="view 1 has 0 valid rays"):
        cameras_from_rays(rays, weights, size)
    rays = ray_map(rng, rot, centres, K, size, grid)
    weights[2] = 0.0
    with pytest.raises(ValueError, match="view 2"):
        cameras_from_rays(rays, weights, size)
    with pytest.raises(ValueError, match="weights"):
        cameras_from_rays(rays, weights[:, :-1], size)


# ---------------------------------------------------------------------------------------------
# Poses and similarities


def random_sim3(rng):
    return rng.uniform(0.3, 3.0), quat_rotation(rng.normal(size=4)), rng.normal(scale=5.0, size=3)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_align_cameras_sim3_recovers_known_similarity(n):
    rng = np.random.default_rng(10 + n)
    rot_src = random_rotations(rng, n)
    c_src = rng.normal(size=(n, 3))
    s, R, t = random_sim3(rng)
    # The same physical cameras in a world scaled, rotated and moved by (s, R, t).
    rot_dst = R @ rot_src
    c_dst = s * c_src @ R.T + t
    w2c_src, w2c_dst = w2c_from(rot_src, c_src), w2c_from(rot_dst, c_dst)

    s_est, R_est, t_est = align_cameras_sim3(w2c_src, w2c_dst)
    assert np.abs(R_est - R).max() < 1e-9
    if n == 1:  # one camera fixes no scale: identity scale, and the camera still maps exactly
        assert s_est == 1.0
        assert np.abs(t_est - (c_dst[0] - R @ c_src[0])).max() < 1e-9
    else:
        assert abs(s_est - s) < 1e-9 and np.abs(t_est - t).max() < 1e-9
    mapped = apply_sim3_to_w2c(w2c_src, s_est, R_est, t_est)
    assert np.abs(mapped - w2c_dst).max() < 1e-9


def test_align_cameras_sim3_two_cameras_fixes_rotation_about_baseline():
    """Centres alone cannot see a rotation about the baseline; the orientations must."""
    rng = np.random.default_rng(20)
    rot_src = random_rotations(rng, 2)
    c_src = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    angle = 0.7
    R = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    c_dst = c_src @ R.T  # identical centres: the rotation is invisible in them
    assert np.allclose(c_dst, c_src)
    w2c_src, w2c_dst = w2c_from(rot_src, c_src), w2c_from(R @ rot_src, c_dst)
    s, R_est, t = align_cameras_sim3(torch.from_numpy(w2c_src), torch.from_numpy(w2c_dst))
    assert isinstance(R_est, torch.Tensor) and abs(float(s) - 1.0) < 1e-12
    assert np.abs(R_est.numpy() - R).max() < 1e-12 and np.abs(t.numpy()).max() < 1e-12


def test_align_cameras_sim3_scale_stays_positive():
    """Centres that point-mirror each other give a negative least-squares scale; the spread ratio is used."""
    rng = np.random.default_rng(22)
    rot = random_rotations(rng, 4)
    c_src = rng.normal(size=(4, 3))
    c_dst = -2.0 * c_src
    s, _, _ = align_cameras_sim3(w2c_from(rot, c_src), w2c_from(rot, c_dst))
    c_src_centred, c_dst_centred = c_src - c_src.mean(0), c_dst - c_dst.mean(0)
    spread_ratio = np.sqrt((c_dst_centred**2).sum() / (c_src_centred**2).sum())
    assert abs(spread_ratio - 2.0) < 1e-12 and abs(s - spread_ratio) < 1e-12


def test_apply_sim3_to_w2c_scales_camera_coordinates():
    """Points moved by the similarity are seen by the moved cameras where they were, at s x depth."""
    rng = np.random.default_rng(21)
    rot, centres, _ = random_cameras(rng, 3, (10, 10))
    w2c = to_homogeneous(w2c_from(rot, centres))
    s, R, t = random_sim3(rng)
    pts = rng.normal(size=(50, 3))
    moved = apply_sim3_to_w2c(w2c, s, R, t)
    assert moved.shape == (3, 4, 4) and np.all(moved[:, 3] == [0, 0, 0, 1])
    cam_before = np.einsum("nab,pb->npa", w2c[:, :3, :3], pts) + w2c[:, None, :3, 3]
    new_pts = s * pts @ R.T + t
    cam_after = np.einsum("nab,pb->npa", moved[:, :3, :3], new_pts) + moved[:, None, :3, 3]
    assert np.abs(cam_after - s * cam_before).max() < 1e-9


@pytest.mark.parametrize("rows", [3, 4])
def test_invert_rigid_and_to_homogeneous(rows):
    rng = np.random.default_rng(24)
    rot, centres, _ = random_cameras(rng, 6, (10, 10))
    T = w2c_from(rot, centres)
    T = to_homogeneous(T) if rows == 4 else T
    inv = invert_rigid(T)
    assert inv.shape == T.shape
    full, full_inv = to_homogeneous(T), to_homogeneous(inv)
    assert full.shape == (6, 4, 4)
    assert np.abs(full @ full_inv - np.eye(4)).max() < 1e-12
    assert np.abs(full_inv - np.linalg.inv(full)).max() < 1e-12
    t_inv = invert_rigid(torch.from_numpy(T))
    assert isinstance(t_inv, torch.Tensor) and np.abs(t_inv.numpy() - inv).max() == 0


def test_opencv_opengl_axes():
    """A point in front of an OpenCV camera is at -z (and y up) in the OpenGL camera frame."""
    rng = np.random.default_rng(25)
    rot, centres, _ = random_cameras(rng, 4, (10, 10))
    c2w_cv = to_homogeneous(np.concatenate([rot, centres[..., None]], axis=-1))
    c2w_gl = opencv_c2w_to_opengl(c2w_cv)
    p_cam_cv = np.array([0.3, 0.2, 2.0])
    world = c2w_cv[:, :3, :3] @ p_cam_cv + centres
    p_cam_gl = np.einsum("nab,na->nb", c2w_gl[:, :3, :3], world - c2w_gl[:, :3, 3])
    assert np.abs(p_cam_gl - np.array([0.3, -0.2, -2.0])).max() < 1e-12
    assert np.abs(opengl_c2w_to_opencv(c2w_gl) - c2w_cv).max() == 0


# ---------------------------------------------------------------------------------------------
# Depth, projection, intrinsics


def test_unproject_pixel_centre_by_hand():
    K = np.array([[[100.0, 0, 40.0], [0, 120.0, 30.0], [0, 0, 1]]])
    w2c = np.array([[[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 5]]])  # camera centre (0, 0, -5)
    depth = np.full((1, 60, 80), 2.0)
    pts = unproject_depth(depth, K, w2c)
    # Pixel (row 3, col 7) has its centre at (7.5, 3.5).
    assert np.allclose(pts[0, 3, 7], [2 * (7.5 - 40) / 100, 2 * (3.5 - 30) / 120, 2.0 - 5.0], atol=1e-12)


def test_project_unproject_round_trip():
    rng = np.random.default_rng(26)
    size = (48, 64)
    rot, centres, K = random_cameras(rng, 3, size)
    w2c = w2c_from(rot, centres)
    depth = rng.uniform(0.5, 10.0, size=(3, *size))
    pts = unproject_depth(torch.from_numpy(depth), torch.from_numpy(K), torch.from_numpy(w2c))
    assert pts.shape == (3, *size, 3) and pts.dtype == torch.float64
    uv, z = project_points(pts, K, w2c)
    jj, ii = np.meshgrid(np.arange(size[1]), np.arange(size[0]))
    assert np.abs(uv[..., 0].numpy() - (jj + 0.5)).max() < 1e-9
    assert np.abs(uv[..., 1].numpy() - (ii + 0.5)).max() < 1e-9
    assert np.abs(z.numpy() - depth).max() < 1e-9
    # One camera for points of any shape.
    uv1, z1 = project_points(pts[1].numpy(), K[1], w2c[1])
    assert np.abs(uv1 - uv[1].numpy()).max() < 1e-9 and np.abs(z1 - depth[1]).max() < 1e-9


def test_rescale_intrinsics_matches_resized_projection():
    """Resizing an image maps every image point x -> x W'/W, y -> y H'/H (continuous pixels)."""
    rng = np.random.default_rng(27)
    size, new = (350, 434), (210, 280)
    rot, centres, K = random_cameras(rng, 2, size)
    w2c = w2c_from(rot, centres)
    pts = centres[:, None, :] + np.einsum("nab,pb->npa", rot, rng.uniform([-1, -1, 2], [1, 1, 6], (20, 3)))
    uv, _ = project_points(pts, K, w2c)
    uv_new, _ = project_points(pts, rescale_intrinsics(K, size, new), w2c)
    assert np.abs(uv_new - uv * np.array([new[1] / size[1], new[0] / size[0]])).max() < 1e-9
    centred = np.array([[size[1], 0, size[1] / 2], [0, size[0], size[0] / 2], [0, 0, 1.0]])
    assert np.allclose(rescale_intrinsics(centred, size, new)[:2, 2], [new[1] / 2, new[0] / 2])


# ---------------------------------------------------------------------------------------------
# Real data


def test_room_gt_depth_reprojects_into_the_next_view():
    if not (ROOM / "condition.npz").exists():
        pytest.skip(f"sample data not found at {ROOM} (set DA3_SAMPLES)")
    truth = room_truth()
    K, depths, w2c = truth.K, truth.depth.astype(np.float64), truth.w2c[:, :3]

    pts = unproject_depth(depths[:1], K[:1], w2c[:1])[0]
    uv, z = project_points(pts[depths[0] > 0], K[1], w2c[1])
    H, W = depths.shape[1:]
    col, row = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    inside = (z > 0) & (col >= 0) & (col < W) & (row >= 0) & (row < H)
    target = depths[1, row[inside], col[inside]]
    seen = target > 0
    assert seen.sum() > 0.1 * H * W  # the views overlap substantially
    rel = np.abs(z[inside][seen] - target[seen]) / target[seen]
    assert np.median(rel) < 0.01
