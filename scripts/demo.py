"""`make demo`: the whole product on a fresh machine, offline: rendered photos -> dataset -> splats -> Blender.

Stages, each timed (the project's own command-line tools run as subprocesses, their output in ``logs/``):

1. scene: :mod:`demo_scene` renders a procedural yard with Blender (Cycles, CPU), with exact cameras and
   depth, so no third-party photos are needed.
2. geometry: ``da3-process-data images`` runs Depth Anything 3 when the model's weights are available (hub
   or local cache). When they are not, one line says so and ``da3-process-data predictions`` writes the
   dataset from the scene's rendered GROUND TRUTH cameras and depth instead, labelled as such in the output
   and the summary. Random weights are never used.
3. train: ``ns-train da3-splat``, a short schedule (the pure-PyTorch rasterizer on CPU).
4. evaluate + export: ``ns-eval`` (PSNR on the held-out views) and ``ns-export gaussian-splat`` side by side,
   since each spends most of its time importing nerfstudio.
5. blender: ``scripts/demo_blend.py`` builds ``demo.blend`` with the add-on's importers (cameras, points
   and splats under one root) and renders ``preview.png`` (Cycles render of the splats | held-out photo).

Everything is written into a staging folder beside ``--output`` and swapped in at the end, so a failed or
interrupted run leaves the previous demo as it was. The ns-* paths inside the output are relative to it:
``cd outputs/demo && ns-viewer --load-config train/demo/da3-splat/run/config.yml``.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tyro
from rich.console import Console
from rich.table import Table
from rich.text import Text

from da3_nerfstudio.errors import CheckpointError, DA3Error, InputError
from da3_nerfstudio.output_folder import replace_folder
from da3_nerfstudio.process_exit import exit_process

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: Written last: marks a folder as a complete demo output that a new run may replace.
SUMMARY = "summary.json"
RUN_DIR = Path("train") / "demo" / "da3-splat" / "run"
METRICS = "metrics.json"
LOG_TAIL = 25

console = Console(highlight=False, soft_wrap=True)


def _default_model() -> str:
    from da3_nerfstudio.model.presets import DEFAULT_MODEL

    return os.environ.get("DA3_MODEL", DEFAULT_MODEL)


@dataclass(frozen=True)
class DemoConfig:
    """Run the whole pipeline on a rendered scene: dataset, splat training, export, Blender scene."""

    output: Path = ROOT / "outputs" / "demo"
    """Output folder (replaced at the end of a successful run if an earlier demo wrote it)."""
    views: int = 10
    """Rendered views on a ring around the scene."""
    width: int = 240
    """Rendered image width (pixels); the held-out views are evaluated at this size."""
    height: int = 180
    """Rendered image height (pixels)."""
    samples: int = 16
    """Cycles samples per pixel of the scene's photos."""
    eval_interval: int = 5
    """Hold out every N-th view (from N/2) for PSNR; these views are never trained on."""
    seed_stride: int = 3
    """One initial Gaussian per SEED_STRIDE x SEED_STRIDE pixels of each training view (splat_init.ply)."""
    iterations: int = 200
    """ns-train iterations (the pure-PyTorch rasterizer on CPU; no densification before iteration 500)."""
    densify: bool = False
    """Let splatfacto's strategy densify, prune and reset opacities. Off, the Gaussians keep DA3's initial
    opacities, which gsplat 1.4.0's strategy otherwise resets to 0.2 at step 0; a short schedule would
    not reach its 500-iteration warm-up for densifying anyway. Measured on this scene (defaults, 200
    iterations): 18.7 dB held-out PSNR off, 15.0 dB on."""
    train_downscales: int = 1
    """Train at 1/2^N of the image size (the depth target too); evaluation renders at full size."""
    threads: int = 1
    """torch threads of the ns-* tools (0: torch's default). Measured on a 2-core machine while other jobs
    shared it: one thread trained 5x faster than two (0.75 s against 4-5 s per iteration)."""
    preview_width: int = 160
    """Width of the Cycles preview of the splats (height follows the aspect ratio)."""
    preview_samples: int = 16
    """Cycles samples per pixel of the preview (denoised)."""
    model: str = field(default_factory=_default_model)
    """DA3 model (hub id or local folder; default $DA3_MODEL, else da3-process-data's default)."""
    ground_truth: bool = False
    """Skip the network and use the rendered ground-truth geometry even when weights are available."""


