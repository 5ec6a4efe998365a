"""Hostile input to the nerfstudio side: ``ns-train da3-splat --data``, the ``da3-data`` parser, ``da3-export-cameras``.

Every broken dataset is refused with one line naming the file and the problem, a non-zero exit and nothing
written (no ``outputs/`` run folder, the dataset unchanged). The whole matrix runs through ``ns-train``'s own
entry point in this process (nerfstudio's argument parsing, ``main`` and ``save_config``: the import costs
seconds per subprocess on a 2-core machine) and through the Python API; one case of each defect class also
runs as a real ``ns-train`` subprocess. A NaN injected into a Gaussian mid-training stops training with one
line and keeps the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile import assert_one_line_error, assert_unchanged, run_tool, snapshot

pytest.importorskip("nerfstudio", reason="nerfstudio is not installed (pip install -e '.[nerfstudio]')")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nerfstudio_method"))

from room_dataset import CPU_TRAIN_ARGS as FAST  # noqa: E402
from room_dataset import ROOM, build_room_dataset  # noqa: E402

import da3_nerfstudio.nerfstudio_method  # noqa: E402, F401 (lets torch.load read nerfstudio checkpoints safely)
from da3_nerfstudio.errors import InputError  # noqa: E402
from da3_nerfstudio.formats.ply import read_splat_ply, write_splat_ply  # noqa: E402

ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """room_gt at 1/4 resolution as a da3-process-data style dataset (the intact original)."""
    if not ROOM.is_dir():
        pytest.skip(f"room_gt samples not found at {ROOM} (set DA3_SAMPLES)")
    return build_room_dataset(tmp_path_factory.mktemp("room") / "data", factor=4, init_stride=2)


# -- broken datasets: (mutation, message fragments) ------------------------------------------------------------


def _meta(data: Path) -> dict:
    return json.loads((data / "transforms.json").read_text())


def _write_meta(data: Path, meta: dict) -> None:
    (data / "transforms.json").write_text(json.dumps(meta))  # NaN / Infinity literals as Python's json writes them


def _edit_frame(**values: object) -> Callable[[Path], None]:
    def edit(data: Path) -> None:
        meta = _meta(data)
        meta["frames"][2].update(values)
        _write_meta(data, meta)

    return edit


def _drop_frame_keys(*keys: str) -> Callable[[Path], None]:
    def edit(data: Path) -> None:
        meta = _meta(data)
        for key in keys:
            meta["frames"][2].pop(key)
        _write_meta(data, meta)

    return edit


def _pose(value: float, row: int = 0, col: int = 3) -> Callable[[Path], None]:
    def edit(data: Path) -> None:
        meta = _meta(data)
        meta["frames"][2]["transform_matrix"][row][col] = value
        _write_meta(data, meta)

    return edit


def _scaled_pose(data: Path) -> None:
    meta = _meta(data)
    matrix = np.asarray(meta["frames"][2]["transform_matrix"])
    matrix[:3, :3] *= 2.0
    meta["frames"][2]["transform_matrix"] = matrix.tolist()
    _write_meta(data, meta)


def _depth(value: float) -> Callable[[Path], None]:
    def edit(data: Path) -> None:
        path = data / "depths" / "frame_00003.npy"
        depth = np.load(path)
        depth[5, 7] = value
        np.save(path, depth)

    return edit


def _splats(field: str, value: float) -> Callable[[Path], None]:
    def edit(data: Path) -> None:
        splats = read_splat_ply(data / "splat_init.ply")
        getattr(splats, field)[17] = value
        write_splat_ply(data / "splat_init.ply", splats)

    return edit


def _zero_quaternion(data: Path) -> None:
    splats = read_splat_ply(data / "splat_init.ply")
    splats.rotations[3] = 0.0
    write_splat_ply(data / "splat_init.ply", splats)


def _nan_seed_point(data: Path) -> None:
    from da3_nerfstudio.formats.ply import read_point_cloud_ply, write_point_cloud_ply

    points, colours, _ = read_point_cloud_ply(data / "sparse_pc.ply")
    points[4, 1] = np.nan
    write_point_cloud_ply(data / "sparse_pc.ply", points, colours)


def _unknown_split_file(data: Path) -> None:
    meta = _meta(data)
    meta["train_filenames"].append("images/frame_00099.png")
    _write_meta(data, meta)


def _write(name: str, content: bytes) -> Callable[[Path], None]:
    def edit(data: Path) -> None:
        (data / name).write_bytes(content)

    return edit


def _remove(name: str) -> Callable[[Path], None]:
    def edit(data: Path) -> None:
        (data / name).unlink()

    return edit


def _empty_folder(data: Path) -> None:
    shutil.rmtree(data)
    data.mkdir()


#: id -> (mutation of an intact dataset, fragments of the one-line error; "{data}" is the dataset folder).
BROKEN: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    # JSON
    "json-syntax": (_write("transforms.json", b'{"frames": [ '), ("transforms.json", "not valid JSON")),
    "json-not-object": (_write("transforms.json", b"[1, 2]"), ("transforms.json", "expected a JSON object")),
    "json-no-frames": (_write("transforms.json", b'{"frames": []}'), ("transforms.json", "'frames'")),
    "json-binary": (_write("transforms.json", b"\xff\xfe\x00garbage"), ("transforms.json", "cannot read")),
    # intrinsics
    "no-focal": (_drop_frame_keys("fl_x", "fl_y"), ("transforms.json", "frame 2", "no focal length")),
    "no-cx": (_drop_frame_keys("cx"), ("transforms.json", "frame 2", "no cx")),
    "no-size": (_drop_frame_keys("w", "h"), ("transforms.json", "frame 2", "no w, h")),
    "zero-focal": (_edit_frame(fl_x=0.0), ("transforms.json", "frame 2", "focal lengths must be positive")),
    "negative-focal": (_edit_frame(fl_y=-3.0), ("transforms.json", "frame 2", "focal lengths must be positive")),
    "nan-focal": (_edit_frame(fl_x=float("nan")), ("transforms.json", "frame 2", "fl_x must be a finite number")),
    "inf-cy": (_edit_frame(cy=float("inf")), ("transforms.json", "frame 2", "cy must be a finite number")),
    "string-focal": (_edit_frame(fl_x="300"), ("transforms.json", "frame 2", "fl_x must be a finite number")),
    # poses
    "nan-pose": (_pose(float("nan")), ("transforms.json", "frame 2", "pose has non-finite values")),
    "inf-pose": (_pose(float("inf"), 1, 1), ("transforms.json", "frame 2", "pose has non-finite values")),
    "scaled-pose": (_scaled_pose, ("transforms.json", "frame 2", "pose is not rigid")),
    "no-pose": (_drop_frame_keys("transform_matrix"), ("transforms.json", "frame 2", "transform_matrix")),
    # files
    "missing-image": (_remove("images/frame_00004.png"), ("frame_00004.png", "image file does not exist")),
    "missing-depth": (_remove("depths/frame_00003.npy"), ("frame_00003.npy", "depth file does not exist")),
    "garbage-depth": (_write("depths/frame_00003.npy", b"not an array"), ("frame_00003.npy", "not a readable depth")),
    "unknown-split-file": (_unknown_split_file, ("transforms.json", "train_filenames", "frame_00099.png")),
    "empty-folder": (_empty_folder, ("no images found",)),
    # depth values
    "nan-depth": (_depth(float("nan")), ("frame_00003.npy", "depth has NaN or infinite values")),
    "inf-depth": (_depth(float("inf")), ("frame_00003.npy", "depth has NaN or infinite values")),
    "negative-depth": (_depth(-1.0), ("frame_00003.npy", "depth has negative values")),
    # initial Gaussians and seed points
    "missing-splat-init": (_remove("splat_init.ply"), ("splat_init.ply", "no initial Gaussians", "--pipeline.model")),
    "garbage-splat-init": (_write("splat_init.ply", b"ply\nnonsense"), ("splat_init.ply", "not a readable PLY")),
    "nan-splat-mean": (_splats("means", float("nan")), ("splat_init.ply", "non-finite x")),
    "inf-splat-scale": (_splats("scales_log", float("inf")), ("splat_init.ply", "non-finite scale_0")),
    "nan-splat-opacity": (_splats("opacity_logit", float("nan")), ("splat_init.ply", "non-finite opacity")),
    "nan-splat-colour": (_splats("sh_dc", float("nan")), ("splat_init.ply", "non-finite f_dc_0")),
    "zero-quaternion": (_zero_quaternion, ("splat_init.ply", "zero rotation quaternion")),
    "nan-seed-point": (_nan_seed_point, ("sparse_pc.ply", "non-finite y")),
}

#: One case of each defect class, also run as a real ``ns-train`` subprocess.
SUBPROCESS_CASES = ["json-syntax", "zero-focal", "nan-pose", "missing-depth", "nan-depth", "nan-splat-mean"]


@pytest.fixture
def broken(request: pytest.FixtureRequest, room: Path, tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    """A copy of the room dataset broken as ``BROKEN[request.param]``; returns it and the expected fragments."""
    data = tmp_path / "data"
    shutil.copytree(room, data)
    mutate, needles = BROKEN[request.param]
    mutate(data)
    return data, needles


def _ns_train_in_process(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """``ns-train ARGS`` through nerfstudio's own entry point in this process: (exit status, stdout, stderr),
    where a ``SystemExit`` message goes to stderr as the interpreter prints it."""
    from nerfstudio.scripts.train import entrypoint

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["ns-train", *args])
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            entrypoint()
        except SystemExit as exit_:
            code = exit_.code
    if isinstance(code, str):
        err.write(code + "\n")
        code = 1
    return int(code or 0), out.getvalue(), err.getvalue()


@pytest.mark.parametrize("broken", list(BROKEN), indirect=True)
def test_ns_train_refuses_a_broken_dataset_before_writing(
    broken: tuple[Path, tuple[str, ...]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, needles = broken
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = snapshot(data, cwd)
    code, out, err = _ns_train_in_process(
        ["da3-splat", "--data", str(data), "--max-num-iterations", "2", *FAST], cwd, monkeypatch
    )
    assert_one_line_error(code, out, err, *needles)
    assert_unchanged(before, data, cwd)  # no outputs/ run folder, no config.yml, the dataset as it was


def test_ns_train_refuses_gsplat_without_cuda_before_writing(
    room: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--pipeline.model.rasterizer gsplat`` where gsplat cannot run: refused before the run folder exists."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = snapshot(room, cwd)
    args = [
        "da3-splat",
        "--data",
        str(room),
        "--max-num-iterations",
        "2",
        *FAST,
        "--pipeline.model.rasterizer",
        "gsplat",
    ]
    code, out, err = _ns_train_in_process(args, cwd, monkeypatch)
    assert_one_line_error(code, out, err, "rasterizer gsplat", "needs a CUDA device", "this run is on cpu")
    assert_unchanged(before, room, cwd)


@pytest.mark.parametrize("broken", SUBPROCESS_CASES, indirect=True)
def test_ns_train_subprocess_refuses_a_broken_dataset(broken: tuple[Path, tuple[str, ...]], tmp_path: Path) -> None:
    data, needles = broken
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = snapshot(data, cwd)
    code, out, err = run_tool(
        ["ns-train", "da3-splat", "--data", data, "--max-num-iterations", "2", *FAST], cwd=cwd, env=ENV
    )
    assert code == 1
    assert_one_line_error(code, out, err, *needles)
    assert_unchanged(before, data, cwd)


@pytest.mark.parametrize(
    "broken", [k for k in BROKEN if k not in ("missing-splat-init", "empty-folder")], indirect=True
)
def test_dataparser_api_raises_input_error(broken: tuple[Path, tuple[str, ...]]) -> None:
    """The Python API (the da3-data parser, as ns-eval / ns-export / ns-viewer use it) raises InputError."""
    from da3_nerfstudio.nerfstudio_method.dataparser import DA3DataParserConfig

    data, needles = broken
    before = snapshot(data)
    with pytest.raises(InputError) as info:
        DA3DataParserConfig(data=data).setup().get_dataparser_outputs("train")
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle.lower() in message.lower(), f"{needle!r} not in {message!r}"
    assert_unchanged(before, data)


@pytest.mark.parametrize(
    "data, needles",
    [
        ("missing", ("missing", "no such dataset folder")),
        ("missing/transforms.json", ("transforms.json", "no such dataset folder")),
    ],
)
def test_ns_train_refuses_a_missing_dataset(
    data: str, needles: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(tmp_path)
    code, out, err = _ns_train_in_process(["da3-splat", "--data", data, *FAST], tmp_path, monkeypatch)
    assert_one_line_error(code, out, err, *needles)
    assert_unchanged(before, tmp_path)


# -- a trained run: the CPU cap, log lines, divergence, export-cameras -------------------------------------------


@pytest.fixture(scope="module")
def run(room: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Two CPU iterations of ns-train on the room (capped to 5000 initial Gaussians): (run folder, its log)."""
    cwd = tmp_path_factory.mktemp("trained")
    args = ["ns-train", "da3-splat", "--data", room, "--output-dir", "outputs", "--experiment-name", "room"]
    args += ["--timestamp", "run", "--max-num-iterations", "2", *FAST]
    code, out, err = run_tool([*args, "--pipeline.model.max-initial-gaussians-cpu", "5000"], cwd=cwd, env=ENV)
    assert code == 0, (out + err)[-4000:]
    return cwd / "outputs" / "room" / "da3-splat" / "run", out + err


