"""A pool of Ray actors, each holding one model, that run whole captures or single network passes.

A worker loads its model on first use and keeps it (:func:`da3_nerfstudio.predictor.shared_predictor`),
so a batch of N captures on K workers loads the model K times, not N. A worker process that dies (kill -9,
a lost node) is restarted by Ray (``max_restarts``) and its capture is given to the queue again; the
staging folder it left is removed (:func:`da3_nerfstudio.output_folder.remove_stale_staging`), so no half-written
dataset remains. A capture that fails on its own input is a result, not a fault: it is reported and the
other captures go on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from da3_nerfstudio.cluster.runtime import connect, disconnect, first_line
from da3_nerfstudio.errors import DA3Error

#: How often Ray restarts one worker process, and how often a capture is retried after its worker died.
MAX_RESTARTS = 3
MAX_ATTEMPTS = 3
#: Seconds between progress updates while captures run.
POLL_S = 0.25


class CaptureWorker:
    """One worker of the pool (a Ray actor): runs capture commands and network passes with its model."""

    def __init__(self, model: str, device: str | None, precision: str = "auto") -> None:
        self.model = model
        self.device = device
        self.precision = precision

    def pid(self) -> int:
        return os.getpid()

    def run(self, command: Any) -> dict[str, Any]:
        """Run one ``da3-process-data`` command object (images, video or predictions) and report its outcome;
        an error of the capture's own input is returned, not raised, so the worker stays up."""
        start = time.perf_counter()
        try:
            summary = command.main()
        except DA3Error as err:
            return {"status": "failed", "seconds": time.perf_counter() - start, "error": str(err)}
        return {"status": "done", "seconds": time.perf_counter() - start, "views": summary.views}

    def views_per_chunk(self, height: int, width: int) -> int:
        from da3_nerfstudio.predictor import default_views_per_chunk

        predictor = self._predictor()
        return default_views_per_chunk(predictor.model, height, width, predictor.device)

    def predict_chunk(self, window: Any, w2c: np.ndarray | None, options: dict) -> dict[str, np.ndarray]:
        return self._predictor().predict_chunk(window, w2c, options)

    def _predictor(self) -> Any:
        from da3_nerfstudio.predictor import shared_predictor

        return shared_predictor(self.model, self.device, self.precision)


def start_workers(
    count: int, model: str, device: str | None, cpus: float, gpus: float, precision: str = "auto"
) -> list[Any]:
    """``count`` workers with ``cpus`` CPUs and ``gpus`` GPUs each (Ray schedules them where those are free),
    each running the model at ``precision`` (see :class:`~da3_nerfstudio.predictor.DA3Predictor`)."""
    import ray

    if count < 1:
        raise DA3Error(f"--workers must be at least 1, got {count}")
    actor = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=MAX_RESTARTS, max_task_retries=0)(CaptureWorker)
    return [actor.options(name=None).remote(model, device, precision) for _ in range(count)]


