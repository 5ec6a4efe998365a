"""The pure-PyTorch rasterizer against closed-form renders, finite differences and gsplat itself."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from da3_nerfstudio.rasterize import eval_sh, project_gaussians, rasterization


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """These renders are many small ops; extra threads only add overhead (and contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _camera(width: int = 64, height: int = 48, f: float = 50.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity world-to-camera pose and a pinhole K with the principal point at the image centre."""
    K = torch.tensor([[[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]]])
    return torch.eye(4)[None], K


def _random_scene(n: int, seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * torch.tensor([0.8, 0.6, 0.5], dtype=dtype)
    means[:, 2] += 3.0
    return {
        "means": means,
        "quats": torch.randn(n, 4, generator=g, dtype=dtype),
        "scales": torch.rand(n, 3, generator=g, dtype=dtype) * 0.12 + 0.02,
        "opacities": torch.rand(n, generator=g, dtype=dtype) * 0.9 + 0.05,
        "colors": torch.randn(n, 16, 3, generator=g, dtype=dtype) * 0.4,
    }


def test_single_gaussian_renders_the_analytic_ewa_footprint() -> None:
    """One isotropic off-axis Gaussian: alpha is o*exp(-d^T (J S J^T + 0.3 I)^-1 d / 2), thresholded."""
    viewmat, K = _camera()
    f, z, s, opacity = 50.0, 2.0, 0.08, 0.3
    mean = torch.tensor([[0.3, -0.2, z]])
    color = torch.tensor([[0.2, 0.4, 0.8]])
    background = torch.tensor([[0.1, 0.1, 0.1]])
    render, alpha, _ = rasterization(
        mean,
        torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
        torch.full((1, 3), s),
        torch.tensor([opacity]),
        color,
        viewmat,
        K,
        64,
        48,
        backgrounds=background,
    )
    x, y = mean[0, 0].item(), mean[0, 1].item()
    # Pinhole Jacobian at the mean; the covariance of an isotropic Gaussian is s^2 I in any frame.
    jac = torch.tensor([[f / z, 0.0, -f * x / z**2], [0.0, f / z, -f * y / z**2]])
    cov2d = s**2 * jac @ jac.T + 0.3 * torch.eye(2)
    centre = torch.tensor([f * x / z + 32.0, f * y / z + 24.0])
    ys, xs = torch.meshgrid(torch.arange(48) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    d = torch.stack([xs, ys], dim=-1) - centre
    maha = torch.einsum("hwi,ij,hwj->hw", d, torch.linalg.inv(cov2d), d)
    expected = opacity * torch.exp(-0.5 * maha)
    expected = torch.where(expected >= 1 / 255, expected, torch.zeros_like(expected))
    torch.testing.assert_close(alpha[0, ..., 0], expected, atol=1e-6, rtol=1e-5)
    expected_rgb = expected[..., None] * color + (1 - expected[..., None]) * background
    torch.testing.assert_close(render[0], expected_rgb, atol=1e-6, rtol=1e-5)
    assert alpha.max() > 0.29  # the peak pixel is right under the projected centre


def test_fronto_parallel_splat_has_expected_depth_equal_to_its_z() -> None:
    """A plane of flat Gaussians at z = 2.5: expected depth is 2.5 wherever anything is drawn."""
    viewmat, K = _camera()
    gx, gy = torch.meshgrid(torch.linspace(-1.8, 1.8, 37), torch.linspace(-1.4, 1.4, 29), indexing="ij")
    means = torch.stack([gx.flatten(), gy.flatten(), torch.full((gx.numel(),), 2.5)], dim=-1)
    n = len(means)
    scales = torch.tensor([0.06, 0.06, 1e-5]).expand(n, 3)
    quats = torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(n, 4)
    colors = torch.rand(n, 3)
    opac = torch.full((n,), 0.7)
    render, alpha, _ = rasterization(means, quats, scales, opac, colors, viewmat, K, 64, 48, render_mode="RGB+ED")
    drawn = alpha[0, ..., 0] > 0
    assert drawn.float().mean() > 0.95
    torch.testing.assert_close(render[0, ..., 3][drawn], torch.full_like(render[0, ..., 3][drawn], 2.5))
    accumulated, alpha_d, _ = rasterization(means, quats, scales, opac, colors, viewmat, K, 64, 48, render_mode="D")
    torch.testing.assert_close(accumulated, 2.5 * alpha_d)


def test_front_to_back_order_and_transmittance_cutoff() -> None:
    """Two Gaussians on one ray: the nearer one is composited first, whatever the input order."""
    viewmat, K = _camera()
    means = torch.tensor([[0.0, 0.0, 4.0], [0.0, 0.0, 2.0]])  # back one listed first
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 2)
    scales = torch.full((2, 3), 0.2)
    colors = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    render, alpha, _ = rasterization(
        means, quats, scales, torch.tensor([0.6, 0.5]), colors, viewmat, K, 64, 48, render_mode="RGB+ED"
    )
    # Pixel (32, 24)'s centre is half a pixel off both projected centres.
    a_back = 0.6 * math.exp(-0.5 * 0.5 / ((50 * 0.2 / 4.0) ** 2 + 0.3))
    a_front = 0.5 * math.exp(-0.5 * 0.5 / ((50 * 0.2 / 2.0) ** 2 + 0.3))
    pix = render[0, 24, 32]
    torch.testing.assert_close(pix[0], torch.tensor(a_front))
    torch.testing.assert_close(pix[2], torch.tensor((1 - a_front) * a_back))
    total = a_front + (1 - a_front) * a_back
    torch.testing.assert_close(alpha[0, 24, 32, 0], torch.tensor(total))
    torch.testing.assert_close(pix[3], torch.tensor((a_front * 2.0 + (1 - a_front) * a_back * 4.0) / total))

    # A wide opaque front Gaussian: alpha is clamped to 0.999; the back one would leave T = 1e-3 * 0.04
    # <= 1e-4, so the pixel ends before it.
    big_front = torch.tensor([[0.2] * 3, [1.0] * 3])
    render, alpha, _ = rasterization(
        means, quats, big_front, torch.tensor([1.0, 1.0]), colors, viewmat, K, 64, 48, render_mode="RGB"
    )
    torch.testing.assert_close(alpha[0, 24, 32, 0], torch.tensor(0.999))
    torch.testing.assert_close(render[0, 24, 32], torch.tensor([0.999, 0.0, 0.0]))


def test_gradients_match_finite_differences() -> None:
    """Analytic (autograd) gradients of colour and depth w.r.t. every input match finite differences."""
    scene = _random_scene(3, seed=3, dtype=torch.float64)
    scene["opacities"] = torch.tensor([0.45, 0.3, 0.4], dtype=torch.float64)  # clear of the 0.999 clamp
    scene["scales"] = scene["scales"] * 3.0  # a few pixels wide, so they overlap
    viewmat, K = _camera(16, 12, f=12.0)
    viewmat, K = viewmat.double(), K.double()
    # A small camera rotation + translation so the viewmat gradient is exercised off the identity.
    viewmat[0, :3, 3] = torch.tensor([0.05, -0.02, 0.1], dtype=torch.float64)

    def render(means, quats, scales, opacities, colors, vm):  # noqa: ANN001, ANN202
        out, alpha, _ = rasterization(
            means, quats, scales, opacities, colors, vm, K, 16, 12, sh_degree=1, render_mode="RGB+ED"
        )
        return out, alpha

    _, alpha, info = rasterization(
        scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["colors"], viewmat, K, 16, 12
    )
    assert bool((info["radii"] > 0).all()) and alpha.max() > 0.2  # every Gaussian is on screen

    inputs = tuple(
        t.clone().requires_grad_(True)
        for t in (
            scene["means"],
            scene["quats"],
            scene["scales"],
            scene["opacities"],
            scene["colors"][:, :4],
            viewmat,
        )
    )
    assert torch.autograd.gradcheck(render, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_bands_do_not_change_the_result() -> None:
    """The memory bounds are an implementation detail: images and gradients are identical."""
    scene = _random_scene(300, seed=0, dtype=torch.float64)  # float64: compare exactly, not up to rounding
    viewmat, K = (t.double() for t in _camera())
    results = []
    for band_pairs in (500, 1 << 30):  # bands of a few rows (single rows over budget too) / one band
        params = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
        out, alpha, _ = rasterization(
            params["means"],
            params["quats"],
            params["scales"],
            params["opacities"],
            params["colors"],
            viewmat,
            K,
            64,
            48,
            sh_degree=3,
            render_mode="RGB+ED",
            band_pairs=band_pairs,
        )
        (out.square().sum() + alpha.sum()).backward()
        results.append((out.detach(), alpha.detach(), params["means"].grad, params["scales"].grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_info_supports_densification_gradients() -> None:
    """``means2d`` keeps a gradient and ``absgrad`` (sum over pixels of |grad|) bounds it."""
    scene = _random_scene(200, seed=1)
    viewmat, K = _camera()
    params = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
    out, _, info = rasterization(
        params["means"],
        params["quats"],
        params["scales"],
        params["opacities"],
        params["colors"],
        viewmat,
        K,
        64,
        48,
        sh_degree=1,
        absgrad=True,
    )
    info["means2d"].retain_grad()
    (out - 0.3).square().mean().backward()
    grad, absgrad = info["means2d"].grad, info["means2d"].absgrad
    assert grad.shape == absgrad.shape == (1, 200, 2)
    assert info["radii"].shape == (1, 200) and info["radii"].dtype == torch.int32
    assert {"width", "height", "n_cameras", "gaussian_ids"} <= info.keys()
    visible = info["radii"][0] > 0
    assert visible.any() and (~visible).any()
    assert torch.all(grad[0, ~visible] == 0) and torch.all(absgrad[0, ~visible] == 0)
    assert torch.all(absgrad >= grad.abs() - 1e-9)
    assert absgrad[0, visible].sum() > grad[0, visible].abs().sum()  # signs cancel across pixels


def test_gaussians_at_or_behind_the_camera_get_zero_not_nan_gradients() -> None:
    scene = _random_scene(20, seed=6)
    scene["means"][0] = torch.tensor([0.0, 0.0, 0.0])  # exactly at the camera centre (z = 0)
    scene["means"][1] = torch.tensor([0.1, 0.0, -2.0])  # behind the camera
    viewmat, K = _camera()
    params = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
    out, _, info = rasterization(
        params["means"],
        params["quats"],
        params["scales"],
        params["opacities"],
        params["colors"],
        viewmat,
        K,
        64,
        48,
        sh_degree=3,
        render_mode="RGB+ED",
        absgrad=True,
    )
    info["means2d"].retain_grad()
    out.sum().backward()
    assert info["radii"][0, 0] == 0 and info["radii"][0, 1] == 0
    for name, param in params.items():
        assert torch.isfinite(param.grad).all(), name
        assert torch.all(param.grad[:2] == 0), name
    assert torch.isfinite(info["means2d"].grad).all()


def test_absgrad_request_is_harmless_without_autograd() -> None:
    """splatfacto passes absgrad=True when evaluating under no_grad as well."""
    scene = _random_scene(50, seed=5)
    viewmat, K = _camera()
    args = (scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["colors"], viewmat, K, 64, 48)
    with torch.no_grad():
        out, _, _ = rasterization(*args, sh_degree=3, absgrad=True)
    torch.testing.assert_close(out, rasterization(*args, sh_degree=3)[0])


def test_cameras_batch_like_single_renders() -> None:
    scene = _random_scene(100, seed=2)
    viewmat, K = _camera()
    second = viewmat.clone()
    second[0, :3, 3] = torch.tensor([0.2, 0.1, -0.3])
    args = (scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["colors"])
    both, alpha, _ = rasterization(
        *args, torch.cat([viewmat, second]), K.expand(2, 3, 3), 64, 48, sh_degree=3, render_mode="RGB+D"
    )
    for i, vm in enumerate((viewmat, second)):
        one, one_alpha, _ = rasterization(*args, vm, K, 64, 48, sh_degree=3, render_mode="RGB+D")
        torch.testing.assert_close(both[i], one[0])
        torch.testing.assert_close(alpha[i], one_alpha[0])


def test_projection_and_sh_match_gsplat_reference() -> None:
    """Projection and SH agree with gsplat's own PyTorch reference (``gsplat.cuda._torch_impl``)."""
    torch_impl = pytest.importorskip("gsplat.cuda._torch_impl", reason="gsplat is not installed")
    scene = _random_scene(500, seed=4)
    viewmat, K = _camera()
    ours = project_gaussians(scene["means"], scene["quats"], scene["scales"], viewmat, K, 64, 48)
    covars, _ = torch_impl._quat_scale_to_covar_preci(scene["quats"], scene["scales"], compute_preci=False, triu=False)
    radii, means2d, depths, conics, comp = torch_impl._fully_fused_projection(
        scene["means"], covars, viewmat, K, 64, 48, 0.3, 0.01, 1e10, calc_compensations=True
    )
    assert torch.equal(ours["radii"], radii)
    visible = radii > 0
    torch.testing.assert_close(ours["means2d"][visible], means2d[visible])
    torch.testing.assert_close(ours["depths"][visible], depths[visible])
    torch.testing.assert_close(ours["conics"][visible], conics[visible], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours["compensations"][visible], comp[visible])
    dirs = torch.randn(500, 3)
    for degree in range(4):
        expected = torch_impl._spherical_harmonics(degree, dirs, scene["colors"])
        torch.testing.assert_close(eval_sh(degree, dirs, scene["colors"]), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (gsplat has no CPU backend)")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_gsplat_rasterization_on_random_scenes(seed: int) -> None:
    """GPU check: colour, expected depth and alpha agree with ``gsplat.rasterization`` within 1e-3."""
    gsplat = pytest.importorskip("gsplat")
    scene = {k: v.cuda() for k, v in _random_scene(2000, seed).items()}
    viewmat, K = _camera(160, 120, f=120.0)
    viewmat, K = viewmat.cuda(), K.cuda()
    args = (scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["colors"], viewmat, K)
    kwargs = {"sh_degree": 3, "render_mode": "RGB+ED", "packed": False}
    ours, ours_alpha, _ = rasterization(*args, 160, 120, **kwargs)
    ref, ref_alpha, _ = gsplat.rasterization(*args, 160, 120, **kwargs)
    torch.testing.assert_close(ours_alpha, ref_alpha, atol=1e-3, rtol=0)
    torch.testing.assert_close(ours[..., :3], ref[..., :3], atol=1e-3, rtol=0)
    covered = ref_alpha[..., 0] > 0.05
    torch.testing.assert_close(ours[..., 3][covered], ref[..., 3][covered], atol=1e-3, rtol=1e-3)
