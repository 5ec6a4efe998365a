"""A tiny da3-process-data style dataset built from room_gt with oracle geometry (exact poses/depth).

Used by the nerfstudio tests and ``scripts/bench_splat.py``. Two views are held out, each one covered
by the training views: view 1 (76 % of its pixels are seen by view 0, 51 % by view 2, from nearly the
same place) and view 6 (98 % seen by view 4, which sees that wall from twice as far, so view 6 is a
close-up the training views only show at half its resolution). The other views look at other parts of
the room. The initial Gaussians and the sparse point cloud come from the training views only, so
nothing of the held-out views leaks in.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from da3_nerfstudio.formats.ply import write_point_cloud_ply, write_splat_ply
from da3_nerfstudio.formats.transforms import frames_from_cameras, write_transforms_json
from da3_nerfstudio.geometry import unproject_depth
from da3_nerfstudio.splat_init import splats_from_depth

SAMPLES = Path(os.environ.get("DA3_SAMPLES", Path(__file__).resolve().parents[3] / "shared" / "samples"))
ROOM = SAMPLES / "room_gt"
EVAL_VIEWS = (1, 6)
#: ns-train options of the tests' short CPU runs: no evaluation renders, no viewer.
CPU_TRAIN_ARGS = [
    "--vis", "tensorboard", "--machine.device-type", "cpu",
    "--steps-per-eval-image", "100000", "--steps-per-eval-all-images", "100000",
]  # fmt: skip


def build_room_dataset(
    out: Path, factor: int = 4, views: tuple[int, ...] = tuple(range(8)), init_stride: int = 1
) -> Path:
    """Write images/, depths/*.npy, transforms.json (explicit train/val split), sparse_pc.ply and
    splat_init.ply (one Gaussian per ``init_stride``-th pixel) for room_gt at 1/``factor`` resolution
    into ``out``; returns ``out``."""
    data = np.load(ROOM / "condition.npz")
    height, width = data["depths"].shape[1:]
    h, w = round(height / factor), round(width / factor)
    K = data["intrinsics"].astype(np.float64)[list(views)].copy()
    K[:, :2, 2] += 0.5  # the samples use pixel indices as coordinates; we use pixel centres at +0.5
    K[:, 0] *= w / width
    K[:, 1] *= h / height
    w2c = np.linalg.inv(data["poses"].astype(np.float64)[list(views)])
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "depths").mkdir(exist_ok=True)
    images, depths, names, depth_names = [], [], [], []
    for i, view in enumerate(views):
        image = Image.open(ROOM / "rgb" / f"{view}.png").convert("RGB").resize((w, h), Image.Resampling.BOX)
        depth = np.asarray(Image.fromarray(data["depths"][view]).resize((w, h), Image.Resampling.NEAREST))
        names.append(f"images/frame_{i:05d}.png")
        depth_names.append(f"depths/frame_{i:05d}.npy")
        image.save(out / names[-1])
        np.save(out / depth_names[-1], depth.astype(np.float32))
        images.append(np.asarray(image))
        depths.append(depth)
    images_a, depths_a = np.stack(images), np.stack(depths)
    train = [i for i, view in enumerate(views) if view not in EVAL_VIEWS]
    evals = [i for i, view in enumerate(views) if view in EVAL_VIEWS]
    frames = frames_from_cameras(w2c, K, [(w, h)] * len(views), names, depth_names)
    split = {
        "train_filenames": [names[i] for i in train],
        "val_filenames": [names[i] for i in evals],
        "test_filenames": [names[i] for i in evals],
    }
    points = unproject_depth(depths_a[train], K[train], w2c[train])[:, ::3, ::3].reshape(-1, 3)
    colors = images_a[train][:, ::3, ::3].reshape(-1, 3)
    valid = depths_a[train][:, ::3, ::3].reshape(-1) > 0
    write_point_cloud_ply(out / "sparse_pc.ply", points[valid], colors[valid])
    splats = splats_from_depth(images_a[train], depths_a[train], w2c[train], K[train], stride=init_stride)
    write_splat_ply(out / "splat_init.ply", splats)
    write_transforms_json(out / "transforms.json", frames, ply_file_path="sparse_pc.ply", extra=split)
    return out
