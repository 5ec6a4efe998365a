"""Benchmark ``da3-splat`` against nerfstudio's splatfacto with random initialisation, and rasterizer speed.

1. Quality on held-out views of room_gt (oracle geometry standing in for DA3 output, 1/4 resolution,
   views 1 and 6 held out, see ``tests/nerfstudio_method/room_dataset.py``): ``ns-train da3-splat`` (its
   defaults: splat_init Gaussians, depth prior, camera optimisation) against nerfstudio's own
   ``ns-train splatfacto --pipeline.model.random-init True`` (its defaults otherwise), with the same
   data and iteration budget. Both train at the dataset resolution (``num-downscales 0``, the one
   setting changed for both: splatfacto's default would train a 300-iteration run at 1/16 of it).
   PSNR/SSIM per held-out view and their mean at iteration 0 and at every checkpoint.
   Without CUDA both run through the pure-PyTorch rasterizer: splatfacto itself cannot run on a CPU,
   so its training subprocess and the evaluation here swap gsplat's ``rasterization`` for ours, make
   its two ``.cuda()`` calls no-ops and stub LPIPS (not reported; its weights need a download).
2. Rasterizer throughput (forward + backward iterations/s) against the number of Gaussians, with
   the PyTorch rasterizer, and with gsplat when CUDA is available.

The last line printed is one JSON object with all numbers.
"""

from __future__ import annotations

import os

# splatfacto compiles get_viewmat with torch.compile, which needs a C++ toolchain on CPU; eager is as exact.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import tyro  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "nerfstudio_method"))

from room_dataset import EVAL_VIEWS, build_room_dataset  # noqa: E402

#: ns-train arguments of each run (method first).
RUNS = {
    "da3-splat": ["da3-splat"],
    "splatfacto-random": ["splatfacto", "--pipeline.model.random-init", "True"],
}
#: Hidden first argument: run ns-train in this process with splatfacto made to run without CUDA.
LAUNCH = "_ns_train"


@dataclass
class Args:
    """Benchmark settings."""

    iterations: int = 300
    """Training iterations per run."""
    checkpoint_every: int = 100
    """Evaluate the held-out views every this many iterations."""
    factor: int = 4
    """room_gt downscale factor."""
    workdir: Path | None = None
    """Where datasets and runs go (a temporary folder if unset)."""
    scene_sizes: tuple[int, ...] = (10_000, 30_000, 100_000, 300_000)
    """Gaussian counts for the throughput measurement."""
    runs: tuple[str, ...] = tuple(RUNS)
    """Which training runs to make (the PSNR gain needs both)."""


def _splatfacto_without_cuda() -> None:
    """Let nerfstudio's splatfacto train and evaluate on a CPU through the PyTorch rasterizer.

    Test-harness patches, applied only in this benchmark: gsplat's CUDA ``rasterization`` is replaced
    by :func:`da3_nerfstudio.rasterize.rasterization` (same semantics), ``Tensor.cuda`` (splatfacto
    moves its intrinsics with it) returns the tensor unchanged, and LPIPS becomes a NaN stub.
    """
    import nerfstudio.models.splatfacto as splatfacto
    import torchmetrics.image.lpip as lpip

    from da3_nerfstudio.rasterize import rasterization

    class NoLPIPS(torch.nn.Module):
        def forward(self, *_: torch.Tensor) -> torch.Tensor:
            return torch.tensor(float("nan"))

    lpip.LearnedPerceptualImagePatchSimilarity = lambda *a, **k: NoLPIPS()
    if not torch.cuda.is_available():
        splatfacto.rasterization = rasterization
        torch.Tensor.cuda = lambda self, *a, **k: self


def _launch(argv: list[str]) -> None:
    """``ns-train argv`` in this process, after :func:`_splatfacto_without_cuda`."""
    _splatfacto_without_cuda()
    from nerfstudio.scripts.train import entrypoint

    sys.argv = ["ns-train", *argv]
    entrypoint()


def _train(data: Path, out: Path, name: str, args: Args) -> tuple[Path, float]:
    """Run ns-train for ``name``; return its config.yml and the training wall time in seconds."""
    method, *extra = RUNS[name]
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        LAUNCH,
        method,
        "--data",
        str(data),
        "--output-dir",
        str(out),
        "--experiment-name",
        name,
        "--timestamp",
        "bench",
        "--max-num-iterations",
        str(args.iterations),
        "--steps-per-save",
        str(args.checkpoint_every),
        "--save-only-latest-checkpoint",
        "False",
        "--steps-per-eval-image",
        "1000000",
        "--steps-per-eval-all-images",
        "1000000",
        "--vis",
        "tensorboard",
        "--machine.device-type",
        "cuda" if torch.cuda.is_available() else "cpu",
        "--pipeline.model.num-downscales",
        "0",
        *extra,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"ns-train {name} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return out / name / method / "bench" / "config.yml", elapsed


