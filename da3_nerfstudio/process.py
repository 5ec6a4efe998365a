"""Photos, a video or saved predictions -> a dataset folder: the library entry point of dataset building.

``da3-process-data`` (:mod:`da3_nerfstudio.cli.process_data`) parses its command line into these classes and
calls their ``main``; the ``da3-data`` parser builds an :class:`ImagesCommand` itself for a plain photo folder,
and the Ray batch (:mod:`da3_nerfstudio.cli.batch`) builds on :class:`_Network`. Every option is checked, the
inputs listed and decoded, known cameras read and the run's memory estimated before the model loads; the
dataset is then written by :func:`da3_nerfstudio.dataset.write_dataset`. Depth files are float32 in the units
of the poses: nerfstudio's own ``nerfstudio-data`` parser needs ``--depth-unit-scale-factor 1.0``.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from da3_nerfstudio.dataset_options import DatasetOptions
from da3_nerfstudio.errors import InputError
from da3_nerfstudio.model.presets import DEFAULT_MODEL, ModelPreset, NetConfig
from da3_nerfstudio.output_folder import check_output_dir, input_fingerprint, remove_stale_staging, staging_folder
from da3_nerfstudio.preprocess import image_header, natural_sorted, verify_images

# torch-backed modules (the writer, geometry, predictions, the predictor) are imported where they are used, so
# that `--help` and every check of options and inputs run before torch loads.
if TYPE_CHECKING:
    from da3_nerfstudio.dataset import DatasetSummary
    from da3_nerfstudio.prediction import Prediction

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
#: Without a terminal (e.g. under the Blender add-on) progress is printed as lines at this step.
_LINE_STEP = 0.05
#: Per processed pixel of every view, for the memory estimate made before the model loads: what the prediction
#: keeps (uint8 RGB, float32 depth and confidence, sky flag: 12 bytes) and the dataset writer's point arrays
#: (float32 xyz, colour, int64 view/row/column: about 50 bytes).
_KEPT_BYTES_PER_PIXEL = 64
#: Options that change how a dataset is made, not what it holds: left out of its fingerprint (resume).
_NOT_IN_RESULT = ("output_dir", "overwrite", "device", "workers", "ray_address")
#: Options that name inputs: the fingerprint covers those files (names, sizes, mtimes), not where they are.
_INPUT_OPTIONS = ("data", "images", "known_poses")

console = Console(highlight=False)


class _Reporter:
    """Rich progress bars on a terminal, plain ``stage: done/total`` lines otherwise (parsable)."""

    def __init__(self) -> None:
        columns = (SpinnerColumn(), TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn())
        self._bars = Progress(*columns, TimeElapsedColumn(), console=console, disable=not console.is_terminal)
        self._tasks: dict[str, int] = {}
        self._printed: dict[str, float] = {}

    def __enter__(self) -> _Reporter:
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if console.is_terminal:
            if stage not in self._tasks:
                self._tasks[stage] = self._bars.add_task(stage, total=total)
            self._bars.update(self._tasks[stage], completed=done, total=total)
            return
        fraction = done / max(total, 1)
        if done == total or fraction - self._printed.get(stage, -1.0) >= _LINE_STEP:
            self._printed[stage] = fraction
            console.print(f"{stage}: {done}/{total}")


@dataclass
class _Common:
    """Options shared by every input kind."""

    data: Path
    """Input: an image folder, a video file, or a predictions .npz (by subcommand)."""
    output_dir: Path
    """Dataset folder to write (swapped in atomically). A rerun replaces only the files the tool wrote there and
    keeps everything else (notes, an outputs/ folder)."""
    overwrite: bool = False
    """Write into a non-empty folder that was not written by da3-process-data. Its files are still kept: the
    tool never deletes a file it did not write, and refuses when one is where it writes (e.g. images/)."""
    conf_percentile: float = DatasetOptions.conf_percentile
    """Pixels below this confidence percentile give no points or Gaussians (official rule, floor 1.05)."""
    num_points: int = DatasetOptions.num_points
    """Target number of points in sparse_pc.ply and colmap/sparse/0 (voxel-downsampled)."""
    num_gaussians: int = DatasetOptions.num_gaussians
    """Most Gaussians in splat_init.ply."""
    eval_interval: int = DatasetOptions.eval_interval
    """Hold out every N-th view for nerfstudio's val/test split; held-out views seed no points or Gaussians
    (0: train and evaluate on all views)."""

    def _options(self) -> DatasetOptions:
        if not 0 <= self.conf_percentile <= 100:
            raise InputError(f"--conf-percentile must be within 0..100, got {self.conf_percentile}")
        if self.num_points < 1:
            raise InputError(f"--num-points must be at least 1, got {self.num_points}")
        if self.num_gaussians < 1:
            raise InputError(f"--num-gaussians must be at least 1, got {self.num_gaussians}")
        if self.eval_interval < 0 or self.eval_interval == 1:
            raise InputError(
                f"--eval-interval must be 0 (evaluate on all views) or at least 2, got {self.eval_interval}"
            )
        return DatasetOptions(self.conf_percentile, self.num_points, self.num_gaussians, self.eval_interval)

    def _settings(self) -> dict:
        """The command's options as JSON values, for the manifest."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    def _inputs(self) -> list[Path]:
        """The files and folders the dataset is made from."""
        return [p for p in (getattr(self, name, None) for name in _INPUT_OPTIONS) if p is not None]

    def fingerprint(self) -> str:
        """What the dataset is made from (inputs and settings), stored in its manifest: a rerun can skip a
        dataset whose fingerprint is current (:func:`da3_nerfstudio.output_folder.dataset_is_current`)."""
        settings = {k: v for k, v in self._settings().items() if k not in _NOT_IN_RESULT + _INPUT_OPTIONS}
        return input_fingerprint(self._inputs(), settings)

    def _write(
        self,
        prediction: Prediction,
        image_paths: Sequence[Path] | None,
        timings: dict[str, float],
        extra: dict,
        fingerprint: str,
    ) -> DatasetSummary:
        from da3_nerfstudio.dataset import write_dataset

        with _Reporter() as report:
            summary = write_dataset(
                prediction,
                self.output_dir,
                image_paths=image_paths,
                options=self._options(),
                overwrite=self.overwrite,
                progress=report,
                metadata={"options": self._settings(), **extra, "timings_before_writing": timings},
                fingerprint=fingerprint,
            )
        summary.timings = {**timings, **summary.timings}
        _print_summary(summary)
        return summary


