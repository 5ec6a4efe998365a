"""`make demo`: run the main job on the sample photos, saying clearly what it did or what is missing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from da3_nerfstudio.errors import DA3Error
from da3_nerfstudio.model import DA3Model

SAMPLES = Path(os.environ.get("DA3_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "samples"))
MODEL = os.environ.get("DA3_MODEL", "depth-anything/DA3-SMALL")


def main() -> int:
    photos = sorted((SAMPLES / "soh").glob("*.png"))
    if not photos:
        print(f"demo: no sample photos in {SAMPLES / 'soh'} (set DA3_SAMPLES to the samples folder)")
        return 1
    try:
        model = DA3Model.from_pretrained(MODEL)
    except DA3Error as err:
        print(f"demo: cannot load the DA3 weights: {err}")
        print("demo: nothing was run (set DA3_MODEL to a local checkpoint folder to run the network)")
        return 0
    from PIL import Image

    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    images = [np.asarray(Image.open(p).convert("RGB").resize((504, 280)), dtype=np.float64) / 255 for p in photos]
    x = torch.from_numpy(np.stack([(im - mean) / std for im in images])).permute(0, 3, 1, 2)[None].float()
    with torch.inference_mode():
        out = model(x)
    print(f"demo: ran {model.name} on {len(photos)} photos from {SAMPLES / 'soh'} at 504x280")
    for i, path in enumerate(photos):
        depth = out["depth"][0, i]
        print(f"  {path.name}: depth {depth.min():.3f}..{depth.max():.3f}, camera\n{out['extrinsics'][0, i].numpy()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
