"""``da3-process-data`` end to end: oracle predictions, the network path, video, and bad input.

The oracle runs write the room's ground truth as an official DA3 npz and check that the dataset
reproduces it through nerfstudio's parser and pycolmap. The network runs use a real checkpoint
folder of the small model with deterministic (untrained) weights: their geometry is meaningless,
so they are checked for consistency with the predictions the tool saved and for what every
consumer needs, not for accuracy.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from da3_fixtures import write_checkpoint
from PIL import Image
from samples import SAMPLES, SOH, VIDEO
from test_dataset import (
    check_colmap,
    check_nerfstudio,
    frame_index,
    leftovers,
    room_gt,
    tree_digest,
)

from da3_nerfstudio import Prediction
from da3_nerfstudio.cli.process_data import main
from da3_nerfstudio.formats.colmap import write_colmap_model
from da3_nerfstudio.formats.ply import read_point_cloud_ply, read_splat_ply
from da3_nerfstudio.formats.transforms import frames_from_cameras, read_transforms_json, write_transforms_json
from da3_nerfstudio.output_folder import MANIFEST

ROOM = SAMPLES / "room_gt"
pytestmark = pytest.mark.skipif(
    not (ROOM.is_dir() and SOH.is_dir() and VIDEO.is_file()), reason=f"sample data not found at {SAMPLES}"
)
FAST = ["--process-res", "112", "--num-points", "3000", "--num-gaussians", "5000"]
SMALL = ["--num-points", "5000", "--num-gaussians", "20000"]


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """Run the command in-process; returns (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def check_network_dataset(out: Path, sources: list[Path]) -> Prediction:
    """Everything written and consistent with the saved predictions: nerfstudio gets the predicted
    cameras at the original image size, COLMAP points sit on the predicted depth, images are the inputs."""
    pred = Prediction.load(out / "da3" / "predictions.npz")
    n = len(sources)
    assert len(pred) == n
    sizes = [Image.open(p).size for p in sources]
    assert [tuple(s) for s in pred.original_sizes] == sizes
    check_nerfstudio(out, pred.c2w_opencv(), pred.original_intrinsics(), sizes)
    w2c = np.linalg.inv(pred.c2w_opencv())
    check_colmap(out, w2c, pred.original_intrinsics(), pred.depth, pred.intrinsics.astype(np.float64))
    for i, source in enumerate(sources):
        assert sha1(out / "images" / f"frame_{i + 1:05d}{source.suffix}") == sha1(source)
        for kind in ("depth", "confidence"):
            with Image.open(out / "da3" / "preview" / f"frame_{i + 1:05d}_{kind}.png") as im:
                assert im.size == (pred.size[1], pred.size[0])
    with Image.open(out / "da3" / "preview" / "cameras_top.png") as im:
        assert im.size == (1024, 1024)
    assert len(read_splat_ply(out / "splat_init.ply")) > 0
    assert len(read_point_cloud_ply(out / "sparse_pc.ply")[0]) > 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["tool"] == "da3-process-data" and manifest["summary"]["views"] == n
    assert manifest["model_licence"] == "Apache-2.0"
    return pred


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("checkpoint") / "da3-small", "da3-small")


@pytest.fixture(scope="module")
def gt() -> dict[str, np.ndarray]:
    return room_gt()


@pytest.fixture
def official_npz(gt: dict, tmp_path: Path) -> Path:
    """The ground truth in the official DA3 npz export layout."""
    path = tmp_path / "room_official.npz"
    np.savez(
        path,
        depth=gt["depth"],
        conf=np.ones_like(gt["depth"]),
        extrinsics=gt["w2c"][:, :3].astype(np.float32),
        intrinsics=gt["K"].astype(np.float32),
        image=gt["images"],
    )
    return path


# ------------------------------------------------------------------------------------------------
# Oracle: ground truth through `predictions`


