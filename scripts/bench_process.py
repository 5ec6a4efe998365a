"""Wall time per stage of da3-process-data for 8 and 32 video frames.

The network is da3-small with RANDOM weights (``DA3Model.untrained``): the timing of inference and of
every writing stage is representative, the geometry is not (random depth gives scattered points,
which makes point downsampling somewhat slower than on a real scene). Run on whatever device torch
picks (``--device`` to force). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from da3_nerfstudio.dataset import write_dataset
from da3_nerfstudio.dataset_options import DatasetOptions
from da3_nerfstudio.model import DA3Model
from da3_nerfstudio.predictor import DA3Predictor
from da3_nerfstudio.video import extract_frames

SAMPLES = Path(os.environ.get("DA3_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "samples"))


def bench(predictor: DA3Predictor, views: int, process_res: int, work: Path) -> dict[str, float]:
    """Seconds per stage for one run on ``views`` evenly spaced frames of the sample video."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    frames = extract_frames(SAMPLES / "robot_unitree.mp4", work / f"frames_{views}", views)
    timings["frames"] = time.perf_counter() - start
    start = time.perf_counter()
    prediction = predictor.predict(frames, process_res=process_res)
    timings["inference"] = time.perf_counter() - start
    summary = write_dataset(prediction, work / f"dataset_{views}", image_paths=frames, options=DatasetOptions())
    timings.update(summary.timings)
    timings["total"] = sum(timings.values())
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--process-res", type=int, default=504)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    predictor = DA3Predictor(DA3Model.untrained("da3-small"), device=args.device)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_process_") as tmp:
        for views in args.views:
            timings = bench(predictor, views, args.process_res, Path(tmp))
            results[str(views)] = {k: round(v, 3) for k, v in timings.items()}
            print(f"{views} views: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()), flush=True)
    print(
        json.dumps(
            {
                "benchmark": "da3-process-data stages (seconds)",
                "model": "da3-small, RANDOM weights (DA3Model.untrained): timing only",
                "input": "robot_unitree.mp4 frames, 1024x576",
                "process_res": args.process_res,
                "device": args.device,
                "cpu_threads": torch.get_num_threads(),
                "machine": platform.machine(),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
