"""Tests for image loading and the official DA3 preprocessing.

Truth comes from outside the module: the size table verified against the official code, hand
arithmetic, pixel content (EXIF markers, a rendered blob whose centre is known exactly), and
torchvision's CenterCrop, which the official code uses for mixed sizes.
"""

import io
import logging
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from samples import SAMPLES
from torchvision.transforms import CenterCrop

from da3_nerfstudio.errors import InputError
from da3_nerfstudio.preprocess import (
    METHODS,
    denormalize,
    image_header,
    load_image,
    preprocess_image,
    preprocess_images,
    processed_size,
)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------
# Sizes


@pytest.mark.parametrize(
    ("size", "method", "expected"),
    [
        ((1920, 1080), "upper_bound_resize", (504, 280)),
        ((1920, 1080), "upper_bound_crop", (504, 280)),
        ((1920, 1080), "lower_bound_resize", (896, 504)),
        ((1080, 1920), "upper_bound_resize", (280, 504)),
        ((1080, 1920), "upper_bound_crop", (280, 504)),
        ((1600, 1200), "upper_bound_resize", (504, 378)),
        ((1600, 1200), "upper_bound_crop", (504, 378)),
        ((1600, 1200), "lower_bound_resize", (672, 504)),
        ((300, 200), "upper_bound_resize", (504, 336)),
        ((300, 200), "upper_bound_crop", (504, 336)),
        ((640, 480), "upper_bound_resize", (504, 378)),
    ],
)
def test_processed_size_matches_official_table(size, method, expected):
    assert processed_size(*size, process_res=504, method=method) == expected
    processed, _ = preprocess_image(np.zeros((size[1], size[0], 3), np.uint8), 504, method)
    assert processed.shape == (expected[1], expected[0], 3)


def test_processed_size_rounding_rules_by_hand():
    # 1920x1080 -> 504 x round(283.5) = 504x284 (banker's rounding keeps 284, the even one).
    # resize: 284 is 4 above 280 and 10 below 294 -> 280; crop: floor(284 / 14) * 14 = 280.
    assert processed_size(1920, 1080, 504, "upper_bound_resize") == (504, 280)
    # 2000x1250 -> 504 x 315 exactly; 315 = 22.5 * 14 is a tie -> resize goes up to 322, crop floors to 308.
    assert processed_size(2000, 1250, 504, "upper_bound_resize") == (504, 322)
    assert processed_size(2000, 1250, 504, "upper_bound_crop") == (504, 308)
    # Banker's rounding: 1008x293 -> 504 x 146.5, which Python rounds to 146 (even) -> nearest multiple
    # 140; rounding half up would give 147, a tie that goes up to 154.
    assert processed_size(1008, 293, 504, "upper_bound_resize") == (504, 140)


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        processed_size(100, 100, 504, "bicubic")
    for method in METHODS:
        assert method in str(err.value)


def test_two_stage_cv2_resize_is_the_official_pipeline():
    rng = np.random.default_rng(0)
    # Downscale: AREA to the boundary size, then AREA for the 14-px step (both sides shrink).
    big = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    step1 = cv2.resize(big, (504, 284), interpolation=cv2.INTER_AREA)
    expected = cv2.resize(step1, (504, 280), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(preprocess_image(big, 504, "upper_bound_resize")[0], expected)
    # Crop mode keeps the AREA-resized pixels and crops (284 - 280) // 2 = 2 rows off the top.
    np.testing.assert_array_equal(preprocess_image(big, 504, "upper_bound_crop")[0], step1[2:282])
    # Upscale: CUBIC; 300x200 -> 504x336 is already divisible by 14, so there is no second step.
    small = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    expected = cv2.resize(small, (504, 336), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_array_equal(preprocess_image(small, 504, "upper_bound_resize")[0], expected)


def test_extreme_aspect_ratio_keeps_a_whole_patch_or_fails_clearly():
    assert processed_size(5000, 50, 504, "upper_bound_resize") == (504, 14)
    with pytest.raises(InputError, match=r"image\[0\].*too elongated"):
        preprocess_images([np.zeros((50, 5000, 3), np.uint8)], method="upper_bound_crop")


# ---------------------------------------------------------------------------------------------
# Loading: orientation and modes


def test_exif_orientation_6_is_applied(tmp_path):
    # Stored 60 wide x 40 high, red marker in the stored top-left corner. Orientation 6 means the
    # stored first row is the displayed right side and the stored first column the displayed top,
    # so the marker must show up in the top-right corner of a 40-wide, 60-high image.
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[..., 2] = 255
    stored[:12, :12] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)

    for loaded in (load_image(path), load_image(Image.open(path))):
        assert loaded.shape == (60, 40, 3)
        top_right = loaded[2:10, -10:-2].reshape(-1, 3).mean(0)
        top_left = loaded[2:10, 2:10].reshape(-1, 3).mean(0)
        assert top_right[0] > 200 and top_right[2] < 60
        assert top_left[2] > 200 and top_left[0] < 60


# How each EXIF orientation stores an upright picture (the EXIF 2.3 definitions, written with numpy).
STORED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # upside down
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: np.swapaxes(a, 0, 1),  # transposed
    6: lambda a: np.rot90(a, 1),  # turned counter-clockwise: shown turned 90 degrees clockwise
    7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],  # transversed
    8: lambda a: np.rot90(a, -1),  # turned clockwise
}


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_every_exif_orientation_is_decoded_upright_and_the_header_agrees(tmp_path, orientation):
    upright = np.random.default_rng(orientation).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.png"
    Image.fromarray(np.ascontiguousarray(STORED[orientation](upright))).save(path, exif=exif.tobytes())
    np.testing.assert_array_equal(load_image(path), upright)
    # Only an unrotated file may be copied: a stock loader (nerfstudio's) ignores EXIF orientation.
    assert image_header(path) == (30, 20, orientation == 1)


