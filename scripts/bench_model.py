"""Forward time and peak memory of the DA3 network for 1-16 views.

Each measurement runs in a fresh subprocess so that peak resident memory (CPU) is per view count;
on CUDA the peak allocated memory is read from the allocator. Random weights: timing only.
Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import tyro
from bench_common import peak_memory, run_child


def measure(preset: str, views: int, height: int, width: int, device: str, repeats: int) -> dict:
    import torch

    from da3_nerfstudio.model import DA3Model

    torch.manual_seed(0)
    model = DA3Model.untrained(preset, device)
    x = torch.randn(1, views, 3, height, width, device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            with autocast:
                model(x)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return {"views": views, "seconds": min(times[1:]), "device": device, **peak_memory(device, base_rss)}


def main(
    preset: str = "da3-small",
    views: tuple[int, ...] = (1, 4, 8, 16),
    height: int = 378,
    width: int = 504,
    repeats: int = 2,
    child: int = 0,
    device: str = "",
    devices: tuple[str, ...] = (),
) -> None:
    """Benchmark the network on `devices` (default: cpu, and cuda when present); `child` is internal."""
    if child:
        print(json.dumps(measure(preset, child, height, width, device, repeats)))
        return
    import torch

    devices = devices or ("cpu", *(["cuda"] if torch.cuda.is_available() else []))
    rows = []
    for dev in devices:
        for n in views:
            cmd = [sys.executable, __file__, "--preset", preset, "--child", str(n), "--height", str(height),
                   "--width", str(width), "--repeats", str(repeats), "--device", dev]  # fmt: skip
            rows.append(run_child(cmd))
            r = rows[-1]
            print(f"{preset} {dev:4s} {width}x{height} views={n:3d}  {r['seconds']:8.3f} s  "
                  f"{r['seconds'] / n * 1000:8.1f} ms/view  peak {r['peak_mb']:9.1f} MB", flush=True)  # fmt: skip
    print(json.dumps({"benchmark": "model_forward", "preset": preset, "size": [width, height], "results": rows}))


if __name__ == "__main__":
    tyro.cli(main)
