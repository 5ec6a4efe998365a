"""Pinhole intrinsics <-> Blender camera settings (pure numpy, no bpy).

Blender has no fx/fy/cx/cy: it has a focal length relative to one *fitted* sensor dimension, a lens
shift measured in units of that fitted dimension, and a per-scene pixel aspect ratio. Sensor fit is set
explicitly because 'AUTO' fits the larger pixel dimension and silently breaks portrait images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SENSOR_MM = 36.0
# Hard limits of Blender's camera and render settings: values outside are clamped without a word, which
# would give a different camera, so views that need them are refused instead.
MIN_LENS_MM = 1.0
MAX_PIXEL_ASPECT = 200.0
RESOLUTION_RANGE = (4, 65536)


@dataclass
class BlenderIntrinsics:
    """Camera-datablock and scene-render settings that reproduce one pinhole camera."""

    lens: float
    sensor_fit: str  # 'HORIZONTAL' or 'VERTICAL'
    sensor_size: float  # used for both sensor_width and sensor_height
    shift_x: float
    shift_y: float
    pixel_aspect_x: float
    pixel_aspect_y: float
    resolution_x: int
    resolution_y: int


def pixel_aspect(fx: float, fy: float) -> tuple[float, float]:
    """(pixel_aspect_x, pixel_aspect_y) with pax / pay = fy / fx; Blender needs both >= 1."""
    return (1.0, fx / fy) if fx >= fy else (fy / fx, 1.0)


def to_blender(
    fx: float, fy: float, cx: float, cy: float, width: int, height: int, sensor: float = SENSOR_MM
) -> BlenderIntrinsics:
    """Blender settings for a pinhole camera; shift_x > 0 when cx < W/2, shift_y > 0 when cy > H/2."""
    pax, pay = pixel_aspect(fx, fy)
    if width * pax >= height * pay:
        fit = "HORIZONTAL"
        lens = fx * sensor / width
        shift_x = (width / 2 - cx) / width
        shift_y = (cy - height / 2) / width * (pay / pax)
    else:
        fit = "VERTICAL"
        lens = fy * sensor / height
        shift_x = (width / 2 - cx) / height * (pax / pay)
        shift_y = (cy - height / 2) / height
    return BlenderIntrinsics(lens, fit, sensor, shift_x, shift_y, pax, pay, int(width), int(height))


def from_blender(b: BlenderIntrinsics) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) in pixels; the inverse of :func:`to_blender` for any sensor fit but 'AUTO'."""
    w, h = b.resolution_x, b.resolution_y
    pax, pay = b.pixel_aspect_x, b.pixel_aspect_y
    if b.sensor_fit == "HORIZONTAL":
        fx = b.lens * w / b.sensor_size
        fy = fx * pax / pay
        cx = w / 2 - b.shift_x * w
        cy = h / 2 + b.shift_y * w * (pax / pay)
    elif b.sensor_fit == "VERTICAL":
        fy = b.lens * h / b.sensor_size
        fx = fy * pay / pax
        cx = w / 2 - b.shift_x * h * (pay / pax)
        cy = h / 2 + b.shift_y * h
    else:
        raise ValueError(f"resolve sensor fit {b.sensor_fit!r} to HORIZONTAL or VERTICAL first")
    return fx, fy, cx, cy


def resolve_auto_fit(width: int, height: int, pax: float, pay: float) -> str:
    """The fit Blender uses for 'AUTO': the larger dimension in display units."""
    return "HORIZONTAL" if width * pax >= height * pay else "VERTICAL"


def continuous_quaternions(quats: np.ndarray) -> np.ndarray:
    """Flip signs so consecutive (w, x, y, z) quaternions have a non-negative dot product.

    q and -q are the same rotation, but keyframe interpolation between them spins the long way round.
    """
    out = np.array(quats, dtype=np.float64, copy=True)
    for i in range(1, len(out)):
        if np.dot(out[i], out[i - 1]) < 0:
            out[i] = -out[i]
    return out