def _evaluate(config_path: Path, step: int | None) -> dict[str, dict[str, float]]:
    """PSNR/SSIM of each held-out view and their mean, for a checkpoint (``step``) or the initialisation."""
    import yaml
    from nerfstudio.utils.eval_utils import eval_setup

    if step is None:
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
        pipeline = config.pipeline.setup(device="cuda" if torch.cuda.is_available() else "cpu", test_mode="test")
    else:

        def at_step(config):  # noqa: ANN001, ANN202
            config.load_step = step
            return config

        _, pipeline, _, _ = eval_setup(config_path, test_mode="test", update_config_callback=at_step)
    pipeline.eval()
    names = [Path(p).stem for p in pipeline.datamanager.eval_dataset.image_filenames]
    views: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for camera, batch in pipeline.datamanager.fixed_indices_eval_dataloader:
            outputs = pipeline.model.get_outputs_for_camera(camera)
            metrics, _ = pipeline.model.get_image_metrics_and_images(outputs, batch)
            views[names[batch["image_idx"]]] = {"psnr": float(metrics["psnr"]), "ssim": float(metrics["ssim"])}
    mean = {k: sum(v[k] for v in views.values()) / len(views) for k in ("psnr", "ssim")}
    return {"mean": mean, **views}


def _throughput(n: int, width: int, height: int, device: str, use_gsplat: bool) -> float:
    """Forward+backward iterations/s of one render of n random Gaussians in front of the camera."""
    if use_gsplat:
        from gsplat.rendering import rasterization
    else:
        from da3_nerfstudio.rasterize import rasterization
    g = torch.Generator().manual_seed(0)
    means = torch.randn(n, 3, generator=g) * torch.tensor([1.0, 0.8, 0.5])
    means[:, 2] += 3.0
    params = [
        means,
        torch.randn(n, 4, generator=g),
        torch.rand(n, 3, generator=g) * 0.03 + 0.005,
        torch.rand(n, generator=g),
        torch.randn(n, 16, 3, generator=g) * 0.3,
    ]
    params = [p.to(device).requires_grad_(True) for p in params]
    f = 0.9 * width
    K = torch.tensor([[[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]]], device=device)
    viewmat = torch.eye(4, device=device)[None]
    reps, elapsed = 0, 0.0
    while elapsed < 3.0 or reps < 3:
        start = time.perf_counter()
        out, _, _ = rasterization(*params, viewmat, K, width, height, sh_degree=3, render_mode="RGB+ED")
        out.sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed += time.perf_counter() - start
        reps += 1
    return reps / elapsed


def main(args: Args) -> None:
    _splatfacto_without_cuda()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_splat_"))
    data = build_room_dataset(workdir / "room", factor=args.factor)
    print(f"held-out room_gt views {EVAL_VIEWS} (frame_0000<i>); training at {args.factor}x downscale")
    results: dict[str, dict] = {}
    for name in args.runs:
        config, seconds = _train(data, workdir / "outputs", name, args)
        curve = {0: _evaluate(config, None)}
        for step in range(args.checkpoint_every, args.iterations + 1, args.checkpoint_every):
            curve[step] = _evaluate(config, min(step, args.iterations - 1))
        results[name] = {"train_seconds": seconds, "its_per_s": args.iterations / seconds, "curve": curve}
        for step, views in curve.items():
            per_view = "  ".join(f"{v} {m['psnr']:5.2f}/{m['ssim']:.3f}" for v, m in views.items() if v != "mean")
            mean = views["mean"]
            print(f"{name:18s} iter {step:4d}: PSNR {mean['psnr']:6.2f} dB SSIM {mean['ssim']:.4f}  ({per_view})")
        print(f"{name:18s} {args.iterations} iterations in {seconds:.0f} s (incl. start-up)")
    gain = None
    if {"da3-splat", "splatfacto-random"} <= results.keys():
        final = {name: r["curve"][max(r["curve"])]["mean"]["psnr"] for name, r in results.items()}
        gain = final["da3-splat"] - final["splatfacto-random"]
        print(f"mean held-out PSNR of da3-splat minus splatfacto (random init), {args.iterations} its: {gain:+.2f} dB")

    torch.set_num_threads(1)
    speed: dict[str, dict[int, float]] = {"torch_cpu": {}}
    width, height = 108 * 4 // args.factor, 88 * 4 // args.factor
    for n in args.scene_sizes:
        speed["torch_cpu"][n] = _throughput(n, width, height, "cpu", use_gsplat=False)
        print(f"PyTorch rasterizer, CPU, {n:7d} Gaussians at {width}x{height}: {speed['torch_cpu'][n]:.2f} it/s")
    if torch.cuda.is_available():
        speed["gsplat_cuda"], speed["torch_cuda"] = {}, {}
        for n in args.scene_sizes:
            speed["gsplat_cuda"][n] = _throughput(n, width, height, "cuda", use_gsplat=True)
            speed["torch_cuda"][n] = _throughput(n, width, height, "cuda", use_gsplat=False)
            gs, pt = speed["gsplat_cuda"][n], speed["torch_cuda"][n]
            print(f"CUDA, {n:7d} Gaussians: gsplat {gs:.1f} it/s, PyTorch rasterizer {pt:.1f} it/s")
    else:
        print("CUDA not available: gsplat throughput and time-to-PSNR on GPU not measured")
    print(
        json.dumps(
            {
                "device": "cuda" if torch.cuda.is_available() else "cpu",
                "iterations": args.iterations,
                "resolution": [width, height],
                "runs": results,
                "psnr_gain_db": gain,
                "rasterizer_its_per_s": speed,
            }
        )
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == LAUNCH:
        _launch(sys.argv[2:])
    else:
        main(tyro.cli(Args))
