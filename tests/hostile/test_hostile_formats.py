"""Hostile arrays and file formats: every non-finite or malformed value is caught where it enters.

Entry points: predictions npz (``Prediction.load`` and ``da3-process-data predictions``), COLMAP models and
transforms.json (``read_colmap_model`` / ``read_transforms_json`` and ``da3-process-data images --known-poses``),
PLY point clouds and splats (``read_point_cloud_ply`` / ``read_splat_ply``), checkpoints
(``DA3Model.from_pretrained`` and ``da3-process-data images --model``), the predictor's known cameras
(``DA3Predictor.predict``) and splat initialisation (``splats_from_depth`` / ``splats_from_gaussian_head``).
Each bad case asserts the one line (file and problem), the error type or exit status and that nothing was
written; float/grey/RGBA images in an npz, formerly written black or refused with a traceback, assert the
written pixels.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import torch
from da3_fixtures import write_checkpoint
from hostile import assert_one_line_error, assert_unchanged, run_tool, snapshot
from numpy.lib.recfunctions import repack_fields
from PIL import Image
from plyfile import PlyData, PlyElement
from safetensors.torch import load_file, save_file
from samples import SOH

from da3_nerfstudio.cli.process_data import main
from da3_nerfstudio.dataset import write_dataset
from da3_nerfstudio.errors import CheckpointError, InputError
from da3_nerfstudio.formats.colmap import read_colmap_model, write_colmap_model
from da3_nerfstudio.formats.ply import SplatData, read_point_cloud_ply, read_splat_ply, write_splat_ply
from da3_nerfstudio.formats.transforms import applied_transform, read_transforms_json
from da3_nerfstudio.model import DA3Model
from da3_nerfstudio.prediction import Prediction
from da3_nerfstudio.predictor import DA3Predictor
from da3_nerfstudio.splat_init import splats_from_depth, splats_from_gaussian_head

N, H, W = 3, 14, 21
SMALL = ["--num-points", "200", "--num-gaussians", "300", "--eval-interval", "0"]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """``da3-process-data`` in-process; returns (exit status, stdout, stderr)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_api_error(error: type[Exception], call: Callable[[], object], *needles: str) -> str:
    """``call`` raises ``error`` with one line containing every needle."""
    with pytest.raises(error) as info:
        call()
    text = str(info.value)
    assert "\n" not in text, text
    for needle in needles:
        assert needle.lower() in text.lower(), f"{needle!r} not in {text!r}"
    return text


# ------------------------------------------------------------------------------------------------
# Predictions npz


def good_arrays() -> dict[str, np.ndarray]:
    """A small valid official-layout prediction: three cameras along x looking at a plane 2 m away."""
    rng = np.random.default_rng(0)
    extrinsics = np.tile(np.eye(4, dtype=np.float32)[:3], (N, 1, 1))
    extrinsics[:, 0, 3] = -0.1 * np.arange(N)
    intrinsics = np.tile(np.array([[20, 0, W / 2], [0, 20, H / 2], [0, 0, 1]], np.float32), (N, 1, 1))
    return {
        "depth": (2.0 + 0.1 * rng.random((N, H, W))).astype(np.float32),
        "conf": (1.0 + rng.random((N, H, W))).astype(np.float32),
        "extrinsics": extrinsics,
        "intrinsics": intrinsics,
        "image": rng.integers(0, 256, (N, H, W, 3), dtype=np.uint8),
    }


def _set(key: str, value: Callable[[dict], np.ndarray]) -> Callable[[dict], None]:
    def edit(a: dict) -> None:
        a[key] = value(a)

    return edit


def _view(key: str, index: int, value: Callable[[np.ndarray], np.ndarray]) -> Callable[[dict], None]:
    def edit(a: dict) -> None:
        a[key] = a[key].copy()
        a[key][index] = value(a[key][index])

    return edit


def _rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


