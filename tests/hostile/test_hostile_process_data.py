"""Hostile input for ``da3-process-data`` (images, video, predictions) and ``write_dataset``: output safety,
option values, resources, and runs killed with SIGKILL.

Every refused case asserts the one ``error:`` line (or the API's ``InputError``) with its exact fragment, the
exit status, that the model was never loaded for bad options, and that nothing around the run was created,
changed or deleted. The cases that used to lose data assert that the user's files survive byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from da3_fixtures import write_checkpoint
from hostile import BIN, assert_one_line_error, assert_unchanged, run_tool, snapshot
from PIL import Image
from samples import ROOM, SOH, VIDEO, room_truth

from da3_nerfstudio import InputError, Prediction
from da3_nerfstudio.cli.process_data import main
from da3_nerfstudio.dataset import write_dataset
from da3_nerfstudio.dataset_options import DatasetOptions
from da3_nerfstudio.model import DA3Model
from da3_nerfstudio.output_folder import MANIFEST, STAGING_MARKER, dataset_is_current, remove_stale_staging

pytestmark = pytest.mark.skipif(
    not (ROOM.is_dir() and SOH.is_dir() and VIDEO.is_file()), reason="sample data not found"
)
FAST = ["--process-res", "112", "--num-points", "3000", "--num-gaussians", "5000"]
SMALL = DatasetOptions(num_points=3000, num_gaussians=5000)
STAGING_SUFFIXES = (".da3-new", ".da3-old", ".frames")


def staging_leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.endswith(STAGING_SUFFIXES))


def user_files(folder: Path, snap: dict[str, str] | None = None) -> dict[str, str]:
    """The files a user put into a dataset folder (those of the tests: notes.md and outputs/)."""
    snap = snapshot(folder) if snap is None else snap
    return {k: v for k, v in snap.items() if Path(k).relative_to(folder).parts[:1] in (("notes.md",), ("outputs",))}


def add_user_files(folder: Path) -> None:
    (folder / "notes.md").write_text("shot with a 24 mm lens, ISO 200")
    (folder / "outputs" / "da3-splat").mkdir(parents=True)
    (folder / "outputs" / "da3-splat" / "step-000029999.ckpt").write_bytes(os.urandom(4096))


# ------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("checkpoint") / "da3-small", "da3-small")


@pytest.fixture(scope="module")
def depth_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("checkpoint") / "metric", "custom:small-metric")


@pytest.fixture(scope="module")
def truth() -> dict[str, np.ndarray]:
    t = room_truth()
    return {"w2c": t.w2c, "K": t.K, "depth": t.depth, "images": t.images}


@pytest.fixture
def area(tmp_path: Path, truth: dict) -> Path:
    """A user's working area: photos/ (2 photos), room.npz (official layout), work/ (the current folder)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("000.png", "010.png"):
        (photos / name).write_bytes((SOH / name).read_bytes())
    np.savez(
        tmp_path / "room.npz",
        depth=truth["depth"][:3],
        conf=np.ones_like(truth["depth"][:3]),
        extrinsics=truth["w2c"][:3, :3].astype(np.float32),
        intrinsics=truth["K"][:3].astype(np.float32),
        image=truth["images"][:3],
    )
    (tmp_path / "work").mkdir()
    return tmp_path


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the network is loaded: bad options must be refused before that."""

    def loaded(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the bad option was refused")

    monkeypatch.setattr(DA3Model, "from_pretrained", classmethod(loaded))


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def prediction(truth: dict, views: list[int]) -> Prediction:
    return Prediction(
        depth=truth["depth"][views],
        extrinsics=truth["w2c"][views, :3].astype(np.float32),
        intrinsics=truth["K"][views].astype(np.float32),
        images=truth["images"][views],
        conf=np.ones_like(truth["depth"][views]),
    )


# ------------------------------------------------------------------------------------------------
# Options: one line, before the model loads, nothing written


def _cuda_message(index: int | None) -> str:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return "no CUDA device on this machine"
    return f"has {count} CUDA device(s)" if index is not None and index >= count else ""


OPTION_CASES = [
    # (subcommand, extra arguments, fragments of the error line)
    ("images", ["--device", "foo"], ["device 'foo': not a torch device"]),
    ("images", ["--device", "cuda:7"], ["device 'cuda:7'", _cuda_message(7)]),
    ("images", ["--device", "meta"], ["device 'meta': not supported"]),
    ("images", ["--device", "cuda:-1"], ["device 'cuda:-1'"]),
    ("images", ["--process-res", "0"], ["--process-res must be at least 14 (one patch), got 0"]),
    ("images", ["--process-res", "-504"], ["--process-res must be at least 14 (one patch), got -504"]),
    (
        "images",
        ["--process-res", "200000"],
        ["--process-res 200000: 2 views at", "GiB of RAM", "GiB is available", "lower --process-res"],
    ),
    (
        "images",
        ["--process-res", "60000", "--max-views-per-chunk", "3"],
        ["--process-res 60000: 2 views", "need about"],
    ),
    ("images", ["--max-views-per-chunk", "0"], ["--max-views-per-chunk must be at least 3, got 0"]),
    ("images", ["--max-views-per-chunk", "-4"], ["--max-views-per-chunk must be at least 3, got -4"]),
    ("images", ["--eval-interval", "-1"], ["--eval-interval must be 0 (evaluate on all views) or at least 2, got -1"]),
    ("images", ["--eval-interval", "1"], ["--eval-interval must be 0", "got 1"]),
    ("images", ["--conf-percentile", "101"], ["--conf-percentile must be within 0..100, got 101"]),
    ("images", ["--conf-percentile", "nan"], ["--conf-percentile must be within 0..100, got nan"]),
    ("images", ["--num-points", "0"], ["--num-points must be at least 1, got 0"]),
    ("images", ["--num-gaussians", "-5"], ["--num-gaussians must be at least 1, got -5"]),
    ("images", ["--process-res-method", "lower_bound_crop"], ["--process-res-method lower_bound_crop crops"]),
    ("images", ["--known-poses", "{area}/nowhere.json"], ["nowhere.json: --known-poses file or folder not found"]),
    ("images", ["--known-poses", "{area}/room.npz"], ["room.npz: --known-poses must be a COLMAP model folder"]),
    ("images", ["--model", "{area}/no_such_folder"], ["no_such_folder: no such checkpoint folder"]),
    ("images", ["--model", "{area}/photos"], ["photos: missing config.json"]),
    ("images", ["--model", "{depth_only}"], ["small-metric predicts depth only, without cameras"]),
    ("video", ["--num-frames-target", "0"], ["--num-frames-target must be at least 2, got 0"]),
    ("video", ["--num-frames-target", "-3"], ["--num-frames-target must be at least 2, got -3"]),
    ("video", ["--num-frames-target", "1"], ["--num-frames-target must be at least 2, got 1"]),
    ("video", ["--device", "foo"], ["device 'foo': not a torch device"]),
    ("video", ["--process-res", "100000"], ["--process-res 100000: 100 views at", "need about"]),
    ("video", ["--max-views-per-chunk", "1"], ["--max-views-per-chunk must be at least 3, got 1"]),
    ("video", ["--eval-interval", "-8"], ["--eval-interval must be 0", "got -8"]),
    ("video", ["--model", "{depth_only}"], ["predicts depth only"]),
    ("predictions", ["--eval-interval", "-2"], ["--eval-interval must be 0", "got -2"]),
    ("predictions", ["--num-points", "-1"], ["--num-points must be at least 1, got -1"]),
    ("predictions", ["--conf-percentile", "-0.5"], ["--conf-percentile must be within 0..100, got -0.5"]),
    ("predictions", ["--num-gaussians", "0"], ["--num-gaussians must be at least 1, got 0"]),
]


@pytest.mark.parametrize(("command", "extra", "needles"), OPTION_CASES, ids=lambda v: str(v)[:40])
def test_bad_options_are_refused_before_the_model_loads(
    capsys: pytest.CaptureFixture[str],
    area: Path,
    checkpoint: Path,
    depth_only: Path,
    no_model: None,
    command: str,
    extra: list[str],
    needles: list[str],
) -> None:
    data = {"images": area / "photos", "video": VIDEO, "predictions": area / "room.npz"}[command]
    model = FAST[2:] if command == "predictions" else ["--model", checkpoint, *FAST]
    extra = [e.format(area=area, depth_only=depth_only) for e in extra]
    before = snapshot(area)
    code, out, err = run(capsys, command, "--data", data, "--output-dir", area / "out", *model, *extra)
    assert code == 1
    assert_one_line_error(code, out, err, *[n for n in needles if n])
    assert_unchanged(before, area)


@pytest.mark.parametrize(
    ("device", "needle"),
    [("foo", "device 'foo': not a torch device"), ("cuda:7", "device 'cuda:7'"),
     ("meta", "device 'meta': not supported"), ("cuda:x", "device 'cuda:x': not a torch device")],
)  # fmt: skip
def test_predictor_refuses_a_missing_device_before_loading(checkpoint: Path, no_model: None, device: str,
                                                           needle: str) -> None:  # fmt: skip
    from da3_nerfstudio.predictor import DA3Predictor

    before = snapshot(checkpoint)
    with pytest.raises(InputError) as caught:
        DA3Predictor(checkpoint, device=device)
    assert needle in str(caught.value) and "\n" not in str(caught.value)
    assert_unchanged(before, checkpoint)


def test_known_poses_are_read_before_the_model_loads(
    capsys: pytest.CaptureFixture[str], area: Path, checkpoint: Path, no_model: None
) -> None:
    known = area / "known.json"
    known.write_text(json.dumps({"camera_model": "PINHOLE", "frames": []}))
    before = snapshot(area)
    code, out, err = run(capsys, "images", "--data", area / "photos", "--output-dir", area / "out",
                         "--model", checkpoint, "--known-poses", known, *FAST)  # fmt: skip
    assert_one_line_error(code, out, err, "known.json")
    assert_unchanged(before, area)


def test_zero_byte_colmap_points_fail_fast_in_one_line(area: Path, checkpoint: Path) -> None:
    """A zero-byte points3D.bin used to spin for two minutes inside the COLMAP reader, then abort."""
    model = area / "sparse"
    out = area / "prior"
    write_dataset(prediction(room_truth_dict(), [0, 1]), out, options=SMALL)
    (out / "colmap" / "sparse" / "0").rename(model)
    (model / "points3D.bin").write_bytes(b"")
    before = snapshot(area)
    start = time.monotonic()
    code, stdout, stderr = run_tool(
        ["da3-process-data", "images", "--data", area / "photos", "--output-dir", area / "out", "--model", checkpoint,
         "--known-poses", model, *FAST],
        timeout=90,
    )  # fmt: skip
    assert time.monotonic() - start < 60
    assert_one_line_error(code, stdout, stderr, "points3D.bin")
    assert_unchanged(before, area)


def room_truth_dict() -> dict[str, np.ndarray]:
    t = room_truth()
    return {"w2c": t.w2c, "K": t.K, "depth": t.depth, "images": t.images}


def test_unresolvable_hub_id_is_one_line_before_anything(area: Path) -> None:
    before = snapshot(area)
    code, out, err = run_tool(
        ["da3-process-data", "video", "--data", VIDEO, "--output-dir", area / "out", "--model", "nobody/NOT-A-MODEL"],
        env={"HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert_one_line_error(code, out, err, "nobody/NOT-A-MODEL: weights not cached")
    assert_unchanged(before, area)


# ------------------------------------------------------------------------------------------------
# Output folder: refused with one line, nothing touched


def _file(area: Path) -> Path:
    (area / "report.pdf").write_bytes(b"%PDF-1.7 user's report")
    return area / "report.pdf"


def _under_file(area: Path) -> Path:
    return _file(area) / "out"


def _symlink(area: Path) -> Path:
    (area / "real").mkdir()
    (area / "link").symlink_to(area / "real")
    return area / "link"


def _foreign(area: Path) -> Path:
    (area / "thesis").mkdir()
    (area / "thesis" / "chapter1.tex").write_text("\\chapter{Introduction}")
    return area / "thesis"


def _foreign_nerfstudio(area: Path) -> Path:
    folder = area / "ns_scene"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "frame_00001.png").write_bytes((SOH / "000.png").read_bytes())
    (folder / "transforms.json").write_text('{"frames": []}')
    return folder


def _dataset_with(rel: str) -> Callable[[Path], Path]:
    def make(area: Path) -> Path:
        out = area / "scene"
        write_dataset(prediction(room_truth_dict(), [0, 1]), out, options=SMALL)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("mine")
        return out

    return make


OUTPUT_CASES = [
    # (make the output path, overwrite, fragments)
    (lambda a: Path("."), False, ["is the current folder or contains it"]),
    (lambda a: Path(".."), True, ["..: is the current folder or contains it"]),
    (lambda a: a, True, ["is the current folder or contains it"]),
    (_file, False, ["report.pdf: exists and is not a folder"]),
    (_under_file, False, ["out: cannot write here"]),
    (_symlink, False, ["link: exists and is not a folder (a symbolic link)"]),
    (_foreign, False, ["thesis: folder is not empty and was not written by da3-process-data; pass --overwrite"]),
    (_foreign_nerfstudio, False, ["ns_scene: folder is not empty", "pass --overwrite"]),
    (_foreign_nerfstudio, True, ["images/frame_00001.png, transforms.json not written by da3-process-data"]),
    (_dataset_with("images/notes.txt"), False, ["scene: images/notes.txt not written by da3-process-data"]),
    (_dataset_with("da3/my_edit.json"), True, ["da3/my_edit.json not written by da3-process-data"]),
    (_dataset_with("colmap/sparse/1/cameras.txt"), False, ["colmap/sparse/1/cameras.txt not written"]),
]
OUTPUT_IDS = ["dot", "dotdot-overwrite", "cwd-parent", "file", "under-file", "symlink", "foreign",
              "foreign-ns", "foreign-ns-overwrite", "images-notes", "da3-edit", "colmap-extra"]  # fmt: skip


@pytest.mark.parametrize("command", ["images", "video", "predictions"])
@pytest.mark.parametrize(("make", "overwrite", "needles"), OUTPUT_CASES, ids=OUTPUT_IDS)
def test_bad_output_folders_cli(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    area: Path,
    checkpoint: Path,
    no_model: None,
    command: str,
    make: Callable[[Path], Path],
    overwrite: bool,
    needles: list[str],
) -> None:
    monkeypatch.chdir(area / "work")
    out = make(area)
    data = {"images": area / "photos", "video": VIDEO, "predictions": area / "room.npz"}[command]
    model = FAST[2:] if command == "predictions" else ["--model", checkpoint, *FAST]
    before = snapshot(area)
    code, stdout, err = run(capsys, command, "--data", data, "--output-dir", out, *model,
                            *(["--overwrite"] if overwrite else []))  # fmt: skip
    assert code == 1
    assert_one_line_error(code, stdout, err, *needles)
    assert_unchanged(before, area)


@pytest.mark.parametrize(("make", "overwrite", "needles"), OUTPUT_CASES, ids=OUTPUT_IDS)
def test_bad_output_folders_api(
    monkeypatch: pytest.MonkeyPatch,
    area: Path,
    truth: dict,
    make: Callable[[Path], Path],
    overwrite: bool,
    needles: list[str],
) -> None:
    monkeypatch.chdir(area / "work")
    out = make(area)
    photos = sorted((area / "photos").iterdir())
    before = snapshot(area)
    with pytest.raises(InputError) as caught:
        # Two photos of another aspect than the room: only the output checks may fail first.
        write_dataset(prediction(truth, [0, 1]), out, image_paths=photos, options=SMALL, overwrite=overwrite)
    message = str(caught.value)
    assert "\n" not in message and all(n.lower() in message.lower() for n in needles), message
    assert_unchanged(before, area)


CONTAINS_INPUT = [
    # (subcommand, data, extra, output)
    ("images", "photos", [], "photos"),
    ("images", "photos", ["--overwrite"], "."),
    ("video", "clip/robot.mp4", ["--overwrite"], "clip"),
    ("predictions", "room.npz", ["--images", "{area}/photos", "--overwrite"], "photos"),
    ("predictions", "npz/room.npz", ["--overwrite"], "npz"),
]


@pytest.mark.parametrize(("command", "data", "extra", "output"), CONTAINS_INPUT)
def test_an_output_holding_an_input_is_refused_even_with_overwrite(
    capsys: pytest.CaptureFixture[str],
    area: Path,
    checkpoint: Path,
    no_model: None,
    command: str,
    data: str,
    extra: list[str],
    output: str,
) -> None:
    (area / "clip").mkdir()
    (area / "clip" / "robot.mp4").write_bytes(VIDEO.read_bytes())
    (area / "npz").mkdir()
    (area / "npz" / "room.npz").write_bytes((area / "room.npz").read_bytes())
    model = FAST[2:] if command == "predictions" else ["--model", checkpoint, *FAST]
    before = snapshot(area)
    code, stdout, err = run(capsys, command, "--data", area / data, "--output-dir", area / output, *model,
                            *[e.format(area=area) for e in extra])  # fmt: skip
    assert code == 1
    assert_one_line_error(code, stdout, err, f"{area / output}: ", "contains")
    assert_unchanged(before, area)


# ------------------------------------------------------------------------------------------------
# Reruns keep the user's files


def test_rerun_over_a_dataset_keeps_the_users_files_cli(
    capsys: pytest.CaptureFixture[str], area: Path, checkpoint: Path
) -> None:
    out = area / "scene"
    args = ["images", "--data", area / "photos", "--output-dir", out, "--model", checkpoint, *FAST]
    code, stdout, err = run(capsys, *args)
    assert code == 0, err
    assert stdout.rstrip().splitlines()[-1] == f"wrote {out}"
    add_user_files(out)
    users = user_files(out)
    code, stdout, err = run(capsys, *args, "--num-points", "2000")
    assert code == 0, err
    assert user_files(out) == users and staging_leftovers(area) == []
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["options"]["num_points"] == 2000
    assert not any(name.startswith(("notes", "outputs")) for name in manifest["files"])
    assert stdout.rstrip().splitlines()[-1] == f"wrote {out}"


def test_overwrite_writes_into_a_foreign_folder_and_keeps_its_files(
    capsys: pytest.CaptureFixture[str], area: Path
) -> None:
    out = _foreign(area)
    (out / "figures").mkdir()
    (out / "figures" / "plot.png").write_bytes((SOH / "000.png").read_bytes())
    mine = snapshot(out)
    code, _, err = run(capsys, "predictions", "--data", area / "room.npz", "--output-dir", out, "--overwrite",
                       "--num-points", "3000", "--num-gaussians", "5000")  # fmt: skip
    assert code == 0, err
    after = snapshot(out)
    assert {k: after.get(k) for k in mine} == mine
    assert dataset_is_current(out, json.loads((out / MANIFEST).read_text())["fingerprint"]) == (True, "up to date")


def test_the_cli_fingerprint_marks_a_dataset_current_until_an_input_changes(
    capsys: pytest.CaptureFixture[str], area: Path
) -> None:
    from da3_nerfstudio.process import PredictionsCommand

    out = area / "scene"
    args = ["--data", area / "room.npz", "--output-dir", out, "--num-points", "3000", "--num-gaussians", "5000"]
    code, _, err = run(capsys, "predictions", *args)
    assert code == 0, err
    command = PredictionsCommand(data=area / "room.npz", output_dir=out, num_points=3000, num_gaussians=5000)
    assert dataset_is_current(out, command.fingerprint()) == (True, "up to date")
    other = PredictionsCommand(data=area / "room.npz", output_dir=out, num_points=3001, num_gaussians=5000)
    assert dataset_is_current(out, other.fingerprint())[0] is False
    os.utime(area / "room.npz", ns=(1, 1))
    assert dataset_is_current(out, command.fingerprint()) == (False, f"{out}: written from other inputs or settings")


def test_the_network_fingerprint_covers_the_checkpoint_and_not_the_device(area: Path, tmp_path: Path) -> None:
    from da3_nerfstudio.process import ImagesCommand

    model = write_checkpoint(tmp_path / "weights", "da3-small")
    command = ImagesCommand(data=area / "photos", output_dir=area / "out", model=str(model))
    first = command.fingerprint()
    assert ImagesCommand(data=area / "photos", output_dir=area / "elsewhere", model=str(model), device="cpu",
                         overwrite=True).fingerprint() == first  # fmt: skip
    assert ImagesCommand(data=area / "photos", output_dir=area / "out", model=str(model),
                         process_res=518).fingerprint() != first  # fmt: skip
    os.utime(model / "model.safetensors", ns=(1, 1))
    assert command.fingerprint() != first


# ------------------------------------------------------------------------------------------------
# Staging folders of killed runs


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _stage(parent: Path, name: str, pid: int, kind: str, marker: dict | None) -> Path:
    folder = parent / f".{name}.{pid}.{os.urandom(4).hex()}.{kind}"
    folder.mkdir()
    if marker is not None:
        (folder / STAGING_MARKER).write_text(json.dumps({"tool": "da3-process-data", "pid": pid, **marker}))
    return folder


def test_stale_staging_is_removed_only_when_ours_and_dead(area: Path, truth: dict) -> None:
    out = area / "scene"
    write_dataset(prediction(truth, [0, 1]), out, options=SMALL)
    dead, alive = _dead_pid(), os.getppid()
    new = _stage(area, "scene", dead, "da3-new", {"moved": []})
    (new / "images").mkdir()
    (new / "images" / "frame_00001.png").write_bytes(b"half written")
    frames = _stage(area, "scene", dead, "frames", {"moved": []})
    (frames / "frame_00001.png").write_bytes(b"frame")
    old = _stage(area, "scene", dead, "da3-old", None)  # the previous dataset after an exchange: our names only
    (old / "transforms.json").write_text("{}")
    running = _stage(area, "scene", alive, "da3-new", {"moved": []})
    lookalike = _stage(area, "scene", dead, "da3-new", None)
    (lookalike / "thesis.tex").write_text("not ours")
    other_output = _stage(area, "scenery", dead, "da3-new", {"moved": []})
    other_host = _stage(area, "scene", dead, "da3-new", {"moved": [], "host": "another-node-of-the-cluster"})
    kept = snapshot(running, lookalike, other_output, other_host)
    removed = remove_stale_staging(out)
    assert sorted(removed) == sorted([new, frames, old])
    assert staging_leftovers(area) == sorted(p.name for p in (running, lookalike, other_output, other_host))
    assert_unchanged(kept, running, lookalike, other_output, other_host)


def test_an_interrupted_swap_is_rolled_back_without_losing_the_users_files(area: Path, truth: dict) -> None:
    """The on-disk state of a run killed between the two renames of the fallback swap (no renameat2): the
    output is missing, the previous dataset is at .da3-old, the user's notes were moved into .da3-new."""
    out = area / "scene"
    write_dataset(prediction(truth, [0, 1]), out, options=SMALL)
    add_user_files(out)
    previous = snapshot(out)
    dead = _dead_pid()
    stage = _stage(area, "scene", dead, "da3-new", {"moved": ["notes.md", "outputs"]})
    (out / "notes.md").rename(stage / "notes.md")
    (out / "outputs").rename(stage / "outputs")
    out.rename(area / f".scene.{dead}.{os.urandom(4).hex()}.da3-old")
    remove_stale_staging(out)
    assert snapshot(out) == previous and staging_leftovers(area) == []


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the run ended before the kill point"
        assert time.monotonic() < end, "kill point not reached"
        time.sleep(0.002)


