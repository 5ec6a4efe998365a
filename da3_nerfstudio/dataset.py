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
* ``sparse_pc.ply`` (seed points), ``splat_init.ply`` (initial Gaussians, INRIA 3DGS layout), and
  ``da3/`` (``predictions.npz``, previews, and the ``dataset.json`` manifest that marks the folder
  as ours so that a rerun may replace it).

The folder is built next to the output under a temporary name (``.NAME.<pid>.<id>.da3-new``, with a
marker file) and swapped in at the end, so the output is either the complete new dataset or whatever was
there before. The manifest lists every file the tool wrote; a rerun replaces only those and keeps every
other entry of the folder (a user's notes, an ``outputs/`` folder), and a later run removes the staging
folders of killed runs. :func:`input_fingerprint` and :func:`dataset_is_current` let batch runs skip
datasets that are already complete.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import math
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from da3_nerfstudio.errors import InputError
from da3_nerfstudio.formats.colmap import write_colmap_model
from da3_nerfstudio.formats.ply import SplatData, write_point_cloud_ply, write_splat_ply
from da3_nerfstudio.formats.transforms import frames_from_cameras, write_transforms_json
from da3_nerfstudio.geometry import rescale_intrinsics
from da3_nerfstudio.prediction import CONF_PERCENTILE, Prediction
from da3_nerfstudio.preprocess import load_image
from da3_nerfstudio.splat_init import splats_from_depth, splats_from_gaussian_head

TOOL = "da3-process-data"
FORMAT_VERSION = 1
MANIFEST = Path("da3") / "dataset.json"
#: nerfstudio-data looks for images_2, images_4, ... while the image's longest side exceeds this.
MAX_AUTO_RESOLUTION = 1600
#: Files in these formats are copied byte for byte (when not rotated by EXIF); others become PNG.
COPY_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Finest voxel of the point-cloud downsampling, relative to the cloud's extent (keeps keys in int64).
_MIN_VOXEL_FRACTION = 2.0**-20
#: The downsampled cloud is accepted when it has between this fraction of the target and the target.
_POINT_COUNT_TOLERANCE = 0.9
_TOP_VIEW_PIXELS = 1024

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``, called as each stage advances."""


@dataclass
class DatasetOptions:
    """What to write besides the cameras and depth."""

    conf_percentile: float = CONF_PERCENTILE
    """Confidence percentile below which pixels give no points or Gaussians (official rule, floor 1.05)."""
    num_points: int = 200_000
    """Target size of ``sparse_pc.ply`` (voxel-downsampled, most confident pixel per voxel)."""
    num_gaussians: int = 1_000_000
    """Most Gaussians in ``splat_init.ply`` (pixels are strided, then randomly thinned to this)."""
    eval_interval: int = 8
    """Every N-th view (from N/2) is held out for val/test and gives no points or Gaussians; 0, or too few
    views, evaluates on all views."""


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


@dataclass
class _View:
    """Where view i of the prediction goes and how its pixels relate to the written image."""

    name: str
    source: Path | None
    size: tuple[int, int]  # written (width, height)
    intrinsics: np.ndarray  # at the written size
    to_written: np.ndarray  # 3x3 affine: processed pixel -> written pixel (continuous convention)
    full_frame: bool  # the processed image is a plain rescaling of the whole written image
    copy: bool  # the source file can be copied unchanged


# ------------------------------------------------------------------------------------------------
# Output folder safety
#
# The tool owns exactly the files its manifest lists (plus the manifest). A rerun replaces those and keeps
# every other entry of the folder: foreign top-level entries are moved by rename into the finished staging
# folder, which then takes the output's place with one atomic exchange (renameat2 RENAME_EXCHANGE; two
# renames where the system lacks it). A foreign file where the tool writes (e.g. ``images/notes.txt``) is
# refused up front, with or without --overwrite: the tool never deletes a file it did not write.

#: Marker file of every staging folder: owner pid, output name, and the user's entries moved into it.
STAGING_MARKER = ".da3-staging.json"
#: Top-level names the writer uses; foreign entries with these names are in the way of the output.
_OUTPUT_NAMES = re.compile(
    r"^(?:(?:images|depths)(?:_\d+)?|confidence|da3|colmap|transforms\.json|sparse_pc\.ply|splat_init\.ply)$"
)
_STAGING_KINDS = ("da3-new", "da3-old", "frames")
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("tool") == TOOL else None


def is_dataset(folder: str | Path) -> bool:
    """True if ``folder`` was written by this tool (it holds our manifest)."""
    return _read_manifest(Path(folder)) is not None


def _owned_files(folder: Path, manifest: dict[str, Any] | None) -> set[str]:
    """Relative paths of the files this tool wrote in ``folder`` (format 1 manifests had no file list: then
    everything under the writer's own top-level names)."""
    if manifest is None:
        return set()
    files = manifest.get("files")
    if isinstance(files, dict):
        owned = set(files)
    else:
        owned = {
            str(p.relative_to(folder))
            for entry in folder.iterdir()
            if _OUTPUT_NAMES.match(entry.name)
            for p in ([entry] if not entry.is_dir() else entry.rglob("*"))
            if not p.is_dir()
        }
    return owned | {str(MANIFEST), STAGING_MARKER}


def _classify(folder: Path) -> tuple[list[str], list[str]]:
    """(foreign top-level entries to keep, foreign files in the way of the output) of an existing folder."""
    owned = _owned_files(folder, _read_manifest(folder))
    keep, in_the_way = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name in owned:
            continue
        inside = [entry] if entry.is_symlink() or not entry.is_dir() else [*entry.rglob("*")]
        files = [str(p.relative_to(folder)) for p in inside if p.is_symlink() or not p.is_dir()]
        if _OUTPUT_NAMES.match(entry.name):
            in_the_way += [f for f in files if f not in owned]
        elif not any(f in owned for f in files):
            keep.append(entry.name)
        else:  # another name holding files of ours and of someone else (a manifest of another version)
            in_the_way += [f for f in files if f not in owned]
    return keep, in_the_way


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def staging_folder(out: Path, kind: str) -> Path:
    """Create ``.NAME.<pid>.<id>.<kind>`` next to ``out`` with its marker, so later runs recognise it as ours."""
    folder = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{kind}")
    folder.mkdir()
    _write_marker(folder, out, [])
    return folder


def _write_marker(folder: Path, out: Path, moved: list[str]) -> None:
    marker = {"tool": TOOL, "host": socket.gethostname(), "pid": os.getpid(), "output": out.name, "moved": moved}
    tmp = folder / f"{STAGING_MARKER}.tmp"
    tmp.write_text(json.dumps(marker) + "\n", encoding="utf-8")
    os.replace(tmp, folder / STAGING_MARKER)


def _discard_staging(folder: Path, out: Path) -> bool:
    """Remove one of our staging folders, first moving back the user's entries it holds; False (and left in
    place) when it holds anything that is neither ours nor movable back."""
    try:
        marker = json.loads((folder / STAGING_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        marker = None
    if isinstance(marker, dict) and marker.get("tool") == TOOL:
        if marker.get("host", socket.gethostname()) != socket.gethostname():
            return False  # another machine's run on a shared file system: its pid means nothing here
        for name in marker.get("moved", []):
            source = folder / name
            if os.path.lexists(source) and out.is_dir() and not os.path.lexists(out / name):
                os.rename(source, out / name)
            if os.path.lexists(source):
                return False
    elif not all(_OUTPUT_NAMES.match(e.name) or e.name == STAGING_MARKER for e in folder.iterdir()):
        return False  # not recognisably ours: never delete
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()


def remove_stale_staging(out: str | Path) -> list[Path]:
    """Remove the staging folders of ``out`` left by killed runs (ours, and only when their process is gone).

    An interrupted swap is rolled back first: a missing output gets its previous dataset back, and the user's
    entries moved into a staging folder go back into the output. Returns the folders removed.
    """
    out = Path(out)
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(\d+)\.[0-9a-f]{{8}}\.({'|'.join(_STAGING_KINDS)})$")
    stale = []
    if not out.parent.is_dir():
        return stale
    for entry in out.parent.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and not _pid_alive(int(match.group(1))):
            stale.append(entry)
    removed = []
    # Previous datasets (da3-old) first: they restore a missing output before moved entries go back into it.
    for folder in sorted(stale, key=lambda p: not p.name.endswith(".da3-old")):
        if folder.name.endswith(".da3-old") and not os.path.lexists(out):
            os.rename(folder, out)
            removed.append(folder)
        elif _discard_staging(folder, out):
            removed.append(folder)
    return removed


def replace_folder(new: Path, out: Path, backup: Path) -> None:
    """Put folder ``new`` in ``out``'s place; the previous ``out`` ends up at ``new``'s name (for the caller to
    remove). One atomic exchange where the system has it (Linux renameat2), else two renames through ``backup``
    (restored on failure; a kill between them leaves ``backup`` for :func:`remove_stale_staging`)."""
    if not os.path.lexists(out):
        os.rename(new, out)
        return
    if _exchange(new, out):
        return
    os.rename(out, backup)
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(backup, out)
        raise
    os.rename(backup, new)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the system or filesystem cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def check_output_dir(output_dir: str | Path, *, overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> None:
    """Refuse outputs that would destroy data or cannot be written, before any long computation.

    A non-empty folder that is not a previous dataset needs ``overwrite`` (its files are kept either way); a
    file of someone else where the tool writes its output is refused even then; so are an output that is or
    contains the current folder or one of the ``inputs``.
    """
    out = Path(output_dir)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise InputError(f"{out}: exists and is not a folder" + (" (a symbolic link)" if out.is_symlink() else ""))
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise InputError(f"{out}: is the current folder or contains it; choose another output folder")
    for item in inputs:
        if resolved == Path(item).resolve() or resolved in Path(item).resolve().parents:
            raise InputError(f"{out}: the output folder contains the input {item}; choose another output folder")
    if out.is_dir() and any(out.iterdir()):
        if not is_dataset(out) and not overwrite:
            raise InputError(
                f"{out}: folder is not empty and was not written by {TOOL}; pass --overwrite to write into it "
                "(its files are kept)"
            )
        _, in_the_way = _classify(out)
        if in_the_way:
            shown = ", ".join(in_the_way[:3]) + (f" (+{len(in_the_way) - 3} more)" if len(in_the_way) > 3 else "")
            raise InputError(
                f"{out}: {shown} not written by {TOOL} but where it writes its output; move them away or choose "
                "another output folder"
            )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.probe"
        probe.mkdir()
        probe.rmdir()
    except OSError as err:
        raise InputError(f"{out}: cannot write here ({err.strerror or err})") from None


def _swap_into_place(stage: Path, out: Path) -> None:
    """Put the finished ``stage`` in ``out``'s place, keeping the user's entries of ``out``; on failure ``out``
    is as it was. The previous dataset ends up at ``stage``'s name (removed by the caller)."""
    keep, in_the_way = _classify(out) if out.exists() else ([], [])
    if in_the_way:  # appeared while the dataset was computed
        raise InputError(f"{out}: {in_the_way[0]} appeared where {TOOL} writes its output; nothing was changed")
    _write_marker(stage, out, keep)
    moved = []
    try:
        for name in keep:
            os.rename(out / name, stage / name)
            moved.append(name)
        replace_folder(stage, out, stage.with_name(stage.name.removesuffix(".da3-new") + ".da3-old"))
    except BaseException:
        for name in reversed(moved):
            os.rename(stage / name, out / name)
        raise
    (out / STAGING_MARKER).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------
# Views and images


def _natural_key(name: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def natural_sorted(paths: Sequence[Path]) -> list[Path]:
    """Paths in human order (``2.png`` before ``10.png``)."""
    return sorted(paths, key=lambda p: _natural_key(p.name))


def image_header(path: Path) -> tuple[int, int, bool]:
    """Upright (width, height) of an image file and whether its bytes can be copied as they are.

    Reads the header only, so a folder of photos can be checked before any long computation. (PIL
    finds a PNG eXIf chunk placed after the pixels only by decoding them all; cameras write it first.)
    """
    try:
        with Image.open(path) as im:
            width, height = im.size
            exif = im.getexif() if im.format != "PNG" or "exif" in im.info else {}
            orientation = exif.get(0x0112, 1)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise InputError(f"{path}: not a readable image ({err})") from None
    if orientation in (5, 6, 7, 8):  # EXIF orientations that swap the axes
        width, height = height, width
    return width, height, orientation in (0, 1) and path.suffix.lower() in COPY_SUFFIXES


def _aspect_tolerance(*sizes: tuple[int, int], slack: float) -> float:
    return sum(slack / min(size) for size in sizes)


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


def downscale_factors(sizes: Sequence[tuple[int, int]]) -> list[int]:
    """The ``images_N`` folders nerfstudio-data's automatic downscaling looks for (powers of two)."""
    longest = max(max(size) for size in sizes)
    factors, factor = [], 1
    while longest / factor > MAX_AUTO_RESOLUTION:
        factor *= 2
        factors.append(factor)
    return factors


def _write_image(pred: Prediction, index: int, view: _View, stage: Path, factors: list[int]) -> None:
    """Full-resolution image into images/ and nerfstudio's downscaled copies into images_N/."""
    target = stage / "images" / view.name
    rgb = None
    if view.source is None:
        rgb = pred.images[index]
    if view.copy and view.source is not None:
        shutil.copyfile(view.source, target)
    else:
        rgb = load_image(view.source) if rgb is None else rgb
        Image.fromarray(rgb).save(target)
    if not factors:
        return
    image = Image.fromarray(load_image(view.source) if rgb is None else rgb)
    w, h = view.size
    for factor in factors:
        # nerfstudio floors the camera size (Cameras.rescale_output_resolution): the image must match.
        small = image.resize((max(1, w // factor), max(1, h // factor)), Image.Resampling.BOX)
        small.save(stage / f"images_{factor}" / view.name, quality=95)


# ------------------------------------------------------------------------------------------------
# Depth and confidence


def _to_written_frame(values: np.ndarray, view: _View, fill: float) -> np.ndarray:
    """Resample a processed-resolution map onto the written image's grid (nearest: no mixed depths)."""
    shift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    # cv2 puts pixel centres at integer coordinates: conjugate the continuous map by half a pixel.
    matrix = np.linalg.inv(shift) @ view.to_written @ shift
    return cv2.warpAffine(
        values.astype(np.float32), matrix[:2], view.size, flags=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT, borderValue=fill,
    )  # fmt: skip


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


# ------------------------------------------------------------------------------------------------
# Points


def voxel_downsample(
    points: np.ndarray, target: int, priority: np.ndarray | None = None, max_iterations: int = 40
) -> tuple[np.ndarray, float]:
    """Indices of at most ``target`` points, one per occupied voxel, and the voxel size used.

    The voxel size is searched until the occupied voxels number between 90 % and 100 % of
    ``target``: a secant step on log(count) against log(size) (counts follow a power law of the size),
    kept inside a shrinking bracket with bisection as the fallback, so a few passes over the points
    suffice. Each voxel keeps its highest-``priority`` point (an actual sample, not an average, so a
    kept point still lies on the pixel ray it came from). When all points fit, the size is 0.
    """
    n = len(points)
    if n <= target:
        return np.arange(n), 0.0
    order = np.argsort(-priority, kind="stable") if priority is not None else np.arange(n)
    pts = points[order].astype(np.float64)
    low = pts.min(axis=0)
    extent = float(np.max(pts.max(axis=0) - low))
    if extent == 0:
        return order[:1], 0.0

    def voxel_keys(size: float) -> np.ndarray:
        cells = np.floor((pts - low) / size).astype(np.int64)
        dims = cells.max(axis=0) + 1
        return (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]

    goal = math.log(0.5 * (1 + _POINT_COUNT_TOLERANCE) * target)
    lo, hi = math.log(extent * _MIN_VOXEL_FRACTION), math.log(extent)  # too many points at lo, few at hi
    count_lo = count_hi = None
    x = math.log(extent / math.sqrt(target))  # a surface fills about (extent / size)^2 voxels
    last_side = ""
    for _ in range(max_iterations):
        occupied = len(np.unique(voxel_keys(math.exp(x))))
        count = math.log(occupied)
        if occupied > target:
            lo, count_lo, side = x, count, "lo"
        else:
            hi, count_hi, side = x, count, "hi"
            if occupied >= _POINT_COUNT_TOLERANCE * target:
                break
        if count_lo is not None and count_hi is not None and side != last_side and count_lo != count_hi:
            x = lo + (count_lo - goal) * (hi - lo) / (count_lo - count_hi)
        elif count_lo is None or count_hi is None:
            x = x + 0.5 * (count - goal)  # power-law step with the surface exponent 2
        else:
            x = 0.5 * (lo + hi)  # the same side twice: bisect so the bracket keeps shrinking
        if not lo < x < hi:
            x = 0.5 * (lo + hi)
        last_side = side
    size = math.exp(hi)  # the finest size known to give at most `target` voxels
    first = np.unique(voxel_keys(size), return_index=True)[1][:target]
    return np.sort(order[first]), size


def _sparse_points(
    pred: Prediction, views: list[_View], options: DatasetOptions, train: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[tuple[int, tuple[float, float]]]]]:
    """Confident pixels of the ``train`` views as points: (points, colours, confidence, per point its
    source pixel in the written image as a COLMAP track)."""
    points, colours, view_index = pred.world_points(options.conf_percentile)
    mask = pred.valid_mask(options.conf_percentile)
    _, rows, cols = np.nonzero(mask)  # the order of world_points' masked arrays
    conf = pred.conf[mask] if pred.conf is not None else np.ones(len(points), np.float32)
    seen = np.flatnonzero(np.isin(view_index, train))
    points, colours, view_index, rows, cols, conf = (a[seen] for a in (points, colours, view_index, rows, cols, conf))
    keep, _ = voxel_downsample(points, options.num_points, conf)
    view_index, uv = view_index[keep], np.stack([cols[keep] + 0.5, rows[keep] + 0.5, np.ones(len(keep))], axis=1)
    to_written = np.stack([v.to_written for v in views])[view_index]
    uv = np.einsum("nij,nj->ni", to_written, uv)[:, :2]
    tracks = [[(int(v), (float(u[0]), float(u[1])))] for v, u in zip(view_index, uv, strict=True)]
    return points[keep], colours[keep], conf[keep].astype(np.float32), tracks


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


# ------------------------------------------------------------------------------------------------
# Previews


def _colourise(values: np.ndarray, valid: np.ndarray, colormap: int) -> np.ndarray:
    """BGR picture of a map, robustly normalised (2nd-98th percentile) over ``valid`` pixels."""
    out = np.zeros((*values.shape, 3), np.uint8)
    if not valid.any():
        return out
    lo, hi = np.percentile(values[valid], [2, 98])
    scaled = np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1)
    coloured = cv2.applyColorMap((scaled * 255).astype(np.uint8), colormap)
    out[valid] = coloured[valid]
    return out


def _top_view(points: np.ndarray, colours: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """BGR picture of the points and cameras seen from above (against the cameras' mean up vector)."""
    up = -c2w[:, :3, 1].mean(axis=0)  # OpenCV cameras: y points down
    up = up / (np.linalg.norm(up) or 1.0)
    forward = c2w[:, :3, 2].mean(axis=0)
    forward = forward - up * (forward @ up)
    if np.linalg.norm(forward) < 1e-6:
        forward = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    basis = np.stack([right, forward])  # picture x: right, picture y (flipped below): forward

    def plane(p: np.ndarray) -> np.ndarray:
        return p @ basis.T

    centres = c2w[:, :3, 3]
    flat = np.concatenate([plane(points), plane(centres)]) if len(points) else plane(centres)
    lo = np.percentile(flat, 1, axis=0) if len(points) else flat.min(axis=0)
    hi = np.percentile(flat, 99, axis=0) if len(points) else flat.max(axis=0)
    lo, hi = np.minimum(lo, plane(centres).min(0)), np.maximum(hi, plane(centres).max(0))
    size = _TOP_VIEW_PIXELS
    scale = 0.9 * size / max(float(np.max(hi - lo)), 1e-9)
    middle = 0.5 * (lo + hi)

    def pixels(p: np.ndarray) -> np.ndarray:
        xy = (plane(p) - middle) * scale
        return np.stack([size / 2 + xy[:, 0], size / 2 - xy[:, 1]], axis=1)

    canvas = np.full((size, size, 3), 255, np.uint8)
    if len(points):
        order = np.argsort(points @ up)  # highest last, as seen from above
        px = np.round(pixels(points[order])).astype(int)
        inside = (px >= 0).all(1) & (px < size).all(1)
        canvas[px[inside, 1], px[inside, 0]] = colours[order][inside][:, ::-1]
    span = 0.04 * size
    for i, (centre, axis) in enumerate(zip(pixels(centres), plane(c2w[:, :3, 2]), strict=True)):
        tip = centre + span * np.array([axis[0], -axis[1]]) / max(float(np.linalg.norm(axis)), 1e-9)
        c, t = tuple(int(v) for v in np.round(centre)), tuple(int(v) for v in np.round(tip))
        cv2.arrowedLine(canvas, c, t, (0, 0, 200), 2, tipLength=0.3)
        cv2.circle(canvas, c, 4, (200, 0, 0), -1)
        cv2.putText(canvas, str(i + 1), (c[0] + 5, c[1] - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    return canvas


def _write_previews(
    pred: Prediction, points: np.ndarray, colours: np.ndarray, folder: Path, progress: Progress | None
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    valid = pred.valid_mask(0.0)
    for i in range(len(pred)):
        stem = f"frame_{i + 1:05d}"
        # Inverse depth spreads near and far structure evenly over the colour map.
        inverse = np.where(valid[i], 1.0 / np.maximum(pred.depth[i], 1e-12), 0.0)
        cv2.imwrite(str(folder / f"{stem}_depth.png"), _colourise(inverse, valid[i], cv2.COLORMAP_TURBO))
        if pred.conf is not None:
            cv2.imwrite(
                str(folder / f"{stem}_confidence.png"),
                _colourise(pred.conf[i], np.isfinite(pred.conf[i]), cv2.COLORMAP_VIRIDIS),
            )
        if progress is not None:
            progress("previews", i + 1, len(pred))
    cv2.imwrite(str(folder / "cameras_top.png"), _top_view(points.astype(np.float64), colours, pred.c2w_opencv()))


# ------------------------------------------------------------------------------------------------
# Resume: is an existing dataset the result of these inputs and settings?


def input_fingerprint(inputs: Sequence[str | Path], settings: Mapping[str, Any]) -> str:
    """A stable hash of the inputs and of the settings that determine the output (for skipping finished work).

    Each input contributes its name, size and mtime_ns; a folder contributes every visible file directly in
    it (its images, or a COLMAP model's files) by folder-relative name, so adding, removing, editing or
    touching an input changes the fingerprint. ``settings`` must be JSON-serialisable (paths are written as
    text); key order does not matter. File contents are not read, so this is cheap for thousands of photos.
    """
    entries = []
    for index, item in enumerate(inputs):
        path = Path(item)
        try:
            files = (
                sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())
                if path.is_dir()
                else [path]
            )
            for file in files:
                stat = file.stat()
                name = file.name if file == path else f"{path.name}/{file.name}"
                entries.append([index, name, stat.st_size, stat.st_mtime_ns])
        except FileNotFoundError:
            raise InputError(f"{path}: no such file or folder") from None
        except OSError as err:
            raise InputError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        text = json.dumps({"inputs": entries, "settings": settings}, sort_keys=True, default=str)
    except (TypeError, ValueError) as err:
        raise InputError(f"settings cannot be fingerprinted ({err})") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dataset_is_current(output_dir: str | Path, fingerprint: str) -> tuple[bool, str]:
    """(True, "up to date") when ``output_dir`` is a complete dataset of this tool written from inputs and
    settings with this ``fingerprint`` (see :func:`input_fingerprint`): manifest present and every file it
    lists present with its recorded size; else (False, why not)."""
    out = Path(output_dir)
    if not out.is_dir():
        return False, f"{out}: no such folder"
    manifest = _read_manifest(out)
    if manifest is None:
        return False, f"{out}: not a dataset of {TOOL} (no readable {MANIFEST})"
    files = manifest.get("files")
    if not isinstance(files, dict):
        return False, f"{out}: written by an older version (no file list in {MANIFEST})"
    if manifest.get("fingerprint") != fingerprint:
        return False, f"{out}: written from other inputs or settings"
    for name, size in files.items():
        path = out / name
        if not path.is_file():
            return False, f"{path}: missing"
        if path.stat().st_size != size:
            return False, f"{path}: {path.stat().st_size} bytes, the manifest records {size}"
    return True, "up to date"


# ------------------------------------------------------------------------------------------------
# The writer


def split_indices(n: int, eval_interval: int) -> tuple[list[int], list[int]]:
    """(train, eval) view indices: every ``eval_interval``-th view from the middle of the first
    interval is held out; with none held out, evaluation uses all views."""
    held = [i for i in range(n) if eval_interval > 0 and i % eval_interval == eval_interval // 2]
    if not held or len(held) == n:
        return list(range(n)), list(range(n))
    return [i for i in range(n) if i not in held], held


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def _check_prediction(pred: Prediction) -> None:
    if len(pred) == 0:
        raise InputError("the prediction has no views")
    if not np.isfinite(pred.extrinsics).all() or not np.isfinite(pred.intrinsics).all():
        raise InputError("the prediction has non-finite camera parameters")
    if np.any(pred.intrinsics[:, 0, 0] <= 0) or np.any(pred.intrinsics[:, 1, 1] <= 0):
        raise InputError("the prediction has no cameras (focal lengths must be positive): was it a depth-only model?")


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
    stage: Path | None = None

    def advance(name: str, done: int, total: int) -> None:
        if progress is not None:
            progress(name, done, total)

    try:
        remove_stale_staging(out)
        stage = staging_folder(out, "da3-new")
        folders = ["images", "depths", "da3", *(f"images_{f}" for f in factors), *(f"depths_{f}" for f in factors)]
        for folder in folders + (["confidence"] if prediction.conf is not None else []):
            (stage / folder).mkdir(parents=True, exist_ok=True)

        with _timed(timings, "images"), ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            jobs = [pool.submit(_write_image, prediction, i, v, stage, factors) for i, v in enumerate(views)]
            for done, job in enumerate(jobs, 1):
                job.result()
                advance("images", done, len(jobs))

        with _timed(timings, "depth"):
            for i, view in enumerate(views):
                depth, conf = _depth_maps(prediction, i, view)
                stem = Path(view.name).stem
                for folder in ("depths", *(f"depths_{f}" for f in factors)):
                    np.save(stage / folder / f"{stem}.npy", depth)
                if conf is not None:
                    np.save(stage / "confidence" / f"{stem}.npy", conf)
                advance("depth", i + 1, len(views))

        # Points and Gaussians come from the training views only: a held-out view must stay unseen, or
        # ns-eval scores views that the initialisation copied pixel for pixel.
        train, evals = split_indices(len(views), options.eval_interval)
        with _timed(timings, "points"):
            points, colours, confidence, tracks = _sparse_points(prediction, views, options, train)
            write_point_cloud_ply(stage / "sparse_pc.ply", points, colours, confidence)
            advance("points", 1, 1)

        with _timed(timings, "colmap"):
            write_colmap_model(
                stage / "colmap" / "sparse" / "0",
                prediction.extrinsics.astype(np.float64),
                np.stack([v.intrinsics for v in views]),
                [v.size for v in views],
                [v.name for v in views],
                points,
                colours,
                tracks,
            )
            advance("colmap", 1, 1)

        with _timed(timings, "splats"):
            splats, gaussian_source = _initial_splats(prediction, options, train)
            write_splat_ply(stage / "splat_init.ply", splats)
            advance("splats", 1, 1)

        with _timed(timings, "transforms"):
            names = [f"images/{v.name}" for v in views]
            frames = frames_from_cameras(
                prediction.extrinsics.astype(np.float64),
                np.stack([v.intrinsics for v in views]),
                [v.size for v in views],
                names,
                [f"depths/{Path(v.name).stem}.npy" for v in views],
            )
            if prediction.conf is not None:
                for frame, view in zip(frames, views, strict=True):
                    frame["confidence_file_path"] = f"confidence/{Path(view.name).stem}.npy"
            write_transforms_json(
                stage / "transforms.json",
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

        with _timed(timings, "predictions"):
            prediction.save(stage / "da3" / "predictions.npz")
        with _timed(timings, "previews"):
            _write_previews(prediction, points, colours, stage / "da3" / "preview", progress)

        height, width = prediction.size
        summary = DatasetSummary(
            output_dir=str(out),
            views=len(views),
            processed_size=(width, height),
            image_sizes=sorted({v.size for v in views}),
            downscales=factors,
            points=len(points),
            gaussians=len(splats),
            gaussian_source=gaussian_source,
            train_views=len(train),
            eval_views=len(evals),
            timings=timings,
        )
        manifest = {
            "tool": TOOL,
            "format": FORMAT_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "model": prediction.model_name,
            "is_metric": prediction.is_metric,
            "depth_unit_scale_factor": 1.0,
            "sources": [str(v.source) if v.source else None for v in views],
            **(metadata or {}),
            "summary": asdict(summary),
            "fingerprint": fingerprint,
            "files": {
                str(p.relative_to(stage)): p.stat().st_size
                for p in sorted(stage.rglob("*"))
                if p.is_file() and p.name != STAGING_MARKER
            },
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        with _timed(timings, "finalise"):
            _swap_into_place(stage, out)
    except OSError as err:
        raise InputError(f"{out}: writing the dataset failed ({err})") from None
    finally:
        if stage is not None and stage.exists():
            _discard_staging(stage, out)
    return summary