# case -> (edit of the good arrays, or raw bytes writer; message fragment)
NPZ_CASES: dict[str, tuple[Callable[[dict], None], str]] = {
    "missing_extrinsics": (lambda a: a.pop("extrinsics"), "not a DA3 prediction (missing extrinsics)"),
    "depth_2d": (_set("depth", lambda a: a["depth"][0]), "depth must be (N,H,W)"),
    "depth_strings": (_set("depth", lambda a: a["depth"].astype(str)), "depth must hold real numbers"),
    "depth_zero_views": (_set("depth", lambda a: a["depth"][:0]), "depth must be (N,H,W) with N, H, W >= 1"),
    "extrinsics_count": (_set("extrinsics", lambda a: a["extrinsics"][:2]), "inconsistent shapes"),
    "extrinsics_3x3": (_set("extrinsics", lambda a: a["extrinsics"][:, :, :3]), "camera poses must be"),
    "extrinsics_nan": (_view("extrinsics", 1, lambda e: e * np.nan), "view 1: pose has non-finite values"),
    "extrinsics_inf": (_view("extrinsics", 2, lambda e: e + np.inf), "view 2: pose has non-finite values"),
    "extrinsics_scaled": (_view("extrinsics", 2, lambda e: 2 * e), "view 2: pose is not rigid"),
    "extrinsics_sheared": (
        _view("extrinsics", 0, lambda e: np.concatenate([np.triu(np.ones((3, 3))), e[:, 3:]], 1)),
        "view 0: pose is not rigid",
    ),
    "extrinsics_singular": (_view("extrinsics", 1, lambda e: e * 0), "view 1: pose is not rigid"),
    "extrinsics_reflection": (
        _view("extrinsics", 1, lambda e: np.diag([1, 1, -1.0]) @ e),
        "view 1: pose rotation is a reflection",
    ),
    "extrinsics_bottom_row": (
        _set("extrinsics", lambda a: np.concatenate([a["extrinsics"], np.tile([[[0, 0, 1, 1]]], (N, 1, 1))], 1)),
        "last row must be [0, 0, 0, 1]",
    ),
    "intrinsics_zero_focal": (
        _view("intrinsics", 2, lambda k: k * [[0], [1], [1]]),
        "view 2: focal lengths must be positive",
    ),
    "intrinsics_negative_focal": (
        _view("intrinsics", 0, lambda k: k * [[1], [-1], [1]]),
        "focal lengths must be positive",
    ),
    "intrinsics_nan": (_view("intrinsics", 1, lambda k: k * np.nan), "view 1: intrinsics have non-finite values"),
    "intrinsics_not_pinhole": (
        _view("intrinsics", 1, lambda k: k + [[0, 0, 0], [0, 0, 0], [1, 0, 0]]),
        "not a pinhole matrix",
    ),
    "depth_all_nan": (_view("depth", 1, lambda d: d * np.nan), "view 1: depth has no valid pixel"),
    "depth_all_inf": (_view("depth", 0, lambda d: d + np.inf), "view 0: depth has no valid pixel"),
    "depth_all_zero": (_view("depth", 2, lambda d: d * 0), "view 2: depth has no valid pixel"),
    "depth_all_negative": (_view("depth", 2, lambda d: -d), "view 2: depth has no valid pixel"),
    "depth_all_sky": (_set("sky", lambda a: np.ones(a["depth"].shape, bool)), "view 0: depth has no valid pixel"),
    "sky_shape": (_set("sky", lambda a: np.zeros((N, H, W + 1), bool)), "sky (3, 14, 22) does not match depth"),
    "conf_shape": (_set("conf", lambda a: a["conf"][:, :-1]), "conf (3, 13, 21) does not match depth"),
    "conf_nan": (_view("conf", 0, lambda c: c * np.nan), "conf has 294 non-finite values"),
    "image_two_channels": (_set("image", lambda a: a["image"][..., :2]), "image must be (N,H,W,3) RGB"),
    "image_size": (_set("image", lambda a: a["image"][:, :-1]), "does not match depth"),
    "image_float_0_255": (
        _set("image", lambda a: a["image"].astype(np.float32)),
        "float image values must be in [0, 1]",
    ),
    "image_float_nan": (_set("image", lambda a: a["image"] / 255.0 * np.nan), "image has 2646 non-finite values"),
    "image_uint16": (
        _set("image", lambda a: a["image"].astype(np.uint16) * 257),
        "integer image values must be in 0..255",
    ),
    "image_bool": (_set("image", lambda a: a["image"] > 128), "image is boolean"),
    "gaussians_incomplete": (_set("gaussians_means", lambda a: np.zeros((5, 3))), "incomplete Gaussians"),
    "names_count": (_set("names", lambda a: np.array(["a.png"])), "names has 1 entries for 3 views"),
    "transforms_singular": (_set("transforms", lambda a: np.zeros((N, 3, 3))), "transforms must be invertible"),
    "is_metric_array": (_set("is_metric", lambda a: np.ones(3)), "is_metric must be finite with shape ()"),
}


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