@dataclass
class _Network(_Common):
    """Options of the commands that run the network."""

    model: str = DEFAULT_MODEL
    """Hugging Face repo id or local checkpoint folder (config.json + model.safetensors). The default,
    DA3NESTED-GIANT-LARGE-1.1, gives the best (metric) geometry and fits ~100 views on a 24 GB GPU; its
    licence is CC BY-NC 4.0 (non-commercial). DA3-SMALL / DA3-BASE are Apache-2.0."""
    device: str | None = None
    """torch device (default: cuda if available, else cpu)."""
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """Backbone precision: auto = bf16 on GPUs with bf16 (else fp16) and on CPUs with AVX-512 BF16 or AMX,
    float32 elsewhere; float32 forces full precision (the heads always run in float32)."""
    process_res: int = 504
    """Network input resolution (longest side for upper_bound_resize)."""
    process_res_method: Literal["upper_bound_resize", "lower_bound_resize", "upper_bound_crop", "lower_bound_crop"] = (
        "upper_bound_resize"
    )
    """Official resize rule; *_crop methods are refused (the dataset needs the full frame)."""
    max_views_per_chunk: int | None = None
    """Views per network pass (default: what fits in memory); more views run in aligned chunks."""
    known_poses: Path | None = None
    """COLMAP model folder or transforms.json with cameras to condition on (matched by file name);
    the dataset is then in that model's frame and units."""
    use_ray_pose: bool = False
    """Cameras from the ray head instead of the camera head (slower, sometimes more accurate)."""
    gaussian_head: bool = True
    """Use the model's Gaussian head for splat_init.ply when it has one (else Gaussians from depth)."""
    workers: int | None = None
    """Ray workers, each holding the model: the chunks of one capture (or the captures of `batch`) run on
    them at once, on a local Ray runtime on 127.0.0.1 or on the cluster of --ray-address."""
    ray_address: str | None = None
    """Join this Ray cluster (`auto` or HOST:PORT, e.g. from `ray start --head`) instead of running here."""

    def _inputs(self) -> list[Path]:
        """The inputs, and a local checkpoint folder (other weights, other dataset)."""
        model = Path(self.model)
        return [*super()._inputs(), *([model] if model.is_dir() else [])]

    def _check(self) -> None:
        """Option values, before any input is read."""
        from da3_nerfstudio.predictor import resolve_device

        self._options()
        resolve_device(self.device)
        if self.process_res_method.endswith("_crop"):
            raise InputError(
                f"--process-res-method {self.process_res_method} crops the images, but a dataset needs depth for "
                "the full frame (as the official COLMAP export); use upper_bound_resize or lower_bound_resize"
            )
        if self.process_res < 14:
            raise InputError(f"--process-res must be at least 14 (one patch), got {self.process_res}")
        if self.max_views_per_chunk is not None and self.max_views_per_chunk < 3:
            raise InputError(f"--max-views-per-chunk must be at least 3, got {self.max_views_per_chunk}")
        if self.known_poses is not None and not self.known_poses.exists():
            raise InputError(f"{self.known_poses}: --known-poses file or folder not found")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers must be at least 1, got {self.workers}")

    def _prepare(self, sizes: Sequence[tuple[int, int]], views: int) -> Path:
        """The checkpoint folder, after checking that its model predicts cameras and that ``views`` images of
        these ``sizes`` fit in memory at --process-res: all before the model loads."""
        from da3_nerfstudio.model.loading import read_model_name, resolve_checkpoint
        from da3_nerfstudio.model.presets import PRESETS

        folder = resolve_checkpoint(self.model)
        preset = PRESETS[read_model_name(folder)]
        net = preset.primary
        if not net.camera:
            raise InputError(
                f"{self.model}: {preset.name} predicts depth only, without cameras; use a multi-view model "
                "such as DA3NESTED-GIANT-LARGE-1.1, DA3-LARGE-1.1 or DA3-SMALL"
            )
        weights = folder / "model.safetensors"
        self._check_memory(preset, net, weights.stat().st_size if weights.is_file() else 0, sizes, views)
        return folder

    def _check_memory(
        self, preset: ModelPreset, net: NetConfig, weight_bytes: int, sizes: Sequence[tuple[int, int]], views: int
    ) -> None:
        """Refuse a run whose estimated memory (weights, one network pass, the prediction of every view) exceeds
        what the device has available, instead of allocating until the kernel kills the process."""
        import torch

        from da3_nerfstudio.model.dpt import HEAD_CHUNK
        from da3_nerfstudio.predictor import MIN_OVERLAP, available_memory, pass_memory, resolve_device
        from da3_nerfstudio.preprocess import processed_size

        width, height = max(
            (processed_size(w, h, self.process_res, self.process_res_method) for w, h in set(sizes)),
            key=lambda size: size[0] * size[1],
        )
        per_pass = min(views, self.max_views_per_chunk or MIN_OVERLAP + 1)
        per_view, heads = pass_memory(preset, height, width)
        kept = _KEPT_BYTES_PER_PIXEL
        if self.gaussian_head and net.gs_adapter is not None:  # float32 means, scales, rotation, opacity, harmonics
            kept += 4 * (3 + 3 + 4 + 1 + 3 * (net.gs_adapter.sh_degree + 1) ** 2)
        # On the device; the heads run at most HEAD_CHUNK views of a pass at a time.
        network = weight_bytes + per_pass * per_view + heads * min(per_pass, HEAD_CHUNK) // HEAD_CHUNK
        results = views * height * width * kept  # in RAM, whatever the device
        device = resolve_device(self.device)
        cpu = torch.device("cpu")
        needs = [(device, network + results)] if device.type == "cpu" else [(device, network), (cpu, results)]
        for where, need in needs:
            available = available_memory(where)
            if need > available:
                raise InputError(
                    f"--process-res {self.process_res}: {views} views at {width}x{height} with {preset.name} need "
                    f"about {need / 2**30:.1f} GiB of {'RAM' if where.type == 'cpu' else where} ({per_pass} views "
                    f"per pass) but {available / 2**30:.1f} GiB is available; lower --process-res, "
                    "--max-views-per-chunk or the number of views"
                )

    def _run(
        self,
        folder: Path,
        image_paths: list[Path],
        known: tuple[np.ndarray, np.ndarray] | None,
        timings: dict[str, float],
    ) -> Prediction:
        """Load the model from the checked ``folder`` and predict (with ``known`` cameras when given)."""
        from da3_nerfstudio.predictor import shared_predictor

        extrinsics, intrinsics = known if known is not None else (None, None)
        distributed = self.workers is not None or self.ray_address is not None
        start = time.perf_counter()
        with console.status(f"loading {self.model}"):  # on the workers' devices when distributed; here for planning
            predictor = shared_predictor(str(folder), "cpu" if distributed else self.device, self.precision)
        timings["load model"] = time.perf_counter() - start
        model = predictor.model
        console.print(f"model {model.name} on {predictor.device} - licence: {model.preset.licence}")
        start = time.perf_counter()
        with contextlib.ExitStack() as stack, _Reporter() as report:
            runner = None
            if distributed:
                from da3_nerfstudio.cluster.pool import chunk_runner

                runner = stack.enter_context(
                    chunk_runner(self.ray_address, self.workers, self.model, self.device, self.precision)
                )
            prediction = predictor.predict(
                image_paths,
                extrinsics,
                intrinsics,
                process_res=self.process_res,
                process_res_method=self.process_res_method,
                infer_gs=self.gaussian_head and model.has_gaussian_head,
                use_ray_pose=self.use_ray_pose,
                max_views_per_chunk=self.max_views_per_chunk,
                progress=lambda done, total: report("inference", done, total),
                runner=runner,
            )
        timings["inference"] = time.perf_counter() - start
        return prediction

    def _extra(self, prediction: Prediction) -> dict:
        from da3_nerfstudio.model.presets import PRESETS

        preset = PRESETS.get(prediction.model_name)
        return {"model_source": self.model, "model_licence": preset.licence if preset else "unknown"}


