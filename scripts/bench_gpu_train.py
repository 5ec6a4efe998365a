"""GPU training benchmark: ``ns-train da3-splat`` with gsplat and with the PyTorch rasterizer, against
nerfstudio's ``splatfacto`` from sparse points and from random Gaussians, on the demo scene.

Data (``--prepare``, on any machine with bpy): the demo scene of ``make demo`` (``scripts/demo_scene.py``,
the demo's defaults: 10 views at 240x180, every 5th view from the 3rd held out) written by
``da3-process-data predictions`` from its rendered GROUND-TRUTH cameras and depth, so the GPU machine needs
neither Blender nor DA3 weights. All four runs read it with the ``da3-data`` dataparser (same frame, scale
and split; it reads the sparse points with plyfile, so open3d is not needed) and train at full resolution
(``--pipeline.model.num-downscales 0``, the one setting changed from the defaults).

Each run is one subprocess: the config is parsed from the same arguments as ``ns-train <method> ...`` (by
nerfstudio's own CLI union), set up as ns-train does, and trained with the loop of nerfstudio's
``Trainer.train`` (callbacks around ``train_iteration``) without viewer, logging or checkpoints, until the
default schedule (30000 iterations) ends or ``--seconds`` of training have passed. The clock runs only
while training (CUDA synchronised); every ``--eval-every`` seconds it stops for the held-out views' PSNR
(the models' own metric; LPIPS is not computed: its weights need a download). Printed: a table of
iterations/s, PSNR at fixed training times and the time each run needs to reach splatfacto's final PSNR
(from sparse points, at the end of its budget); the last line is one JSON object.

``--cpu-smoke`` runs every path for a few iterations on the CPU (the PyTorch rasterizer, splatfacto
patched as in ``bench_splat.py``) so the GPU call does not fail on a typo.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from bench_splat import _splatfacto_without_cuda  # noqa: E402
from demo import DemoConfig  # noqa: E402

#: ns-train arguments of each run (method first), before the shared ones.
RUNS = {
    "da3-splat gsplat": ["da3-splat", "--pipeline.model.rasterizer", "gsplat"],
    "da3-splat PyTorch": ["da3-splat", "--pipeline.model.rasterizer", "torch"],
    "splatfacto sparse": ["splatfacto"],
    "splatfacto random": ["splatfacto", "--pipeline.model.random-init", "True"],
}
TARGET = "splatfacto sparse"
#: Hidden first argument: one training run in this process; prints its result as JSON on the last line.
WORKER = "_run"
#: Default schedule of ns-train da3-splat and splatfacto.
SCHEDULE = 30000
#: What the da3-data dataparser and the depth dataset read from a da3-process-data folder.
TRAINER_INPUTS = ("transforms.json", "images", "depths", "confidence", "splat_init.ply", "sparse_pc.ply")


@dataclass
class Args:
    """Benchmark settings."""

    data: Path = REPO / "outputs" / "gpu" / "demo_data"
    """The demo-scene dataset (written by --prepare)."""
    prepare: bool = False
    """Render the demo scene and write the dataset into --data, then stop (needs bpy; a minute on a CPU)."""
    seconds: float = 45.0
    """Training wall-clock budget of each run (the clock stops for evaluation)."""
    eval_every: float = 1.5
    """Seconds of training between held-out evaluations."""
    report_at: tuple[float, ...] = (5.0, 10.0, 20.0, 30.0, 45.0)
    """Training times (s) whose PSNR the table shows."""
    runs: tuple[str, ...] = tuple(RUNS)
    """Which runs to make."""
    cpu_smoke: bool = False
    """A few iterations of every run on the CPU, to check the script (no numbers worth reading)."""
    workdir: Path | None = None
    """Where the runs write (a temporary folder if unset)."""


def prepare(data: Path) -> None:
    """The demo scene at the demo's defaults, as a da3-process-data dataset from its ground-truth geometry.

    Only what the trainers read is kept (not ``colmap/`` nor ``da3/``), so the folder travels light.
    """
    from da3_nerfstudio.dataset import split_indices

    demo = DemoConfig()
    if data.exists():
        raise SystemExit(f"error: {data}: exists; remove it or pass another --data")
    data.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gpu_demo_", dir=data.parent) as tmp:
        scene, dataset = Path(tmp) / "scene", Path(tmp) / "dataset"
        subprocess.run(
            [sys.executable, str(REPO / "scripts" / "demo_scene.py"), "--output", str(scene), "--views",
             str(demo.views), "--width", str(demo.width), "--height", str(demo.height), "--samples", str(demo.samples)],
            check=True,
        )  # fmt: skip
        train_views, _ = split_indices(demo.views, demo.eval_interval)
        per_view = -(-demo.width // demo.seed_stride) * -(-demo.height // demo.seed_stride)
        subprocess.run(
            [str(Path(sys.executable).parent / "da3-process-data"), "predictions", "--data",
             str(scene / "ground_truth.npz"), "--images", str(scene / "images"), "--output-dir", str(dataset),
             "--num-gaussians", str(len(train_views) * per_view), "--eval-interval", str(demo.eval_interval)],
            check=True,
        )  # fmt: skip
        keep = Path(tmp) / "keep"
        keep.mkdir()
        for name in TRAINER_INPUTS:
            (dataset / name).rename(keep / name)
        keep.rename(data)
    print(f"wrote {data}")


def _cli_args(name: str, data: Path, out: Path, smoke: bool) -> list[str]:
    """``ns-train`` arguments of run ``name`` (method first), dataparser da3-data last."""
    method, *extra = RUNS[name]
    if smoke and extra[-1:] == ["gsplat"]:
        extra[-1] = "auto"  # no CUDA: auto takes the PyTorch rasterizer, gsplat would (rightly) refuse
    device = "cpu" if smoke else "cuda"
    common = ["--data", str(data), "--output-dir", str(out), "--experiment-name", name.replace(" ", "_")]
    common += ["--timestamp", "bench", "--vis", "tensorboard", "--machine.device-type", device]
    common += ["--pipeline.model.num-downscales", "0"]
    return [method, *common, *extra, "da3-data"]


def _psnr(pipeline) -> float:  # noqa: ANN001
    """Mean PSNR of the held-out views (the model's own metric)."""
    pipeline.eval()
    values = []
    with torch.no_grad():
        for camera, batch in pipeline.datamanager.fixed_indices_eval_dataloader:
            outputs = pipeline.model.get_outputs_for_camera(camera)
            metrics, _ = pipeline.model.get_image_metrics_and_images(outputs, batch)
            values.append(float(metrics["psnr"]))
    pipeline.train()
    return sum(values) / len(values)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def worker(name: str, data: Path, out: Path, seconds: float, eval_every: float, iterations: int, smoke: bool) -> dict:
    """Train run ``name`` as ns-train would, evaluating the held-out views at fixed training times."""
    _splatfacto_without_cuda()
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion
    from nerfstudio.engine.callbacks import TrainingCallbackLocation
    from nerfstudio.engine.trainer import TrainerConfig

    config: TrainerConfig = tyro.cli(AnnotatedBaseConfigUnion, args=_cli_args(name, data, out, smoke))
    config.set_timestamp()
    config.pipeline.datamanager.data = config.data
    torch.manual_seed(config.machine.seed)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    device = trainer.device
    curve = [{"seconds": 0.0, "step": 0, "psnr": _psnr(trainer.pipeline)}]
    clock, next_eval, step, first = 0.0, eval_every, 0, None
    while step < iterations and clock < seconds:
        _sync(device)
        start = time.perf_counter()
        trainer.pipeline.train()
        for callback in trainer.callbacks:
            callback.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        trainer.train_iteration(step)
        for callback in trainer.callbacks:
            callback.run_callback_at_location(step, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
        _sync(device)
        clock += time.perf_counter() - start
        first = clock if first is None else first
        step += 1
        if clock >= next_eval or step >= iterations or clock >= seconds:
            curve.append({"seconds": clock, "step": step, "psnr": _psnr(trainer.pipeline)})
            next_eval = clock + eval_every
    gaussians = int(trainer.pipeline.model.num_points)
    rest = (step - 1) / (clock - first) if step > 1 and clock > first else float("nan")
    return {"iterations": step, "seconds": clock, "first_iteration_s": first, "its_per_s": rest,
            "gaussians": gaussians, "curve": curve}  # fmt: skip


def _run(name: str, args: Args, out: Path) -> dict:
    """One run in a fresh process (its own CUDA context and memory); its JSON result."""
    iterations = 3 if args.cpu_smoke else SCHEDULE
    cmd = [sys.executable, str(Path(__file__).resolve()), WORKER, name, str(args.data), str(out), str(args.seconds)]
    cmd += [str(args.eval_every), str(iterations), str(int(args.cpu_smoke))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    (out / f"{name.replace(' ', '_')}.log").write_text(log)
    if proc.returncode != 0:  # the other runs still give their numbers
        print(f"run {name!r} failed (exit {proc.returncode}):\n{log[-3000:]}")
        return {"error": log.strip().splitlines()[-1] if log.strip() else f"exit {proc.returncode}"}
    lines = [
        line
        for line in log.splitlines()
        if line.startswith("da3-splat: ") and ("rasteriz" in line or "kernels" in line)
    ]
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "rasterizer_lines": lines}


def _psnr_at(curve: list[dict], seconds: float) -> float | None:
    """PSNR of the last evaluation at or before ``seconds`` of training (None past the run's end)."""
    if seconds > curve[-1]["seconds"] + 1e-9 and curve[-1]["step"] > 0:
        return None
    return max((p for p in curve if p["seconds"] <= seconds + 1e-9), key=lambda p: p["seconds"])["psnr"]


def _time_to(curve: list[dict], target: float) -> float | None:
    return next((p["seconds"] for p in curve if p["psnr"] >= target), None)


def main(args: Args) -> None:
    if args.prepare:
        prepare(args.data)
        return
    if not (args.data / "transforms.json").is_file():
        raise SystemExit(f"error: {args.data}: no dataset; write it with --prepare (needs bpy) and carry it along")
    if not args.cpu_smoke and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; --cpu-smoke checks the script on a CPU")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_gpu_train_"))
    workdir.mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.cpu_smoke else "CPU (smoke)"
    results = {}
    for name in args.runs:
        results[name] = r = _run(name, args, workdir)
        if "error" not in r:
            print(
                f"{name}: {r['iterations']} iterations in {r['seconds']:.1f} s, final {r['curve'][-1]['psnr']:.2f} dB"
            )
    target = results[TARGET]["curve"][-1]["psnr"] if "curve" in results.get(TARGET, {}) else None
    times = "".join(f"{f'PSNR@{t:g}s':>11s}" for t in args.report_at)
    print(f"\n{card}; demo scene at full resolution; {args.seconds:g} s of training per run ({SCHEDULE}-iteration cap)")
    print(f"{'run':20s}{'it/s':>8s}{'1st it s':>9s}{'iters':>7s}{'final':>8s}{times}{'to target':>11s}{'30k its':>9s}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:20s} failed: {r['error']}")
            continue
        cells = "".join(
            f"{v:11.2f}" if (v := _psnr_at(r["curve"], t)) is not None else f"{'-':>11s}" for t in args.report_at
        )
        reach = _time_to(r["curve"], target) if target is not None else None
        r["seconds_to_target"] = reach
        reach_text = f"{reach:.1f} s" if reach is not None else "not reached"
        full = SCHEDULE / r["its_per_s"] / 60
        print(f"{name:20s}{r['its_per_s']:8.1f}{r['first_iteration_s']:9.2f}{r['iterations']:7d}"
              f"{r['curve'][-1]['psnr']:8.2f}{cells}{reach_text:>11s}{full:8.1f}m")  # fmt: skip
    if target is not None:
        print(f"target: {TARGET}'s final held-out PSNR, {target:.2f} dB")
    print(f"30k its: the default schedule ({SCHEDULE} iterations) at the measured rate, in minutes (extrapolated)")
    print(json.dumps({"device": card, "seconds": args.seconds, "target_psnr": target, "runs": results}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == WORKER:
        name, data, out, seconds, eval_every, iterations, smoke = sys.argv[2:9]
        result = worker(name, Path(data), Path(out), float(seconds), float(eval_every), int(iterations), smoke == "1")
        print(json.dumps(result))
    else:
        main(tyro.cli(Args))