def default_worker_count(cpus: float, gpus: float) -> int:
    """Workers the cluster has room for: one per ``gpus`` GPUs, else one per ``cpus`` CPUs."""
    import ray

    resources = ray.cluster_resources()
    if gpus > 0:
        return max(1, int(resources.get("GPU", 0) // gpus))
    return max(1, int(resources.get("CPU", 1) // max(cpus, 1e-3)))


@dataclass
class Job:
    """One capture of a batch: the command that makes its dataset."""

    name: str
    kind: str
    source: str
    output: Path
    command: Any
    attempts: int = 0


@dataclass
class Outcome:
    """What became of one capture (a row of the batch table and of ``batch.json``)."""

    capture: str
    kind: str
    input: str
    output: str
    status: str  # done / skipped / failed
    seconds: float = 0.0
    error: str = ""
    attempts: int = 0
    worker_restarts: int = 0


class PoolEvents:
    """What the batch runner tells its progress display (override what you show)."""

    def started(self, worker: int, job: Job) -> None: ...

    def finished(self, worker: int, job: Job | None, outcome: Outcome) -> None: ...

    def worker_died(self, worker: int, job: Job, error: str) -> None: ...

    def tick(self) -> None: ...


def run_jobs(jobs: list[Job], workers: list[Any], events: PoolEvents) -> list[Outcome]:
    """Run ``jobs`` on ``workers`` (each takes the next job when free) and return one outcome per job.

    A job whose worker died is retried (up to MAX_ATTEMPTS) after the dead process's staging folder is
    removed; a job that failed on its input is reported once."""
    import ray
    from ray.exceptions import RayActorError

    from da3_nerfstudio.output_folder import remove_stale_staging

    queue = deque(jobs)
    idle = deque(range(len(workers)))
    running: dict[Any, tuple[int, Job, float]] = {}
    # A worker whose process died gets work again once Ray has restarted it: a probe that waits for that.
    probing: dict[Any, int] = {}
    outcomes: dict[str, Outcome] = {}
    restarts: dict[str, int] = {}
    while queue or running:
        if queue and not (idle or running or probing):
            job = queue.popleft()
            gone = "no worker left (each died more often than Ray restarts it)"
            outcomes[job.name] = Outcome(
                job.name, job.kind, job.source, str(job.output), "failed", 0.0, gone, job.attempts
            )
            continue
        while queue and idle:
            worker, job = idle.popleft(), queue.popleft()
            job.attempts += 1
            running[workers[worker].run.remote(job.command)] = (worker, job, time.perf_counter())
            events.started(worker, job)
        ready, _ = ray.wait([*running, *probing], num_returns=1, timeout=POLL_S)
        events.tick()
        for ref in ready:
            if ref in probing:
                worker = probing.pop(ref)
                with contextlib.suppress(RayActorError):  # restarted: back to work; else gone for good
                    ray.get(ref)
                    idle.append(worker)
                continue
            worker, job, start = running.pop(ref)
            try:
                result = ray.get(ref)
                idle.append(worker)
            except RayActorError as err:
                probing[workers[worker].pid.options(max_task_retries=-1).remote()] = worker
                remove_stale_staging(job.output)
                restarts[job.name] = restarts.get(job.name, 0) + 1
                line = f"worker process died during attempt {job.attempts} ({first_line(err)})"
                events.worker_died(worker, job, line)
                if job.attempts < MAX_ATTEMPTS:
                    queue.appendleft(job)
                    continue
                result = {"status": "failed", "seconds": time.perf_counter() - start, "error": line}
            outcome = Outcome(
                job.name,
                job.kind,
                job.source,
                str(job.output),
                result["status"],
                round(result["seconds"], 3),
                result.get("error", ""),
                job.attempts,
                restarts.get(job.name, 0),
            )
            outcomes[job.name] = outcome
            events.finished(worker, job, outcome)
    return [outcomes[job.name] for job in jobs]


class ActorChunkRunner:
    """Runs the predictor's chunks on the pool, all at once, and yields their results in order
    (:class:`da3_nerfstudio.predictor.ChunkRunner`)."""

    def __init__(self, workers: list[Any]) -> None:
        self.workers = workers

    def views_per_chunk(self, height: int, width: int) -> int:
        import ray

        return min(ray.get([w.views_per_chunk.remote(height, width) for w in self.workers]))

    def run(self, windows: Iterable[Any], w2c: np.ndarray | None, options: dict) -> Iterator[dict[str, np.ndarray]]:
        import ray
        from ray.exceptions import RayError

        w2c_ref = ray.put(w2c)
        refs = [  # a pass is pure: Ray reruns it when its worker died (after restarting the worker)
            self.workers[i % len(self.workers)]
            .predict_chunk.options(max_task_retries=MAX_ATTEMPTS)
            .remote(window, w2c_ref, options)
            for i, window in enumerate(windows)
        ]
        for i, ref in enumerate(refs):
            try:
                result = ray.get(ref)
            except RayError as err:
                raise DA3Error(f"chunk {i + 1} of {len(refs)} failed on its Ray worker ({first_line(err)})") from None
            # Arrays from the object store are read-only views; alignment updates the chunk in place.
            yield {key: np.array(value) for key, value in result.items()}


def worker_resources(cpus: float, gpus: float | None) -> tuple[float, float]:
    """(CPUs, GPUs) per worker: GPUs default to one per worker when the cluster has any, else none."""
    import ray

    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return cpus, gpus


def worker_device(device: str | None, gpus: float) -> str:
    """A worker's torch device: the one asked for, else the GPU Ray gave it, else the CPU."""
    return device or ("cuda" if gpus > 0 else "cpu")


@contextlib.contextmanager
def chunk_runner(
    address: str | None, workers: int | None, model: str, device: str | None, precision: str = "auto"
) -> Iterator[ActorChunkRunner]:
    """A pool on the cluster at ``address`` (or a local loopback runtime) running one capture's chunks."""
    local_cpus = max(os.cpu_count() or 1, workers or 1) if address is None else None
    connect(address, num_cpus=local_cpus)
    import ray  # after connect(), which sets Ray's loopback switch before the first import

    try:
        cpus, gpus = worker_resources(1.0, None)
        actors = start_workers(
            workers or default_worker_count(cpus, gpus), model, worker_device(device, gpus), cpus, gpus, precision
        )
        yield ActorChunkRunner(actors)
        for actor in actors:
            ray.kill(actor)
    finally:
        disconnect()


#: A trained dataset's splats: ``<dataset>/export/splat.ply`` (ns-export) with the stamp saying how they were made.
EXPORT_DIR = "export"
TRAIN_STAMP = "trained.json"


def training_is_current(dataset: Path, iterations: int) -> bool:
    """Whether ``dataset/export`` holds splats trained for ``iterations`` on this very dataset (its fingerprint)."""
    from da3_nerfstudio.output_folder import MANIFEST

    try:
        stamp = json.loads((dataset / EXPORT_DIR / TRAIN_STAMP).read_text())
        manifest = json.loads((dataset / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    wanted = {"iterations": iterations, "dataset": manifest.get("fingerprint")}
    return stamp == wanted and (dataset / EXPORT_DIR / "splat.ply").is_file()


def train_dataset(dataset: str, iterations: int) -> dict[str, Any]:
    """``ns-train da3-splat`` for ``iterations`` on one dataset (no viewer: it would listen on every interface),
    then ``ns-export gaussian-splat``; the export folder is swapped in whole, with its stamp, so a killed run
    leaves the previous export or none. A Ray task: a worker that dies is retried by Ray."""
    from da3_nerfstudio.output_folder import MANIFEST

    folder = Path(dataset)
    bin_dir = Path(sys.executable).parent
    start = time.perf_counter()
    run = folder / "train"
    never = str(10**9)
    steps = [
        [str(bin_dir / "ns-train"), "da3-splat", "--data", str(folder), "--output-dir", str(run),
         "--experiment-name", "splat", "--timestamp", "run", "--max-num-iterations", str(iterations),
         "--vis", "tensorboard", "--steps-per-eval-image", never, "--steps-per-eval-all-images", never],
    ]  # fmt: skip
    stage = folder / f".{EXPORT_DIR}.{os.getpid()}.new"
    config = run / "splat" / "da3-splat" / "run" / "config.yml"
    steps.append(
        [str(bin_dir / "ns-export"), "gaussian-splat", "--load-config", str(config), "--output-dir", str(stage)]
    )
    try:
        for command in steps:
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
                tail = lines[-1].strip() if lines else f"exit status {result.returncode}"
                return {"status": "failed", "seconds": time.perf_counter() - start, "error": f"{command[0]}: {tail}"}
        fingerprint = json.loads((folder / MANIFEST).read_text()).get("fingerprint")
        (stage / TRAIN_STAMP).write_text(json.dumps({"iterations": iterations, "dataset": fingerprint}))
        old = folder / f".{EXPORT_DIR}.{os.getpid()}.old"
        if (folder / EXPORT_DIR).exists():
            os.rename(folder / EXPORT_DIR, old)
        os.rename(stage, folder / EXPORT_DIR)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {"status": "done", "seconds": time.perf_counter() - start}


def run_training(
    datasets: list[tuple[str, Path]], iterations: int, cpus: float, gpus: float, events: PoolEvents
) -> list[Outcome]:
    """Train each dataset as its own Ray task (``gpus`` GPUs each), Ray retrying a task whose worker died."""
    import ray
    from ray.exceptions import RayError

    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=MAX_ATTEMPTS - 1)(train_dataset)
    refs = {task.remote(str(path), iterations): (name, path) for name, path in datasets}
    outcomes: dict[str, Outcome] = {}
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
        events.tick()
        for ref in ready:
            name, path = refs[ref]
            try:
                result = ray.get(ref)
            except RayError as err:
                result = {"status": "failed", "seconds": 0.0, "error": f"training task failed ({first_line(err)})"}
            outcome = Outcome(name, "train", str(path), str(path / EXPORT_DIR), result["status"],
                              round(result["seconds"], 3), result.get("error", ""), 1)  # fmt: skip
            outcomes[name] = outcome
            events.finished(-1, None, outcome)
    return [outcomes[name] for name, _ in datasets]
