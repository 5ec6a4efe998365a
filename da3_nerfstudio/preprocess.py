"""Image loading and the official Depth Anything 3 input preprocessing.

The network only reproduces the official outputs when it sees the same pixels, so the resize
rules (banker's rounding, two-stage ``cv2.resize`` with CUBIC/AREA, divisibility by the 14-px
patch) follow the official ``InputProcessor`` exactly. On top of it this module adds what the
official code lacks: EXIF orientation, every common PIL mode and numpy layout, one-line
:class:`InputError` messages for bad files, and the per-image affine ``A`` that maps original
pixel coordinates to processed ones, so callers can move intrinsics (``A @ K``) or pixels.

:func:`load_image` is the project's one image decoding: the dataset writer calls it too, and copies
a photo's bytes only where :func:`image_header` says a stock loader reads them identically, so
nerfstudio trains on the pixels the network saw. Input discovery lives here too (:func:`image_header`
vets a file from its header, :func:`natural_sorted` orders a folder's frames), so every reader of a
photo's size and orientation follows the decoder's rules.
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from da3_nerfstudio.errors import InputError

if TYPE_CHECKING:  # decoding needs no torch: it loads only where images become tensors
    import torch

logger = logging.getLogger(__name__)

PATCH_SIZE = 14
METHODS = ("upper_bound_resize", "upper_bound_crop", "lower_bound_resize", "lower_bound_crop")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageSource = str | Path | Image.Image | np.ndarray

# Pillow's 16-bit unsigned modes; ``convert("RGB")`` would clip them at 255 instead of scaling.
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


#: Suffix -> the formats a file of that name may hold and still be copied into a dataset verbatim.
_STOCK_FORMATS = {".png": ("PNG",), ".jpg": ("JPEG", "MPO"), ".jpeg": ("JPEG", "MPO")}
#: Modes that a stock loader (``np.array(Image.open(f))``, as nerfstudio's) turns into the RGB load_image gives.
_STOCK_MODES = ("RGB", "L")
#: A side shorter than one network patch holds no structure to predict depth from.
MIN_IMAGE_SIDE = PATCH_SIZE
#: Beyond this aspect ratio the short side is below one patch at the default resolution (504 px).
MAX_ASPECT_RATIO = 504 // PATCH_SIZE
#: EXIF orientation -> the transpose that shows the image upright (the table of ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: EXIF orientations 5-8 show the stored image with its axes swapped.
_SWAPS_AXES = (
    Image.Transpose.TRANSPOSE,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
)
#: warnings.catch_warnings swaps process-wide state: opening threads take turns (headers only, fast).
_OPEN_LOCK = threading.Lock()


class ImageHeader(NamedTuple):
    """What a file's header says, checked: upright size and whether its bytes may be copied as they are."""

    width: int
    height: int
    stock_rgb: bool
    """A stock loader reads the file's bytes as exactly the RGB :func:`load_image` decodes: a plain 8-bit RGB or
    grey JPEG/PNG (as its suffix says) without EXIF rotation. Anything else is written converted."""


def image_header(path: str | Path) -> ImageHeader:
    """Check an image file from its header only (no pixels decoded), so a folder is vetted before long work.

    Raises a one-line :class:`InputError` for a missing, empty, unreadable or unknown file, a
    decompression bomb, an animated or multi-page file and an absurd size (see :func:`load_image`).
    """
    path = Path(path)
    with _open_file(path, str(path)) as im:
        orientation = _orientation(im)
        width, height = im.size
        stock = (
            orientation is None and im.mode in _STOCK_MODES and im.format in _STOCK_FORMATS.get(path.suffix.lower(), ())
        )
    if orientation in _SWAPS_AXES:
        width, height = height, width
    return ImageHeader(width, height, stock)


