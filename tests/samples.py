"""The shared sample data (../shared/samples or $DA3_SAMPLES) and the room's ground truth.

The room sample's intrinsics use integer-index pixel coordinates (cx = (W-1)/2); the project uses the
continuous convention (pixel centres at +0.5), so ``room_truth`` shifts the principal point by 0.5.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: Right-multiplying a camera-to-world by this swaps OpenCV (y down, z forward) and OpenGL (y up, z backward)
#: camera axes; the tests' own statement of the convention, independent of the package's.
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])

SAMPLES = Path(os.environ.get("DA3_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "samples"))
ROOM = SAMPLES / "room_gt"
SOH = SAMPLES / "soh"
VIDEO = SAMPLES / "robot_unitree.mp4"


@dataclass(frozen=True)
class RoomTruth:
    paths: list[Path]
    c2w: np.ndarray  # (8,4,4) camera-to-world, OpenCV axes, metres
    w2c: np.ndarray  # (8,4,4) world-to-camera
    K: np.ndarray  # (8,3,3) continuous pixel convention
    depth: np.ndarray  # (8,H,W) z-depth, 0 where unknown
    images: np.ndarray  # (8,H,W,3) uint8


@functools.cache
def room_truth() -> RoomTruth:
    gt = np.load(ROOM / "condition.npz")
    K = gt["intrinsics"].astype(np.float64).copy()
    K[:, :2, 2] += 0.5
    c2w = gt["poses"].astype(np.float64)
    paths = [ROOM / "rgb" / f"{i}.png" for i in range(len(c2w))]
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    return RoomTruth(paths, c2w, np.linalg.inv(c2w), K, gt["depths"].astype(np.float32), images)
