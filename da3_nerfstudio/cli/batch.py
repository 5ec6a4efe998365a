"""``da3-process-data batch``: many captures -> one dataset each, on a pool of Ray workers.

Each capture (a folder of images, a video, a predictions ``.npz``; glob patterns are expanded) becomes
``OUTPUT_ROOT/<capture name>/``, written by the same command object the single-capture subcommand runs, with
the same settings. Without ``--ray-address`` the workers run on a local Ray runtime bound to 127.0.0.1 (see
:mod:`da3_nerfstudio.cluster.runtime`). A rerun skips datasets whose manifest fingerprint matches the inputs
and settings (:func:`da3_nerfstudio.output_folder.dataset_is_current`). The run ends with a table and
``OUTPUT_ROOT/batch.json``, and fails (exit 1) when any capture failed.
"""

from __future__ import annotations

import glob
import json
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import tyro
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from da3_nerfstudio.cluster.pool import (
    EXPORT_DIR,
    Job,
    Outcome,
    PoolEvents,
    default_worker_count,
    run_jobs,
    run_training,
    start_workers,
    training_is_current,
    worker_device,
    worker_resources,
)
from da3_nerfstudio.cluster.runtime import connect, disconnect
from da3_nerfstudio.errors import DA3Error, InputError
from da3_nerfstudio.output_folder import check_output_dir, dataset_is_current
from da3_nerfstudio.process import (
    IMAGE_SUFFIXES,
    ImagesCommand,
    PredictionsCommand,
    VideoCommand,
    _Network,
    console,
)

#: The batch's record, next to the datasets.
BATCH_RECORD = "batch.json"
_KINDS = {"images": ImagesCommand, "video": VideoCommand, "predictions": PredictionsCommand}


@dataclass(kw_only=True)
class BatchCommand(_Network):
    """Many captures (image folders, videos, predictions .npz; globs expanded) -> one dataset each, on Ray
    workers that each load the model once. A rerun skips the datasets that are up to date."""

    inputs: list[str]
    """Captures: image folders, video files, predictions .npz files, or glob patterns of them."""
    output_root: Path
    """Each capture becomes OUTPUT_ROOT/<capture name>/; the run's table is written to OUTPUT_ROOT/batch.json."""
    num_frames_target: int = VideoCommand.num_frames_target
    """Frames extracted from each video capture, evenly spaced."""
    cpus_per_worker: float = 1.0
    """CPUs Ray reserves for each worker."""
    gpus_per_worker: float | None = None
    """GPUs Ray reserves for each worker (default: 1 when the cluster has GPUs, else 0)."""
    train_iterations: int = 0
    """Then train each dataset for this many iterations (ns-train da3-splat, one Ray task with the workers'
    resources each) and export its splats to <dataset>/export/splat.ply (ns-export); 0: no training."""
    data: tyro.conf.Suppress[Path] = Path()
    output_dir: tyro.conf.Suppress[Path] = Path()
    known_poses: tyro.conf.Suppress[Path | None] = None

    def main(self) -> list[dict]:
        self._check()
        self._options()
        if self.num_frames_target < 2:
            raise InputError(f"--num-frames-target must be at least 2, got {self.num_frames_target}")
        if self.train_iterations < 0:
            raise InputError(f"--train-iterations must be 0 (off) or more, got {self.train_iterations}")
        if self.cpus_per_worker < 0 or (self.gpus_per_worker is not None and self.gpus_per_worker < 0):
            raise InputError("--cpus-per-worker and --gpus-per-worker must not be negative")
        captures = expand_captures(self.inputs)
        jobs = [self._job(name, kind, path) for name, kind, path in captures]
        rows, todo = [], []
        for job in jobs:
            current, why = dataset_is_current(job.output, job.command.fingerprint())
            if current:
                rows.append(_skipped(job, f"{why}: same inputs and settings"))
            else:
                todo.append(job)
        start = time.perf_counter()
        trained: list[Outcome] = []
        untrained = self.train_iterations and not all(
            training_is_current(j.output, self.train_iterations) for j in jobs
        )
        if todo or untrained:
            rows, trained = self._run(todo, rows)
        elif self.train_iterations:
            trained = [_trained_already(r) for r in rows]
        order = {job.name: i for i, job in enumerate(jobs)}
        rows.sort(key=lambda r: order[r.capture])
        record = {"captures": [asdict(r) for r in rows], "training": [asdict(r) for r in trained]}
        _write_record(self.output_root / BATCH_RECORD, record, time.perf_counter() - start)
        _print_table(rows, f"Batch in {self.output_root}")
        if trained:
            _print_table(trained, f"Training ({self.train_iterations} iterations) and export")
        failed = [r for r in rows + trained if r.status == "failed"]
        if failed:
            what = ", ".join(r.capture + (" (training)" if r.kind == "train" else "") for r in failed)
            raise DA3Error(
                f"{len(failed)} of {len(rows) + len(trained)} captures failed ({what}); "
                f"see {self.output_root / BATCH_RECORD}"
            )
        return record

    def _job(self, name: str, kind: str, path: Path) -> Job:
        cls = _KINDS[kind]
        out = self.output_root / name
        own = {"data": path, "output_dir": out, "workers": None, "ray_address": None}
        command = cls(**{f.name: own.get(f.name, getattr(self, f.name, None)) for f in fields(cls)})
        check_output_dir(out, overwrite=self.overwrite, inputs=command._inputs())
        return Job(name, kind, str(path), out, command)

    def _run(self, jobs: list[Job], rows: list[Outcome]) -> tuple[list[Outcome], list[Outcome]]:
        """Captures on the worker pool, then (with --train-iterations) training tasks; (captures, training)."""
        local_cpus = None
        if self.ray_address is None:
            local_cpus = max(os.cpu_count() or 1, int((self.workers or 1) * self.cpus_per_worker + 0.999))
        runtime = connect(self.ray_address, num_cpus=local_cpus)
        import ray  # after connect(), which sets Ray's loopback switch before the first import

        try:
            where = "local Ray runtime" if runtime.local else "Ray cluster"
            console.print(f"{where} at {runtime.address} (node {runtime.node_ip})")
            if runtime.dashboard_url:
                console.print(f"Ray dashboard: http://{runtime.dashboard_url}")
            cpus, gpus = worker_resources(self.cpus_per_worker, self.gpus_per_worker)
            count = min(self.workers or default_worker_count(cpus, gpus), len(jobs))
            device = worker_device(self.device, gpus)
            for job in jobs:
                job.command.device = device
            if jobs:
                workers = start_workers(count, self.model, device, cpus, gpus, self.precision)
                with _BatchProgress(count, len(jobs)) as events:
                    rows = rows + run_jobs(jobs, workers, events)
                for worker in workers:  # their resources go to the training tasks
                    ray.kill(worker)
            if not self.train_iterations:
                return rows, []
            ready = [(r.capture, Path(r.output)) for r in rows if r.status in ("done", "skipped")]
            current = [(n, p) for n, p in ready if training_is_current(p, self.train_iterations)]
            trained = [_trained_already(r) for r in rows if (r.capture, Path(r.output)) in current]
            todo = [(n, p) for n, p in ready if (n, p) not in current]
            if todo:
                with _BatchProgress(0, len(todo)) as events:
                    trained += run_training(todo, self.train_iterations, cpus, gpus, events)
            return rows, trained
        finally:
            disconnect()


