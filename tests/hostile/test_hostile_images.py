"""Hostile images: every image mode reaches nerfstudio as the pixels the network saw; bad files fail in one line.

The good cases write the room's ground truth as an official DA3 npz and build datasets with
``da3-process-data predictions --images`` from photos saved in every mode Pillow reads (CMYK, 1-bit, palette,
16-bit, float, EXIF-rotated, alpha, other formats under an image suffix...). Each case checks three things
against a truth computed here with numpy from the pixels the file was made of: what
``da3_nerfstudio.preprocess.load_image`` decodes for the network, what nerfstudio's own ``InputDataset`` loads
from the written dataset, and that the file was copied byte for byte only where a stock loader reads it the same.

The bad cases (corrupt, truncated, empty, missing, folders, links, decompression bombs, animated and multi-page
files, absurd sizes, out-of-range values) go through the ``predictions`` and ``images`` commands and the Python
API: one line naming the file and the problem, a non-zero exit (the API: ``InputError``), nothing written.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hostile import BIN, assert_one_line_error, assert_unchanged, run_tool, snapshot
from PIL import Image
from samples import ROOM, room_truth

from da3_nerfstudio.cli.process_data import main
from da3_nerfstudio.dataset import write_dataset
from da3_nerfstudio.errors import InputError
from da3_nerfstudio.prediction import Prediction
from da3_nerfstudio.preprocess import load_image, preprocess_images

pytestmark = pytest.mark.skipif(not ROOM.is_dir(), reason=f"sample data not found at {ROOM}")
VIEWS = 8  # the room's views: each dataset run places eight test images, one per view
SMALL = ["--num-points", "2000", "--num-gaussians", "5000", "--eval-interval", "0"]


def grey_of(rgb: np.ndarray) -> np.ndarray:
    """A grey picture of the room (ITU-R 601 weights), the source of the one-channel cases."""
    return np.round(rgb.astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.uint8)


def repeat3(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def decoded(path: Path) -> np.ndarray:
    """Pillow's own decoding of a lossy file (the only truth a JPEG has), as an array in its stored mode."""
    with Image.open(path) as im:
        return np.asarray(im)


