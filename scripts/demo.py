"""`make demo`: run da3-process-data on the two sample photos, or say exactly what is missing.

The network needs real DA3 weights (never random ones here). Without them the demo says which
weights are missing and how to provide them, and instead runs the same tool's ``predictions`` path
on the room sample's ground truth (clearly labelled as such), so the dataset writing is still shown.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from da3_nerfstudio.cli import process_data
from da3_nerfstudio.errors import CheckpointError
from da3_nerfstudio.model.loading import resolve_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = Path(os.environ.get("DA3_SAMPLES", ROOT.parent / "shared" / "samples"))
MODEL = os.environ.get("DA3_MODEL", process_data.DEFAULT_MODEL)
OUTPUTS = ROOT / "outputs"


def oracle_npz(room: Path, path: Path) -> Path:
    """The room sample's ground truth in the official DA3 npz layout (see samples/README.md)."""
    gt = np.load(room / "condition.npz")
    intrinsics = gt["intrinsics"].astype(np.float64).copy()
    intrinsics[:, :2, 2] += 0.5  # the sample uses integer-index pixel coordinates
    names = [room / "rgb" / f"{i}.png" for i in range(len(intrinsics))]
    images = np.stack([np.asarray(Image.open(name).convert("RGB")) for name in names])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        depth=gt["depths"],
        conf=np.ones_like(gt["depths"]),
        extrinsics=np.linalg.inv(gt["poses"].astype(np.float64))[:, :3],
        intrinsics=intrinsics,
        image=images,
    )
    return path


def main() -> int:
    photos = SAMPLES / "soh"
    if not photos.is_dir():
        print(f"demo: no sample photos at {photos} (set DA3_SAMPLES to the samples folder)")
        return 1
    try:
        resolve_checkpoint(MODEL)
    except CheckpointError as err:
        print(f"demo: the DA3 weights are not available: {err}")
        print(
            "demo: the network was NOT run (no random weights are used). To run it, allow access to huggingface.co "
            "or put config.json + model.safetensors of a DA3 model in a folder and set DA3_MODEL to that folder "
            "(e.g. DA3-SMALL, Apache-2.0)."
        )
        room = SAMPLES / "room_gt"
        if not room.is_dir():
            return 0
        out = OUTPUTS / "demo_room_gt"
        print(f"demo: instead, writing a dataset from the room sample's GROUND TRUTH (not network output) to {out}")
        npz = oracle_npz(room, OUTPUTS / "room_gt_ground_truth.npz")
        return process_data.main(["predictions", "--data", str(npz), "--output-dir", str(out)])
    out = OUTPUTS / "demo_soh"
    print(f"demo: da3-process-data images --data {photos} --output-dir {out} --model {MODEL}")
    return process_data.main(["images", "--data", str(photos), "--output-dir", str(out), "--model", MODEL])


if __name__ == "__main__":
    sys.exit(main())