def test_png_exif_after_the_pixels_is_ignored_by_header_and_decoder_alike(tmp_path):
    """PIL sees an eXIf chunk behind the pixels only after decoding them; both rules ignore it, so the size
    the header reports (for intrinsics, before any decoding) is the size of the decoded pixels."""
    stored = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6
    payload = exif.tobytes()[6:]  # the TIFF structure without the "Exif\0\0" JPEG prefix
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    data = buf.getvalue()
    path = tmp_path / "late_exif.png"
    path.write_bytes(data[:-12] + chunk + data[-12:])  # just before IEND
    with Image.open(path) as im:
        im.load()
        assert im.getexif().get(0x0112) == 6  # PIL does find it, once decoded
    np.testing.assert_array_equal(load_image(path), stored)
    assert image_header(path) == (30, 20, True)


def test_grey_and_alpha_modes_drop_alpha_without_compositing():
    grey = np.array([[0, 17], [128, 255]], np.uint8)
    expected = np.repeat(grey[..., None], 3, axis=2)
    np.testing.assert_array_equal(load_image(Image.fromarray(grey, "L")), expected)
    la = Image.merge("LA", [Image.fromarray(grey), Image.new("L", (2, 2), 0)])
    np.testing.assert_array_equal(load_image(la), expected)
    rgba = np.array([[[10, 20, 30, 0], [200, 100, 50, 128]]], np.uint8)
    np.testing.assert_array_equal(load_image(Image.fromarray(rgba, "RGBA")), rgba[..., :3])
    np.testing.assert_array_equal(load_image(rgba), rgba[..., :3])


def test_palette_modes():
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.putpixel((1, 0), 0)
    np.testing.assert_array_equal(load_image(pal), [[[0, 255, 0], [255, 0, 0]]])
    np.testing.assert_array_equal(load_image(pal.convert("PA")), [[[0, 255, 0], [255, 0, 0]]])


def test_cmyk_and_ycbcr():
    np.testing.assert_array_equal(load_image(Image.new("CMYK", (1, 1), (0, 255, 255, 0))), [[[255, 0, 0]]])
    np.testing.assert_array_equal(load_image(Image.new("CMYK", (1, 1), (0, 0, 0, 0))), [[[255, 255, 255]]])
    np.testing.assert_array_equal(load_image(Image.new("YCbCr", (1, 1), (128, 128, 128))), [[[128, 128, 128]]])


# 16-bit values and the 8-bit result by hand: v * 255 / 65535 = v / 257, rounded.
SIXTEEN_BIT = np.array([[0, 1, 128, 129, 257, 32896, 65278, 65535]], np.uint16)
EIGHT_BIT = np.array([[0, 0, 0, 1, 1, 128, 254, 255]], np.uint8)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "depth16.png"
    Image.fromarray(np.tile(SIXTEEN_BIT, (14, 2))).save(path)  # a file needs 14 px a side
    assert Image.open(path).mode == "I;16"
    np.testing.assert_array_equal(load_image(path), np.repeat(np.tile(EIGHT_BIT, (14, 2))[..., None], 3, axis=2))
    # A full gradient k * 257 maps to exactly k.
    gradient = (np.arange(256, dtype=np.uint16) * 257)[None]
    np.testing.assert_array_equal(load_image(Image.fromarray(gradient))[0, :, 1], np.arange(256))