def test_oracle_predictions_reproduce_the_ground_truth(
    capsys: pytest.CaptureFixture[str], gt: dict, official_npz: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "predictions", "--data", official_npz, "--output-dir", out, *SMALL)
    assert code == 0, err
    assert "Dataset written to" in stdout and "depth-unit-scale-factor 1.0" in stdout
    w2c, K, sizes, names = read_transforms_json(out / "transforms.json")
    order = [frame_index(Path(n)) for n in names]
    c2w = np.linalg.inv(w2c)
    extent = np.max(np.abs(gt["c2w"][:, :3, 3]))
    np.testing.assert_allclose(c2w[:, :3, 3], gt["c2w"][order, :3, 3], rtol=0, atol=1e-5 * extent)
    np.testing.assert_allclose(c2w[:, :3, :3], gt["c2w"][order, :3, :3], rtol=0, atol=1e-5)
    np.testing.assert_allclose(K, gt["K"][order], rtol=1e-7)
    assert sizes == [(434, 350)] * 8
    for i in range(8):
        np.testing.assert_array_equal(np.load(out / "depths" / f"frame_{i + 1:05d}.npy"), gt["depth"][i])
        written = np.asarray(Image.open(out / "images" / f"frame_{i + 1:05d}.png"))
        np.testing.assert_array_equal(written, gt["images"][i])
    check_nerfstudio(out, gt["c2w"], gt["K"], sizes)
    check_colmap(out, gt["w2c"], gt["K"], gt["depth"], gt["K"])


