"""Start-up of ``da3-process-data``: seconds to ``--help``, and to each of the first output lines of a real run.

Every command runs in a fresh process (the way a user starts it), a few times, and the median is printed;
the run uses the sample photos and a da3-small checkpoint folder built from the parity recipe (untrained
weights: only the timing matters). Ends with one JSON object.

    python scripts/bench_startup.py [--repeats 5]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
TOOL = Path(sys.executable).parent / "da3-process-data"


@dataclass
class Config:
    repeats: int = 5
    """Fresh processes per measurement (the median is reported)."""
    lines: int = 3
    """How many of the run's first output lines to time."""


def _help_seconds() -> float:
    start = time.perf_counter()
    subprocess.run([str(TOOL), "--help"], check=True, capture_output=True)
    return time.perf_counter() - start


def _line_seconds(checkpoint: Path, out: Path, lines: int) -> list[tuple[float, str]]:
    """Seconds from the start of a run to each of its first ``lines`` output lines (stdout and stderr)."""
    from samples import SOH

    command = [str(TOOL), "images", "--data", str(SOH), "--output-dir", str(out), "--model", str(checkpoint),
               "--process-res", "112", "--num-points", "2000", "--num-gaussians", "2000"]  # fmt: skip
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[tuple[float, str]] = []
    assert process.stdout is not None
    for line in process.stdout:
        if line.strip():
            seen.append((time.perf_counter() - start, line.strip()[:70]))
        if len(seen) == lines:
            break
    process.kill()
    process.wait()
    return seen


def main(config: Config) -> None:
    from da3_fixtures import write_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_checkpoint(Path(tmp) / "ckpt", "da3-small")
        helps = [_help_seconds() for _ in range(config.repeats)]
        runs = [_line_seconds(checkpoint, Path(tmp) / f"out{i}", config.lines) for i in range(config.repeats)]
    print(f"da3-process-data --help: median {statistics.median(helps):.2f} s (min {min(helps):.2f}, "
          f"max {max(helps):.2f}, {config.repeats} fresh processes)")  # fmt: skip
    result: dict = {"help_s": statistics.median(helps), "lines": []}
    for index in range(min(len(run) for run in runs)):
        seconds = [run[index][0] for run in runs]
        text = runs[0][index][1]
        print(f"output line {index + 1} after median {statistics.median(seconds):.2f} s: {text}")
        result["lines"].append({"line": text, "median_s": statistics.median(seconds)})
    print(json.dumps(result))


if __name__ == "__main__":
    main(tyro.cli(Config))
