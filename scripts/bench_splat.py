"""Benchmark ``da3-splat``: feed-forward initialisation vs random initialisation, and rasterizer speed.

1. Quality on the held-out view of room_gt (oracle geometry standing in for DA3 output, 1/4
   resolution, view 1 held out): ``da3-splat`` (splat_init Gaussians, depth prior, camera
   optimisation) against splatfacto's random initialisation (same model code with
   ``init-from random``, no depth prior, no camera optimisation, i.e. splatfacto's behaviour), with
   the same iteration budget. PSNR/SSIM at iteration 0 and at every checkpoint. Both train at the
   dataset resolution (``num-downscales 0``) so that short runs are comparable with evaluation.
   Without CUDA both use the pure-PyTorch rasterizer.
2. Rasterizer throughput (forward + backward iterations/s) against the number of Gaussians, with
   the PyTorch rasterizer, and with gsplat when CUDA is available.

The last line printed is one JSON object with all numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "nerfstudio"))

from room_dataset import build_room_dataset  # noqa: E402

RUNS = {
    "da3-splat": [],
    "splatfacto-random": [
        "--pipeline.model.init-from",
        "random",
        "--pipeline.model.depth-loss-weight",
        "0",
        "--pipeline.model.camera-optimizer.mode",
        "off",
    ],
}


@dataclass
class Args:
    """Benchmark settings."""

    iterations: int = 300
    """Training iterations per run."""
    checkpoint_every: int = 100
    """Evaluate the held-out view every this many iterations."""
    factor: int = 4
    """room_gt downscale factor."""
    workdir: Path | None = None
    """Where datasets and runs go (a temporary folder if unset)."""
    scene_sizes: tuple[int, ...] = (10_000, 30_000, 100_000, 300_000)
    """Gaussian counts for the throughput measurement."""


def _train(data: Path, out: Path, name: str, extra: list[str], args: Args) -> tuple[Path, float]:
    """Run ns-train; return its config.yml and the training wall time in seconds."""
    cmd = [
        str(Path(sys.executable).parent / "ns-train"),
        "da3-splat",
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
        "--pipeline.model.num-downscales",
        "0",
        *extra,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"ns-train {name} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return out / name / "da3-splat" / "bench" / "config.yml", elapsed


def _evaluate(config_path: Path, step: int | None) -> dict[str, float]:
    """Held-out PSNR/SSIM of a checkpoint (``step``) or of the initialisation (``None``)."""
    import yaml
    from nerfstudio.utils.eval_utils import eval_setup

    if step is None:
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
        pipeline = config.pipeline.setup(device="cuda" if torch.cuda.is_available() else "cpu", test_mode="test")
        pipeline.eval()
    else:

        def at_step(config):  # noqa: ANN001, ANN202
            config.load_step = step
            return config

        _, pipeline, _, _ = eval_setup(config_path, test_mode="test", update_config_callback=at_step)
    metrics = pipeline.get_average_eval_image_metrics()
    return {"psnr": float(metrics["psnr"]), "ssim": float(metrics["ssim"])}


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
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_splat_"))
    data = build_room_dataset(workdir / "room", factor=args.factor)
    results: dict[str, dict] = {}
    for name, extra in RUNS.items():
        config, seconds = _train(data, workdir / "outputs", name, extra, args)
        curve = {0: _evaluate(config, None)}
        for step in range(args.checkpoint_every, args.iterations + 1, args.checkpoint_every):
            curve[step] = _evaluate(config, min(step, args.iterations - 1))
        results[name] = {"train_seconds": seconds, "its_per_s": args.iterations / seconds, "curve": curve}
        for step, m in curve.items():
            print(f"{name:18s} iter {step:5d}: PSNR {m['psnr']:6.2f} dB  SSIM {m['ssim']:.4f}")
        print(f"{name:18s} {args.iterations} iterations in {seconds:.0f} s (incl. start-up)")
    final = {name: r["curve"][max(r["curve"])]["psnr"] for name, r in results.items()}
    gain = final["da3-splat"] - final["splatfacto-random"]
    print(f"held-out PSNR gain of da3-splat over random init after {args.iterations} iterations: {gain:+.2f} dB")

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
    main(tyro.cli(Args))
