"""``da3-process-data batch`` and ``--workers`` on a local Ray runtime (and a joined one), end to end.

Every run is a subprocess of the console script, as a user runs it; the test watches the Ray processes it
starts (the run's process tree) to check that they listen and connect on 127.0.0.1 only, kills one worker
with SIGKILL mid-capture, and stops what it started. Datasets are compared with the single-capture command's
output (bytes where the writer is deterministic, values where the network runs with other thread counts).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from da3_fixtures import write_checkpoint
from samples import ROOM, SOH, VIDEO
from test_dataset import leftovers, room_gt, tree_digest

from da3_nerfstudio import Prediction
from da3_nerfstudio.cli.batch import BATCH_RECORD
from da3_nerfstudio.cluster.runtime import LOOPBACK, LOOPBACK_ENV
from da3_nerfstudio.formats.transforms import read_transforms_json
from da3_nerfstudio.output_folder import MANIFEST

pytestmark = pytest.mark.skipif(
    not (ROOM.is_dir() and SOH.is_dir() and VIDEO.is_file()), reason="sample data not found"
)
FAST = ["--process-res", "112", "--num-points", "3000", "--num-gaussians", "5000", "--num-frames-target", "4"]
LOOPBACK_IPS = {LOOPBACK, "::ffff:127.0.0.1"}
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("checkpoint") / "da3-small", "da3-small")


@pytest.fixture(scope="module")
def room_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The room's ground truth as an official DA3 predictions npz (a capture that needs no network)."""
    gt = room_gt()
    path = tmp_path_factory.mktemp("npz") / "room.npz"
    np.savez(path, depth=gt["depth"], conf=np.ones_like(gt["depth"]), extrinsics=gt["w2c"][:, :3].astype(np.float32),
             intrinsics=gt["K"].astype(np.float32), image=gt["images"])  # fmt: skip
    return path