@dataclass
class ImagesCommand(_Network):
    """Photos of one scene (a folder, two or more images) -> dataset."""

    def main(self) -> DatasetSummary:
        self._check()
        images = list_images(self.data)
        check_output_dir(self.output_dir, overwrite=self.overwrite, inputs=self._inputs())
        # Known cameras before the checkpoint: resolving it may start a download of gigabytes.
        known = None if self.known_poses is None else load_known_poses(self.known_poses, images)
        folder = self._prepare([image_header(p)[:2] for p in images], len(images))
        fingerprint = self.fingerprint()
        timings: dict[str, float] = {}
        prediction = self._run(folder, images, known, timings)
        return self._write(prediction, images, timings, self._extra(prediction), fingerprint)


@dataclass
class VideoCommand(_Network):
    """A video -> evenly spaced frames -> dataset."""

    num_frames_target: int = 100
    """Number of frames to extract, evenly spaced over the whole video."""

    def main(self) -> DatasetSummary:
        from da3_nerfstudio.video import extract_frames, frame_indices, probe_video

        self._check()
        if self.num_frames_target < 2:
            raise InputError(f"--num-frames-target must be at least 2, got {self.num_frames_target}")
        if self.data.is_dir():
            raise InputError(f"{self.data}: is a folder; use `da3-process-data images` for photos")
        width, height, count = probe_video(self.data)
        check_output_dir(self.output_dir, overwrite=self.overwrite, inputs=self._inputs())
        folder = self._prepare([(width, height)], len(frame_indices(count, self.num_frames_target)))
        fingerprint = self.fingerprint()
        remove_stale_staging(self.output_dir.resolve())
        frames_dir = staging_folder(self.output_dir.resolve(), "frames")
        timings: dict[str, float] = {}
        try:
            start = time.perf_counter()
            with _Reporter() as report:
                frames = extract_frames(
                    self.data, frames_dir, self.num_frames_target, progress=lambda d, t: report("frames", d, t)
                )
            timings["frames"] = time.perf_counter() - start
            known = None if self.known_poses is None else load_known_poses(self.known_poses, frames)
            prediction = self._run(folder, frames, known, timings)
            extra = {**self._extra(prediction), "video": str(self.data)}
            return self._write(prediction, frames, timings, extra, fingerprint)
        finally:
            shutil.rmtree(frames_dir, ignore_errors=True)