def test_cpu_training_caps_the_initial_gaussians_and_says_so(run: tuple[Path, str]) -> None:
    folder, log = run
    flat = " ".join(log.split())  # rich wraps long lines at the terminal width
    assert "da3-splat: no CUDA: training 5000 of the 14256 initial Gaussians" in flat
    assert "--pipeline.model.max-initial-gaussians-cpu" in flat
    checkpoint = torch.load(next((folder / "nerfstudio_models").glob("step-*.ckpt")), map_location="cpu")
    assert checkpoint["pipeline"]["_model.gauss_params.means"].shape == (5000, 3)


def test_log_lines_are_not_duplicated(run: tuple[Path, str]) -> None:
    """Every line the project logs appears once (the dataparser runs for the train and the eval split)."""
    _, log = run
    ours = [line.strip() for line in log.splitlines() if "da3-data:" in line or "da3-splat:" in line]
    assert ours and len(ours) == len(set(ours)), ours


def test_lpips_without_cached_weights_is_one_line_and_no_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without AlexNet weights in torch hub's cache, LPIPS is skipped with one line and nothing is fetched."""
    from nerfstudio.utils.rich_utils import CONSOLE

    from da3_nerfstudio.nerfstudio_method import model

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"download attempted: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(CONSOLE, "width", 1000)
    with CONSOLE.capture() as capture:
        assert model._make_lpips() is None
    lines = [line for line in capture.get().splitlines() if line.strip()]
    assert len(lines) == 1 and "LPIPS not reported" in lines[0] and str(model.alexnet_weights_path()) in lines[0]
    assert model.alexnet_weights_path().is_relative_to(tmp_path / "torch")
    assert not (tmp_path / "torch").exists()  # nothing written either


