"""Write a DA3 :class:`~da3_nerfstudio.prediction.Prediction` as a dataset folder.

One folder serves every consumer of the project:

* nerfstudio's ``nerfstudio-data`` parser (and ``da3-data``) reads ``transforms.json`` unmodified:
  PINHOLE intrinsics per frame at the size of the written image, OpenGL camera-to-world poses,
  ``depth_file_path`` (float32 ``.npy`` z-depth **in the units of the poses**, so consumers use
  ``depth_unit_scale_factor=1.0``; 0 marks sky and unknown pixels), ``confidence_file_path`` (read by
  ``da3-data``), ``ply_file_path`` and an explicit train/val/test split. ``applied_transform`` is the
  identity: without it nerfstudio would silently apply COLMAP's axis swap because the folder also
  holds ``colmap/sparse/0``.
* ``images_2``/``images_4``... (and matching ``depths_N``, which nerfstudio looks up with the same
  factor) exist exactly when nerfstudio's automatic downscaling would look for them (> 1600 px).
* ``colmap/sparse/0`` for COLMAP-based trainers, with the sparse points and, as each point's track,
  the pixel it was unprojected from.
* ``sparse_pc.ply`` (seed points, :mod:`da3_nerfstudio.points`), ``splat_init.ply`` (initial Gaussians,
  INRIA 3DGS layout), and ``da3/`` (``predictions.npz``, previews from :mod:`da3_nerfstudio.previews`, and
  the ``dataset.json`` manifest that marks the folder as ours so that a rerun may replace it).

:func:`write_dataset` reads as its stages: plan where each view goes, then write images, depth, points and
COLMAP, splats, ``transforms.json``, predictions and previews, and last the manifest and the swap into
place. It builds in a staging folder that :mod:`da3_nerfstudio.output_folder` swaps in atomically, so the
output is either the complete new dataset or whatever was there before, and the user's files in it are kept.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from da3_nerfstudio.dataset_options import DatasetOptions
from da3_nerfstudio.errors import InputError
from da3_nerfstudio.formats.colmap import write_colmap_model
from da3_nerfstudio.formats.ply import SplatData, write_point_cloud_ply, write_splat_ply
from da3_nerfstudio.formats.transforms import frames_from_cameras, write_transforms_json
from da3_nerfstudio.geometry import rescale_intrinsics
from da3_nerfstudio.output_folder import (
    check_output_dir,
    staged_output,
    swap_into_place,
    write_manifest,
)
from da3_nerfstudio.points import SparsePoints, sparse_points
from da3_nerfstudio.prediction import Prediction
from da3_nerfstudio.preprocess import image_header, load_image
from da3_nerfstudio.previews import write_previews
from da3_nerfstudio.splat_init import splats_from_depth, splats_from_gaussian_head

#: nerfstudio-data looks for images_2, images_4, ... while the image's longest side exceeds this.
MAX_AUTO_RESOLUTION = 1600
#: Views written at a time by the stages that encode pictures (PNG/JPEG encoding releases the GIL).
WRITE_THREADS = min(8, os.cpu_count() or 1)

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``, called as each stage advances."""


@dataclass
class DatasetSummary:
    """What was written, for the command's report and the manifest."""

    output_dir: str
    views: int
    processed_size: tuple[int, int]
    image_sizes: list[tuple[int, int]]
    downscales: list[int]
    points: int
    gaussians: int
    gaussian_source: str
    train_views: int
    eval_views: int
    timings: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# The writer: a list of stages


