"""Pictures of a prediction for a person to check at a glance (``da3/preview/`` of a dataset).

Per view a colourised inverse depth and confidence map, and one top view of the seed points with the
cameras as arrows: a wrong scale, a flipped camera or a broken chunk alignment shows here before anyone
trains on the dataset. Nothing reads these files back.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from da3_nerfstudio.prediction import Prediction

#: Side of the square top-view picture.
_TOP_VIEW_PIXELS = 1024


def write_previews(
    pred: Prediction,
    points: np.ndarray,
    colours: np.ndarray,
    folder: Path,
    progress: Callable[[int, int], None] | None = None,
    *,
    threads: int = 1,
) -> None:
    """Depth and confidence pictures of every view and the top view into ``folder``, ``threads`` views at a
    time (PNG encoding and most of the colouring release the GIL); ``progress(done, total)`` after each view."""
    folder.mkdir(parents=True, exist_ok=True)
    valid = pred.valid_mask(0.0)

    def write_view(i: int) -> None:
        stem = f"frame_{i + 1:05d}"
        # Inverse depth spreads near and far structure evenly over the colour map.
        inverse = np.where(valid[i], 1.0 / np.maximum(pred.depth[i], 1e-12), 0.0)
        cv2.imwrite(str(folder / f"{stem}_depth.png"), _colourise(inverse, valid[i], cv2.COLORMAP_TURBO))
        if pred.conf is not None:
            cv2.imwrite(
                str(folder / f"{stem}_confidence.png"),
                _colourise(pred.conf[i], np.isfinite(pred.conf[i]), cv2.COLORMAP_VIRIDIS),
            )

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for done, _ in enumerate(pool.map(write_view, range(len(pred))), 1):
            if progress is not None:
                progress(done, len(pred))
    cv2.imwrite(str(folder / "cameras_top.png"), _top_view(points.astype(np.float64), colours, pred.c2w_opencv()))


def _colourise(values: np.ndarray, valid: np.ndarray, colormap: int) -> np.ndarray:
    """BGR picture of a map, robustly normalised (2nd-98th percentile) over ``valid`` pixels."""
    out = np.zeros((*values.shape, 3), np.uint8)
    if not valid.any():
        return out
    lo, hi = np.percentile(values[valid], [2, 98])
    scaled = np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1)
    coloured = cv2.applyColorMap((scaled * 255).astype(np.uint8), colormap)
    out[valid] = coloured[valid]
    return out


def _top_view(points: np.ndarray, colours: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """BGR picture of the points and cameras seen from above (against the cameras' mean up vector)."""
    up = -c2w[:, :3, 1].mean(axis=0)  # OpenCV cameras: y points down
    up = up / (np.linalg.norm(up) or 1.0)
    forward = c2w[:, :3, 2].mean(axis=0)
    forward = forward - up * (forward @ up)
    if np.linalg.norm(forward) < 1e-6:
        forward = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    basis = np.stack([right, forward])  # picture x: right, picture y (flipped below): forward

    def plane(p: np.ndarray) -> np.ndarray:
        return p @ basis.T

    centres = c2w[:, :3, 3]
    flat = np.concatenate([plane(points), plane(centres)]) if len(points) else plane(centres)
    lo = np.percentile(flat, 1, axis=0) if len(points) else flat.min(axis=0)
    hi = np.percentile(flat, 99, axis=0) if len(points) else flat.max(axis=0)
    lo, hi = np.minimum(lo, plane(centres).min(0)), np.maximum(hi, plane(centres).max(0))
    size = _TOP_VIEW_PIXELS
    scale = 0.9 * size / max(float(np.max(hi - lo)), 1e-9)
    middle = 0.5 * (lo + hi)

    def pixels(p: np.ndarray) -> np.ndarray:
        xy = (plane(p) - middle) * scale
        return np.stack([size / 2 + xy[:, 0], size / 2 - xy[:, 1]], axis=1)

    canvas = np.full((size, size, 3), 255, np.uint8)
    if len(points):
        order = np.argsort(points @ up)  # highest last, as seen from above
        px = np.round(pixels(points[order])).astype(int)
        inside = (px >= 0).all(1) & (px < size).all(1)
        canvas[px[inside, 1], px[inside, 0]] = colours[order][inside][:, ::-1]
    span = 0.04 * size
    for i, (centre, axis) in enumerate(zip(pixels(centres), plane(c2w[:, :3, 2]), strict=True)):
        tip = centre + span * np.array([axis[0], -axis[1]]) / max(float(np.linalg.norm(axis)), 1e-9)
        c, t = tuple(int(v) for v in np.round(centre)), tuple(int(v) for v in np.round(tip))
        cv2.arrowedLine(canvas, c, t, (0, 0, 200), 2, tipLength=0.3)
        cv2.circle(canvas, c, 4, (200, 0, 0), -1)
        cv2.putText(canvas, str(i + 1), (c[0] + 5, c[1] - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    return canvas
