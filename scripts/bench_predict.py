"""End-to-end predictor throughput: images/s, share of preprocessing, and peak memory.

Runs `DA3Predictor.predict` on N = 1, 8, 32 sample photos (the room views, cycled) with a
**randomly initialised** model (timing only: outputs are meaningless). Each N runs in a fresh
subprocess so peak memory is per run. Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import tyro
from bench_common import peak_memory, run_child

SAMPLES = Path(os.environ.get("DA3_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "samples"))


def measure(preset: str, views: int, process_res: int, device: str) -> dict:
    import torch

    from da3_nerfstudio import DA3Predictor
    from da3_nerfstudio.model import DA3Model
    from da3_nerfstudio.preprocess import preprocess_images

    photos = sorted((SAMPLES / "room_gt" / "rgb").glob("*.png"))
    images = [photos[i % len(photos)] for i in range(views)]
    torch.manual_seed(0)
    predictor = DA3Predictor(DA3Model.untrained(preset, device), device=device)
    predictor.predict(images[:1], process_res=process_res)  # warm-up
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    preprocess_images(images, process_res)
    pre = time.perf_counter() - start
    start = time.perf_counter()
    predictor.predict(images, process_res=process_res)
    if device == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - start
    result = {"views": views, "seconds": total, "images_per_s": views / total, "preprocess_share": pre / total}
    return result | peak_memory(device, base_rss)


def main(
    preset: str = "da3-small",
    views: tuple[int, ...] = (1, 8, 32),
    process_res: int = 504,
    child: int = 0,
    device: str = "",
    devices: tuple[str, ...] = (),
) -> None:
    """Benchmark the predictor on `devices` (default: cpu, and cuda when present); `child` is internal."""
    if child:
        print(json.dumps(measure(preset, child, process_res, device)))
        return
    import torch

    devices = devices or ("cpu", *(["cuda"] if torch.cuda.is_available() else []))
    rows = []
    print(f"{preset} with RANDOM weights (timing only), process_res {process_res}")
    for dev in devices:
        for n in views:
            cmd = [sys.executable, __file__, "--preset", preset, "--child", str(n), "--process-res",
                   str(process_res), "--device", dev]  # fmt: skip
            rows.append({**run_child(cmd), "device": dev})
            r = rows[-1]
            share = 100 * r["preprocess_share"]
            print(f"{dev:4s} views={n:3d}  {r['seconds']:8.2f} s  {r['images_per_s']:7.2f} img/s  "
                  f"preprocess {share:5.1f} %  peak {r['peak_mb']:8.1f} MB", flush=True)  # fmt: skip
    print(json.dumps({"benchmark": "predict", "preset": preset, "process_res": process_res, "results": rows}))


if __name__ == "__main__":
    tyro.cli(main)