def _staged(area: Path, kind: str, pattern: str) -> Callable[[], bool]:
    return lambda: any(any(p.glob(pattern)) for p in area.glob(f".scene.*.{kind}"))


KILL_POINTS = {
    "extracting frames": lambda area: _staged(area, "frames", "frame_00002.png"),
    "writing images": lambda area: _staged(area, "da3-new", "images/*"),
    "writing depth": lambda area: _staged(area, "da3-new", "depths/*"),
    "writing the COLMAP model": lambda area: _staged(area, "da3-new", "colmap/sparse/0/*"),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_keeps_the_earlier_dataset_and_the_next_run_cleans_up(
    area: Path, checkpoint: Path, truth: dict, point: str
) -> None:
    out = area / "scene"
    write_dataset(prediction(truth, [0, 1, 2]), out, options=SMALL)
    add_user_files(out)
    earlier = snapshot(out)
    command = [BIN / "da3-process-data", "video", "--data", VIDEO, "--output-dir", out, "--model", checkpoint,
               "--num-frames-target", "12", *FAST]  # fmt: skip
    process = subprocess.Popen([str(c) for c in command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(KILL_POINTS[point](area), process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert snapshot(out) == earlier  # the earlier dataset, the user's files included, is intact
    assert staging_leftovers(area)  # the killed run left its staging folder behind
    code, _, err = run_tool(["da3-process-data", "predictions", "--data", area / "room.npz", "--output-dir", out,
                             "--num-points", "3000", "--num-gaussians", "5000"])  # fmt: skip
    assert code == 0, err
    assert staging_leftovers(area) == [] and user_files(out) == user_files(out, earlier)
    assert len(json.loads((out / "transforms.json").read_text())["frames"]) == 3


# ------------------------------------------------------------------------------------------------
# Output


def test_log_lines_are_not_duplicated(capsys: pytest.CaptureFixture[str], area: Path, checkpoint: Path) -> None:
    """Mixed photo sizes in three chunks log an info and a warning: each once, with its level once."""
    photos = area / "mixed"
    photos.mkdir()
    for i in range(5):
        size = (160, 120) if i % 2 else (120, 160)
        Image.fromarray(np.full((size[1], size[0], 3), 40 * i, np.uint8)).save(photos / f"{i}.png")
    out = area / "out"
    code, stdout, err = run(capsys, "images", "--data", photos, "--output-dir", out, "--model", checkpoint,
                            "--max-views-per-chunk", "3", *FAST)  # fmt: skip
    assert code == 0, err
    text = " ".join((stdout + err).split())  # Rich wraps long lines
    assert text.count("different processed sizes") == 1 and text.count("overlapping chunks") == 1, text
    assert "WARNING:" not in text and "INFO:" not in text, text
    assert stdout.rstrip().splitlines()[-1] == f"wrote {out}"


@pytest.mark.parametrize("point", ["extracting frames", "writing images"])
def test_sigterm_removes_its_staging_at_once(area: Path, checkpoint: Path, truth: dict, point: str) -> None:
    out = area / "scene"
    write_dataset(prediction(truth, [0, 1, 2]), out, options=SMALL)
    add_user_files(out)
    earlier = snapshot(out)
    command = [BIN / "da3-process-data", "video", "--data", VIDEO, "--output-dir", out, "--model", checkpoint,
               "--num-frames-target", "12", *FAST]  # fmt: skip
    process = subprocess.Popen([str(c) for c in command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(KILL_POINTS[point](area), process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err == "interrupted: the output folder was left as it was\n"
    assert snapshot(out) == earlier and staging_leftovers(area) == []


def _small_file_limit() -> None:
    """A real "disk full" for the child: files may not grow past 64 KiB (EFBIG instead of SIGXFSZ)."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_a_full_disk_while_extracting_frames_is_one_line_and_leaves_nothing(area: Path, checkpoint: Path) -> None:
    out = area / "scene"
    before = snapshot(area)
    result = subprocess.run(
        [str(BIN / "da3-process-data"), "video", "--data", str(VIDEO), "--output-dir", str(out), "--model",
         str(checkpoint), "--num-frames-target", "3", *FAST],
        capture_output=True, text=True, timeout=300, preexec_fn=_small_file_limit,
    )  # fmt: skip
    needle = "frame_00001.png: cannot write the frame (File too large)"
    assert_one_line_error(result.returncode, result.stdout, result.stderr, needle)
    assert_unchanged(before, area)


def test_a_full_disk_while_writing_keeps_the_earlier_dataset(area: Path, truth: dict) -> None:
    out = area / "scene"
    write_dataset(prediction(truth, [0, 1]), out, options=SMALL)
    add_user_files(out)
    before = snapshot(area)
    result = subprocess.run(
        [str(BIN / "da3-process-data"), "predictions", "--data", str(area / "room.npz"), "--output-dir", str(out),
         "--num-points", "3000", "--num-gaussians", "5000"],
        capture_output=True, text=True, timeout=300, preexec_fn=_small_file_limit,
    )  # fmt: skip
    needle = f"{out}: writing the dataset failed ([Errno 27] File too large"
    assert_one_line_error(result.returncode, result.stdout, result.stderr, needle)
    assert_unchanged(before, area)