def test_16_bit_big_endian_and_int32_modes():
    big_endian = Image.frombytes("I;16B", (8, 1), SIXTEEN_BIT.astype(">u2").tobytes())
    np.testing.assert_array_equal(load_image(big_endian)[..., 0], EIGHT_BIT)
    as_int32 = Image.fromarray(SIXTEEN_BIT.astype(np.int32))
    assert as_int32.mode == "I"
    np.testing.assert_array_equal(load_image(as_int32)[..., 2], EIGHT_BIT)
    with pytest.raises(InputError, match="outside 0..65535"):
        load_image(Image.fromarray(np.array([[-5, 70000]], np.int32)), "image[2]")


def test_float_mode_and_arrays():
    values = np.array([[0.0, 0.5, 1.0 / 255.0, 1.0]], np.float32)
    expected = np.array([[0, 128, 1, 255]], np.uint8)  # 0.5 * 255 = 127.5 rounds to 128
    np.testing.assert_array_equal(load_image(Image.fromarray(values))[..., 0], expected)
    np.testing.assert_array_equal(load_image(values.astype(np.float64))[..., 1], expected)
    with pytest.raises(InputError, match=r"image\[4\]: float image values must lie in \[0, 1\]"):
        load_image(values * 255, "image[4]")


def test_numpy_layouts():
    grey = np.array([[3, 250]], np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    np.testing.assert_array_equal(load_image(grey), rgb)
    np.testing.assert_array_equal(load_image(grey[..., None]), rgb)
    np.testing.assert_array_equal(load_image(SIXTEEN_BIT)[..., 0], EIGHT_BIT)
    with pytest.raises(InputError, match=r"image\[1\]: expected an HxW or HxWxC array"):
        load_image(np.zeros((3, 8, 8), np.uint8), "image[1]")  # a CHW tensor layout
    with pytest.raises(InputError, match="unsupported array dtype int64"):
        load_image(np.zeros((4, 4, 3), np.int64))


# ---------------------------------------------------------------------------------------------
# Bad input


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("filename", "content", "problem"),
    [
        ("missing.png", None, "no such file"),
        ("a_folder.png", "dir", "directory"),
        ("cut.png", lambda: _png_bytes()[:600], "truncated"),
        ("cut.jpg", lambda: _jpeg_bytes()[: len(_jpeg_bytes()) // 2], "truncated"),
        ("empty.jpg", lambda: b"", "empty file"),
        ("notes.jpg", lambda: b"this is a text file, not a JPEG\n", "not a readable image"),
    ],
)
def test_bad_files_give_one_line_input_error(tmp_path, filename, content, problem):
    path = tmp_path / filename
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content())
    good = tmp_path / "good.png"
    good.write_bytes(_png_bytes())
    # Through the thread pool too: the error must reach the caller as the same one-line InputError.
    for call in (lambda: load_image(path), lambda: preprocess_images([good, path])):
        with pytest.raises(InputError) as err:
            call()
        message = str(err.value)
        assert filename in message and problem in message
        assert "\n" not in message


def test_empty_inputs():
    with pytest.raises(InputError, match=r"image\[1\]: empty image"):
        preprocess_images([np.zeros((4, 4, 3), np.uint8), np.zeros((0, 5, 3), np.uint8)])
    with pytest.raises(InputError, match="image: empty image"):
        load_image(Image.new("RGB", (0, 3)))
    with pytest.raises(InputError, match="no input images"):
        preprocess_images([])


def test_bad_intrinsics_shape():
    with pytest.raises(InputError, match="intrinsics"):
        preprocess_images([np.zeros((4, 4, 3), np.uint8)], intrinsics=np.eye(3)[None].repeat(2, 0))


# ---------------------------------------------------------------------------------------------
# Geometry: intrinsics follow the pixels


def _blob_image(width: int, height: int, centre: np.ndarray, sigma: float) -> np.ndarray:
    """A white Gaussian blob centred at ``centre`` in continuous coordinates (pixel i spans [i, i+1])."""
    xs = np.arange(width) + 0.5
    ys = np.arange(height) + 0.5
    d2 = (xs[None, :] - centre[0]) ** 2 + (ys[:, None] - centre[1]) ** 2
    grey = np.round(255 * np.exp(-d2 / (2 * sigma**2))).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _centroid(img: np.ndarray) -> np.ndarray:
    weight = img[..., 0].astype(np.float64)
    ys, xs = np.mgrid[: img.shape[0], : img.shape[1]] + 0.5
    return np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()


def _project(K: np.ndarray, point: np.ndarray) -> np.ndarray:
    uvw = K @ point
    return uvw[:2] / uvw[2]


@pytest.mark.parametrize(
    ("size", "method"),
    [
        ((1920, 1080), "upper_bound_resize"),
        ((1920, 1080), "upper_bound_crop"),  # 504x284 -> 2-row crop
        ((1600, 1200), "lower_bound_resize"),
        ((300, 200), "upper_bound_resize"),  # CUBIC upscale
        ((333, 251), "lower_bound_crop"),  # upscale then crop on both sides
    ],
)
def test_projected_point_lands_where_processed_intrinsics_say(size, method):
    width, height = size
    K = np.array([[0.8 * width, 0.0, 0.52 * width], [0.0, 0.8 * width, 0.47 * height], [0.0, 0.0, 1.0]])
    world_point = np.array([0.21, -0.13, 2.0])
    pixel = _project(K, world_point)
    sigma = max(width, height) / 80
    batch = preprocess_images([_blob_image(width, height, pixel, sigma)], 504, method, intrinsics=K[None])

    A = batch.transforms[0]
    expected = _project(batch.intrinsics[0], world_point)
    np.testing.assert_allclose(batch.intrinsics[0], A @ K)
    np.testing.assert_allclose((A @ np.append(pixel, 1.0))[:2], expected)
    np.testing.assert_allclose(_centroid(batch.images[0]), expected, atol=0.05)


def test_crop_shifts_the_principal_point_by_the_crop_offset():
    K = np.array([[1500.0, 0.0, 960.0], [0.0, 1500.0, 540.0], [0.0, 0.0, 1.0]])
    crop = preprocess_images([np.zeros((1080, 1920, 3), np.uint8)], 504, "upper_bound_crop", intrinsics=K[None])
    # Official rule by hand: scale rows by 504/1920 and 284/1080, then cy -= (284 - 280) // 2 = 2.
    s_x, s_y = 504 / 1920, 284 / 1080
    expected = np.array([[1500 * s_x, 0, 960 * s_x], [0, 1500 * s_y, 540 * s_y - 2], [0, 0, 1]])
    np.testing.assert_allclose(crop.intrinsics[0], expected)
    resize = preprocess_images([np.zeros((1080, 1920, 3), np.uint8)], 504, "upper_bound_resize", intrinsics=K[None])
    s_y = 280 / 1080
    np.testing.assert_allclose(
        resize.intrinsics[0], [[1500 * s_x, 0, 960 * s_x], [0, 1500 * s_y, 540 * s_y], [0, 0, 1]]
    )


def test_mixed_sizes_are_centre_cropped_like_torchvision(caplog):
    sizes = [(1920, 1080), (1600, 1200), (1080, 1920), (1920, 1080)]  # -> 504x280, 504x378, 280x504
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in sizes]
    Ks = np.stack([np.array([[w, 0.0, w / 2], [0.0, w, h / 2], [0.0, 0.0, 1.0]]) for w, h in sizes])
    with caplog.at_level(logging.WARNING, logger="da3_nerfstudio.preprocess"):
        batch = preprocess_images(images, 504, "upper_bound_resize", intrinsics=Ks, num_workers=2)

    assert batch.images.shape == (4, 280, 280, 3) and batch.tensor.shape == (4, 3, 280, 280)
    assert batch.original_sizes == sizes
    message = caplog.text
    assert "504x280" in message and "504x378" in message and "280x504" in message and "280x280" in message
    for i, image in enumerate(images):
        alone, A_alone = preprocess_image(image, 504, "upper_bound_resize")
        cropped = CenterCrop((280, 280))(torch.from_numpy(alone).permute(2, 0, 1)).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(batch.images[i], cropped)
        left, top = (alone.shape[1] - 280) // 2, (alone.shape[0] - 280) // 2
        expected_K = A_alone @ Ks[i]
        expected_K[0, 2] -= left
        expected_K[1, 2] -= top
        np.testing.assert_allclose(batch.intrinsics[i], expected_K)