def write_dataset(
    prediction: Prediction,
    output_dir: str | Path,
    *,
    image_paths: Sequence[str | Path] | None = None,
    options: DatasetOptions | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    metadata: dict[str, Any] | None = None,
    fingerprint: str | None = None,
) -> DatasetSummary:
    """Write ``prediction`` as a dataset folder (see the module docstring), atomically.

    Args:
        prediction: cameras, depth and optionally confidence, sky and Gaussians for N views.
        output_dir: the dataset folder; an existing one is replaced only if it is a previous
            dataset of this tool or ``overwrite`` is set.
        image_paths: the N original images (at full resolution, or any resolution of the same aspect);
            without them the prediction's processed images are written.
        options: point, Gaussian and split settings.
        progress: ``progress(stage, done, total)`` callback.
        metadata: extra entries for ``da3/dataset.json`` (e.g. the command line and model licence).
        fingerprint: :func:`input_fingerprint` of the inputs and settings, stored in the manifest for
            :func:`dataset_is_current`.

    The manifest lists every file written (relative path -> size). An existing output keeps every entry
    this tool did not write (see :func:`check_output_dir`); staging folders of killed runs are removed.
    """
    options = options or DatasetOptions()
    paths = None if image_paths is None else [Path(p) for p in image_paths]
    check_output_dir(output_dir, overwrite=overwrite, inputs=paths or ())
    out = Path(output_dir).resolve()
    _check_prediction(prediction)
    timings: dict[str, float] = {}
    with _timed(timings, "plan"):
        views = _plan_views(prediction, paths)
    factors = downscale_factors([v.size for v in views])
    # Points and Gaussians come from the training views only: a held-out view must stay unseen, or
    # ns-eval scores views that the initialisation copied pixel for pixel.
    train, evals = split_indices(len(views), options.eval_interval)

    with staged_output(out) as stage:
        build = _Build(prediction, views, factors, stage, progress, timings)
        _make_folders(build)
        _write_images(build)
        _write_depths(build)
        cloud = _write_points_and_colmap(build, options, train)
        gaussians, gaussian_source = _write_splats(build, options, train)
        _write_transforms(build, train, evals)
        _write_predictions_and_previews(build, cloud)
        height, width = prediction.size
        summary = DatasetSummary(
            output_dir=str(out),
            views=len(views),
            processed_size=(width, height),
            image_sizes=sorted({v.size for v in views}),
            downscales=factors,
            points=len(cloud.points),
            gaussians=gaussians,
            gaussian_source=gaussian_source,
            train_views=len(train),
            eval_views=len(evals),
            timings=timings,
        )
        write_manifest(stage, _manifest_fields(build, summary, metadata), fingerprint)
        with _timed(timings, "finalise"):
            swap_into_place(stage, out)
    return summary


# ------------------------------------------------------------------------------------------------
# Plan: where each view goes, which views train


@dataclass
class _View:
    """Where view i of the prediction goes and how its pixels relate to the written image."""

    name: str
    source: Path | None
    size: tuple[int, int]  # written (width, height)
    intrinsics: np.ndarray  # at the written size
    to_written: np.ndarray  # 3x3 affine: processed pixel -> written pixel (continuous convention)
    full_frame: bool  # the processed image is a plain rescaling of the whole written image
    copy: bool  # a stock loader reads the source's bytes as load_image decodes them: copy them unchanged


def _check_prediction(pred: Prediction) -> None:
    """Prediction.check (cameras, depth, images), after the depth-only models' case: no cameras at all."""
    if pred.intrinsics.size and not np.any(pred.intrinsics[:, :2, :2]):
        raise InputError("the prediction has no cameras (focal lengths must be positive): was it a depth-only model?")
    pred.check("the prediction")


def _plan_views(pred: Prediction, image_paths: Sequence[Path] | None) -> list[_View]:
    """Names, sizes, intrinsics and pixel maps of the written images."""
    n = len(pred)
    height, width = pred.size
    if image_paths is None:
        return [
            _View(f"frame_{i + 1:05d}.png", None, (width, height), pred.intrinsics[i].astype(np.float64), np.eye(3),
                  True, False)
            for i in range(n)
        ]  # fmt: skip
    if len(image_paths) != n:
        raise InputError(f"{len(image_paths)} images given for a prediction of {n} views")
    original_intrinsics = pred.original_intrinsics()
    views = []
    for i, path in enumerate(image_paths):
        path = Path(path)
        w, h, copy = image_header(path)
        transform = np.eye(3) if pred.transforms is None else np.asarray(pred.transforms[i], dtype=np.float64)
        if pred.original_sizes is not None:
            w0, h0 = (int(v) for v in pred.original_sizes[i])
            tolerance = _aspect_tolerance((w, h), (w0, h0), slack=1.0)  # one pixel of rounding per side
        else:  # official npz: the processed image is a full-frame resize, sides rounded to the 14-px patch
            w0, h0 = width, height
            tolerance = _aspect_tolerance((w, h), (w0, h0), slack=14.0)
        if abs((w / h) / (w0 / h0) - 1) > tolerance:
            raise InputError(
                f"{path}: image is {w}x{h} but view {i} of the prediction comes from a {w0}x{h0} image "
                "(different aspect ratio: wrong image, or images in another order)"
            )
        corner = transform @ np.array([w0, h0, 1.0])
        full_frame = np.allclose(transform[:2, 2], 0, atol=1e-6) and np.allclose(corner[:2], [width, height], atol=1e-4)
        scale = np.diag([w / w0, h / h0, 1.0])
        suffix = path.suffix.lower() if copy else ".png"
        views.append(
            _View(
                name=f"frame_{i + 1:05d}{suffix}",
                source=path,
                size=(w, h),
                intrinsics=rescale_intrinsics(original_intrinsics[i], (h0, w0), (h, w)),
                to_written=scale @ np.linalg.inv(transform),
                full_frame=bool(full_frame),
                copy=copy,
            )
        )
    return views


def _aspect_tolerance(*sizes: tuple[int, int], slack: float) -> float:
    return sum(slack / min(size) for size in sizes)