def load_image(src: ImageSource, name: str | None = None) -> np.ndarray:
    """Load one image as an (H, W, 3) uint8 RGB array: the one decoding of the project.

    The predictor's preprocessing and the dataset writer both call it, so the images a dataset
    references hold exactly the pixels the network saw. Rules:

    * EXIF orientation is applied (for PNG only an eXIf chunk before the pixels, which cameras write).
    * Alpha is ignored: the colour channels are used as stored, not composited over any background,
      as the official preprocessing (``convert("RGB")``) does; the network was trained on opaque photos.
    * Grey, 1-bit and palette images become the RGB they display; CMYK as Pillow converts it.
    * 16-bit grey is scaled by 65535/255 (``/257``); 32-bit integer data must lie in 0..65535 and is
      read as 16-bit; float data must lie in [0, 1]. (Pillow reads 16-bit colour PNGs as their high byte.)
    * Files must hold one frame (animated and multi-page files are refused, except a JPEG's MPO
      previews), at least ``MIN_IMAGE_SIDE`` px a side, at most ``MAX_ASPECT_RATIO``:1, and at most
      ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (decompression bombs).

    ``name`` labels in-memory inputs in error messages (e.g. ``image[3]``); files are named by their path.
    """
    if isinstance(src, str | Path):
        path = Path(src)
        label = name or str(path)
        with _open_file(path, label) as im:
            orientation = _orientation(im)
            try:
                im.load()
            except (OSError, SyntaxError, ValueError, EOFError) as err:
                raise InputError(f"{label}: corrupt or truncated image ({_one_line(err)})") from None
            return _pil_to_rgb(im if orientation is None else im.transpose(orientation), label)
    label = name or "image"
    if isinstance(src, Image.Image):
        if src.width == 0 or src.height == 0:
            raise InputError(f"{label}: empty image ({src.width}x{src.height} pixels)")
        orientation = _orientation(src)
        return _pil_to_rgb(src if orientation is None else src.transpose(orientation), label)
    if isinstance(src, np.ndarray):
        return _array_to_rgb(src, label)
    raise InputError(f"{label}: unsupported image type {type(src).__name__} (use a path, PIL image or array)")


def natural_sorted(paths: Sequence[Path]) -> list[Path]:
    """Paths in human order (``2.png`` before ``10.png``): the order cameras and video exports number frames."""
    return sorted(paths, key=lambda p: _natural_key(p.name))