NPZ_FILE_CASES: dict[str, tuple[Callable[[Path, bytes], None], str]] = {
    "not_npz": (lambda p, good: p.write_text("depth,extrinsics\n1,2\n"), "not an npz archive"),
    "empty": (lambda p, good: p.write_bytes(b""), "not a readable npz file"),
    "truncated": (lambda p, good: p.write_bytes(good[: len(good) // 2]), "not a readable npz file"),
    "single_npy": (lambda p, good: p.write_bytes(_npy_bytes(np.zeros(3))), "a single .npy array, not an .npz"),
    "pickled_object_array": (
        lambda p, good: np.savez(p, depth=np.array([{"x": 1}], dtype=object)),
        "array 'depth' holds python objects",
    ),
    "folder": (lambda p, good: p.mkdir(), "is a folder"),
}


def write_npz(tmp_path: Path, case: str) -> Path:
    """The npz (or other file) of a bad case, next to an empty output location."""
    path = tmp_path / f"{case}.npz"
    if case in NPZ_CASES:
        arrays = good_arrays()
        NPZ_CASES[case][0](arrays)
        np.savez(path, **arrays)
    else:
        np.savez(tmp_path / "good.npz", **good_arrays())
        NPZ_FILE_CASES[case][0](path, (tmp_path / "good.npz").read_bytes())
    return path


ALL_NPZ = {**{k: v[1] for k, v in NPZ_CASES.items()}, **{k: v[1] for k, v in NPZ_FILE_CASES.items()}}


@pytest.mark.parametrize(("case", "message"), ALL_NPZ.items(), ids=list(ALL_NPZ))
def test_bad_predictions_npz_api(tmp_path: Path, case: str, message: str) -> None:
    path = write_npz(tmp_path, case)
    before = snapshot(tmp_path)
    assert_api_error(InputError, lambda: Prediction.load(path), str(path), message)
    assert_unchanged(before, tmp_path)


@pytest.mark.parametrize(("case", "message"), ALL_NPZ.items(), ids=list(ALL_NPZ))
def test_bad_predictions_npz_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str, message: str) -> None:
    path = write_npz(tmp_path, case)
    before = snapshot(tmp_path)
    code, out, err = run_cli(capsys, "predictions", "--data", path, "--output-dir", tmp_path / "out", *SMALL)
    assert code == 1
    assert_one_line_error(code, out, err, path.name, message)
    assert_unchanged(before, tmp_path)


def test_valid_depth_with_some_invalid_pixels_is_accepted(tmp_path: Path) -> None:
    """NaN, inf and <= 0 pixels are unknown depth, not an error, as long as each view keeps a valid one."""
    arrays = good_arrays()
    arrays["depth"][:, :, :5] = np.nan
    arrays["depth"][:, 0, :] = -1
    arrays["depth"][:, 1, :] = np.inf
    del arrays["conf"]  # the confidence threshold would drop pixels too
    np.savez(tmp_path / "p.npz", **arrays)
    pred = Prediction.load(tmp_path / "p.npz")
    assert pred.valid_mask(0).sum() == N * (H - 2) * (W - 5)


def _prediction(**changes: np.ndarray) -> Prediction:
    a = good_arrays()
    fields = {"depth": a["depth"], "extrinsics": a["extrinsics"], "intrinsics": a["intrinsics"], "images": a["image"]}
    return Prediction(**{**fields, "conf": a["conf"], **changes})


WRITE_CASES: dict[str, tuple[Callable[[], Prediction], str]] = {
    "float_images": (lambda: _prediction(images=good_arrays()["image"] / 255.0), "images must be (N,H,W,3) uint8"),
    "rgba_images": (lambda: _prediction(images=np.zeros((N, H, W, 4), np.uint8)), "images must be (N,H,W,3) uint8"),
    "nan_pose": (lambda: _prediction(extrinsics=good_arrays()["extrinsics"] * np.nan), "view 0: pose has non-finite"),
    "scaled_pose": (lambda: _prediction(extrinsics=good_arrays()["extrinsics"] * 2), "view 0: pose is not rigid"),
    "negative_focal": (lambda: _prediction(intrinsics=-good_arrays()["intrinsics"]), "focal lengths must be positive"),
    "no_valid_depth": (lambda: _prediction(depth=np.full((N, H, W), np.nan, np.float32)), "view 0: depth has no valid"),
    "nan_conf": (lambda: _prediction(conf=np.full((N, H, W), np.nan, np.float32)), "conf has 882 non-finite values"),
    "sky_shape": (lambda: _prediction(sky=np.zeros((N, H, 2), bool)), "sky (3, 14, 2) does not match depth"),
}


@pytest.mark.parametrize(("case", "message"), [(k, v[1]) for k, v in WRITE_CASES.items()], ids=list(WRITE_CASES))
def test_write_dataset_refuses_bad_prediction_objects(tmp_path: Path, case: str, message: str) -> None:
    """A Prediction built in Python (not loaded from a file) gets the same checks before anything is written."""
    prediction = WRITE_CASES[case][0]()
    before = snapshot(tmp_path)
    assert_api_error(InputError, lambda: write_dataset(prediction, tmp_path / "out"), "the prediction", message)
    assert_unchanged(before, tmp_path)


# (stored image, expected 8-bit RGB the dataset must hold)
def _image_modes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(3)
    floats = rng.random((N, H, W, 3)).astype(np.float32)
    floats[0, 0, :3] = [0.0, 1.0, 0.5]
    grey = rng.integers(0, 256, (N, H, W), dtype=np.uint8)
    rgba = rng.integers(0, 256, (N, H, W, 4), dtype=np.uint8)
    grey_float = rng.random((N, H, W, 1))
    return {
        "float32_0_1": (floats, np.rint(floats.astype(np.float64) * 255).astype(np.uint8)),
        "float64_grey_0_1": (grey_float, np.repeat(np.rint(grey_float * 255).astype(np.uint8), 3, axis=-1)),
        "uint8_grey": (grey, np.repeat(grey[..., None], 3, axis=-1)),
        "uint8_rgba": (rgba, rgba[..., :3]),
        "int64_rgb": (rgba[..., :3].astype(np.int64), rgba[..., :3]),
    }


@pytest.mark.parametrize("mode", list(_image_modes()))
def test_npz_images_in_every_mode_are_written_as_their_8bit_rgb(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, mode: str
) -> None:
    """Float [0, 1] images used to be written black; grey and RGBA ones failed with a traceback."""
    stored, expected = _image_modes()[mode]
    arrays = {**good_arrays(), "image": stored}
    np.savez(tmp_path / "p.npz", **arrays)
    np.testing.assert_array_equal(Prediction.load(tmp_path / "p.npz").images, expected)
    code, out, err = run_cli(
        capsys, "predictions", "--data", tmp_path / "p.npz", "--output-dir", tmp_path / "out", *SMALL
    )
    assert code == 0, err
    for i in range(N):
        with Image.open(tmp_path / "out" / "images" / f"frame_{i + 1:05d}.png") as im:
            assert im.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(im), expected[i])
    assert float(expected.astype(np.float64).mean()) > 50  # not black


# ------------------------------------------------------------------------------------------------
# COLMAP models (read_colmap_model and --known-poses)


def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(folder / name)
    return folder


def good_colmap(folder: Path) -> Path:
    w2c = np.tile(np.eye(4)[:3], (2, 1, 1))
    w2c[1, 0, 3] = -0.5
    k = np.tile(np.array([[60.0, 0, 32], [0, 60, 24], [0, 0, 1]]), (2, 1, 1))
    points = np.array([[0.0, 0, 2], [0.5, 0, 2], [0, 0.5, 3]])
    tracks = [[(0, (32.0, 24.0)), (1, (17.0, 24.0))]] * 3
    write_colmap_model(folder, w2c, k, [(64, 48)] * 2, ["a.png", "b.png"], points, np.zeros((3, 3), np.uint8), tracks)
    return folder


def _patch(name: str, offset: int, fmt: str, value: float) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        data = bytearray((folder / name).read_bytes())
        struct.pack_into(fmt, data, offset, value)
        (folder / name).write_bytes(bytes(data))

    return edit


def _bytes(name: str, change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        (folder / name).write_bytes(change((folder / name).read_bytes()))

    return edit


# Offsets of the binary layout: cameras.bin = count u64, then id u32, model i32, width u64, height u64, params f64;
# frames.bin (where COLMAP >= 3.12 keeps the poses) = count u64, then frame id u32, rig id u32, quaternion 4 f64,
# translation 3 f64, ...; points3D.bin = count u64, then id u64, xyz 3 f64, colour 3 u8, error f64, track length u64.
COLMAP_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    **{
        f"empty_{name.replace('.', '_')}": (_bytes(name, lambda b: b""), f"{name}: truncated or corrupt binary")
        for name in ("points3D.bin", "cameras.bin", "images.bin", "rigs.bin", "frames.bin")
    },
    "truncated_points3D": (_bytes("points3D.bin", lambda b: b[: len(b) // 2]), "points3D.bin: truncated or corrupt"),
    "truncated_images": (_bytes("images.bin", lambda b: b[:-3]), "images.bin: truncated or corrupt"),
    "huge_point_count": (_patch("points3D.bin", 0, "<Q", 2**40), "points3D.bin: truncated or corrupt"),
    "huge_track_length": (_patch("points3D.bin", 8 + 8 + 24 + 3 + 8, "<Q", 2**50), "points3D.bin: truncated"),
    "trailing_garbage": (_bytes("images.bin", lambda b: b + b"junk"), "4 unexpected bytes at the end"),
    "unknown_camera_model": (_patch("cameras.bin", 12, "<i", 99), "unknown camera model id 99"),
    "zero_focal": (_patch("cameras.bin", 32, "<d", 0.0), "image 0 (a.png): focal lengths must be positive"),
    "negative_focal": (_patch("cameras.bin", 32, "<d", -60.0), "image 0 (a.png): focal lengths must be positive"),
    "nan_focal": (_patch("cameras.bin", 32, "<d", math.nan), "image 0 (a.png): intrinsics have non-finite"),
    "zero_width": (_patch("cameras.bin", 16, "<Q", 0), "camera 1 has size 0x48"),
    "nan_translation": (_patch("frames.bin", 8 + 8 + 32, "<d", math.nan), "image 0 (a.png): pose has non-finite"),
    "nan_quaternion": (_patch("frames.bin", 8 + 8, "<d", math.nan), "image 0 (a.png): pose has non-finite"),
    "nan_point": (_patch("points3D.bin", 16, "<d", math.nan), "1 3D points have non-finite coordinates"),
}


@pytest.mark.parametrize(("case", "message"), [(k, v[1]) for k, v in COLMAP_CASES.items()], ids=list(COLMAP_CASES))
def test_bad_colmap_model_api(tmp_path: Path, case: str, message: str) -> None:
    model = good_colmap(tmp_path / "model")
    COLMAP_CASES[case][0](model)
    before = snapshot(tmp_path)
    assert_api_error(InputError, lambda: read_colmap_model(model), message)
    assert_unchanged(before, tmp_path)


@pytest.mark.parametrize(("case", "message"), [(k, v[1]) for k, v in COLMAP_CASES.items()], ids=list(COLMAP_CASES))
def test_bad_colmap_model_known_poses_cli(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str, message: str
) -> None:
    model = good_colmap(tmp_path / "model")
    COLMAP_CASES[case][0](model)
    images = photos(tmp_path)
    before = snapshot(tmp_path)
    args = ["images", "--data", images, "--output-dir", tmp_path / "out", "--known-poses", model]
    code, out, err = run_cli(capsys, *args)
    assert code == 1
    assert_one_line_error(code, out, err, str(model), message)
    assert_unchanged(before, tmp_path)


def _text_model(folder: Path, name: str, change: Callable[[str], str]) -> Path:
    """The good model in COLMAP's text format, with one file changed."""
    good = pycolmap.Reconstruction(good_colmap(folder.with_name("binary")))
    folder.mkdir()
    good.write_text(folder)
    (folder / name).write_text(change((folder / name).read_text()))
    return folder


TEXT_CASES: dict[str, tuple[str, Callable[[str], str], str]] = {
    "cameras_garbage": ("cameras.txt", lambda t: t.replace(" 60 ", " sixty "), "cannot read COLMAP model"),
    "cameras_empty": ("cameras.txt", lambda t: "", "cannot read COLMAP model"),
    "images_truncated": ("images.txt", lambda t: t[: len(t) // 2], "cannot read COLMAP model"),
    "frames_empty": ("frames.txt", lambda t: "", "cannot read COLMAP model"),
    "rigs_empty": ("rigs.txt", lambda t: "", "cannot read COLMAP model"),
}


@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_bad_colmap_text_model_api(tmp_path: Path, case: str) -> None:
    name, change, message = TEXT_CASES[case]
    model = _text_model(tmp_path / "text", name, change)
    before = snapshot(tmp_path)
    assert_api_error(InputError, lambda: read_colmap_model(model), str(model), message)
    assert_unchanged(before, tmp_path)


def test_good_colmap_model_still_reads(tmp_path: Path) -> None:
    model = read_colmap_model(good_colmap(tmp_path / "model"))
    assert model.image_names == ["a.png", "b.png"] and len(model.points) == 3
    np.testing.assert_allclose(model.w2c[1, 0, 3], -0.5)


def test_zero_byte_points3d_fails_at_once_through_the_console_script(tmp_path: Path) -> None:
    """It used to spin for two minutes inside pycolmap, then fail; the guard is the subprocess timeout."""
    model = good_colmap(tmp_path / "model")
    (model / "points3D.bin").write_bytes(b"")
    images = photos(tmp_path)
    before = snapshot(tmp_path)
    args = ["da3-process-data", "images", "--data", images, "--output-dir", tmp_path / "out", "--known-poses", model]
    code, out, err = run_tool(args, timeout=90)
    assert code == 1
    assert_one_line_error(code, out, err, "points3D.bin: truncated or corrupt binary COLMAP file")
    assert_unchanged(before, tmp_path)


# ------------------------------------------------------------------------------------------------
# transforms.json (read_transforms_json and --known-poses)


def good_frames() -> dict:
    frames = []
    for i, name in enumerate(("a.png", "b.png")):
        c2w = np.eye(4)
        c2w[0, 3] = 0.5 * i
        frames.append({"file_path": f"photos/{name}", "transform_matrix": c2w.tolist()})
    return {"fl_x": 60.0, "fl_y": 60.0, "cx": 32.0, "cy": 24.0, "w": 64, "h": 48, "frames": frames}


def _frame(index: int, key: str, value: object) -> Callable[[dict], None]:
    def edit(meta: dict) -> None:
        if value is None:
            meta["frames"][index].pop(key, None)
        else:
            meta["frames"][index][key] = value

    return edit


def _top(key: str, value: object) -> Callable[[dict], None]:
    def edit(meta: dict) -> None:
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value

    return edit


def _matrix(index: int, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[dict], None]:
    def edit(meta: dict) -> None:
        meta["frames"][index]["transform_matrix"] = change(np.array(meta["frames"][index]["transform_matrix"])).tolist()

    return edit


def _no_focal(meta: dict) -> None:
    for key in ("fl_x", "fl_y"):
        meta.pop(key)


def _no_size(meta: dict) -> None:
    for key in ("w", "h"):
        meta.pop(key)
    meta["frames"][1]["file_path"] = "photos/missing.png"


TRANSFORMS_CASES: dict[str, tuple[Callable[[dict], None] | str, str]] = {
    "bad_json": ('{"frames": [', "not valid JSON"),
    "not_utf8": ("\udcff", "cannot read file"),
    "top_level_list": ("[]", "expected a JSON object"),
    "no_frames": (_top("frames", None), "no 'frames' list"),
    "empty_frames": (_top("frames", []), "no 'frames' list"),
    "frame_not_object": (lambda m: m["frames"].append(3), "frame 2: expected an object"),
    "missing_intrinsics": (_no_focal, "frame 0: no focal length"),
    "zero_focal": (_top("fl_x", 0), "frame 0 (photos/a.png): focal lengths must be positive"),
    "negative_focal": (_frame(1, "fl_y", -60.0), "frame 1 (photos/b.png): focal lengths must be positive"),
    "nan_focal": (_top("fl_x", math.nan), "fl_x must be a finite number, got nan"),
    "inf_focal": (_frame(1, "fl_x", math.inf), "frame 1: fl_x must be a finite number, got inf"),
    "string_focal": (_top("fl_x", "60"), "fl_x must be a finite number"),
    "zero_angle": (lambda m: (_no_focal(m), m.update(camera_angle_x=0.0)), "camera_angle_x must be a field of view"),
    "straight_angle": (lambda m: (_no_focal(m), m.update(camera_angle_x=math.pi)), "in (0, pi) radians"),
    "zero_width": (_top("w", 0), "image size must be positive integers"),
    "fractional_height": (_top("h", 47.5), "image size must be positive integers"),
    "missing_size_and_image": (_no_size, "frame 1: no w/h and image"),
    "nan_matrix": (_matrix(1, lambda m: m * np.nan), "frame 1 (photos/b.png): pose has non-finite"),
    "scaled_matrix": (_matrix(0, lambda m: m * np.diag([3, 3, 3, 1])), "frame 0 (photos/a.png): pose is not rigid"),
    "reflection_matrix": (_matrix(1, lambda m: np.diag([-1, 1, 1, 1]) @ m), "pose rotation is a reflection"),
    "singular_matrix": (_matrix(0, lambda m: m * np.diag([0, 1, 1, 1])), "frame 0 (photos/a.png): pose is not rigid"),
    "bottom_row": (_matrix(1, lambda m: m + np.diag([0, 0, 0, 1])), "last row must be [0, 0, 0, 1]"),
    "matrix_3x4": (_matrix(0, lambda m: m[:3]), "transform_matrix must be 4x4"),
    "matrix_missing": (_frame(0, "transform_matrix", None), "missing or non-numeric transform_matrix"),
}


def write_transforms(tmp_path: Path, case: str) -> Path:
    path = tmp_path / "transforms.json"
    edit = TRANSFORMS_CASES[case][0]
    if isinstance(edit, str):
        path.write_bytes(edit.encode("utf-8", "surrogateescape"))
    else:
        meta = good_frames()
        edit(meta)
        path.write_text(json.dumps(meta, allow_nan=True))
    return path


@pytest.mark.parametrize(
    ("case", "message"), [(k, v[1]) for k, v in TRANSFORMS_CASES.items()], ids=list(TRANSFORMS_CASES)
)
def test_bad_transforms_json_api(tmp_path: Path, case: str, message: str) -> None:
    photos(tmp_path)
    path = write_transforms(tmp_path, case)
    before = snapshot(tmp_path)
    assert_api_error(InputError, lambda: read_transforms_json(path), str(path), message)
    assert_unchanged(before, tmp_path)


@pytest.mark.parametrize(
    ("case", "message"), [(k, v[1]) for k, v in TRANSFORMS_CASES.items()], ids=list(TRANSFORMS_CASES)
)
def test_bad_transforms_json_known_poses_cli(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str, message: str
) -> None:
    images = photos(tmp_path)
    path = write_transforms(tmp_path, case)
    before = snapshot(tmp_path)
    args = ["images", "--data", images, "--output-dir", tmp_path / "out", "--known-poses", path]
    code, out, err = run_cli(capsys, *args)
    assert code == 1
    assert_one_line_error(code, out, err, str(path), message)
    assert_unchanged(before, tmp_path)


# ------------------------------------------------------------------------------------------------
# PLY point clouds and splats


def _cloud(tmp_path: Path, fields: list[tuple[str, str]] | None = None, n: int = 4, element: str = "vertex") -> Path:
    fields = fields or [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    data = np.zeros(n, dtype=fields)
    for name in data.dtype.names:
        data[name] = 1
    path = tmp_path / "cloud.ply"
    PlyData([PlyElement.describe(data, element)], text=False).write(str(path))
    return path


def _with(column: str, value: float, fields: list[tuple[str, str]] | None = None) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        path = _cloud(tmp_path, fields)
        ply = PlyData.read(str(path))
        data = np.array(ply["vertex"].data)
        data[column][2] = value
        PlyData([PlyElement.describe(data, "vertex")], text=False).write(str(path))
        return path

    return make


def _ascii_garbage(tmp_path: Path) -> Path:
    path = tmp_path / "cloud.ply"
    header = (
        "ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    )
    path.write_text(header + "0 0 0\n1 two 3\n")
    return path


def _truncated(tmp_path: Path) -> Path:
    path = _cloud(tmp_path, n=100)
    path.write_bytes(path.read_bytes()[:-50])
    return path


def _list_x(tmp_path: Path) -> Path:
    path = tmp_path / "cloud.ply"
    header = (
        "ply\nformat ascii 1.0\nelement vertex 1\nproperty list uchar float x\nproperty float y\nproperty float z\n"
    )
    path.write_text(
        header + "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n2 0 1 0 0 1 2 3\n"
    )
    return path


CONF_FIELDS = [
    ("x", "f4"),
    ("y", "f4"),
    ("z", "f4"),
    ("red", "u1"),
    ("green", "u1"),
    ("blue", "u1"),
    ("confidence", "f4"),
]
FLOAT_COLOURS = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "f4"), ("green", "f4"), ("blue", "f4")]
CLOUD_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "truncated": (_truncated, "not a readable PLY file"),
    "ascii_garbage": (_ascii_garbage, "not a readable PLY file"),
    "nan_position": (_with("y", math.nan), "1 vertices have a non-finite y (NaN or inf), first vertex 2"),
    "inf_position": (_with("x", math.inf), "non-finite x"),
    "nan_confidence": (_with("confidence", math.nan, CONF_FIELDS), "non-finite confidence"),
    "nan_float_colour": (_with("green", math.nan, FLOAT_COLOURS), "non-finite green"),
    "wrong_element": (lambda p: _cloud(p, element="point"), "no 'vertex' element; elements: point"),
    "zero_vertices": (lambda p: _cloud(p, n=0), "no vertices (0 vertices)"),
    "missing_z": (
        lambda p: _cloud(p, [("x", "f4"), ("y", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]),
        "missing z",
    ),
    "list_property": (_list_x, "vertex properties x are lists"),
}


@pytest.mark.parametrize(("case", "message"), [(k, v[1]) for k, v in CLOUD_CASES.items()], ids=list(CLOUD_CASES))
def test_bad_point_cloud_ply_api(tmp_path: Path, case: str, message: str) -> None:
    path = CLOUD_CASES[case][0](tmp_path)
    before = snapshot(tmp_path)
    assert_api_error(InputError, lambda: read_point_cloud_ply(path), str(path), message)
    assert_unchanged(before, tmp_path)


def _splat_file(tmp_path: Path, column: str | None = None, value: float = 0.0, drop: str | None = None) -> Path:
    n = 5
    splats = SplatData(
        means=np.zeros((n, 3)),
        scales_log=np.full((n, 3), -3.0),
        rotations=np.tile([1.0, 0, 0, 0], (n, 1)),
        opacity_logit=np.zeros(n),
        sh_dc=np.zeros((n, 3)),
        sh_rest=np.zeros((n, 3, 3)),
    )
    path = tmp_path / "splat.ply"
    write_splat_ply(path, splats)
    data = np.array(PlyData.read(str(path))["vertex"].data)
    if column is not None:
        data[column][3] = value
    if drop is not None:
        data = repack_fields(data[[name for name in data.dtype.names if name != drop]])
    PlyData([PlyElement.describe(data, "vertex")], text=False).write(str(path))
    return path


def _zero_quaternion(tmp_path: Path) -> Path:
    path = _splat_file(tmp_path)
    data = np.array(PlyData.read(str(path))["vertex"].data)
    for i in range(4):
        data[f"rot_{i}"][1] = 0
    PlyData([PlyElement.describe(data, "vertex")], text=False).write(str(path))
    return path


def _truncated_splat(tmp_path: Path) -> Path:
    path = _splat_file(tmp_path)
    path.write_bytes(path.read_bytes()[:-7])
    return path


SPLAT_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "nan_opacity": (lambda p: _splat_file(p, "opacity", math.nan), "1 vertices have a non-finite opacity"),
    "nan_scale": (lambda p: _splat_file(p, "scale_1", math.nan), "non-finite scale_1 (NaN or inf), first vertex 3"),
    "inf_position": (lambda p: _splat_file(p, "z", -math.inf), "non-finite z"),
    "nan_sh_rest": (lambda p: _splat_file(p, "f_rest_4", math.nan), "non-finite f_rest_4"),
    "zero_quaternion": (_zero_quaternion, "1 vertices have a zero rotation quaternion (rot_0..3), first vertex 1"),
    "missing_opacity": (lambda p: _splat_file(p, drop="opacity"), "not a 3DGS PLY (missing opacity)"),
    "truncated": (_truncated_splat, "not a readable PLY"),
    "point_cloud_not_splat": (lambda p: _cloud(p), "not a 3DGS PLY (missing f_dc_0"),
}


@pytest.mark.parametrize(("case", "message"), [(k, v[1]) for k, v in SPLAT_CASES.items()], ids=list(SPLAT_CASES))
def test_bad_splat_ply_api(tmp_path: Path, case: str, message: str) -> None:
    path = SPLAT_CASES[case][0](tmp_path)
    before = snapshot(tmp_path)
    assert_api_error(InputError, lambda: read_splat_ply(path), str(path), message)
    assert_unchanged(before, tmp_path)


# ------------------------------------------------------------------------------------------------
# Checkpoints


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("checkpoint") / "da3-small", "da3-small")


KEY = "model.head.norm.weight"


def _tensors(change: Callable[[dict], None]) -> Callable[[Path, Path], None]:
    def edit(src: Path, dst: Path) -> None:
        tensors = load_file(str(src / "model.safetensors"))
        change(tensors)
        save_file(tensors, str(dst / "model.safetensors"))

    return edit


def _key(value: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Path, Path], None]:
    return _tensors(lambda t: t.update({KEY: value(t[KEY])}))


def _config(text: str) -> Callable[[Path, Path], None]:
    def edit(src: Path, dst: Path) -> None:
        shutil.copyfile(src / "model.safetensors", dst / "model.safetensors")
        (dst / "config.json").write_text(text)

    return edit


def _truncate_weights(src: Path, dst: Path) -> None:
    data = (src / "model.safetensors").read_bytes()
    (dst / "model.safetensors").write_bytes(data[: len(data) - 1000])


CHECKPOINT_CASES: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "int64_tensor": (_key(lambda t: t.long()), f"{KEY} has dtype I64; weights must be floating point"),
    "bool_tensor": (_key(lambda t: t > 0), f"{KEY} has dtype BOOL"),
    "nan_tensor": (_key(lambda t: t.index_fill(0, torch.tensor([3]), math.nan)), f"{KEY} has 1 non-finite values"),
    "inf_fp16_tensor": (_key(lambda t: t.half().fill_(math.inf)), f"{KEY} has 768 non-finite values"),
    "fp64_overflow": (_key(lambda t: t.double().fill_(1e300)), f"{KEY} has 768 non-finite values"),
    "wrong_shape": (_key(lambda t: t[:-1]), f"shape mismatch for {KEY}: file [767], model [768]"),
    "missing_key": (_tensors(lambda t: t.pop(KEY)), f"1 missing keys: {KEY}"),
    "extra_key": (_tensors(lambda t: t.update(extra=torch.zeros(1))), "1 unexpected keys: extra"),
    "truncated_weights": (_truncate_weights, "model.safetensors: corrupt or not a safetensors file"),
    "config_not_json": (_config("{model_name: da3-small"), "config.json: not valid JSON"),
    "config_list": (_config('["da3-small"]'), 'config.json: no "model_name" entry'),
    "config_unknown_model": (_config('{"model_name": "da3-colossal"}'), "unknown model_name 'da3-colossal'"),
    "config_name_number": (_config('{"model_name": 3}'), 'no "model_name" entry'),
}


def corrupt_checkpoint(checkpoint: Path, folder: Path, case: str) -> Path:
    folder.mkdir()
    shutil.copyfile(checkpoint / "config.json", folder / "config.json")
    CHECKPOINT_CASES[case][0](checkpoint, folder)
    return folder


@pytest.mark.parametrize(
    ("case", "message"), [(k, v[1]) for k, v in CHECKPOINT_CASES.items()], ids=list(CHECKPOINT_CASES)
)
def test_bad_checkpoint_api(checkpoint: Path, tmp_path: Path, case: str, message: str) -> None:
    folder = corrupt_checkpoint(checkpoint, tmp_path / "ckpt", case)
    before = snapshot(tmp_path)
    assert_api_error(CheckpointError, lambda: DA3Model.from_pretrained(folder), str(folder), message)
    assert_unchanged(before, tmp_path)


@pytest.mark.parametrize("case", ["int64_tensor", "nan_tensor", "truncated_weights", "config_unknown_model"])
def test_bad_checkpoint_cli(capsys: pytest.CaptureFixture[str], checkpoint: Path, tmp_path: Path, case: str) -> None:
    folder = corrupt_checkpoint(checkpoint, tmp_path / "ckpt", case)
    before = snapshot(tmp_path)
    code, out, err = run_cli(capsys, "images", "--data", SOH, "--output-dir", tmp_path / "out", "--model", folder)
    assert code == 1
    assert_one_line_error(code, out, err, str(folder), CHECKPOINT_CASES[case][1])
    assert_unchanged(before, tmp_path)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoints_load_exactly_into_float32(
    checkpoint: Path, tmp_path: Path, dtype: torch.dtype
) -> None:
    """float16 and bfloat16 weights are exactly representable in the model's float32 parameters."""
    folder = tmp_path / "half"
    folder.mkdir()
    shutil.copyfile(checkpoint / "config.json", folder / "config.json")
    half = {k: v.to(dtype) for k, v in load_file(str(checkpoint / "model.safetensors")).items()}
    save_file(half, str(folder / "model.safetensors"))
    state = DA3Model.from_pretrained(folder).state_dict()
    assert all(v.dtype == torch.float32 for v in state.values())
    for key, value in half.items():
        assert torch.equal(state[key], value.float()), key


# ------------------------------------------------------------------------------------------------
# The predictor's known cameras and splat initialisation (Python API)


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> DA3Predictor:
    return DA3Predictor(checkpoint, device="cpu")


def _cameras() -> tuple[np.ndarray, np.ndarray]:
    w2c = np.tile(np.eye(4), (2, 1, 1))
    w2c[1, 0, 3] = -0.5
    return w2c, np.tile(np.array([[60.0, 0, 32], [0, 60, 24], [0, 0, 1]]), (2, 1, 1))


def _bad_camera(kind: str) -> tuple[np.ndarray, np.ndarray]:
    w2c, k = _cameras()
    if kind == "nan_pose":
        w2c[1, 1, 3] = math.nan
    elif kind == "zero_focal":
        k[0, 0, 0] = 0
    elif kind == "inf_focal":
        k[1, 1, 1] = math.inf
    elif kind == "non_rotation":
        w2c[0, :3, :3] = _rot_z(10) * 1.5
    elif kind == "reflection":
        w2c[1, :3, :3] = np.diag([1, -1, 1.0])
    elif kind == "bottom_row":
        w2c[0, 3, 0] = 1
    return w2c, k


PREDICT_CASES = {
    "nan_pose": "view 1 (image[1]): pose has non-finite values",
    "zero_focal": "view 0 (image[0]): focal lengths must be positive",
    "inf_focal": "view 1 (image[1]): intrinsics have non-finite values",
    "non_rotation": "view 0 (image[0]): pose is not rigid",
    "reflection": "view 1 (image[1]): pose rotation is a reflection",
    "bottom_row": "view 0 (image[0]): pose's last row must be [0, 0, 0, 1]",
}


@pytest.mark.parametrize(("kind", "message"), PREDICT_CASES.items(), ids=list(PREDICT_CASES))
def test_predictor_refuses_bad_known_cameras(predictor: DA3Predictor, kind: str, message: str) -> None:
    images = [np.full((48, 64, 3), 100, np.uint8)] * 2
    w2c, k = _bad_camera(kind)
    assert_api_error(InputError, lambda: predictor.predict(images, w2c, k, process_res=28), "known cameras", message)


def test_predictor_refuses_non_numeric_cameras(predictor: DA3Predictor) -> None:
    images = [np.full((48, 64, 3), 100, np.uint8)] * 2
    w2c, k = _cameras()
    assert_api_error(InputError, lambda: predictor.predict(images, w2c.astype(str), k), "extrinsics: expected finite")


def test_splats_from_depth_refuses_bad_cameras_and_empty_depth() -> None:
    images = np.full((2, 4, 5, 3), 0.5)
    depth = np.ones((2, 4, 5))
    w2c, k = _cameras()
    w2c[0, 0, 0] = math.nan
    assert_api_error(InputError, lambda: splats_from_depth(images, depth, w2c, k), "view 0: pose has non-finite")
    w2c, k = _cameras()
    assert_api_error(InputError, lambda: splats_from_depth(images, depth * np.nan, w2c, k), "no pixel has a finite")
    assert_api_error(InputError, lambda: splats_from_depth(images * np.nan, depth, w2c, k), "images have non-finite")


def test_gaussian_head_output_drops_unusable_gaussians_and_refuses_none_left() -> None:
    n = 4
    gaussians = {
        "means": np.zeros((n, 3)),
        "scales": np.full((n, 3), 0.1),
        "rotations": np.tile([1.0, 0, 0, 0], (n, 1)),
        "harmonics": np.zeros((n, 3, 9)),
        "opacities": np.full(n, 0.5),
    }
    gaussians["means"][0, 0] = math.nan
    gaussians["scales"][1, 2] = 0.0
    gaussians["rotations"][2] = 0.0
    splats = splats_from_gaussian_head(gaussians)
    assert len(splats) == 1 and np.isfinite(splats.scales_log).all()
    gaussians["opacities"][3] = math.inf
    assert_api_error(InputError, lambda: splats_from_gaussian_head(gaussians), "none of the 4 Gaussians")


@pytest.mark.parametrize(
    "value",
    [[[1, 0, 0, 0], [0, 1, 0, 0]], [[1, 0, 0, float("nan")], [0, 1, 0, 0], [0, 0, 1, 0]],
     [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, "x"]], "identity", [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, None]]],
    ids=["2x4", "nan", "string-entry", "string", "null-entry"],
)  # fmt: skip
def test_bad_applied_transform_is_one_line(value: object) -> None:
    """transforms.json's applied_transform is read in one place (the da3-data parser, da3-export-cameras and the
    demo's .blend all use it) and refused there unless it is a 3x4 matrix of finite numbers."""
    with pytest.raises(InputError) as info:
        applied_transform({"applied_transform": value}, "data/transforms.json")
    assert str(info.value) == "data/transforms.json: applied_transform must be a 3x4 matrix of finite numbers"


def test_applied_transform_reads_a_valid_matrix_and_defaults_to_identity() -> None:
    matrix = [[0, 1, 0, 2], [1, 0, 0, 3], [0, 0, -1, 4]]
    np.testing.assert_array_equal(applied_transform({"applied_transform": matrix})[:3], matrix)
    np.testing.assert_array_equal(applied_transform({}), np.eye(4))