@dataclass
class PredictionsCommand(_Common):
    """Predictions computed elsewhere (this project's Prediction.save, or the official DA3 npz export with
    depth, conf, extrinsics (N,3,4) world-to-camera, intrinsics, image) -> dataset, without the network."""

    images: Path | None = None
    """Folder with the original photos (same order, or the names stored in the npz); they are written at
    full resolution with intrinsics rescaled to their size. Default: the npz's processed images."""

    def main(self) -> DatasetSummary:
        self._options()  # bad option values fail before anything is read
        check_output_dir(self.output_dir, overwrite=self.overwrite, inputs=self._inputs())
        from da3_nerfstudio.prediction import Prediction

        prediction = Prediction.load(self.data)
        fingerprint = self.fingerprint()
        paths = None
        if self.images is not None:
            paths = _match_images(prediction, list_images(self.images, minimum=1), self.images)
        elif not _has_images(self.data):
            raise InputError(f"{self.data}: has no 'image' array; pass --images with the original photos")
        return self._write(prediction, paths, {}, {"predictions": str(self.data)}, fingerprint)


def _has_images(npz: Path) -> bool:
    with np.load(npz, allow_pickle=False) as data:
        return "image" in data.files


def _match_images(prediction: Prediction, images: list[Path], folder: Path) -> list[Path]:
    """The photo of each view: by the file names stored in the prediction, else in sorted order."""
    by_name = {p.name: p for p in images}
    stored = [Path(name).name for name in prediction.names]
    if stored and all(name in by_name for name in stored):
        return [by_name[name] for name in stored]
    if len(images) != len(prediction):
        raise InputError(f"{folder}: {len(images)} images for a prediction of {len(prediction)} views")
    return images