def test_oracle_with_photos_of_another_size_rescales_intrinsics(
    capsys: pytest.CaptureFixture[str], gt: dict, official_npz: Path, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(8):  # half-size copies, named like the sample so natural order is view order
        Image.open(ROOM / "rgb" / f"{i}.png").convert("RGB").resize((217, 175), Image.Resampling.BOX).save(
            photos / f"{i}.png"
        )
    out = tmp_path / "out"
    code, _, err = run(capsys, "predictions", "--data", official_npz, "--output-dir", out, "--images", photos, *SMALL)
    assert code == 0, err
    K_small = gt["K"].copy()
    K_small[:, 0] *= 217 / 434  # x row (fx, cx) by the width ratio, y row by the height ratio
    K_small[:, 1] *= 175 / 350
    check_nerfstudio(out, gt["c2w"], K_small, [(217, 175)] * 8)
    check_colmap(out, gt["w2c"], K_small, gt["depth"], gt["K"])
    for i in range(8):
        assert sha1(out / "images" / f"frame_{i + 1:05d}.png") == sha1(photos / f"{i}.png")


# ------------------------------------------------------------------------------------------------
# The network (deterministic untrained weights)


def test_images_end_to_end_and_rerun(capsys: pytest.CaptureFixture[str], checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "soh_dataset"
    args = ["images", "--data", SOH, "--output-dir", out, "--model", checkpoint, *FAST]
    code, stdout, err = run(capsys, *args)
    assert code == 0, err
    assert "licence: Apache-2.0" in stdout and "inference: 1/1" in stdout
    sources = sorted(SOH.glob("*.png"))
    first = check_network_dataset(out, sources)
    code, _, err = run(capsys, *args, "--conf-percentile", "60")
    assert code == 0, err
    check_network_dataset(out, sources)
    assert json.loads((out / MANIFEST).read_text())["options"]["conf_percentile"] == 60
    np.testing.assert_array_equal(Prediction.load(out / "da3" / "predictions.npz").depth, first.depth)
    assert leftovers(tmp_path) == []


def test_known_poses_give_the_dataset_those_cameras(
    capsys: pytest.CaptureFixture[str], checkpoint: Path, gt: dict, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    views = [0, 1, 2]
    for i in views:
        (photos / f"{i}.png").write_bytes((ROOM / "rgb" / f"{i}.png").read_bytes())
    # Known cameras given for half-size images: the tool rescales them to the photos' size.
    K_half = gt["K"][views] * np.array([[0.5], [0.5], [1.0]])
    known = tmp_path / "known.json"
    write_transforms_json(known, frames_from_cameras(gt["w2c"][views], K_half, [(217, 175)] * 3,
                                                     [f"images/{i}.png" for i in views]))  # fmt: skip
    out = tmp_path / "out"
    code, _, err = run(capsys, "images", "--data", photos, "--output-dir", out, "--model", checkpoint,
                       "--known-poses", known, *FAST)  # fmt: skip
    assert code == 0, err
    check_nerfstudio(out, gt["c2w"][views], gt["K"][views], [(434, 350)] * 3)

    colmap_model = tmp_path / "colmap"
    write_colmap_model(colmap_model, gt["w2c"][views], gt["K"][views], [(434, 350)] * 3,
                       [f"{i}.png" for i in views], np.zeros((0, 3)), np.zeros((0, 3), np.uint8))  # fmt: skip
    code, _, err = run(capsys, "images", "--data", photos, "--output-dir", out, "--model", checkpoint,
                       "--known-poses", colmap_model, *FAST)  # fmt: skip
    assert code == 0, err
    check_nerfstudio(out, gt["c2w"][views], gt["K"][views], [(434, 350)] * 3)


def decoded_frame_hashes(video: Path) -> list[str]:
    with av.open(str(video)) as container:
        return [hashlib.sha1(f.to_ndarray(format="rgb24").tobytes()).hexdigest() for f in container.decode(video=0)]


def test_video_end_to_end_and_rerun(capsys: pytest.CaptureFixture[str], checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "robot"
    args = ["video", "--data", VIDEO, "--output-dir", out, "--num-frames-target", "4", "--model", checkpoint, *FAST]
    code, stdout, err = run(capsys, *args)
    assert code == 0, err
    assert "frames: 4/4" in stdout
    images = sorted((out / "images").iterdir())
    assert [p.name for p in images] == [f"frame_{i:05d}.png" for i in range(1, 5)]
    pred = check_network_dataset(out, images)
    assert [tuple(s) for s in pred.original_sizes] == [(1024, 576)] * 4
    # The frames are exact decoded frames, first and last included, evenly spaced.
    decoded = decoded_frame_hashes(VIDEO)
    index = [decoded.index(hashlib.sha1(np.asarray(Image.open(p)).tobytes()).hexdigest()) for p in images]
    assert index[0] == 0 and index[-1] == len(decoded) - 1
    gaps = np.diff(index)
    assert gaps.min() > 0 and gaps.max() - gaps.min() <= 2
    before = sorted(p.name for p in (out / "images").iterdir())
    code, _, err = run(capsys, *args)
    assert code == 0, err
    assert sorted(p.name for p in (out / "images").iterdir()) == before and leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# Bad input: one clear line, nothing destroyed


def test_empty_folder_and_single_image(capsys: pytest.CaptureFixture[str], checkpoint: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    code, _, err = run(capsys, "images", "--data", empty, "--output-dir", out, "--model", checkpoint)
    assert code == 1 and err == f"error: {empty}: no images found (.jpg, .jpeg, .png, .tif, .tiff, .bmp, .webp)\n"
    one = tmp_path / "one"
    one.mkdir()
    (one / "000.png").write_bytes((SOH / "000.png").read_bytes())
    code, _, err = run(capsys, "images", "--data", one, "--output-dir", out, "--model", checkpoint)
    assert code == 1 and "only one image (000.png); a dataset needs at least 2 views" in err
    assert not out.exists() and leftovers(tmp_path) == []


def test_non_images_are_ignored_and_broken_images_named(
    capsys: pytest.CaptureFixture[str], checkpoint: Path, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("000.png", "010.png"):
        (photos / name).write_bytes((SOH / name).read_bytes())
    (photos / "notes.txt").write_text("shot on a sunny day")
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "images", "--data", photos, "--output-dir", out, "--model", checkpoint, *FAST)
    assert code == 0, err
    assert "ignoring 1 file(s) that are not images: notes.txt" in stdout
    assert len(json.loads((out / "transforms.json").read_text())["frames"]) == 2
    before = tree_digest(out)

    (photos / "broken.jpg").write_text("not a jpeg")
    code, _, err = run(capsys, "images", "--data", photos, "--output-dir", out, "--model", checkpoint, *FAST)
    assert code == 1 and err.startswith(f"error: {photos / 'broken.jpg'}: not a readable image")
    assert err.count("\n") == 1 and tree_digest(out) == before and leftovers(tmp_path) == []


def test_unreadable_video(capsys: pytest.CaptureFixture[str], checkpoint: Path, tmp_path: Path) -> None:
    fake = tmp_path / "clip.mp4"
    fake.write_text("this is not a video")
    out = tmp_path / "out"
    code, _, err = run(capsys, "video", "--data", fake, "--output-dir", out, "--model", checkpoint)
    assert code == 1 and err.startswith(f"error: {fake}: not a readable video") and err.count("\n") == 1
    code, _, err = run(capsys, "video", "--data", tmp_path / "missing.mp4", "--output-dir", out, "--model", checkpoint)
    assert code == 1 and "missing.mp4: no such video file" in err
    assert not out.exists() and leftovers(tmp_path) == []


def test_unwritable_output(capsys: pytest.CaptureFixture[str], official_npz: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, _, err = run(capsys, "predictions", "--data", official_npz, "--output-dir", blocker / "out")
    assert code == 1 and err.startswith(f"error: {blocker / 'out'}: cannot write here")
    code, _, err = run(capsys, "predictions", "--data", official_npz, "--output-dir", blocker)
    assert code == 1 and "exists and is not a folder" in err
    assert blocker.read_text() == "x"


def test_existing_unrelated_folder_needs_overwrite_and_keeps_its_files(
    capsys: pytest.CaptureFixture[str], official_npz: Path, tmp_path: Path
) -> None:
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("\\chapter{Introduction}")
    code, _, err = run(capsys, "predictions", "--data", official_npz, "--output-dir", out, *SMALL)
    assert code == 1 and "not written by da3-process-data; pass --overwrite" in err
    assert tree_digest(out) == {"chapter1.tex": sha1(out / "chapter1.tex")}
    code, _, err = run(capsys, "predictions", "--data", official_npz, "--output-dir", out, "--overwrite", *SMALL)
    assert code == 0, err
    # --overwrite writes the dataset into the folder; the user's file stays.
    assert (out / "chapter1.tex").read_text() == "\\chapter{Introduction}" and (out / MANIFEST).is_file()
    # The input is never inside what gets replaced, even with --overwrite.
    code, _, err = run(capsys, "predictions", "--data", official_npz, "--output-dir", tmp_path, "--overwrite")
    assert code == 1 and "the output folder contains the input" in err and official_npz.is_file()


def test_bad_options_and_npz(capsys: pytest.CaptureFixture[str], gt: dict, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _, err = run(capsys, "images", "--data", SOH, "--output-dir", out, "--process-res-method", "upper_bound_crop")
    assert code == 1 and "crops the images, but a dataset needs depth for the full frame" in err
    no_image = tmp_path / "no_image.npz"
    np.savez(no_image, depth=gt["depth"][:2], extrinsics=gt["w2c"][:2, :3], intrinsics=gt["K"][:2])
    code, _, err = run(capsys, "predictions", "--data", no_image, "--output-dir", out)
    assert code == 1 and "has no 'image' array; pass --images" in err
    code, _, err = run(capsys, "predictions", "--data", no_image, "--output-dir", out, "--images", SOH)
    assert code == 1 and "image is 1208x680 but view 0 of the prediction comes from a 434x350 image" in err
    code, _, err = run(capsys, "predictions", "--data", tmp_path / "nope.npz", "--output-dir", out)
    assert code == 1 and "nope.npz: no such file" in err
    assert not out.exists() and leftovers(tmp_path) == []


def test_depth_only_model_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    metric = write_checkpoint(tmp_path / "metric", "custom:small-metric")
    out = tmp_path / "out"
    code, _, err = run(capsys, "images", "--data", SOH, "--output-dir", out, "--model", metric, *FAST)
    assert code == 1 and "predicts depth only, without cameras" in err and not out.exists()


def test_console_script_reports_missing_weights_in_one_line(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "da3-process-data"
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [script, "images", "--data", SOH, "--output-dir", out, "--model", "depth-anything/DA3-NOT-DOWNLOADED"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("error: depth-anything/DA3-NOT-DOWNLOADED: weights not cached")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stdout + result.stderr
    assert not out.exists()