def capture_kind(path: Path) -> str:
    """images (a folder), predictions (.npz) or video (any other file)."""
    if path.is_dir():
        return "images"
    return "predictions" if path.suffix.lower() == ".npz" else "video"


def expand_captures(patterns: list[str]) -> list[tuple[str, str, Path]]:
    """(name, kind, path) of each capture, glob patterns expanded; missing inputs and two captures with one
    output name are refused before anything runs."""
    if not patterns:
        raise InputError("--inputs: no captures given")
    paths: list[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(Path(p) for p in glob.glob(pattern))
            if not matches:
                raise InputError(f"{pattern}: no capture matches this pattern")
            paths += matches
        elif not Path(pattern).exists():
            raise InputError(f"{pattern}: no such capture (image folder, video or predictions .npz)")
        else:
            paths.append(Path(pattern))
    by_name: dict[str, Path] = {}
    captures = []
    for path in dict.fromkeys(paths):  # a capture named twice is one capture
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            raise InputError(f"{path}: a single image is not a capture; pass the folder that holds the photos")
        name = path.name if path.is_dir() else path.stem
        if name in by_name:
            raise InputError(f"{by_name[name]} and {path} would both be written to <output-root>/{name}; rename one")
        by_name[name] = path
        captures.append((name, capture_kind(path), path))
    return captures


def _skipped(job: Job, why: str) -> Outcome:
    return Outcome(job.name, job.kind, job.source, str(job.output), "skipped", 0.0, why)


def _trained_already(row: Outcome) -> Outcome:
    out = Path(row.output)
    return Outcome(
        row.capture, "train", str(out), str(out / EXPORT_DIR), "skipped", 0.0, "up to date: trained from this dataset"
    )


class _BatchProgress(PoolEvents):
    """One live line per worker plus the overall count and ETA (rich); plain lines without a terminal."""

    def __init__(self, workers: int, total: int) -> None:
        columns = (TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        self.bars = Progress(*columns, TimeRemainingColumn(), console=console, disable=not console.is_terminal)
        self.lines = [self.bars.add_task(f"worker {i + 1}: idle", total=None) for i in range(workers)]
        self.overall = self.bars.add_task("captures", total=total)
        self.since: dict[int, tuple[str, float]] = {}

    def __enter__(self) -> _BatchProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def _say(self, text: str) -> None:
        if not console.is_terminal:
            console.print(text)

    def started(self, worker: int, job: Job) -> None:
        self.since[worker] = (f"{job.name} ({job.kind}, attempt {job.attempts})", time.perf_counter())
        self._say(f"worker {worker + 1}: {job.name} started (attempt {job.attempts})")

    def finished(self, worker: int, job: Job | None, outcome: Outcome) -> None:
        self.since.pop(worker, None)
        self.bars.advance(self.overall)
        tail = f": {outcome.error}" if outcome.error else ""
        who = f"worker {worker + 1}: " if worker >= 0 else ""
        self._say(f"{who}{outcome.capture} ({outcome.kind}) {outcome.status} in {outcome.seconds:.1f} s{tail}")

    def worker_died(self, worker: int, job: Job, error: str) -> None:
        self.since.pop(worker, None)
        self._say(f"worker {worker + 1}: {job.name}: {error}; retrying")

    def tick(self) -> None:
        now = time.perf_counter()
        for worker, task in enumerate(self.lines):
            what, since = self.since.get(worker, ("idle", now))
            self.bars.update(task, description=f"worker {worker + 1}: {what} {now - since:.0f} s")


def _write_record(path: Path, record: dict, seconds: float) -> None:
    """``batch.json``, atomically (a reader never sees half of it)."""
    counts = {s: sum(r["status"] == s for r in record["captures"]) for s in ("done", "skipped", "failed")}
    record = {**record, "counts": counts, "seconds": round(seconds, 3)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _print_table(rows: list[Outcome], title: str) -> None:
    table = Table(title=title)
    for column in ("capture", "status", "seconds", "error"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r.capture, r.status, f"{r.seconds:.1f}", r.error)
    console.print(table)