INJECT = """
import sys, torch
from nerfstudio.engine.trainer import Trainer
from nerfstudio.scripts.train import entrypoint
original = Trainer.train_iteration
def poisoned(self, step):
    if step == 3:
        with torch.no_grad():
            self.pipeline.model.gauss_params["{field}"][7] = float("nan")
    return original(self, step)
Trainer.train_iteration = poisoned
sys.argv = ["ns-train", *sys.argv[1:]]
entrypoint()
"""


@pytest.mark.parametrize("field", ["means", "opacities"])
def test_nan_gaussian_mid_training_stops_and_keeps_the_last_good_checkpoint(
    field: str, room: Path, tmp_path: Path
) -> None:
    args = ["da3-splat", "--data", str(room), "--output-dir", "outputs", "--experiment-name", "room"]
    args += ["--timestamp", "run", "--max-num-iterations", "10", "--steps-per-save", "2", *FAST]
    result = subprocess.run(
        [sys.executable, "-c", INJECT.format(field=field), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **ENV},
    )
    checkpoints = Path("outputs") / "room" / "da3-splat" / "run" / "nerfstudio_models"  # as ns-train names it
    good = checkpoints / "step-000000002.ckpt"
    line = assert_one_line_error(result.returncode, result.stdout, result.stderr, "training stopped at step", str(good))
    checkpoints, good = tmp_path / checkpoints, tmp_path / good
    assert "not finite" in line or "non-finite" in line
    assert sorted(p.name for p in checkpoints.iterdir()) == [good.name]  # no later, NaN checkpoint replaced it
    state = torch.load(good, map_location="cpu")["pipeline"]
    assert all(torch.isfinite(v).all() for k, v in state.items() if "gauss_params" in k)


