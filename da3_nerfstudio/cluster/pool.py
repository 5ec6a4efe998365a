"""A pool of Ray actors, each holding one model, that run whole captures or single network passes.

A worker loads its model on first use and keeps it (:func:`da3_nerfstudio.predictor.shared_predictor`),
so a batch of N captures on K workers loads the model K times, not N. A worker process that dies (kill -9,
a lost node) is restarted by Ray (``max_restarts``) and its capture is given to the queue again; the
staging folder it left is removed (:func:`da3_nerfstudio.dataset.remove_stale_staging`), so no half-written
dataset remains. A capture that fails on its own input is a result, not a fault: it is reported and the
other captures go on.
"""

from __future__ import annotations

import contextlib
import os
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

    def __init__(self, model: str, device: str | None) -> None:
        self.model = model
        self.device = device

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

        return shared_predictor(self.model, self.device)


def start_workers(count: int, model: str, device: str | None, cpus: float, gpus: float) -> list[Any]:
    """``count`` workers with ``cpus`` CPUs and ``gpus`` GPUs each (Ray schedules them where those are free)."""
    import ray

    if count < 1:
        raise DA3Error(f"--workers must be at least 1, got {count}")
    actor = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=MAX_RESTARTS, max_task_retries=0)(CaptureWorker)
    return [actor.options(name=None).remote(model, device) for _ in range(count)]


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

    def finished(self, worker: int, job: Job, outcome: Outcome) -> None: ...

    def worker_died(self, worker: int, job: Job, error: str) -> None: ...

    def tick(self) -> None: ...


def run_jobs(jobs: list[Job], workers: list[Any], events: PoolEvents) -> list[Outcome]:
    """Run ``jobs`` on ``workers`` (each takes the next job when free) and return one outcome per job.

    A job whose worker died is retried (up to MAX_ATTEMPTS) after the dead process's staging folder is
    removed; a job that failed on its input is reported once."""
    import ray
    from ray.exceptions import RayActorError

    from da3_nerfstudio.dataset import remove_stale_staging

    queue = deque(jobs)
    idle = deque(range(len(workers)))
    running: dict[Any, tuple[int, Job, float]] = {}
    outcomes: dict[str, Outcome] = {}
    restarts: dict[str, int] = {}
    while queue or running:
        while queue and idle:
            worker, job = idle.popleft(), queue.popleft()
            job.attempts += 1
            running[workers[worker].run.remote(job.command)] = (worker, job, time.perf_counter())
            events.started(worker, job)
        ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
        events.tick()
        for ref in ready:
            worker, job, start = running.pop(ref)
            idle.append(worker)
            try:
                result = ray.get(ref)
            except RayActorError as err:
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

        w2c_ref = ray.put(w2c)
        refs = [
            self.workers[i % len(self.workers)].predict_chunk.remote(window, w2c_ref, options)
            for i, window in enumerate(windows)
        ]
        for ref in refs:
            yield ray.get(ref)


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
    address: str | None, workers: int | None, model: str, device: str | None
) -> Iterator[ActorChunkRunner]:
    """A pool on the cluster at ``address`` (or a local loopback runtime) running one capture's chunks."""
    import ray

    local_cpus = max(os.cpu_count() or 1, workers or 1) if address is None else None
    connect(address, num_cpus=local_cpus)
    try:
        cpus, gpus = worker_resources(1.0, None)
        actors = start_workers(
            workers or default_worker_count(cpus, gpus), model, worker_device(device, gpus), cpus, gpus
        )
        yield ActorChunkRunner(actors)
        for actor in actors:
            ray.kill(actor)
    finally:
        disconnect()