def test_mixed_crop_moves_pixels_with_the_transform():
    # A blob in a 1600x1200 view, batched with a 1920x1080 view: the 378-high result loses 49 rows.
    centre = np.array([700.3, 650.8])
    batch = preprocess_images([np.zeros((1080, 1920, 3), np.uint8), _blob_image(1600, 1200, centre, 20.0)])
    assert batch.images.shape[1:3] == (280, 504)
    assert batch.transforms[1][1, 2] == pytest.approx(-49.0)
    np.testing.assert_allclose(_centroid(batch.images[1]), (batch.transforms[1] @ np.append(centre, 1))[:2], atol=0.05)


# ---------------------------------------------------------------------------------------------
# Normalisation, order, names


def test_normalisation_by_hand():
    img = np.array([[[0, 128, 255], [12, 200, 77]]], np.uint8)
    batch = preprocess_images([np.tile(img, (14, 7, 1))], process_res=14)
    t = batch.tensor
    assert t.dtype == torch.float32 and t.shape == (1, 3, 14, 14)
    np.testing.assert_array_equal(batch.images[0], np.tile(img, (14, 7, 1)))
    assert t[0, 0, 0, 0].item() == pytest.approx((0 / 255 - 0.485) / 0.229, abs=1e-6)
    assert t[0, 1, 0, 0].item() == pytest.approx((128 / 255 - 0.456) / 0.224, abs=1e-6)
    assert t[0, 2, 0, 0].item() == pytest.approx((1.0 - 0.406) / 0.225, abs=1e-6)
    assert t[0, 0, 5, 1].item() == pytest.approx((12 / 255 - 0.485) / 0.229, abs=1e-6)
    assert t[0, 2, 5, 1].item() == pytest.approx((77 / 255 - 0.406) / 0.225, abs=1e-6)