def list_images(folder: Path, minimum: int = 2) -> list[Path]:
    """Image files of a folder in natural order, each one decoded as the network will; other files are ignored
    with a note."""
    if not folder.exists():
        raise InputError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder (use `da3-process-data video` for a video file)")
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    # A folder or broken link named like an image is an error (by verify_images), not silently one view fewer.
    images = natural_sorted([p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES])
    others = sorted(p.name for p in entries if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES)
    if others:
        shown = ", ".join(others[:5]) + (f" (+{len(others) - 5} more)" if len(others) > 5 else "")
        console.print(f"ignoring {len(others)} file(s) that are not images: {shown}")
    if not images:
        raise InputError(f"{folder}: no images found ({', '.join(IMAGE_SUFFIXES)})")
    if len(images) < minimum:
        raise InputError(f"{folder}: only one image ({images[0].name}); a dataset needs at least 2 views")
    verify_images(images)  # every file decoded now: a bad one fails before the model loads
    return images


def load_known_poses(path: Path, image_paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(N,4,4) world-to-camera and (N,3,3) intrinsics at each image's own size, from a COLMAP model
    folder or a transforms.json, matched to ``image_paths`` by file name."""
    from da3_nerfstudio.formats.colmap import read_colmap_model
    from da3_nerfstudio.formats.transforms import read_transforms_json
    from da3_nerfstudio.geometry import rescale_intrinsics, to_homogeneous

    if path.is_dir():
        model = read_colmap_model(path)
        w2c, intrinsics, sizes, names = model.w2c, model.intrinsics, model.image_sizes, model.image_names
    elif path.suffix.lower() == ".json":
        w2c, intrinsics, sizes, names = read_transforms_json(path)
    else:
        raise InputError(f"{path}: --known-poses must be a COLMAP model folder or a transforms.json")
    index = {Path(name).name: i for i, name in enumerate(names)}
    missing = [p.name for p in image_paths if p.name not in index]
    if missing:
        raise InputError(
            f"{path}: no camera for {len(missing)} of {len(image_paths)} images (e.g. {', '.join(missing[:3])})"
        )
    order = [index[p.name] for p in image_paths]
    rescaled = []
    for p, i in zip(image_paths, order, strict=True):
        width, height, _ = image_header(p)
        rescaled.append(rescale_intrinsics(intrinsics[i], (sizes[i][1], sizes[i][0]), (height, width)))
    return to_homogeneous(np.asarray(w2c, dtype=np.float64)[order]), np.stack(rescaled)


def _print_summary(summary: DatasetSummary) -> None:
    table = Table(title=f"Dataset written to {summary.output_dir}", show_header=False)
    sizes = ", ".join(f"{w}x{h}" for w, h in summary.image_sizes)
    if summary.downscales:
        sizes += " (+ " + ", ".join(f"images_{f}" for f in summary.downscales) + ")"
    rows = [
        ("views", f"{summary.views} ({summary.train_views} train, {summary.eval_views} eval)"),
        ("images", sizes),
        ("network resolution", "{}x{}".format(*summary.processed_size)),
        ("points", f"{summary.points:,} (sparse_pc.ply, colmap/sparse/0)"),
        ("Gaussians", f"{summary.gaussians:,} from {summary.gaussian_source} (splat_init.ply)"),
        *((f"time: {stage}", f"{seconds:.2f} s") for stage, seconds in summary.timings.items()),
        ("time: total", f"{sum(summary.timings.values()):.2f} s"),
    ]  # fmt: skip
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    console.print(
        f"train: ns-train da3-splat --data {summary.output_dir}\n"
        "depth files are float32 in the units of the poses: with nerfstudio's own parser use "
        "`nerfstudio-data --depth-unit-scale-factor 1.0` (da3-splat sets it)"
    )
    console.print(f"wrote {summary.output_dir}", soft_wrap=True)