@dataclass
class Stage:
    """One row of the summary table."""

    stage: str
    seconds: float
    result: str


def validate(config: DemoConfig) -> None:
    """Reject settings that cannot give a held-out evaluation or a preview, with one line each."""
    if config.views < 3:
        raise InputError(f"--views {config.views}: need at least 3 (training views plus a held-out one)")
    if not 2 <= config.eval_interval or config.eval_interval // 2 >= config.views:
        raise InputError(f"--eval-interval {config.eval_interval}: must be >= 2 and hold out one of {config.views}")
    if config.iterations < 1 or config.seed_stride < 1 or config.train_downscales < 0:
        raise InputError("--iterations and --seed-stride must be positive, --train-downscales >= 0")
    if config.preview_width < 64 or config.preview_width * config.height < 64 * config.width:
        raise InputError(f"--preview-width {config.preview_width}: the preview must be at least 64x64")
    if config.threads < 0:
        raise InputError(f"--threads {config.threads}: must be 0 (default) or positive")
    out = config.output
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / SUMMARY).is_file():
        raise InputError(f"{out}: exists and was not written by the demo; pass another --output or remove it")


class Runner:
    """Runs the stages' tools in the staging folder, each with its own log, and records the timings."""

    def __init__(self, workdir: Path, threads: int) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir()
        self.env = dict(os.environ)
        if threads:
            self.env["OMP_NUM_THREADS"] = str(threads)
        self.stages: list[Stage] = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        """Start a tool with cwd = the staging folder (so every path it records is relative to it)."""
        with open(self.logs / f"{name}.log", "w") as log:
            log.write("$ " + " ".join(args) + "\n")
            log.flush()
            return subprocess.Popen(args, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def wait(self, name: str, proc: subprocess.Popen) -> str:
        """Wait for a tool; on failure raise with the tail of its log. Returns the log text."""
        code = proc.wait()
        log = self.logs / f"{name}.log"
        text = log.read_text(errors="replace")
        if code != 0:
            console.print("\n".join(text.splitlines()[-LOG_TAIL:]), style="dim", markup=False)
            raise DA3Error(f"{name} failed (exit {code}); the last lines of its log are above")
        return text

    def run(self, name: str, args: list[str]) -> str:
        with console.status(f"{name} ...", spinner="dots"):
            return self.wait(name, self.start(name, args))

    def record(self, stage: str, start: float, result: str) -> None:
        seconds = time.perf_counter() - start
        self.stages.append(Stage(stage, seconds, result))
        console.print(Text.assemble((stage, "bold"), f" ({seconds:.0f} s): {result}"))


def _tool(name: str) -> str:
    path = BIN / name
    if not path.is_file():
        raise InputError(f"{path}: not found; run `make demo`, which installs the environment first")
    return str(path)


def weights_available(model: str) -> str | None:
    """None when the model's weights resolve (hub or local cache), else the reason in one line."""
    from da3_nerfstudio.model.loading import resolve_checkpoint

    try:
        resolve_checkpoint(model)
    except CheckpointError as err:
        return str(err)
    return None


def read_metrics(path: Path) -> dict:
    """ns-eval's averaged metrics over the held-out views."""
    try:
        return json.loads(path.read_text())["results"]
    except (OSError, ValueError, KeyError) as err:
        raise DA3Error(f"{path}: ns-eval wrote no metrics ({err})") from None


def run(config: DemoConfig, staging: Path, begin: float) -> dict:
    """All stages inside ``staging``; returns the summary (also written there). ``begin``: the start time."""
    from demo_scene import DemoSceneConfig, generate

    from da3_nerfstudio.dataset import split_indices

    runner = Runner(staging, config.threads)

    start = time.perf_counter()
    with console.status("scene: rendering with Cycles ...", spinner="dots"):
        truth = generate(
            DemoSceneConfig(
                output=staging / "scene", views=config.views, width=config.width, height=config.height,
                samples=config.samples,
            )
        )  # fmt: skip
    runner.record("scene", start, f"{config.views} views at {config.width}x{config.height}, exact cameras + depth")

    start = time.perf_counter()
    train_views, _ = split_indices(config.views, config.eval_interval)
    per_view = math.ceil(config.width / config.seed_stride) * math.ceil(config.height / config.seed_stride)
    gaussians = len(train_views) * per_view
    common = ["--output-dir", "dataset", "--num-gaussians", str(gaussians)]
    common += ["--eval-interval", str(config.eval_interval)]
    missing = "--ground-truth was given" if config.ground_truth else weights_available(config.model)
    if missing is None:
        geometry = f"DA3 ({config.model})"
        # The photos are small: running the network above their size would only upsample them.
        process_res = 14 * max(1, max(config.width, config.height) // 14)
        runner.run(
            "geometry",
            [_tool("da3-process-data"), "images", "--data", "scene/images", "--model", config.model,
             "--process-res", str(process_res), *common],
        )  # fmt: skip
    else:
        geometry = "GROUND TRUTH (rendered scene, not network output)"
        console.print(
            f"demo: DA3 weights not used ({missing}); the dataset is written from the scene's rendered GROUND "
            "TRUTH cameras and depth instead (not network output)",
            style="bold yellow",
            markup=False,
        )
        runner.run(
            "geometry",
            [_tool("da3-process-data"), "predictions", "--data", str(truth.relative_to(staging)),
             "--images", "scene/images", *common],
        )  # fmt: skip
    meta = json.loads((staging / "dataset" / "transforms.json").read_text())
    held_out = meta.get("test_filenames", [])
    runner.record("geometry", start, f"{geometry}; {len(held_out)} of {len(meta['frames'])} views held out")

    start = time.perf_counter()
    never = "1000000000"
    runner.run(
        "train",
        [_tool("ns-train"), "da3-splat", "--data", "dataset", "--output-dir", "train", "--experiment-name", "demo",
         "--timestamp", "run", "--max-num-iterations", str(config.iterations), "--vis", "tensorboard",
         "--steps-per-save", never, "--steps-per-eval-image", never, "--steps-per-eval-all-images", never,
         "--pipeline.model.num-downscales", str(config.train_downscales),
         "--pipeline.model.resolution-schedule", never,
         *([] if config.densify else ["--pipeline.model.stop-split-at", "0"])],
    )  # fmt: skip
    scale = 2**config.train_downscales
    runner.record(
        "train", start, f"ns-train da3-splat, {config.iterations} iterations at "
        f"{config.width // scale}x{config.height // scale} from {gaussians:,} Gaussians"
    )  # fmt: skip

    start = time.perf_counter()
    config_yml = str(RUN_DIR / "config.yml")
    evaluation = runner.start("evaluate", [_tool("ns-eval"), "--load-config", config_yml, "--output-path", METRICS])
    export = runner.start(
        "export", [_tool("ns-export"), "gaussian-splat", "--load-config", config_yml, "--output-dir", "."]
    )
    try:
        with console.status("evaluate + export: ns-eval and ns-export gaussian-splat ...", spinner="dots"):
            runner.wait("evaluate", evaluation)
            runner.wait("export", export)
    finally:  # one failed: do not leave the other writing into a folder about to be removed
        for proc in (evaluation, export):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    metrics = read_metrics(staging / METRICS)
    psnr = float(metrics["psnr"])
    runner.record(
        "evaluate + export", start, f"PSNR {psnr:.2f} dB, SSIM {metrics.get('ssim', float('nan')):.3f} on "
        f"{len(held_out)} held-out view(s); splat.ply"
    )  # fmt: skip

    start = time.perf_counter()
    log = runner.run(
        "blender",
        [sys.executable, str(ROOT / "scripts" / "demo_blend.py"), "--dataset", "dataset", "--splats", "splat.ply",
         "--dataparser-transforms", str(RUN_DIR / "dataparser_transforms.json"), "--blend", "demo.blend",
         "--preview", "preview.png", "--width", str(config.preview_width), "--samples", str(config.preview_samples),
         "--z-up" if missing is None else "--no-z-up"],
    )  # fmt: skip
    blend = json.loads(log.strip().splitlines()[-1])
    runner.record(
        "blender", start, f"demo.blend ({blend['cameras']} cameras, {blend['points']:,} points, {blend['splats']:,} "
        f"splats under one root); preview.png from {Path(blend['view']).stem}"
    )  # fmt: skip

    summary = {
        "geometry": geometry,
        "ground_truth_geometry": missing is not None,
        "psnr": psnr,
        "metrics": metrics,
        "held_out_views": held_out,
        "stages": [asdict(s) for s in runner.stages],
        "total_seconds": time.perf_counter() - begin,
        "blender": blend,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "files": {
            "scene": "scene/", "dataset": "dataset/", "splats": "splat.ply", "blend": "demo.blend",
            "preview": "preview.png", "metrics": "metrics.json", "config": config_yml,
        },
    }  # fmt: skip
    (staging / "summary.md").write_text(_markdown(summary))
    (staging / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _markdown(summary: dict) -> str:
    rows = [f"| {s['stage']} | {s['seconds']:.1f} s | {s['result']} |" for s in summary["stages"]]
    return "\n".join(
        [
            "# da3-nerfstudio demo",
            "",
            f"Geometry: **{summary['geometry']}**. PSNR on {len(summary['held_out_views'])} held-out view(s): "
            f"**{summary['psnr']:.2f} dB**.",
            "",
            "`preview.png`: Cycles render of the imported splats through a held-out camera (left) | that view's "
            "photo (right). `demo.blend`: cameras, points and splats under one root.",
            "",
            f"Open the trained splats in nerfstudio's viewer from this folder (the run's paths are relative to it): "
            f"`ns-viewer --load-config {RUN_DIR / 'config.yml'}`.",
            "",
            "| stage | time | result |",
            "|---|---|---|",
            *rows,
            f"| **total** | **{summary['total_seconds']:.1f} s** | |",
            "",
        ]
    )


def _swap_in(staging: Path, output: Path) -> None:
    """Replace ``output`` (an earlier demo, checked by :func:`validate`) by ``staging`` with renames only."""
    replace_folder(staging, output, output.with_name(f".{output.name}.{uuid.uuid4().hex[:8]}.old"))
    shutil.rmtree(staging, ignore_errors=True)  # the earlier demo, now at the staging name


def print_summary(summary: dict, output: Path) -> None:
    table = Table(title=f"demo: {output}")
    for column in ("stage", "time", "result"):
        table.add_column(column)
    for s in summary["stages"]:
        table.add_row(s["stage"], f"{s['seconds']:.1f} s", s["result"])
    table.add_row("total", f"{summary['total_seconds']:.1f} s", f"PSNR {summary['psnr']:.2f} dB (held out)")
    console.print(table)
    console.print(f"geometry: {summary['geometry']}")
    console.print(f"open {output / 'demo.blend'} in Blender; preview {output / 'preview.png'}")
    # The run's config.yml names its dataset relative to the output folder, so ns-viewer runs from there.
    viewer = (
        f"cd {shlex.quote(str(output))} && {shlex.quote(str(BIN / 'ns-viewer'))} --load-config {RUN_DIR / 'config.yml'}"
    )
    console.print(f"nerfstudio viewer: {viewer}")


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run every stage, print the summary; exit code 1 with one line on failure."""
    begin = time.perf_counter()
    config = tyro.cli(DemoConfig, args=argv, description=__doc__.split("\n\n")[0])
    staging = config.output.with_name(f".{config.output.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        validate(config)
        staging.mkdir(parents=True)
        summary = run(config, staging, begin)
        _swap_in(staging, config.output)
    except DA3Error as err:
        print(f"demo: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted; the previous output was left as it was", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print_summary(summary, config.output)
    return 0


if __name__ == "__main__":
    exit_process(main())  # bpy was loaded: skip its exit-time destructors, which can deadlock