def test_denormalize_truncates_like_the_official_code():
    # 127.8 / 255 of full scale: truncation gives 127 (rounding would give 128); out-of-range clips.
    levels = torch.tensor([127.8 / 255, 1.2, -0.1], dtype=torch.float64)
    tensor = torch.stack([(levels - m) / s for m, s in zip(MEAN, STD, strict=True)])[:, None, :]
    out = denormalize(tensor)
    assert out.dtype == np.uint8 and out.shape == (1, 3, 3)
    np.testing.assert_array_equal(out[0, 0], [127, 127, 127])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 2], [0, 0, 0])
    # A float32 round trip stays within the one level truncation can lose.
    img = np.random.default_rng(4).integers(0, 256, (2, 14, 28, 3), dtype=np.uint8)
    back = denormalize(preprocess_images(list(img), process_res=28).tensor)
    assert back.shape == img.shape
    assert np.all((img.astype(int) - back) >= 0) and np.all((img.astype(int) - back) <= 1)


def test_thread_pool_keeps_order_and_names(tmp_path):
    colours = [(i * 20, 255 - i * 20, (i * 37) % 256) for i in range(9)]
    paths = []
    for i, colour in enumerate(colours[:4]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (70, 42), colour).save(paths[-1])
    sources = [*paths, *(np.full((42, 70, 3), c, np.uint8) for c in colours[4:])]
    batch = preprocess_images(sources, 70, num_workers=4)
    sequential = preprocess_images(sources, 70, num_workers=1)
    np.testing.assert_array_equal(batch.images, sequential.images)
    np.testing.assert_array_equal(batch.images[:, 5, 5], colours)
    assert batch.names == [str(p) for p in paths] + [f"image[{i}]" for i in range(4, 9)]
    assert batch.intrinsics is None


# ---------------------------------------------------------------------------------------------
# Real photos


@pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"shared samples folder {SAMPLES} is absent")
def test_real_photo_gets_official_size_and_pixels():
    path = SAMPLES / "soh" / "000.png"
    original = np.asarray(Image.open(path).convert("RGB"))
    assert original.shape == (680, 1208, 3)
    # By hand: scale 504 / 1208; 680 * 504 / 1208 = 283.7 -> 284; nearest multiple of 14 is 280.
    batch = preprocess_images([path])
    assert batch.images.shape == (1, 280, 504, 3)
    assert batch.original_sizes == [(1208, 680)]
    np.testing.assert_allclose(np.diag(batch.transforms[0]), [504 / 1208, 280 / 680, 1.0])
    step1 = cv2.resize(original, (504, 284), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(batch.images[0], cv2.resize(step1, (504, 280), interpolation=cv2.INTER_AREA))
    # The content is the photo, not a transposed or channel-swapped copy: mean colours agree.
    np.testing.assert_allclose(batch.images[0].mean((0, 1)), original.mean((0, 1)), atol=1.0)
