"""`DA3Predictor`: images in, cameras + depth + points (+ Gaussians) out, for any number of views.

It wraps the network with the official preprocessing, pose conditioning (known cameras are
normalised as officially and the result is mapped back to the caller's frame and scale with a
Sim(3) fit), chunked inference for many views, and a bf16 backbone on CUDA and on CPUs with native bf16.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from da3_nerfstudio.cameras import check_cameras
from da3_nerfstudio.errors import InputError
from da3_nerfstudio.geometry import align_cameras_sim3, apply_sim3_to_w2c, to_homogeneous
from da3_nerfstudio.model import DA3Model
from da3_nerfstudio.model.presets import ModelPreset
from da3_nerfstudio.prediction import GAUSSIAN_KEYS, Prediction
from da3_nerfstudio.preprocess import ImageSource, PreprocessedImages, image_header, preprocess_images, processed_size
from da3_nerfstudio.rotation import matrix_to_quat_wxyz, quat_wxyz_to_matrix, rotate_sh

logger = logging.getLogger(__name__)

#: Memory per (token x embedding channel) of each view kept through the backbone: scripts/bench_model.py
#: measured +23 MB per extra 504x378 view for da3-small on CPU (62 bytes), in line with the official
#: "~1000 views of DA3-Giant on 80 GB" (about 60 bytes).
BYTES_PER_TOKEN_CHANNEL = 64
#: The heads run HEAD_CHUNK views at a time at full resolution: about 12 bytes per pixel and feature
#: channel of one view (da3-small measured about 1 GB for 8 views of 504x378).
HEAD_BYTES_PER_PIXEL_FEATURE = 12
#: Share of the available memory the automatic chunk size may plan for.
MEMORY_BUDGET = 0.6
#: Minimum views shared by consecutive chunks (they fix the chunk-to-chunk similarity).
MIN_OVERLAP = 2
#: Official pose normalisation: median camera distance from view 0, clamped below.
MIN_POSE_SCALE = 0.1


def available_memory(device: torch.device) -> int:
    """Free bytes on the device (CUDA) or available system memory (CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to run on (default: cuda when available, else cpu); one that is not there is an InputError
    here rather than a deep torch error after the model has loaded."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise InputError(f"device {str(device)!r}: not a torch device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"device {str(device)!r}: no CUDA device on this machine (use cpu)")
        if dev.index is not None and dev.index >= count:
            raise InputError(f"device {str(device)!r}: this machine has {count} CUDA device(s), up to cuda:{count - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {str(device)!r}: MPS is not available on this machine (use cpu)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device {str(device)!r}: not supported (use cpu, cuda or cuda:N)")
    return dev


