"""Throughput of ``da3-process-data batch`` on a local Ray runtime: captures per minute and the overhead per
capture beyond the work itself, for 1 and 2 workers, plus a model for N GPUs.

Each capture is the two sample photos of ``soh`` at ``--process-res`` with da3-small of RANDOM weights (a
local checkpoint written here): the timing is representative of the plumbing, not of a real model's compute.
Measured: Ray start (loopback runtime), worker start + model load (once per worker), wall time of the queue,
and the seconds each capture spent inside its worker. Overhead per capture = (workers x wall - sum of the
in-worker seconds) / captures: queueing, scheduling, result transfer and idle workers at the end. The last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from safetensors.torch import save_file

from da3_nerfstudio.cluster.pool import Job, PoolEvents, run_jobs, start_workers
from da3_nerfstudio.cluster.runtime import connect, disconnect
from da3_nerfstudio.model import DA3Model
from da3_nerfstudio.process import ImagesCommand

SAMPLES = Path(os.environ.get("DA3_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "samples"))


def random_checkpoint(folder: Path, preset: str) -> Path:
    """A local checkpoint folder (official layout) of ``preset`` with random weights."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_name": preset}))
    save_file(
        {k: v.contiguous() for k, v in DA3Model.untrained(preset).state_dict().items()}, folder / "model.safetensors"
    )
    return folder


def capture(work: Path, checkpoint: Path, index: int, res: int) -> ImagesCommand:
    return ImagesCommand(
        data=SAMPLES / "soh", output_dir=work / f"capture_{index}", model=str(checkpoint), process_res=res,
        num_points=3000, num_gaussians=5000, device="cpu",
    )  # fmt: skip


def bench(workers: int, captures: int, checkpoint: Path, work: Path, res: int) -> dict[str, float]:
    start = time.perf_counter()
    connect(None, num_cpus=max(os.cpu_count() or 1, workers))
    ray_start = time.perf_counter() - start
    import ray  # after connect(), which sets Ray's loopback switch before the first import

    try:
        start = time.perf_counter()
        actors = start_workers(workers, str(checkpoint), "cpu", 1, 0)
        ray.get([a.views_per_chunk.remote(res, res) for a in actors])  # loads the model in each worker
        load = time.perf_counter() - start
        jobs = [Job(f"c{i}", "images", "soh", work / f"capture_{i}", capture(work, checkpoint, i, res))
                for i in range(captures)]  # fmt: skip
        start = time.perf_counter()
        outcomes = run_jobs(jobs, actors, PoolEvents())
        wall = time.perf_counter() - start
    finally:
        start = time.perf_counter()
        disconnect()
        stop = time.perf_counter() - start
    assert all(o.status == "done" for o in outcomes), [o.error for o in outcomes]
    inside = sum(o.seconds for o in outcomes)
    return {
        "workers": workers,
        "captures": captures,
        "ray_start_s": ray_start,
        "workers_and_model_load_s": load,
        "queue_wall_s": wall,
        "captures_per_min": 60 * captures / wall,
        "in_worker_s_per_capture": inside / captures,
        "overhead_s_per_capture": (workers * wall - inside) / captures,
        "ray_stop_s": stop,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captures", type=int, default=6)
    parser.add_argument("--process-res", type=int, default=112)
    parser.add_argument("--preset", default="da3-small")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = random_checkpoint(Path(tmp) / "ckpt", args.preset)
        # The work itself: the same capture in this process, model already loaded (second run).
        capture(Path(tmp) / "alone", checkpoint, 0, args.process_res).main()
        start = time.perf_counter()
        capture(Path(tmp) / "alone", checkpoint, 1, args.process_res).main()
        alone = time.perf_counter() - start
        rows = [bench(w, args.captures, checkpoint, Path(tmp) / f"w{w}", args.process_res) for w in (1, 2)]
    print(f"\nsingle process, model loaded: {alone:.2f} s per capture ({60 / alone:.1f} captures/min)")
    print(f"{'workers':>7} {'ray start':>9} {'load':>6} {'wall':>6} {'capt/min':>8} {'in-worker':>9} {'overhead':>8}")
    for r in rows:
        print(f"{r['workers']:>7} {r['ray_start_s']:>8.1f}s {r['workers_and_model_load_s']:>5.1f}s "
              f"{r['queue_wall_s']:>5.1f}s {r['captures_per_min']:>8.1f} {r['in_worker_s_per_capture']:>8.2f}s "
              f"{r['overhead_s_per_capture']:>7.2f}s")  # fmt: skip
    # Model for N GPUs (an estimate: no GPU was measured here): workers are independent, so
    # captures/min(N) = N * 60 / (t_capture + overhead), after a one-off start of ray_start + model load.
    two = rows[-1]
    model = {
        "formula": "captures_per_min(N) = N * 60 / (t_capture_on_one_gpu + overhead_s_per_capture)",
        "overhead_s_per_capture": two["overhead_s_per_capture"],
        "one_off_s": two["ray_start_s"] + two["workers_and_model_load_s"],
    }
    print(f"model for N GPUs (estimate): {model['formula']}, overhead {model['overhead_s_per_capture']:.2f} s, "
          f"one-off start {model['one_off_s']:.1f} s")  # fmt: skip
    print(json.dumps({"machine": platform.node(), "cpus": os.cpu_count(), "single_process_s_per_capture": alone,
                      "runs": rows, "gpu_model": model}))  # fmt: skip


if __name__ == "__main__":
    main()