# -- da3-export-cameras -------------------------------------------------------------------------------------------


def _config_copy(folder: Path, run_folder: Path, edit: Callable[[str], str]) -> Path:
    path = folder / "config.yml"
    path.write_text(edit((run_folder / "config.yml").read_text()))
    return path


EXPORT_CASES = {
    "missing-config": (lambda folder, run: folder / "nope.yml", "out.json", ("nope.yml", "does not exist")),
    "yaml-syntax": (
        lambda folder, run: _config_copy(
            folder, run, lambda text: text.replace("method_name: da3-splat", "method_name: [da3-splat")
        ),
        "out.json",
        ("config.yml", "not a readable nerfstudio config.yml"),
    ),
    "yaml-not-config": (
        lambda folder, run: _config_copy(folder, run, lambda text: "hello: 1\n"),
        "out.json",
        ("config.yml", "not a nerfstudio run config"),
    ),
    "yaml-unknown-class": (
        lambda folder, run: _config_copy(folder, run, lambda text: "!!python/object:nowhere.Thing {}\n"),
        "out.json",
        ("config.yml", "not a readable nerfstudio config.yml"),
    ),
    "missing-checkpoint": (
        lambda folder, run: _config_copy(folder, run, lambda text: text.replace("- outputs", "- elsewhere")),
        "out.json",
        ("config.yml", "no checkpoint", "elsewhere"),
    ),
    "missing-dataset": (
        lambda folder, run: _config_copy(folder, run, lambda text: text.replace("- data\n", "- gone\n")),
        "out.json",
        ("gone", "no such dataset folder"),
    ),
    "output-folder-missing": (
        lambda folder, run: run / "config.yml",
        "no/such/out.json",
        ("no/such", "does not exist"),
    ),
    "output-is-folder": (lambda folder, run: run / "config.yml", ".", ("is a folder",)),
    "output-under-a-file": (lambda folder, run: run / "config.yml", "afile/out.json", ("afile", "does not exist")),
}


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_export_cameras_refuses_bad_input(case: str, run: tuple[Path, str], tmp_path: Path) -> None:
    folder, _ = run
    cwd = folder.parents[3]  # where ns-train ran: config.yml's paths are relative to it
    make_config, output, needles = EXPORT_CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    (work / "afile").write_text("a user's file\n")
    config = make_config(work, folder)
    before = snapshot(work, cwd)
    code, out, err = run_tool(
        ["da3-export-cameras", "--load-config", config, "--output-path", work / output], cwd=cwd, env=ENV
    )
    assert_one_line_error(code, out, err, *needles)
    assert_unchanged(before, work, cwd)