class Watch:
    """A console-script run whose process tree is sampled while it runs: listening sockets, remote peers."""

    def __init__(self, args: list, env: dict | None = None) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "da3-process-data"), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.listening: set[tuple[str, int, str]] = set()
        self.peers: set[str] = set()
        self.killed: list[str] = []

    def tree(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def sample(self) -> None:
        for child in self.tree():
            try:
                title = " ".join(child.cmdline())[:60]
                for conn in child.net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN:
                        self.listening.add((conn.laddr.ip, conn.laddr.port, title))
                    elif conn.raddr:
                        self.peers.add(conn.raddr.ip)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue

    def kill_a_worker_mid_capture(self) -> bool:
        """SIGKILL the first worker seen running a capture (after it has run a moment); True once done."""
        for child in self.tree():
            try:
                if " ".join(child.cmdline()).startswith("ray::CaptureWorker.run"):
                    time.sleep(0.3)
                    if " ".join(child.cmdline()).startswith("ray::CaptureWorker.run"):
                        child.send_signal(signal.SIGKILL)
                        self.killed.append(str(child.pid))
                        return True
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        return False

    def wait(self, kill_one: bool = False, timeout: float = 600) -> tuple[int, str, str]:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.sample()
            if kill_one and not self.killed:
                self.kill_a_worker_mid_capture()
            time.sleep(0.25)
        if self.proc.poll() is None:
            self.proc.kill()
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, err

    def assert_loopback_only(self) -> None:
        assert self.listening, "no listening socket of the Ray processes was seen"
        exposed = sorted(s for s in self.listening if s[0] not in LOOPBACK_IPS)
        assert not exposed, f"Ray processes listening beyond loopback: {exposed}"
        assert self.peers <= LOOPBACK_IPS, f"Ray processes connected to {self.peers - LOOPBACK_IPS}"


def records(root: Path) -> dict[str, dict]:
    return {row["capture"]: row for row in json.loads((root / BATCH_RECORD).read_text())["captures"]}


def single(tmp: Path, kind: str, source: Path, checkpoint: Path) -> Path:
    """The dataset the single-capture command writes for ``source`` with the batch's settings."""
    out = tmp / "single" / (source.name if source.is_dir() else source.stem)
    model = [] if kind == "predictions" else ["--model", checkpoint]
    args = [kind, "--data", source, "--output-dir", out, *model, *single_options(kind)]
    result = subprocess.run([str(BIN / "da3-process-data"), *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out


def single_options(kind: str) -> list[str]:
    """The batch's options that the single-capture subcommand of ``kind`` has."""
    options = ["--num-points", "3000", "--num-gaussians", "5000"]
    if kind != "predictions":
        options += ["--process-res", "112"]
    if kind == "video":
        options += ["--num-frames-target", "4"]
    return options


def assert_same_dataset(batch: Path, alone: Path, exact: bool) -> None:
    """Same files; same bytes (``exact``) or the same predictions to float tolerance and the same images."""
    a, b = tree_digest(batch), tree_digest(alone)
    assert sorted(a) == sorted(b)
    ma, mb = (json.loads((d / MANIFEST).read_text()) for d in (batch, alone))
    assert ma["fingerprint"] == mb["fingerprint"]  # made from the same inputs and settings
    if exact:
        differ = [name for name in a if a[name] != b[name] and name != str(MANIFEST)]
        assert not differ, f"files differ from the single-capture dataset: {differ}"
        return
    assert {k: v for k, v in a.items() if k.startswith("images")} == {
        k: v for k, v in b.items() if k.startswith("images")
    }
    pa, pb = (Prediction.load(d / "da3" / "predictions.npz") for d in (batch, alone))
    for key in ("depth", "conf", "extrinsics", "intrinsics"):
        np.testing.assert_allclose(getattr(pa, key), getattr(pb, key), rtol=1e-4, atol=1e-5, err_msg=key)
    wa, ka, *_ = read_transforms_json(batch / "transforms.json")
    wb, kb, *_ = read_transforms_json(alone / "transforms.json")
    np.testing.assert_allclose(wa, wb, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ka, kb, rtol=1e-4, atol=1e-5)


def test_batch_with_a_killed_worker_a_corrupt_capture_and_resume(
    checkpoint: Path, room_npz: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    root = tmp_path / "batch"
    args = ["batch", "--inputs", SOH, VIDEO, room_npz, broken, "--output-root", root, "--model", checkpoint, *FAST,
            "--workers", "2"]  # fmt: skip
    watch = Watch(args)
    code, out, err = watch.wait(kill_one=True)
    assert code == 1, out + err
    assert "Traceback" not in out + err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        f"error: 1 of 4 captures failed (broken); see {root / BATCH_RECORD}"
    ]
    assert f"(node {LOOPBACK})" in out
    watch.assert_loopback_only()
    assert watch.killed, "no worker was seen running a capture"

    rows = records(root)
    assert [rows[n]["status"] for n in ("soh", "robot_unitree", "room", "broken")] == ["done"] * 3 + ["failed"]
    assert rows["broken"]["error"].startswith(f"{broken}: not a readable video")
    assert sum(r["worker_restarts"] for r in rows.values()) == 1  # the killed capture ran again, and only it
    assert all(r["attempts"] == 1 + r["worker_restarts"] for r in rows.values())
    # Nothing half-written: the three datasets and the record, no staging folder of the killed worker.
    assert sorted(p.name for p in root.iterdir()) == [BATCH_RECORD, "robot_unitree", "room", "soh"]
    assert leftovers(root) == []

    assert_same_dataset(root / "room", single(tmp_path, "predictions", room_npz, checkpoint), exact=True)
    assert_same_dataset(root / "soh", single(tmp_path, "images", SOH, checkpoint), exact=False)
    assert_same_dataset(root / "robot_unitree", single(tmp_path, "video", VIDEO, checkpoint), exact=False)

    # Resume: the finished datasets are skipped (not rewritten), a missing one is made again.
    mtimes = {p: p.stat().st_mtime_ns for name in ("soh", "room") for p in (root / name).rglob("*")}
    video_dataset = tree_digest(root / "robot_unitree")
    subprocess.run(["rm", "-r", str(root / "robot_unitree")], check=True)
    watch = Watch(args)
    code, out, err = watch.wait()
    assert code == 1, out + err
    rows = records(root)
    assert [rows[n]["status"] for n in ("soh", "robot_unitree", "room", "broken")] == [
        "skipped", "done", "skipped", "failed"
    ]  # fmt: skip
    assert rows["soh"]["error"] == "up to date: same inputs and settings"
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert sorted(tree_digest(root / "robot_unitree")) == sorted(video_dataset)
    watch.assert_loopback_only()


@pytest.fixture
def ray_head(tmp_path: Path):
    """``ray start --head`` on 127.0.0.1 with its own port and temp dir; stopped by pid afterwards (only the
    processes of this head: ``ray stop`` would stop every Ray runtime of the machine)."""
    port = _free_port()
    temp = Path(f"/tmp/da3t{os.getpid()}")  # Ray's socket paths must stay short
    # Token authentication with this test's own token (Ray 2.60 would otherwise use ~/.ray/auth_token if present).
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = {**os.environ, LOOPBACK_ENV: "0", **auth}
    command = [str(BIN / "ray"), "start", "--head", f"--node-ip-address={LOOPBACK}", f"--port={port}",
               f"--temp-dir={temp}", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        yield f"{LOOPBACK}:{port}", temp, auth
    finally:
        head = [p for p in psutil.process_iter(["cmdline"]) if str(temp) in " ".join(p.info["cmdline"] or [])]
        everything = {p.pid: p for h in head for p in [h, *_children(h)]}
        for proc in everything.values():
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(list(everything.values()), timeout=30)
        subprocess.run(["rm", "-rf", str(temp)], check=False)


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def test_batch_joins_an_explicit_cluster(ray_head: tuple[str, Path, dict], room_npz: Path, tmp_path: Path) -> None:
    address, temp, auth = ray_head
    head = [p for p in psutil.process_iter(["cmdline"]) if str(temp) in " ".join(p.info["cmdline"] or [])]
    listening = {
        (c.laddr.ip, c.laddr.port)
        for h in head
        for p in [h, *_children(h)]
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }
    assert listening and {ip for ip, _ in listening} <= LOOPBACK_IPS, listening
    root = tmp_path / "batch"
    args = ["batch", "--inputs", room_npz, "--output-root", root, "--ray-address", address, "--num-points", "3000",
            "--num-gaussians", "5000"]  # fmt: skip
    code, out, err = Watch(args, env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}).wait()  # a wrong token
    assert "Traceback" not in out + err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        f"error: --ray-address {address}: cannot connect to Ray (Failed to connect to Ray cluster at {address})"
    ], err
    assert not (root / "room").exists()
    code, out, err = Watch(args, env=auth).wait()
    assert code == 0, out + err
    assert f"Ray cluster at {address} (node {LOOPBACK})" in out
    assert records(root)["room"]["status"] == "done"
    assert_same_dataset(root / "room", single(tmp_path, "predictions", room_npz, Path()), exact=True)


def test_chunks_on_two_workers_equal_the_single_process_result(checkpoint: Path, tmp_path: Path) -> None:
    photos = ROOM / "rgb"  # 8 views, 3 chunks of 4 with 2 shared views each
    common = ["images", "--data", photos, "--model", checkpoint, "--process-res", "112", "--max-views-per-chunk", "4",
              "--num-points", "3000", "--num-gaussians", "5000"]  # fmt: skip
    results = {}
    for workers in (None, 1, 2):
        out = tmp_path / f"workers_{workers}"
        extra = [] if workers is None else ["--workers", str(workers)]
        watch = Watch([*common, "--output-dir", out, *extra])
        code, stdout, err = watch.wait()
        assert code == 0, stdout + err
        assert "inference: 3/3" in stdout
        if workers is not None:
            watch.assert_loopback_only()
        results[workers] = Prediction.load(out / "da3" / "predictions.npz")
    for workers in (1, 2):
        for key in ("depth", "conf", "extrinsics", "intrinsics"):
            np.testing.assert_allclose(
                getattr(results[workers], key), getattr(results[None], key), rtol=1e-4, atol=1e-5, err_msg=key
            )


def test_batch_trains_and_exports_each_dataset_then_resumes(room_npz: Path, tmp_path: Path) -> None:
    from da3_nerfstudio.formats.ply import read_splat_ply

    root = tmp_path / "batch"
    args = ["batch", "--inputs", room_npz, "--output-root", root, "--num-points", "3000", "--num-gaussians", "5000",
            "--train-iterations", "2", "--workers", "1"]  # fmt: skip
    watch = Watch(args)
    code, out, err = watch.wait()
    assert code == 0, out + err
    watch.assert_loopback_only()  # no viewer: ns-train runs with --vis tensorboard
    record = json.loads((root / BATCH_RECORD).read_text())
    assert [(r["capture"], r["kind"], r["status"]) for r in record["training"]] == [("room", "train", "done")]
    splat = root / "room" / "export" / "splat.ply"
    splats = read_splat_ply(splat)
    assert 0 < len(splats) <= 5000  # the 5000 initial Gaussians, trained (no densification in 2 steps)
    stamp = splat.stat().st_mtime_ns
    code, out, err = Watch(args).wait()
    assert code == 0, out + err
    assert "Ray" not in out  # everything up to date: no runtime started
    record = json.loads((root / BATCH_RECORD).read_text())
    assert record["captures"][0]["status"] == "skipped" and record["training"][0]["status"] == "skipped"
    assert splat.stat().st_mtime_ns == stamp


def test_captures_from_paths_and_glob_patterns(tmp_path: Path) -> None:
    from da3_nerfstudio.cli.batch import expand_captures

    for name in ("b_scene", "a_scene"):
        (tmp_path / name).mkdir()
    (tmp_path / "clip.MP4").write_bytes(b"")
    (tmp_path / "pred.npz").write_bytes(b"")
    captures = expand_captures([str(tmp_path / "*_scene"), str(tmp_path / "clip.MP4"), str(tmp_path / "*.npz"),
                                str(tmp_path / "a_scene")])  # fmt: skip
    assert captures == [
        ("a_scene", "images", tmp_path / "a_scene"),  # a capture named twice is one capture
        ("b_scene", "images", tmp_path / "b_scene"),
        ("clip", "video", tmp_path / "clip.MP4"),
        ("pred", "predictions", tmp_path / "pred.npz"),
    ]
