"""``da3.run_process``: the subprocess runner against a stand-in DA3 environment.

The stand-in is a real virtual environment with a ``da3-process-data`` console script (installed as
package metadata, the way pip installs the project), so the add-on's entry-point lookup, argument
passing, output draining, progress parsing, cancelling and result import are all exercised for real.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import bpy
import pytest

FAKE_MAIN = textwrap.dedent(
    """
    import argparse, json, math, sys, time
    from pathlib import Path

    def main():
        parser = argparse.ArgumentParser()
        parser.add_argument("kind")
        parser.add_argument("--data", type=Path)
        parser.add_argument("--output-dir", type=Path)
        parser.add_argument("--views", type=int, default=2)
        args = parser.parse_args()
        if (args.data / "fail").exists():
            print("loading model", flush=True)
            raise RuntimeError("checkpoint not found: model.safetensors")
        if (args.data / "slow").exists():
            print("50%", flush=True)
            time.sleep(120)
        args.output_dir.mkdir(parents=True, exist_ok=True)
        frames = []
        for i in range(args.views):
            print(f"Processing {i + 1}/{args.views}", flush=True)
            frames.append({"file_path": f"images/frame_{i:05d}.png", "fl_x": 100.0, "fl_y": 100.0,
                           "cx": 64.0, "cy": 48.0, "w": 128, "h": 96,
                           "transform_matrix": [[1, 0, 0, i], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]})
        (args.output_dir / "transforms.json").write_text(json.dumps({"frames": frames}))
        print(f"kind={args.kind}", flush=True)
    """
)


@pytest.fixture(scope="module")
def fake_env(tmp_path_factory) -> Path:
    """A bare venv (no site packages) whose only console script is a stand-in da3-process-data."""
    env = tmp_path_factory.mktemp("da3env") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    site = next((env / "lib").glob("python3*/site-packages"))
    (site / "fake_da3.py").write_text(FAKE_MAIN)
    dist = site / "fake_da3-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-da3\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[console_scripts]\nda3-process-data = fake_da3:main\n")
    return env


def configure(fake_env: Path | str, input_path: Path, output: Path, extra: str = "") -> None:
    prefs = bpy.context.preferences.addons["da3_blender"].preferences
    prefs.python_path = str(fake_env)
    prefs.extra_args = extra
    state = bpy.context.scene.da3
    state.input_path, state.output_dir = str(input_path), str(output)


def run_until_done(limit_s: float = 60.0) -> None:
    """Drive the timer callback by hand (module-mode Blender has no event loop)."""
    from da3_blender.run_da3 import JOBS, poll_jobs

    deadline = time.monotonic() + limit_s
    while JOBS and time.monotonic() < deadline:
        poll_jobs()
        time.sleep(0.05)
    assert not JOBS, "DA3 process did not finish"


def test_run_process_imports_the_result(addon, fake_env, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    configure(fake_env, images, tmp_path / "out", extra="--views 3")
    assert bpy.ops.da3.run_process() == {"FINISHED"}
    assert bpy.context.scene.da3.running
    run_until_done()
    state = bpy.context.scene.da3
    assert not state.failed and not state.running, state.status
    assert state.status.startswith("Imported") and state.progress == 1.0
    assert sorted(o.name for o in bpy.data.objects if o.type == "CAMERA") == [f"frame_{i:05d}" for i in range(3)]


def test_video_input_and_progress(addon, fake_env, tmp_path):
    from da3_blender.process_job import ProcessJob, process_command, resolve_python

    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\0")
    job = ProcessJob(process_command(resolve_python(str(fake_env)), video, tmp_path / "o", ["--views", "4"]), tmp_path)
    assert job.wait(60) == 0
    assert job.last_line == "kind=video"
    assert job.progress == 1.0 and "Processing 4/4" in job.lines


def test_failure_is_shown_in_the_panel(addon, fake_env, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "fail").touch()
    configure(fake_env, images, tmp_path / "out")
    bpy.ops.da3.run_process()
    run_until_done()
    state = bpy.context.scene.da3
    assert state.failed and not state.running
    assert "da3-process-data failed" in state.status and "checkpoint not found" in state.status
    assert not [o for o in bpy.data.objects if o.type == "CAMERA"]


def test_cancel_stops_the_process(addon, fake_env, tmp_path):
    from da3_blender.run_da3 import JOBS, poll_jobs

    images = tmp_path / "images"
    images.mkdir()
    (images / "slow").touch()
    configure(fake_env, images, tmp_path / "out")
    bpy.ops.da3.run_process()
    job = JOBS[bpy.context.scene.name]
    deadline = time.monotonic() + 30
    while job.progress is None and time.monotonic() < deadline:
        time.sleep(0.05)
    poll_jobs()
    assert bpy.context.scene.da3.progress == pytest.approx(0.5) and bpy.context.scene.da3.running
    assert bpy.ops.da3.cancel_process() == {"FINISHED"}
    assert not JOBS and job.poll() is not None
    assert bpy.context.scene.da3.status == "Cancelled" and not bpy.context.scene.da3.running


@pytest.mark.parametrize(
    ("python", "message"),
    [("", "DA3 Python environment is not set"), ("/nonexistent/bin/python", "interpreter not found")],
)
def test_missing_environment_gives_a_clear_message(addon, tmp_path, python, message):
    configure(python, tmp_path, tmp_path / "out")
    with pytest.raises(RuntimeError, match=message):
        bpy.ops.da3.run_process()
    assert bpy.context.scene.da3.failed and message in bpy.context.scene.da3.status


def test_missing_input_gives_a_clear_message(addon, fake_env, tmp_path):
    configure(fake_env, tmp_path / "nope", tmp_path / "out")
    with pytest.raises(RuntimeError, match="input images folder or video not found"):
        bpy.ops.da3.run_process()


def test_environment_without_da3_says_so(addon, tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    (tmp_path / "images").mkdir()
    configure(bare, tmp_path / "images", tmp_path / "out")
    bpy.ops.da3.run_process()
    run_until_done()
    assert "da3-process-data is not installed" in bpy.context.scene.da3.status
