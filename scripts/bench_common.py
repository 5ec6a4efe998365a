"""What the network and predictor benchmarks share: one measurement per subprocess, and its peak memory."""

from __future__ import annotations

import json
import resource
import subprocess


def peak_memory(device: str, base_rss_kb: int) -> dict:
    """Peak memory of this process's measurement: the CUDA allocator's peak (with the GPU's name), or on
    CPU the growth of peak resident memory over ``base_rss_kb`` (read before the measured call)."""
    if device == "cuda":
        import torch

        return {"peak_mb": torch.cuda.max_memory_allocated() / 2**20, "gpu": torch.cuda.get_device_name()}
    return {"peak_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss_kb) / 1024}


def run_child(cmd: list[str]) -> dict:
    """Run one measurement in a fresh process (so peak memory is its own); its last line is a JSON object."""
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])