def test_export_cameras_ends_with_the_path_it_wrote(run: tuple[Path, str], tmp_path: Path) -> None:
    folder, _ = run
    output = tmp_path / "cameras.json"
    code, out, err = run_tool(
        ["da3-export-cameras", "--load-config", folder / "config.yml", "--output-path", output],
        cwd=folder.parents[3],
        env=ENV,
    )
    assert code == 0, err[-3000:]
    last = [line for line in out.splitlines() if line.strip()][-1]
    assert str(output) in last.replace("\n", "")
    assert len(json.loads(output.read_text())["frames"]) == 8


# -- nerfstudio's own tools (ns-eval, ns-export) on a dataset broken after training ----------------------------


@pytest.mark.parametrize("tool", ["ns-eval", "ns-export"])
def test_nerfstudio_tools_on_a_broken_dataset_say_one_line(
    tool: str, run: tuple[Path, str], room: Path, tmp_path: Path
) -> None:
    """Our dataparser's error reaches the user of nerfstudio's own scripts as one line, not a traceback."""
    import yaml

    folder, _ = run
    cwd = folder.parents[3]  # where ns-train ran: config.yml's paths are relative to it
    data = tmp_path / "data"
    shutil.copytree(room, data)
    BROKEN["json-syntax"][0](data)
    config = yaml.load((folder / "config.yml").read_text(), Loader=yaml.Loader)
    config.data = config.pipeline.datamanager.data = data
    config_path = tmp_path / "config.yml"
    config_path.write_text(yaml.dump(config))
    before = snapshot(data, cwd)
    if tool == "ns-eval":
        args = ["ns-eval", "--load-config", config_path, "--output-path", tmp_path / "eval.json"]
    else:
        args = ["ns-export", "gaussian-splat", "--load-config", config_path, "--output-dir", tmp_path / "export"]
    code, out, err = run_tool(args, cwd=cwd, env=ENV)
    assert_one_line_error(code, out, err, "transforms.json", "not valid JSON")
    assert_unchanged(before, data, cwd)