def _natural_key(name: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def verify_images(paths: Sequence[str | Path], num_workers: int = 4) -> None:
    """Decode every file as :func:`load_image` does, so a corrupt or truncated one fails now, not after the model
    has loaded; the first bad file in order raises its one-line :class:`InputError`."""
    with ThreadPoolExecutor(max_workers=max(1, min(num_workers, len(paths)))) as pool:
        for _ in pool.map(load_image, paths):
            pass


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _open_file(path: Path, label: str) -> Image.Image:
    """Open a file (header only), turning every failure into a one-line InputError; the caller closes it."""
    if not path.exists():
        raise InputError(f"{label}: no such file" + (" (broken link)" if path.is_symlink() else ""))
    if path.is_dir():
        raise InputError(f"{label}: is a directory, not an image file")
    if path.stat().st_size == 0:
        raise InputError(f"{label}: empty file (0 bytes)")
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except PermissionError:
        raise InputError(f"{label}: cannot read the file (permission denied)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(pixels[1]):,} pixels" if pixels else "its size"
        raise InputError(
            f"{label}: {size} exceeds the decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,} pixels "
            "(PIL.Image.MAX_IMAGE_PIXELS)"
        ) from None
    except UnidentifiedImageError:
        raise InputError(f"{label}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(f"{label}: corrupt or truncated image ({_one_line(err)})") from None
    try:
        _check_file_image(im, label)
    except BaseException:
        im.close()
        raise
    return im


def _check_file_image(im: Image.Image, label: str) -> None:
    """Refuse files that are not one photo: several frames, or a size no camera makes."""
    try:
        frames = getattr(im, "n_frames", 1)
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(f"{label}: corrupt or truncated image ({_one_line(err)})") from None
    if frames > 1 and im.format != "MPO":  # an MPO's later frames are previews or the second stereo view
        raise InputError(f"{label}: {im.format} file with {frames} frames (animated or multi-page); give single images")
    check_image_size(*im.size, label)


def check_image_size(width: int, height: int, label: str) -> None:
    """Refuse a size no camera makes (a side under one patch, an aspect ratio past ``MAX_ASPECT_RATIO``:1)."""
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InputError(
            f"{label}: {width}x{height} pixels is too small (each side needs at least {MIN_IMAGE_SIDE} px)"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise InputError(
            f"{label}: {width}x{height} pixels is too elongated (sides differ by more than {MAX_ASPECT_RATIO}:1)"
        )


def _orientation(im: Image.Image) -> Image.Transpose | None:
    """The transpose that shows ``im`` upright, from EXIF orientation, or None.

    Read without decoding pixels: PIL finds a PNG eXIf chunk placed after the pixels only by decoding
    them all, so for PNG only a chunk before them counts (cameras write it first). Header and decoder
    share this rule, so a file's size and pixels always agree.
    """
    if im.format == "PNG" and "exif" not in im.info:
        return None
    try:
        orientation = im.getexif().get(0x0112)
    except (OSError, SyntaxError, ValueError, EOFError, KeyError, TypeError):
        return None  # unreadable EXIF: as every viewer, show the pixels as stored
    return _UPRIGHT.get(orientation) if isinstance(orientation, int) else None


def _pil_to_rgb(im: Image.Image, label: str) -> np.ndarray:
    """Convert any PIL mode to RGB uint8, scaling high-bit-depth modes instead of clipping them."""
    if im.mode in _UINT16_MODES:
        return _array_to_rgb(np.asarray(im).astype(np.uint16), label)
    if im.mode == "I":
        # 32-bit int mode is how many decoders hand over 16-bit greyscale; other ranges are not photos.
        arr = np.asarray(im)
        if arr.min() < 0 or arr.max() > 65535:
            raise InputError(f"{label}: 32-bit integer image with values {arr.min()}..{arr.max()} outside 0..65535")
        return _array_to_rgb(arr.astype(np.uint16), label)
    if im.mode == "F":
        return _array_to_rgb(np.asarray(im), label)
    try:
        return np.asarray(im.convert("RGB"))
    except ValueError as err:
        raise InputError(f"{label}: unsupported image mode {im.mode} ({err})") from None


def _array_to_rgb(arr: np.ndarray, label: str) -> np.ndarray:
    """Convert an HxW / HxWx{1,3,4} uint8, uint16 or [0, 1] float array to HxWx3 uint8."""
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[..., :3]
    elif arr.ndim == 2:
        arr = arr[..., None]
    else:
        raise InputError(f"{label}: expected an HxW or HxWxC array with C in 1, 3, 4; got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{label}: empty image ({arr.shape[1]}x{arr.shape[0]} pixels)")
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.uint16:
        out = np.round(arr / 257.0).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(np.min(arr)), float(np.max(arr))
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
            raise InputError(f"{label}: float image values must lie in [0, 1], got {lo:g}..{hi:g}")
        out = np.round(arr.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise InputError(f"{label}: unsupported array dtype {arr.dtype} (use uint8, uint16 or [0, 1] float)")
    return np.ascontiguousarray(np.broadcast_to(out, (*out.shape[:2], 3)))


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown process_res_method {method!r}; valid: {', '.join(METHODS)}")


def _boundary_size(width: int, height: int, process_res: int, method: str) -> tuple[int, int, float]:
    """First official step: scale the longest (upper_bound) or shortest (lower_bound) side to res.

    Returns the new size and the scale, whose sign against 1 picks the official resize kernel.
    """
    bound = max(width, height) if method.startswith("upper") else min(width, height)
    scale = process_res / float(bound)
    return max(1, round(width * scale)), max(1, round(height * scale)), scale


def _divisible_size(width: int, height: int, method: str, process_res: int) -> tuple[int, int]:
    """Second official step: nearest multiple of 14 (ties up) for *_resize, floor for *_crop.

    Unlike the official code a side never becomes smaller than one patch: an extreme aspect ratio
    would otherwise give a 0- or 1-px side the network cannot take.
    """
    if method.endswith("resize"):
        # Adding half a patch before flooring sends ties up, as the official nearest-multiple rule does.
        half = PATCH_SIZE // 2
        return (
            max(PATCH_SIZE, (width + half) // PATCH_SIZE * PATCH_SIZE),
            max(PATCH_SIZE, (height + half) // PATCH_SIZE * PATCH_SIZE),
        )
    new = ((width // PATCH_SIZE) * PATCH_SIZE, (height // PATCH_SIZE) * PATCH_SIZE)
    if min(new) == 0:
        raise ValueError(
            f"a {width}x{height} resize is too elongated for {method} at process_res {process_res}: "
            f"a side is below one {PATCH_SIZE}-px patch (use a *_resize method)"
        )
    return new


def processed_size(
    width: int, height: int, process_res: int = 504, method: str = "upper_bound_resize"
) -> tuple[int, int]:
    """(width, height) the official preprocessing gives an image of ``width`` x ``height``."""
    _check_method(method)
    w, h, _ = _boundary_size(width, height, process_res, method)
    return _divisible_size(w, h, method, process_res)


def _resize(img: np.ndarray, width: int, height: int, upscale: bool) -> np.ndarray:
    if (width, height) == (img.shape[1], img.shape[0]):
        return img
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_CUBIC if upscale else cv2.INTER_AREA)


def _translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def preprocess_image(
    img: np.ndarray, process_res: int = 504, method: str = "upper_bound_resize"
) -> tuple[np.ndarray, np.ndarray]:
    """Resize one (H, W, 3) uint8 image as the official code does.

    Returns the processed uint8 image and the 3x3 affine ``A`` mapping original continuous pixel
    coordinates (origin at the image corner, as the official intrinsics rule assumes) to processed
    ones, so processed intrinsics are ``A @ K``.
    """
    _check_method(method)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {img.dtype} {img.shape}")
    h0, w0 = img.shape[:2]
    w1, h1, scale = _boundary_size(w0, h0, process_res, method)
    out = _resize(img, w1, h1, upscale=scale > 1.0)
    A = np.diag([w1 / w0, h1 / h0, 1.0])
    w2, h2 = _divisible_size(w1, h1, method, process_res)
    if method.endswith("resize"):
        out = _resize(out, w2, h2, upscale=w2 > w1 or h2 > h1)
        A = np.diag([w2 / w1, h2 / h1, 1.0]) @ A
    else:
        left, top = (w1 - w2) // 2, (h1 - h2) // 2
        out = out[top : top + h2, left : left + w2]
        A = _translation(-left, -top) @ A
    return np.ascontiguousarray(out), A


@dataclass
class PreprocessedImages:
    """A batch ready for the network plus what is needed to map results back to the inputs."""

    tensor: torch.Tensor
    """(N, 3, H, W) float32, ImageNet-normalised."""
    images: np.ndarray
    """(N, H, W, 3) uint8 processed images (the pixels the network sees)."""
    intrinsics: np.ndarray | None
    """(N, 3, 3) float64 intrinsics in processed pixels, or None when none were given."""
    original_sizes: list[tuple[int, int]]
    """(width, height) of each input after EXIF orientation."""
    transforms: np.ndarray
    """(N, 3, 3) float64 affine maps from original to processed pixel coordinates."""
    names: list[str]
    """The path as given for files, ``image[i]`` for in-memory inputs."""


def _source_name(src: ImageSource, index: int) -> str:
    return str(src) if isinstance(src, str | Path) else f"image[{index}]"


def preprocess_images(
    images: Sequence[ImageSource],
    process_res: int = 504,
    method: str = "upper_bound_resize",
    intrinsics: np.ndarray | None = None,
    num_workers: int = 4,
) -> PreprocessedImages:
    """Load and preprocess a batch the way the official ``InputProcessor`` does.

    Loading and resizing run in a thread pool (cv2 and PIL release the GIL); the order is kept.
    Images whose processed sizes differ are centre-cropped to the smallest height and width, as
    the official code does, and a warning names the sizes that were cropped.
    """
    _check_method(method)
    if len(images) == 0:
        raise InputError("no input images given")
    names = [_source_name(src, i) for i, src in enumerate(images)]
    if intrinsics is not None:
        intrinsics = np.asarray(intrinsics, dtype=np.float64)
        if intrinsics.shape != (len(images), 3, 3) or not np.isfinite(intrinsics).all():
            raise InputError(f"intrinsics: expected {len(images)} finite 3x3 matrices, got shape {intrinsics.shape}")

    def work(i: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        rgb = load_image(images[i], names[i])
        try:
            processed, A = preprocess_image(rgb, process_res, method)
        except ValueError as err:
            raise InputError(f"{names[i]}: {err}") from None
        return processed, A, (rgb.shape[1], rgb.shape[0])

    if num_workers > 1 and len(images) > 1:
        with ThreadPoolExecutor(max_workers=min(num_workers, len(images))) as pool:
            results = list(pool.map(work, range(len(images))))
    else:
        results = [work(i) for i in range(len(images))]

    processed = [r[0] for r in results]
    transforms = np.stack([r[1] for r in results])
    sizes = [(p.shape[1], p.shape[0]) for p in processed]
    if len(set(sizes)) > 1:
        min_w, min_h = min(w for w, _ in sizes), min(h for _, h in sizes)
        counts = Counter(f"{w}x{h}" for w, h in sizes if (w, h) != (min_w, min_h))
        logger.warning(
            "images have different processed sizes; centre-cropping %s to %dx%d",
            ", ".join(f"{n} image(s) of {s}" for s, n in counts.items()),
            min_w,
            min_h,
        )
        for i, (w, h) in enumerate(sizes):
            # Sizes are multiples of 14, so the differences are even and this floor equals
            # torchvision CenterCrop's round(d / 2) used by the official code.
            left, top = (w - min_w) // 2, (h - min_h) // 2
            processed[i] = processed[i][top : top + min_h, left : left + min_w]
            transforms[i] = _translation(-left, -top) @ transforms[i]

    batch = np.stack(processed)
    return PreprocessedImages(
        tensor=normalize(batch),
        images=batch,
        intrinsics=None if intrinsics is None else transforms @ intrinsics,
        original_sizes=[r[2] for r in results],
        transforms=transforms,
        names=names,
    )


def normalize(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 ImageNet-normalised, in the official op order."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return x.sub(mean).div(std)


def denormalize(tensor: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) or (3, H, W) normalised tensor -> (N, H, W, 3) or (H, W, 3) uint8.

    Matches the official ``processed_images``: x * std + mean in float64, clipped to [0, 1], times
    255 and truncated (not rounded), so a round trip can lose one grey level.
    """
    x = tensor.detach().cpu().float().numpy()
    x = np.moveaxis(x, -3, -1).astype(np.float64)
    x = np.clip(x * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN), 0.0, 1.0)
    return (x * 255).astype(np.uint8)