def palette_image(grey: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """A 16-colour palette picture and, by numpy lookup, the RGB it displays."""
    index = (grey // 16).astype(np.uint8)
    colours = np.array([(i * 16, 255 - i * 16, (i * 37) % 256) for i in range(16)], np.uint8)
    im = Image.fromarray(index, "P")
    im.putpalette(colours.ravel().tolist())
    return im, colours[index]


def cmyk_planes(rgb: np.ndarray) -> np.ndarray:
    """CMYK ink of the room with black ink varying across the image (all four channels carry information)."""
    k = np.broadcast_to(np.linspace(0, 120, rgb.shape[1]).astype(np.uint8), rgb.shape[:2])
    return np.dstack([255 - rgb, k]).astype(np.uint8)


def cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """Pillow's documented CMYK -> RGB: each ink multiplies the light left by black, (255-c)(255-k)/255."""
    c, k = cmyk[..., :3].astype(np.float64), cmyk[..., 3:].astype(np.float64)
    return np.round((255 - c) * (255 - k) / 255).astype(np.uint8)


def exif(orientation: int) -> bytes:
    tags = Image.Exif()
    tags[0x0112] = orientation
    return tags.tobytes()


# Each builder saves one test image made from the room view ``rgb`` at ``path`` (name without suffix) and
# returns the file and the upright RGB it shows: the independent truth.
Builder = Callable[[np.ndarray, Path], tuple[Path, np.ndarray]]


def rgb_png(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
    Image.fromarray(rgb).save(path := path.with_suffix(".png"))
    return path, rgb


def rgb_jpeg(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
    Image.fromarray(rgb).save(path := path.with_suffix(".jpg"), quality=90)
    return path, decoded(path)


def grey_png(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
    Image.fromarray(grey_of(rgb), "L").save(path := path.with_suffix(".png"))
    return path, repeat3(grey_of(rgb))


def grey_jpeg(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
    Image.fromarray(grey_of(rgb), "L").save(path := path.with_suffix(".jpeg"), quality=90)
    return path, repeat3(decoded(path))


def bilevel_png(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
    bits = grey_of(rgb) > 127
    Image.fromarray(bits).save(path := path.with_suffix(".png"))
    assert Image.open(path).mode == "1"
    return path, repeat3(np.where(bits, 255, 0).astype(np.uint8))


def palette_png(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
    im, shown = palette_image(grey_of(rgb))
    im.save(path := path.with_suffix(".png"))
    return path, shown


def palette_transparent_png(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
    im, shown = palette_image(grey_of(rgb))
    im.save(path := path.with_suffix(".png"), transparency=0)  # colour 0 transparent: alpha is ignored
    assert "transparency" in Image.open(path).info
    return path, shown


def rgba_png(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
    alpha = np.broadcast_to(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), rgb.shape[:2])
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path := path.with_suffix(".png"))
    return path, rgb  # alpha is ignored: the colours as stored, even where fully transparent


def la_png(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
    alpha = np.broadcast_to(np.linspace(255, 0, rgb.shape[0]).astype(np.uint8)[:, None], rgb.shape[:2])
    Image.merge("LA", [Image.fromarray(grey_of(rgb)), Image.fromarray(np.ascontiguousarray(alpha))]).save(
        path := path.with_suffix(".png")
    )
    return path, repeat3(grey_of(rgb))


def sixteen_bit(grey: np.ndarray) -> np.ndarray:
    """16-bit grey that uses the low byte too (a wrapped or clipped reading would show it)."""
    noise = np.random.default_rng(7).integers(-128, 129, grey.shape)
    return np.clip(grey.astype(np.int64) * 257 + noise, 0, 65535).astype(np.uint16)


def grey16_png(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
    values = sixteen_bit(grey_of(rgb))
    Image.fromarray(values).save(path := path.with_suffix(".png"))
    assert Image.open(path).mode == "I;16"
    return path, repeat3(np.round(values / 257.0).astype(np.uint8))


def grey16_tiff(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
    values = sixteen_bit(grey_of(rgb))
    Image.fromarray(values).save(path := path.with_suffix(".tif"))
    return path, repeat3(np.round(values / 257.0).astype(np.uint8))


def rgb16_png(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
    import cv2

    values = np.dstack([sixteen_bit(rgb[..., c]) for c in range(3)])
    cv2.imwrite(str(path := path.with_suffix(".png")), values[..., ::-1])  # cv2 writes BGR
    return path, (values >> 8).astype(np.uint8)  # Pillow reads 16-bit colour PNGs as their high byte


def int32_tiff(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
    Image.fromarray(grey_of(rgb).astype(np.int32) * 257).save(path := path.with_suffix(".tif"))
    assert Image.open(path).mode == "I"
    return path, repeat3(grey_of(rgb))


def float_tiff(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
    values = (grey_of(rgb) / 255.0).astype(np.float32)
    Image.fromarray(values).save(path := path.with_suffix(".tiff"))
    assert Image.open(path).mode == "F"
    return path, repeat3(np.round(values.astype(np.float64) * 255).astype(np.uint8))


def cmyk_jpeg(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
    Image.fromarray(cmyk_planes(rgb), "CMYK").save(path := path.with_suffix(".jpg"), quality=90)
    ink = decoded(path)
    assert ink.shape[2] == 4  # a stock loader sees four channels: black ink would pass for alpha
    return path, cmyk_to_rgb(ink)


def cmyk_tiff(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
    ink = cmyk_planes(rgb)
    Image.fromarray(ink, "CMYK").save(path := path.with_suffix(".tif"))
    return path, cmyk_to_rgb(ink)


def rotated_jpeg(orientation: int, turns: int) -> Builder:
    """A photo stored turned ``turns`` x 90 degrees counter-clockwise, with the EXIF orientation that undoes it."""

    def build(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
        Image.fromarray(np.rot90(rgb, turns)).save(path := path.with_suffix(".jpg"), exif=exif(orientation))
        return path, np.ascontiguousarray(np.rot90(decoded(path), -turns))

    return build


def stored_png(orientation: int, store: Callable[[np.ndarray], np.ndarray]) -> Builder:
    """A PNG whose stored pixels are ``store(upright)``, with an eXIf chunk (before the pixels) that undoes it."""

    def build(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
        Image.fromarray(np.ascontiguousarray(store(rgb))).save(path := path.with_suffix(".png"), exif=exif(orientation))
        return path, rgb

    return build


def in_format(fmt: str, suffix: str, **options: object) -> Builder:
    """The RGB pixels in another lossless format (or, with a mismatching suffix, disguised as another one)."""

    def build(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
        Image.fromarray(rgb).save(path := path.with_suffix(suffix), format=fmt, **options)
        return path, rgb

    return build


def gif_named_png(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
    im, shown = palette_image(grey_of(rgb))
    im.save(path := path.with_suffix(".png"), format="GIF")
    return path, shown


def jpeg_named_png(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
    Image.fromarray(rgb).save(path := path.with_suffix(".png"), format="JPEG", quality=90)
    return path, decoded(path)


def mpo_jpeg(rgb: np.ndarray, path: Path) -> tuple[Path, np.ndarray]:
    """A phone's multi-picture JPEG: the photo plus a second (preview) frame that viewers do not show."""
    preview = Image.fromarray(rgb[::4, ::4])
    Image.fromarray(rgb).save(path := path.with_suffix(".jpg"), format="MPO", save_all=True, append_images=[preview])
    with Image.open(path) as im:
        assert im.format == "MPO" and im.n_frames == 2
    return path, decoded(path)


@dataclass(frozen=True)
class Mode:
    name: str
    build: Builder
    copied: bool
    """A stock loader reads the original bytes as the network's decoding: they are copied, not converted."""


MODES = [
    Mode("rgb_png", rgb_png, True),
    Mode("rgb_jpeg", rgb_jpeg, True),
    Mode("grey_png", grey_png, True),
    Mode("grey_jpeg", grey_jpeg, True),
    Mode("rgb16_png", rgb16_png, True),
    Mode("mpo_jpeg", mpo_jpeg, True),
    Mode("bilevel_png", bilevel_png, False),
    Mode("palette_png", palette_png, False),
    Mode("palette_transparent_png", palette_transparent_png, False),
    Mode("rgba_png", rgba_png, False),
    Mode("la_png", la_png, False),
    Mode("grey16_png", grey16_png, False),
    Mode("grey16_tiff", grey16_tiff, False),
    Mode("int32_tiff", int32_tiff, False),
    Mode("float_tiff", float_tiff, False),
    Mode("cmyk_jpeg", cmyk_jpeg, False),
    Mode("cmyk_tiff", cmyk_tiff, False),
    Mode("exif6_jpeg", rotated_jpeg(6, 1), False),
    Mode("exif8_jpeg", rotated_jpeg(8, -1), False),
    Mode("exif3_jpeg", rotated_jpeg(3, 2), False),
    Mode("exif2_png", stored_png(2, lambda a: a[:, ::-1]), False),
    Mode("exif5_png", stored_png(5, lambda a: np.swapaxes(a, 0, 1)), False),
    Mode("rgb_tiff", in_format("TIFF", ".tif"), False),
    Mode("rgb_bmp", in_format("BMP", ".bmp"), False),
    Mode("rgb_webp", in_format("WEBP", ".webp", lossless=True), False),
    Mode("gif_named_png", gif_named_png, False),
    Mode("jpeg_named_png", jpeg_named_png, False),
    Mode("tiff_named_jpg", in_format("TIFF", ".jpg"), False),
]


@dataclass(frozen=True)
class Written:
    source: Path
    expected: np.ndarray
    dataset: Path
    frame: int


def official_npz(path: Path) -> Path:
    """The room's ground truth in the official DA3 npz export layout (no network needed)."""
    truth = room_truth()
    np.savez(
        path,
        depth=truth.depth,
        conf=np.ones_like(truth.depth),
        extrinsics=truth.w2c[:, :3].astype(np.float32),
        intrinsics=truth.K.astype(np.float32),
        image=truth.images,
    )
    return path


@pytest.fixture(scope="module")
def npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return official_npz(tmp_path_factory.mktemp("npz") / "room.npz")


@pytest.fixture(scope="module")
def written(npz: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Written]:
    """Every mode in a dataset written by the console script: eight modes per run, one per room view."""
    images = room_truth().images
    result = {}
    for start in range(0, len(MODES), VIEWS):
        group = MODES[start : start + VIEWS]
        root = tmp_path_factory.mktemp(f"modes{start}")
        photos, out = root / "photos", root / "dataset"
        photos.mkdir()
        files = [mode.build(images[i], photos / f"{i}_{mode.name}") for i, mode in enumerate(group)]
        files += [rgb_png(images[i], photos / f"{i}_filler") for i in range(len(group), VIEWS)]
        code, stdout, err = run_tool(
            ["da3-process-data", "predictions", "--data", npz, "--images", photos, "--output-dir", out, *SMALL]
        )
        assert code == 0 and "Traceback" not in stdout + err, err
        for i, mode in enumerate(group):
            result[mode.name] = Written(files[i][0], files[i][1], out, i)
    return result


@pytest.fixture(scope="module")
def nerfstudio_images() -> Callable[[Path, int], tuple[Path, np.ndarray, np.ndarray]]:
    """(file, uint8 image, float32 image) of view ``frame`` as nerfstudio's own dataparser and InputDataset load
    them (the stock loader that trains on the dataset)."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
    from nerfstudio.data.datasets.base_dataset import InputDataset

    datasets: dict[Path, InputDataset] = {}

    def load(out: Path, frame: int) -> tuple[Path, np.ndarray, np.ndarray]:
        if out not in datasets:
            config = NerfstudioDataParserConfig(data=out, depth_unit_scale_factor=1.0)
            datasets[out] = InputDataset(config.setup().get_dataparser_outputs(split="train"))
        dataset = datasets[out]
        index = [int(Path(p).stem.split("_")[1]) - 1 for p in dataset.image_filenames].index(frame)
        return (
            Path(dataset.image_filenames[index]),
            dataset.get_image_uint8(index).numpy(),
            dataset.get_image_float32(index).numpy(),
        )

    return load


@pytest.mark.parametrize("mode", MODES, ids=[m.name for m in MODES])
def test_nerfstudio_trains_on_the_pixels_the_network_saw(
    mode: Mode, written: dict[str, Written], nerfstudio_images: Callable
) -> None:
    case = written[mode.name]
    network = load_image(case.source)  # what the predictor decodes, before resizing
    np.testing.assert_array_equal(network, case.expected)
    path, uint8, float32 = nerfstudio_images(case.dataset, case.frame)
    assert uint8.shape == case.expected.shape  # three channels: no alpha or K channel for nerfstudio to misread
    np.testing.assert_array_equal(uint8, case.expected)
    np.testing.assert_array_equal(float32, case.expected.astype(np.float32) / 255.0)
    assert (path.read_bytes() == case.source.read_bytes()) is mode.copied
    assert path.suffix == (case.source.suffix.lower() if mode.copied else ".png")
    # The network, given the dataset's image instead of the original, sees the same processed pixels.
    np.testing.assert_array_equal(
        preprocess_images([path], process_res=112).images, preprocess_images([case.source], process_res=112).images
    )


# ------------------------------------------------------------------------------------------------
# Bad files: one line naming the file and the problem, nothing written


def png_with_size(width: int, height: int) -> bytes:
    """A valid small PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    buf = io.BytesIO()
    Image.new("L", (16, 16)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    return bytes(data)


def room_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(room_truth().images[0]).save(buf, "PNG")
    return buf.getvalue()


def room_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(room_truth().images[0]).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def corrupt_png() -> bytes:
    """Bytes flipped inside the compressed pixels: the chunk's checksum no longer matches."""
    data = bytearray(room_png())
    start = data.index(b"IDAT") + 100
    data[start : start + 16] = bytes(16)
    return bytes(data)


def frames(fmt: str, count: int = 3, **options: object) -> bytes:
    buf = io.BytesIO()
    images = [Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)) for i in range(count)]
    images[0].save(buf, fmt, save_all=True, append_images=images[1:], **options)
    return buf.getvalue()


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


@dataclass(frozen=True)
class Bad:
    name: str
    """File name in the photo folder."""
    content: Callable[[], bytes] | str
    """The bytes, or "dir" / "broken-link"."""
    problem: str
    """The message fragment after ``<path>: ``."""


BAD = [
    Bad("empty.jpg", lambda: b"", "empty file (0 bytes)"),
    Bad("text.jpg", lambda: b"shot on a sunny day\n", "not a readable image (unknown or corrupt format)"),
    Bad("pdf.png", lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "not a readable image"),
    Bad("header_only.jpg", lambda: room_jpeg()[:2] + bytes(200), "not a readable image"),
    Bad("truncated.png", lambda: room_png()[: len(room_png()) // 2], "corrupt or truncated image"),
    Bad("truncated.jpg", lambda: room_jpeg()[: len(room_jpeg()) // 2], "corrupt or truncated image"),
    Bad("corrupt.png", corrupt_png, "corrupt or truncated image"),
    Bad("folder.png", "dir", "is a directory, not an image file"),
    Bad("link.jpg", "broken-link", "no such file (broken link)"),
    Bad("dot.png", lambda: encoded(np.zeros((1, 1, 3), np.uint8), "PNG"), "1x1 pixels is too small"),
    Bad("line.png", lambda: png_with_size(100_000, 1), "100000x1 pixels is too small"),
    Bad("strip.png", lambda: encoded(np.zeros((20, 1000), np.uint8), "PNG"), "1000x20 pixels is too elongated"),
    Bad("bomb.png", lambda: png_with_size(20_000, 20_000), "400,000,000 pixels exceeds the decompression-bomb limit"),
    Bad("bomb_warning.png", lambda: png_with_size(10_000, 10_000), "100,000,000 pixels exceeds the decompression"),
    Bad("animated_gif.png", lambda: frames("GIF"), "GIF file with 3 frames (animated or multi-page)"),
    Bad("apng.png", lambda: frames("PNG"), "PNG file with 3 frames"),
    Bad("pages.tif", lambda: frames("TIFF", 2), "TIFF file with 2 frames"),
    Bad("animated.webp", lambda: frames("WEBP", 2, lossless=True), "WEBP file with 2 frames"),
    Bad(
        "float_255.tif",
        lambda: encoded(np.full((20, 20), 200.0, np.float32), "TIFF"),
        "float image values must lie in [0, 1], got 200..200",
    ),
    Bad(
        "float_nan.tif",
        lambda: encoded(np.full((20, 20), np.nan, np.float32), "TIFF"),
        "float image values must lie in [0, 1], got nan..nan",
    ),
    Bad(
        "int32.tif",
        lambda: encoded(np.full((20, 20), -7, np.int32), "TIFF"),
        "32-bit integer image with values -7..-7 outside 0..65535",
    ),
]


def bad_folder(root: Path, bad: Bad) -> tuple[Path, Path]:
    """A photo folder with one good view and the bad file (named to sort last); returns (folder, bad path)."""
    photos = root / "photos"
    photos.mkdir(parents=True)
    (photos / "0_good.png").write_bytes(room_png())
    path = photos / f"1_{bad.name}"
    if bad.content == "dir":
        path.mkdir()
    elif bad.content == "broken-link":
        path.symlink_to(photos / "gone.jpg")
    else:
        path.write_bytes(bad.content())
    return photos, path


@pytest.mark.parametrize("bad", BAD, ids=[b.name for b in BAD])
def test_predictions_command_names_the_bad_image(
    bad: Bad, npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos, path = bad_folder(tmp_path / "in", bad)
    before = snapshot(tmp_path)
    code = main(["predictions", "--data", str(npz), "--images", str(photos), "--output-dir", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert_one_line_error(code, captured.out, captured.err, f"{path}: {bad.problem}")
    assert_unchanged(before, tmp_path)


@pytest.mark.parametrize("bad", BAD, ids=[b.name for b in BAD])
def test_images_command_refuses_the_bad_image_before_loading_a_model(
    bad: Bad, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The model named does not exist: an error about the image proves the images were checked first."""
    photos, path = bad_folder(tmp_path / "in", bad)
    before = snapshot(tmp_path)
    model = tmp_path / "no-such-checkpoint"
    code = main(["images", "--data", str(photos), "--output-dir", str(tmp_path / "out"), "--model", str(model)])
    captured = capsys.readouterr()
    assert_one_line_error(code, captured.out, captured.err, f"{path}: {bad.problem}")
    assert_unchanged(before, tmp_path)


@pytest.mark.parametrize("bad", BAD, ids=[b.name for b in BAD])
def test_python_api_raises_input_error_for_the_bad_image(bad: Bad, tmp_path: Path) -> None:
    """load_image (the predictor's decoding, also through its thread pool) and write_dataset."""
    photos, path = bad_folder(tmp_path / "in", bad)
    before = snapshot(tmp_path)
    good = photos / "0_good.png"
    truth = room_truth()
    prediction = Prediction(
        depth=truth.depth[:2],
        extrinsics=truth.w2c[:2, :3].astype(np.float32),
        intrinsics=truth.K[:2].astype(np.float32),
        images=truth.images[:2],
    )
    calls = (
        lambda: load_image(path),
        lambda: preprocess_images([good, path], process_res=112),
        lambda: write_dataset(prediction, tmp_path / "out", image_paths=[good, path]),
    )
    for call in calls:
        with pytest.raises(InputError) as err:
            call()
        assert f"{path}: {bad.problem}" in str(err.value) and "\n" not in str(err.value)
    assert_unchanged(before, tmp_path)


@pytest.mark.parametrize("bad", [b for b in BAD if b.name.startswith("bomb")], ids=lambda b: b.name)
def test_console_script_reports_a_decompression_bomb_in_one_line(bad: Bad, npz: Path, tmp_path: Path) -> None:
    """In a real process, where Pillow's DecompressionBombWarning would otherwise print to stderr as well."""
    photos, path = bad_folder(tmp_path / "in", bad)
    before = snapshot(tmp_path)
    code, out, err = run_tool(
        ["da3-process-data", "predictions", "--data", npz, "--images", photos, "--output-dir", tmp_path / "out"]
    )
    assert_one_line_error(code, out, err, f"{path}: {bad.problem}")
    assert "Warning" not in out + err
    assert_unchanged(before, tmp_path)


@pytest.mark.parametrize("command", ["predictions", "images"])
def test_unreadable_image_is_named_in_one_line(command: str, npz: Path, tmp_path: Path) -> None:
    """A photo without read permission. Root reads any file, so as root the command runs without the
    capability that allows it (setpriv), where the kernel then refuses the read as for any user."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "0_good.png").write_bytes(room_png())
    locked = photos / "1_locked.png"
    locked.write_bytes(room_png())
    before = snapshot(tmp_path)  # while readable (the snapshot reads every file)
    locked.chmod(0)
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    inputs = ["--data", npz, "--images", photos] if command == "predictions" else ["--data", photos]
    args = [*drop, BIN / "da3-process-data", command, *inputs, "--output-dir", tmp_path / "out"]
    if command == "images":
        args += ["--model", tmp_path / "no-such-checkpoint"]
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300)
    assert_one_line_error(
        result.returncode, result.stdout, result.stderr, f"{locked}: cannot read the file (permission denied)"
    )
    locked.chmod(0o644)
    assert_unchanged(before, tmp_path)


def tiny_video(path: Path, width: int, height: int) -> Path:
    """A real, decodable MPEG-4 video whose frames are ``width`` x ``height``."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 40 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.mark.parametrize(
    ("size", "problem"),
    [((64, 8), "64x8 pixels is too small"), ((1600, 16), "1600x16 pixels is too elongated")],
    ids=["small", "elongated"],
)
def test_video_of_an_absurd_frame_size_is_refused_before_the_model_loads(
    size: tuple[int, int], problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = tiny_video(tmp_path / "clip.mp4", *size)
    before = snapshot(tmp_path)
    args = ["video", "--data", video, "--output-dir", tmp_path / "out", "--model", tmp_path / "no-such-checkpoint"]
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert_one_line_error(code, captured.out, captured.err, f"{video}: {problem}")
    assert_unchanged(before, tmp_path)


NETWORK_MODES = ["cmyk_jpeg", "bilevel_png", "palette_transparent_png", "rgba_png", "grey16_png", "exif6_jpeg",
                 "float_tiff", "rgb_jpeg"]  # fmt: skip


def test_images_command_network_input_is_what_nerfstudio_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nerfstudio_images: Callable
) -> None:
    """A real network run (deterministic small checkpoint) on photos in eight modes: the processed images it
    saved as its input equal the official preprocessing of the images nerfstudio loads from the dataset."""
    from da3_fixtures import write_checkpoint

    from da3_nerfstudio.preprocess import preprocess_image

    checkpoint = write_checkpoint(tmp_path / "checkpoint" / "da3-small", "da3-small")
    photos, out = tmp_path / "photos", tmp_path / "dataset"
    photos.mkdir()
    modes = {m.name: m for m in MODES}
    images = room_truth().images
    for i, name in enumerate(NETWORK_MODES):
        modes[name].build(images[i], photos / f"{i}_{name}")
    args = ["images", "--data", photos, "--output-dir", out, "--model", checkpoint, "--process-res", "112", *SMALL]
    code = main([str(a) for a in args])
    assert code == 0, capsys.readouterr().err
    saw = Prediction.load(out / "da3" / "predictions.npz").images
    for i in range(len(NETWORK_MODES)):
        _, uint8, _ = nerfstudio_images(out, i)
        np.testing.assert_array_equal(preprocess_image(uint8, 112, "upper_bound_resize")[0], saw[i])