def pass_memory(preset: ModelPreset, height: int, width: int) -> tuple[int, int]:
    """(bytes per view kept through the backbone, bytes of the heads' working set) at H x W: tokens x embedding
    width x 64 bytes, and HEAD_CHUNK views x H x W x features x 12 bytes."""
    from da3_nerfstudio.model.dpt import HEAD_CHUNK

    net = preset.primary
    tokens = (height // 14) * (width // 14) + 1
    per_view = tokens * net.backbone.embed_dim * BYTES_PER_TOKEN_CHANNEL
    heads = HEAD_CHUNK * height * width * net.head.features * HEAD_BYTES_PER_PIXEL_FEATURE
    return per_view, heads


def default_views_per_chunk(model: DA3Model, height: int, width: int, device: torch.device) -> int:
    """Views per pass that fit in memory.

    60 % of the free device memory (or available RAM on CPU), less the heads' working set, divided by the
    per-view backbone memory (see :func:`pass_memory`); at least enough views to align chunks.
    """
    per_view, heads = pass_memory(model.preset, height, width)
    budget = MEMORY_BUDGET * available_memory(device) - heads
    return max(MIN_OVERLAP + 1, int(budget / per_view))


def chunk_ranges(n: int, size: int) -> list[tuple[int, int]]:
    """Overlapping [start, stop) ranges of at most ``size`` views covering 0..n, each sharing at
    least MIN_OVERLAP (about a quarter of the chunk) views with the previous one."""
    if n <= size:
        return [(0, n)]
    if size <= MIN_OVERLAP:
        raise ValueError(f"max_views_per_chunk must be > {MIN_OVERLAP} to align chunks, got {size}")
    overlap = max(MIN_OVERLAP, size // 4)
    ranges, start = [], 0
    while True:
        stop = min(start + size, n)
        ranges.append((start, stop))
        if stop == n:
            return ranges
        start = stop - overlap


#: ``precision`` choices: "auto" runs the backbone in bf16 where the hardware has fast bf16 (CUDA with bf16,
#: else fp16; CPUs with AVX-512 BF16 or AMX), float32 elsewhere; the heads always run in float32.
PRECISIONS = ("auto", "float32", "bfloat16")


def cpu_has_fast_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has native bf16 dot products (AVX-512 BF16 or AMX): only then does a bf16 backbone
    beat float32 (elsewhere oneDNN emulates bf16, slower than float32). False where the flags cannot be read."""
    try:
        flags = {flag for line in cpuinfo.read_text().splitlines() if line.startswith("flags") for flag in line.split()}
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The backbone's autocast dtype for a ``precision`` choice on ``device`` (None: float32 throughout)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "float32":
        return None
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if precision == "bfloat16":
            raise InputError(f"precision bfloat16: {torch.cuda.get_device_name(device)} does not support bf16")
        return torch.float16
    if device.type == "cpu" and (precision == "bfloat16" or cpu_has_fast_bf16()):
        return torch.bfloat16
    return None


def _as_array(value: np.ndarray | torch.Tensor | None, name: str, n: int, shapes: tuple) -> np.ndarray | None:
    if value is None:
        return None
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if arr.shape not in [(n, *s) for s in shapes] or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        wanted = " or ".join(f"({n},{','.join(map(str, s))})" for s in shapes)
        raise InputError(f"{name}: expected finite {wanted} for {n} images, got shape {arr.shape} ({arr.dtype})")
    return arr.astype(np.float64)


def normalize_extrinsics(w2c: np.ndarray) -> np.ndarray:
    """Official pose normalisation: view 0 becomes the identity and the median camera distance 1."""
    rel = to_homogeneous(w2c) @ np.linalg.inv(to_homogeneous(w2c[0]))
    centres = -np.einsum("nji,nj->ni", rel[:, :3, :3], rel[:, :3, 3])
    rel[:, :3, 3] /= max(float(np.median(np.linalg.norm(centres, axis=-1))), MIN_POSE_SCALE)
    return rel


def _common_processed_size(images: Sequence[ImageSource], res: int, method: str) -> tuple[int | None, int | None]:
    """Processed (H, W) shared by all images, read from headers only; (None, None) if they differ
    or a header cannot be read (the full preprocessing then reports or crops as officially)."""
    sizes = set()
    for src in images:
        try:
            if isinstance(src, str | Path):
                w, h, _ = image_header(src)  # upright size, by the decoder's EXIF rule
            elif isinstance(src, np.ndarray):
                h, w = src.shape[:2]
            else:
                w, h = src.size
            sizes.add(processed_size(w, h, res, method))
        except Exception:  # noqa: BLE001 - any unreadable header defers to the full, reporting path
            return None, None
        if len(sizes) > 1:
            return None, None
    (w, h) = sizes.pop()
    return h, w


def _preprocess_stream(
    images: Sequence[ImageSource],
    ranges: list[tuple[int, int]],
    res: int,
    method: str,
    K: np.ndarray | None,
    streaming: bool,
) -> Iterator[_Part]:
    """Yield, per chunk, the preprocessed views it adds; decoding runs one chunk ahead in a
    background thread so the device never waits for image I/O. Mixed sizes are preprocessed at
    once (the official centre-crop needs every size)."""
    if not streaming:
        whole = _Part(**vars(preprocess_images(images, res, method, intrinsics=K)))
        prev = 0
        for _, stop in ranges:
            yield _slice(whole, prev, stop)
            prev = stop
        return
    segments, prev = [], 0
    for _, stop in ranges:
        segments.append((prev, stop))
        prev = stop
    with ThreadPoolExecutor(max_workers=1) as pool:
        futures = [
            pool.submit(preprocess_images, images[a:b], res, method, None if K is None else K[a:b]) for a, b in segments
        ]
        for (a, _), future in zip(segments, futures, strict=True):
            part = _Part(**vars(future.result()), start=a)
            part.names = [name if isinstance(images[a + i], str | Path) else f"image[{a + i}]"
                          for i, name in enumerate(part.names)]  # fmt: skip
            yield part


@dataclass
class _Part(PreprocessedImages):
    """Preprocessed views [start, stop) of the whole input."""

    start: int = 0

    @property
    def stop(self) -> int:
        return self.start + len(self.names)


def _slice(batch: _Part, a: int, b: int) -> _Part:
    return _Part(
        tensor=batch.tensor[a:b],
        images=batch.images[a:b],
        intrinsics=None if batch.intrinsics is None else batch.intrinsics[a:b],
        original_sizes=batch.original_sizes[a:b],
        transforms=batch.transforms[a:b],
        names=batch.names[a:b],
        start=batch.start + a,
    )


def _concat(parts: list[_Part]) -> _Part:
    if len(parts) == 1:
        return parts[0]
    return _Part(
        tensor=torch.cat([p.tensor for p in parts]),
        images=np.concatenate([p.images for p in parts]),
        intrinsics=None if parts[0].intrinsics is None else np.concatenate([p.intrinsics for p in parts]),
        original_sizes=[s for p in parts for s in p.original_sizes],
        transforms=np.concatenate([p.transforms for p in parts]),
        names=[s for p in parts for s in p.names],
        start=parts[0].start,
    )


class ChunkRunner(Protocol):
    """Runs the network passes of :meth:`DA3Predictor.predict` elsewhere (e.g. on a pool of Ray actors, see
    :mod:`da3_nerfstudio.cluster`); the predictor still plans the chunks and aligns them, so the result is the
    single-process one."""

    def views_per_chunk(self, height: int, width: int) -> int:
        """Chunk size when the caller gives none: what fits on the devices that run the passes."""
        ...

    def run(self, windows: Iterable[_Part], w2c: np.ndarray | None, options: dict) -> Iterator[dict[str, np.ndarray]]:
        """The result of :meth:`DA3Predictor.predict_chunk` for each window, in order."""
        ...


@functools.lru_cache(maxsize=1)
def shared_predictor(model: str, device: str | None = None, precision: str = "auto") -> DA3Predictor:
    """The predictor for ``model`` on ``device``, loaded once per process: a batch worker runs many captures
    with the model it loaded for the first (one model at a time, so memory holds one)."""
    return DA3Predictor(model, device=device, precision=precision)


class DA3Predictor:
    """Runs a DA3 model on images; see :meth:`predict`."""

    def __init__(
        self,
        model_or_name_or_path: DA3Model | str | Path,
        device: str | torch.device | None = None,
        precision: str = "auto",
    ) -> None:
        """``precision`` (see PRECISIONS): "auto" (bf16 backbone where the device has fast bf16), "float32"
        or "bfloat16"; the heads and camera decoding always run in float32."""
        self.device = resolve_device(device)
        self.autocast_dtype = autocast_dtype(precision, self.device)
        if isinstance(model_or_name_or_path, torch.nn.Module):
            self.model = model_or_name_or_path.to(self.device).eval()
        else:
            self.model = DA3Model.from_pretrained(model_or_name_or_path, device=self.device)

    def predict(
        self,
        images: Sequence[ImageSource],
        extrinsics: np.ndarray | torch.Tensor | None = None,
        intrinsics: np.ndarray | torch.Tensor | None = None,
        *,
        process_res: int = 504,
        process_res_method: str = "upper_bound_resize",
        infer_gs: bool = False,
        use_ray_pose: bool = False,
        ref_view_strategy: str = "saddle_balanced",
        max_views_per_chunk: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        runner: ChunkRunner | None = None,
    ) -> Prediction:
        """Predict depth and cameras for ``images`` (paths, PIL images or uint8 arrays).

        ``extrinsics`` (N,4,4) world-to-camera OpenCV plus ``intrinsics`` (N,3,3) in pixels of the
        original images condition the network on known cameras; the prediction is then returned in
        the caller's frame and units (extrinsics as given, depth rescaled). ``intrinsics`` alone do
        not condition the network (the official model cannot use them without poses): they are
        ignored with a warning. More views than ``max_views_per_chunk`` (default: what fits in
        memory, see :func:`default_views_per_chunk`) run in overlapping chunks aligned by Sim(3).
        ``progress(done, total)`` is called after each chunk. ``runner`` runs the chunks' network passes
        elsewhere (several workers at once); planning and alignment stay here, so the result is the same.
        """
        n = len(images)
        if n == 0:
            raise InputError("no input images given")
        w2c = _as_array(extrinsics, "extrinsics", n, ((4, 4), (3, 4)))
        K = _as_array(intrinsics, "intrinsics", n, ((3, 3),))
        if w2c is not None and K is None:
            raise InputError("extrinsics were given without intrinsics: pose conditioning needs both")
        if w2c is not None:
            names = [str(p) if isinstance(p, str | Path) else f"image[{i}]" for i, p in enumerate(images)]
            check_cameras(w2c, K, "known cameras (extrinsics, intrinsics)", names)
        if K is not None and w2c is None:
            logger.warning("intrinsics without extrinsics do not condition DA3; they are ignored")
            K = None
        if w2c is not None:
            w2c = to_homogeneous(w2c)
            if not self.model.anyview:
                raise InputError(f"{self.model.name} is a single-view model and cannot use known cameras")
        if infer_gs and not self.model.has_gaussian_head:
            raise InputError(f"{self.model.name} has no Gaussian head; use da3-giant or da3nested-giant-large")

        height, width = _common_processed_size(images, process_res, process_res_method)
        if max_views_per_chunk is not None:
            size = max_views_per_chunk
        elif runner is not None:
            size = runner.views_per_chunk(height or 504, width or 504)
        else:
            size = default_views_per_chunk(self.model, height or 504, width or 504, self.device)
        ranges = chunk_ranges(n, size)
        if len(ranges) > 1:
            logger.info(
                "predicting %d views in %d overlapping chunks of <= %d views, aligned by Sim(3) on shared views",
                n, len(ranges), size,
            )  # fmt: skip
        options = {"infer_gs": infer_gs, "use_ray_pose": use_ray_pose, "ref_view_strategy": ref_view_strategy}
        parts: list[_Part] = []
        stream = _preprocess_stream(images, ranges, process_res, process_res_method, K, streaming=height is not None)

        def windows() -> Iterator[_Part]:
            for (start, stop), part in zip(ranges, stream, strict=True):
                parts.append(part)
                window = _concat([p for p in parts if p.stop > start])
                yield _slice(window, start - window.start, stop - window.start)

        passes = (
            runner.run(windows(), w2c, options)
            if runner is not None
            else (self.predict_chunk(window, w2c, options) for window in windows())
        )
        chunks = []
        for i, chunk in enumerate(passes):
            chunks.append(chunk)
            if progress is not None:
                progress(i + 1, len(ranges))
        batch = _concat(parts)
        return self._assemble(batch, chunks, ranges, conditioned=w2c is not None)

    # ---------------------------------------------------------------- one pass
    def predict_chunk(self, batch: _Part, w2c: np.ndarray | None, options: dict) -> dict[str, np.ndarray]:
        """Run the network on one chunk; with known cameras, return them in the caller's frame."""
        start, stop = batch.start, batch.stop
        x = batch.tensor[None].to(self.device, non_blocking=True)
        ext = ixt = None
        if w2c is not None:
            ext = torch.from_numpy(normalize_extrinsics(w2c[start:stop]))[None].float().to(self.device)
            ixt = torch.from_numpy(batch.intrinsics)[None].float().to(self.device)
        dtype = self.autocast_dtype
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            out = self.model(x, ext, ixt, **options)
        result = {k: v[0].float().cpu().numpy() for k, v in out.items() if k not in ("gaussians", "scale_factor")}
        if "scale_factor" in out:
            result["scale_factor"] = np.asarray(float(out["scale_factor"]))
        if "gaussians" in out:
            result.update({f"gs_{k}": v[0].float().cpu().numpy() for k, v in out["gaussians"].items()})
        if w2c is not None:
            # Map the prediction's frame onto the caller's: X_pred = s R X_in + t, fitted as officially.
            s, R, t = align_cameras_sim3(w2c[start:stop], result["extrinsics"].astype(np.float64))
            result["extrinsics"] = w2c[start:stop, :3].astype(np.float32)
            result["intrinsics"] = batch.intrinsics.astype(np.float32)
            result["depth"] = result["depth"] / s
            if "gs_means" in result:
                _transform_gaussians(result, 1 / s, R.T, -(R.T @ t) / s)
        return result

    # ---------------------------------------------------------------- assembly
    def _assemble(
        self, batch: _Part, chunks: list[dict], ranges: list[tuple[int, int]], conditioned: bool
    ) -> Prediction:
        """Bring chunks into the first chunk's frame (unless already in the caller's) and stitch."""
        n = batch.images.shape[0]
        hw = batch.images.shape[1] * batch.images.shape[2]
        merged: dict[str, np.ndarray] = {}
        owner = np.full(n, -1)
        for c, ((start, stop), chunk) in enumerate(zip(ranges, chunks, strict=True)):
            if c > 0 and not conditioned:
                _align_chunk(chunk, merged, start, stop, owner)
            for key, value in chunk.items():
                if key.startswith("gs_") or key == "scale_factor":
                    continue
                if key not in merged:
                    merged[key] = np.zeros((n, *value.shape[1:]), dtype=value.dtype)
                new = owner[start:stop] < 0
                merged[key][start:stop][new] = value[new]
            new_views = np.nonzero(owner[start:stop] < 0)[0]
            if "gs_means" in chunk:
                for key in GAUSSIAN_KEYS:
                    per_view = chunk[f"gs_{key}"].reshape(stop - start, hw, *chunk[f"gs_{key}"].shape[1:])
                    merged.setdefault(f"gs_{key}", []).append(per_view[new_views])
                merged.setdefault("gs_views", []).append(np.repeat(start + new_views, hw))
            owner[start:stop][owner[start:stop] < 0] = c
        gaussians = None
        if "gs_means" in merged:
            gaussians = {k: np.concatenate(merged.pop(f"gs_{k}")).reshape(-1, *chunks[0][f"gs_{k}"].shape[1:])
                         for k in GAUSSIAN_KEYS}  # fmt: skip
            gaussians["views"] = np.concatenate(merged.pop("gs_views"))
        scale = chunks[0].get("scale_factor")
        return Prediction(
            depth=merged["depth"],
            extrinsics=merged.get("extrinsics", np.tile(np.eye(4, dtype=np.float32)[:3], (n, 1, 1))),
            intrinsics=merged.get("intrinsics", np.zeros((n, 3, 3), dtype=np.float32)),
            images=batch.images,
            conf=merged.get("depth_conf"),
            sky=merged["sky"] >= 0.5 if "sky" in merged else None,
            is_metric=scale is not None,
            scale_factor=float(scale) if scale is not None else None,
            gaussians=gaussians,
            original_sizes=np.array(batch.original_sizes),
            transforms=batch.transforms,
            names=batch.names,
            model_name=self.model.name,
        )


def _align_chunk(chunk: dict, merged: dict, start: int, stop: int, owner: np.ndarray) -> None:
    """Express ``chunk`` in the merged frame using the views both already contain.

    Rotation and translation come from the shared cameras; the scale from the shared views' depth
    (median ratio over pixels confident in both), which is well defined even for two close cameras.
    """
    shared = np.nonzero(owner[start:stop] >= 0)[0]
    old_ext = merged["extrinsics"][start:stop][shared].astype(np.float64)
    new_ext = chunk["extrinsics"][shared].astype(np.float64)
    old_depth, new_depth = merged["depth"][start:stop][shared], chunk["depth"][shared]
    ok = (old_depth > 0) & (new_depth > 0) & np.isfinite(old_depth) & np.isfinite(new_depth)
    if "depth_conf" in chunk:
        conf = np.minimum(merged["depth_conf"][start:stop][shared], chunk["depth_conf"][shared])
        ok &= conf >= np.median(conf[ok]) if ok.any() else ok
    scale = float(np.median(old_depth[ok] / new_depth[ok])) if ok.any() else 1.0
    _, R, _ = align_cameras_sim3(new_ext, old_ext)
    new_centres = -np.einsum("nji,nj->ni", new_ext[:, :3, :3], new_ext[:, :3, 3])
    old_centres = -np.einsum("nji,nj->ni", old_ext[:, :3, :3], old_ext[:, :3, 3])
    t = (old_centres - scale * new_centres @ R.T).mean(0)
    chunk["extrinsics"] = apply_sim3_to_w2c(chunk["extrinsics"].astype(np.float64), scale, R, t).astype(np.float32)
    chunk["depth"] = chunk["depth"] * scale
    if "ray" in chunk:
        chunk["ray"][..., :3] = chunk["ray"][..., :3] @ R.T.astype(np.float32)
        chunk["ray"][..., 3:] = (scale * chunk["ray"][..., 3:] @ R.T + t).astype(np.float32)
    if "gs_means" in chunk:
        _transform_gaussians(chunk, scale, R, t)


def _transform_gaussians(chunk: dict, s: float, R: np.ndarray, t: np.ndarray) -> None:
    """Apply X -> s R X + t to the chunk's Gaussians (means, scales, rotations and SH)."""
    chunk["gs_means"] = (s * chunk["gs_means"] @ R.T + t).astype(np.float32)
    chunk["gs_scales"] = (chunk["gs_scales"] * s).astype(np.float32)
    Rt = torch.from_numpy(np.asarray(R, dtype=np.float64))
    wxyz = torch.from_numpy(chunk["gs_rotations"].astype(np.float64))
    chunk["gs_rotations"] = matrix_to_quat_wxyz(Rt @ quat_wxyz_to_matrix(wxyz)).numpy().astype(np.float32)
    sh = torch.from_numpy(chunk["gs_harmonics"].astype(np.float64))
    chunk["gs_harmonics"] = rotate_sh(sh, Rt).numpy().astype(np.float32)