def downscale_factors(sizes: Sequence[tuple[int, int]]) -> list[int]:
    """The ``images_N`` folders nerfstudio-data's automatic downscaling looks for (powers of two)."""
    longest = max(max(size) for size in sizes)
    factors, factor = [], 1
    while longest / factor > MAX_AUTO_RESOLUTION:
        factor *= 2
        factors.append(factor)
    return factors


def split_indices(n: int, eval_interval: int) -> tuple[list[int], list[int]]:
    """(train, eval) view indices: every ``eval_interval``-th view from the middle of the first
    interval is held out; with none held out, evaluation uses all views."""
    held = [i for i in range(n) if eval_interval > 0 and i % eval_interval == eval_interval // 2]
    if not held or len(held) == n:
        return list(range(n)), list(range(n))
    return [i for i in range(n) if i not in held], held


# ------------------------------------------------------------------------------------------------
# The stages, in the order write_dataset runs them


@dataclass
class _Build:
    """What the stages of one :func:`write_dataset` call share: the prediction, where each view goes, the
    staging folder, and the progress callback and timings they report to."""

    pred: Prediction
    views: list[_View]
    factors: list[int]  # nerfstudio's downscale factors: images_N/ and depths_N/
    stage: Path
    progress: Progress | None
    timings: dict[str, float]

    def advance(self, name: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(name, done, total)


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def _make_folders(b: _Build) -> None:
    folders = ["images", "depths", "da3", *(f"images_{f}" for f in b.factors), *(f"depths_{f}" for f in b.factors)]
    for folder in folders + (["confidence"] if b.pred.conf is not None else []):
        (b.stage / folder).mkdir(parents=True, exist_ok=True)


def _write_images(b: _Build) -> None:
    """images/ and images_N/, several views at a time (decoding and encoding release the GIL)."""
    with _timed(b.timings, "images"), ThreadPoolExecutor(max_workers=WRITE_THREADS) as pool:
        jobs = [pool.submit(_write_image, b.pred, i, v, b.stage, b.factors) for i, v in enumerate(b.views)]
        for done, job in enumerate(jobs, 1):
            job.result()
            b.advance("images", done, len(jobs))


def _write_image(pred: Prediction, index: int, view: _View, stage: Path, factors: list[int]) -> None:
    """Full-resolution image into images/ and nerfstudio's downscaled copies into images_N/."""
    target = stage / "images" / view.name
    # Decoded even when the bytes are copied: a file the network could not have read never enters a dataset.
    rgb = pred.images[index] if view.source is None else load_image(view.source)
    if view.copy:
        shutil.copyfile(view.source, target)
    else:
        Image.fromarray(rgb).save(target)
    if not factors:
        return
    image = Image.fromarray(rgb)
    w, h = view.size
    for factor in factors:
        # nerfstudio floors the camera size (Cameras.rescale_output_resolution): the image must match.
        small = image.resize((max(1, w // factor), max(1, h // factor)), Image.Resampling.BOX)
        small.save(stage / f"images_{factor}" / view.name, quality=95)


def _write_depths(b: _Build) -> None:
    """depths/ (the same files in depths_N/, where nerfstudio looks with the image's factor) and confidence/."""
    with _timed(b.timings, "depth"):
        for i, view in enumerate(b.views):
            depth, conf = _depth_maps(b.pred, i, view)
            stem = Path(view.name).stem
            for folder in ("depths", *(f"depths_{f}" for f in b.factors)):
                np.save(b.stage / folder / f"{stem}.npy", depth)
            if conf is not None:
                np.save(b.stage / "confidence" / f"{stem}.npy", conf)
            b.advance("depth", i + 1, len(b.views))


def _depth_maps(pred: Prediction, index: int, view: _View) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 depth (0 where sky or not finite) and confidence, aligned with the written image.

    Depth stays at the processed resolution when that is a plain rescaling of the image (nerfstudio
    resizes depth to the image); cropped views (mixed input sizes) are resampled to the image grid.
    """
    depth = pred.depth[index].astype(np.float32)
    bad = ~np.isfinite(depth) | (depth < 0)
    if pred.sky is not None:
        bad |= pred.sky[index]
    depth = np.where(bad, np.float32(0), depth)
    conf = None if pred.conf is None else pred.conf[index].astype(np.float32)
    if not view.full_frame:
        depth = _to_written_frame(depth, view, fill=0.0)
        conf = None if conf is None else _to_written_frame(conf, view, fill=0.0)
    return depth, conf


def _to_written_frame(values: np.ndarray, view: _View, fill: float) -> np.ndarray:
    """Resample a processed-resolution map onto the written image's grid (nearest: no mixed depths)."""
    shift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    # cv2 puts pixel centres at integer coordinates: conjugate the continuous map by half a pixel.
    matrix = np.linalg.inv(shift) @ view.to_written @ shift
    return cv2.warpAffine(
        values.astype(np.float32), matrix[:2], view.size, flags=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT, borderValue=fill,
    )  # fmt: skip


def _write_points_and_colmap(b: _Build, options: DatasetOptions, train: list[int]) -> SparsePoints:
    """sparse_pc.ply and colmap/sparse/0, which holds the same points with their source pixels as tracks."""
    with _timed(b.timings, "points"):
        to_written = np.stack([v.to_written for v in b.views])
        cloud = sparse_points(b.pred, train, options.conf_percentile, options.num_points, to_written)
        write_point_cloud_ply(b.stage / "sparse_pc.ply", cloud.points, cloud.colours, cloud.confidence)
        b.advance("points", 1, 1)
    with _timed(b.timings, "colmap"):
        write_colmap_model(
            b.stage / "colmap" / "sparse" / "0",
            b.pred.extrinsics.astype(np.float64),
            np.stack([v.intrinsics for v in b.views]),
            [v.size for v in b.views],
            [v.name for v in b.views],
            cloud.points,
            cloud.colours,
            cloud.tracks,
        )
        b.advance("colmap", 1, 1)
    return cloud


def _write_splats(b: _Build, options: DatasetOptions, train: list[int]) -> tuple[int, str]:
    """splat_init.ply; returns the number of Gaussians and where they came from."""
    with _timed(b.timings, "splats"):
        splats, source = _initial_splats(b.pred, options, train)
        write_splat_ply(b.stage / "splat_init.ply", splats)
        b.advance("splats", 1, 1)
    return len(splats), source


def _initial_splats(pred: Prediction, options: DatasetOptions, train: list[int]) -> tuple[SplatData, str]:
    """Gaussians of the ``train`` views from the model's Gaussian head, else one per confident (strided)
    pixel of those views."""
    if pred.gaussians:
        gaussians = pred.gaussians
        if "views" in gaussians:
            seen = np.isin(gaussians["views"], train)
            gaussians = {k: v[seen] for k, v in gaussians.items()}
        return splats_from_gaussian_head(gaussians, max_gaussians=options.num_gaussians), "Gaussian head"
    mask = pred.valid_mask(options.conf_percentile)[train]
    stride = max(1, math.isqrt(int(mask.sum()) // max(1, options.num_gaussians)))
    splats = splats_from_depth(
        pred.images[train],
        np.where(mask, pred.depth[train], 0.0),
        pred.extrinsics[train],
        pred.intrinsics[train],
        None if pred.conf is None else pred.conf[train],
        stride=stride,
        max_gaussians=options.num_gaussians,
    )
    return splats, f"depth (every {stride} px)" if stride > 1 else "depth (every pixel)"


def _write_transforms(b: _Build, train: list[int], evals: list[int]) -> None:
    """transforms.json with the split, in the world frame of the poses."""
    with _timed(b.timings, "transforms"):
        names = [f"images/{v.name}" for v in b.views]
        frames = frames_from_cameras(
            b.pred.extrinsics.astype(np.float64),
            np.stack([v.intrinsics for v in b.views]),
            [v.size for v in b.views],
            names,
            [f"depths/{Path(v.name).stem}.npy" for v in b.views],
        )
        if b.pred.conf is not None:
            for frame, view in zip(frames, b.views, strict=True):
                frame["confidence_file_path"] = f"confidence/{Path(view.name).stem}.npy"
        write_transforms_json(
            b.stage / "transforms.json",
            frames,
            ply_file_path="sparse_pc.ply",
            extra={
                # The frames are already in the world frame we want: no COLMAP axis swap.
                "applied_transform": np.eye(4)[:3].tolist(),
                "train_filenames": [names[i] for i in train],
                "val_filenames": [names[i] for i in evals],
                "test_filenames": [names[i] for i in evals],
            },
        )


def _write_predictions_and_previews(b: _Build, cloud: SparsePoints) -> None:
    """da3/predictions.npz (to rebuild the dataset without the network) and the pictures in da3/preview/."""
    with _timed(b.timings, "predictions"):
        b.pred.save(b.stage / "da3" / "predictions.npz")
    with _timed(b.timings, "previews"):
        write_previews(
            b.pred, cloud.points, cloud.colours, b.stage / "da3" / "preview",
            lambda done, total: b.advance("previews", done, total), threads=WRITE_THREADS,
        )  # fmt: skip


def _manifest_fields(b: _Build, summary: DatasetSummary, metadata: dict[str, Any] | None) -> dict[str, Any]:
    """What the manifest records of this dataset besides its files: model, scale, sources, the caller's entries."""
    return {
        "model": b.pred.model_name,
        "is_metric": b.pred.is_metric,
        "depth_unit_scale_factor": 1.0,
        "sources": [str(v.source) if v.source else None for v in b.views],
        **(metadata or {}),
        "summary": asdict(summary),
    }
