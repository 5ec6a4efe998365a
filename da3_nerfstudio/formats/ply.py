"""PLY point clouds and Gaussian splats.

Two layouts are written, both binary little-endian through :mod:`plyfile`:

* coloured point clouds: vertex ``x y z`` float32, ``red green blue`` uchar and an optional
  ``confidence`` float32. nerfstudio's seed-point loader (``ply_file_path`` in ``transforms.json``)
  reads exactly the position and colour properties and ignores the rest.
* Gaussian splats in the INRIA 3DGS layout (also what ``ns-export gaussian-splat`` writes and what
  splat viewers expect): ``x y z nx ny nz f_dc_0..2 f_rest_0..3K-1 opacity scale_0..2 rot_0..3``, all
  float32, values stored raw (opacity logit, log scales, unnormalised w x y z quaternion) and
  ``f_rest`` channel-major.

Readers accept what other tools produce (ASCII files, float colours, extra properties, any
property order) and turn anything unusable (truncated or garbled files, missing or list properties, NaN or
inf values, zero quaternions) into a one-line :class:`~da3_nerfstudio.errors.InputError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.recfunctions import rename_fields
from plyfile import PlyData, PlyElement, PlyParseError

from da3_nerfstudio.errors import InputError
from da3_nerfstudio.formats.atomic import atomic_write

# Number of higher-order SH coefficients per colour channel for degrees 0..3.
_REST_COUNT_TO_DEGREE = {(d + 1) ** 2 - 1: d for d in range(4)}
# Keep logit() finite: activated opacities of exactly 0 or 1 are clipped this far inside (0, 1).
_OPACITY_EPS = 1e-6
# Keep log() finite for scales that underflowed to zero.
_MIN_SCALE = 1e-12


def _read_vertices(path: str | os.PathLike[str]) -> np.ndarray:
    """Read the ``vertex`` element of a PLY file as a structured array, or raise :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    try:
        # Memory-mapped reading is plyfile's fast path for binary files (the row-by-row one takes
        # seconds per 100k splats); the data are copied out below so the file is not held open.
        ply = PlyData.read(str(path), mmap="r")
    except (PlyParseError, ValueError, UnicodeDecodeError, OSError, IndexError) as err:
        message = " ".join(str(err).split())
        raise InputError(f"{path}: not a readable PLY file ({message})") from None
    if "vertex" not in ply:
        elements = ", ".join(e.name for e in ply.elements) or "none"
        raise InputError(f"{path}: PLY file has no vertices (no 'vertex' element; elements: {elements})")
    if ply["vertex"].count == 0:
        raise InputError(f"{path}: PLY file has no vertices (0 vertices)")
    vertices = np.array(ply["vertex"].data)
    lists = [name for name in vertices.dtype.names or () if vertices.dtype[name].hasobject]
    if lists:
        raise InputError(f"{path}: vertex properties {', '.join(lists)} are lists, expected one number per vertex")
    return vertices


def _finite_columns(path: Path, vertices: np.ndarray, names: list[str]) -> None:
    """Refuse NaN or inf in the named vertex properties, naming the first offending one and vertex."""
    for name in names:
        bad = ~np.isfinite(vertices[name].astype(np.float64))
        if bad.any():
            raise InputError(
                f"{path}: {int(bad.sum())} vertices have a non-finite {name} (NaN or inf), "
                f"first vertex {int(np.argmax(bad))}"
            )


def _write_vertices(path: str | os.PathLike[str], vertices: np.ndarray, comments: list[str]) -> None:
    """Write a structured array as the ``vertex`` element of a binary little-endian PLY, atomically."""
    element = PlyElement.describe(vertices, "vertex")
    with atomic_write(path) as tmp:
        PlyData([element], text=False, byte_order="<", comments=comments).write(str(tmp))


def write_point_cloud_ply(
    path: str | os.PathLike[str],
    points: np.ndarray,
    colors: np.ndarray,
    confidence: np.ndarray | None = None,
) -> None:
    """Write a coloured point cloud: ``x y z`` float32, ``red green blue`` uchar, optional ``confidence``.

    ``colors`` must hold integers in 0..255 (they are stored as uchar, which is what nerfstudio and
    open3d expect for seed points).
    """
    points = np.asarray(points)
    colors = np.asarray(colors)
    n = len(points)
    if points.shape != (n, 3):
        raise ValueError(f"points must have shape (N, 3), got {points.shape}")
    if colors.shape != (n, 3):
        raise ValueError(f"colors must have shape ({n}, 3), got {colors.shape}")
    if not np.issubdtype(colors.dtype, np.integer) or (n and (colors.min() < 0 or colors.max() > 255)):
        raise ValueError(f"colors must be integers in 0..255, got dtype {colors.dtype}")
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if confidence is not None:
        confidence = np.asarray(confidence)
        if confidence.shape != (n,):
            raise ValueError(f"confidence must have shape ({n},), got {confidence.shape}")
        fields.append(("confidence", "<f4"))
    vertices = np.empty(n, dtype=fields)
    for axis, name in enumerate("xyz"):
        vertices[name] = points[:, axis]
    for channel, name in enumerate(("red", "green", "blue")):
        vertices[name] = colors[:, channel]
    if confidence is not None:
        vertices["confidence"] = confidence
    _write_vertices(path, vertices, comments=["da3_nerfstudio point cloud"])


def _colors_to_uint8(path: Path, vertices: np.ndarray) -> np.ndarray:
    """Convert the colour properties to uint8; float colours are taken as 0..1 (open3d's convention)."""
    names = vertices.dtype.names or ()
    missing = [c for c in ("red", "green", "blue") if c not in names]
    if missing:
        raise InputError(f"{path}: PLY vertices have no colour (missing {', '.join(missing)})")
    colors = np.stack([vertices[c] for c in ("red", "green", "blue")], axis=1)
    if np.issubdtype(colors.dtype, np.floating):
        _finite_columns(path, vertices, ["red", "green", "blue"])
        return np.clip(np.rint(colors.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if colors.size and (colors.min() < 0 or colors.max() > 255):
        raise InputError(f"{path}: integer colours outside 0..255 (dtype {colors.dtype}) are not supported")
    return colors.astype(np.uint8)


# Colour and confidence spellings of other tools, in order of preference, read as the names this module
# writes. The Blender add-on's own reader accepts the same (tests/blender/test_reader_conformance.py).
_ALIASES = (
    (("r", "g", "b"), ("red", "green", "blue")),
    (("diffuse_red", "diffuse_green", "diffuse_blue"), ("red", "green", "blue")),
    (("conf",), ("confidence",)),
    (("quality",), ("confidence",)),
)


def _standard_names(vertices: np.ndarray) -> np.ndarray:
    """``vertices`` with ``r g b`` / ``diffuse_*`` colours and ``conf`` / ``quality`` renamed to ours."""
    names = vertices.dtype.names or ()
    mapping: dict[str, str] = {}
    for aliases, standard in _ALIASES:
        taken = set(names) - set(mapping) | set(mapping.values())
        if all(a in names for a in aliases) and not taken & set(standard):
            mapping.update(zip(aliases, standard, strict=True))
    return rename_fields(vertices, mapping) if mapping else vertices


def read_point_cloud_ply(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read a coloured point cloud (binary or ASCII) as ``(points float32 (N,3), colors uint8 (N,3),
    confidence float32 (N,) or None)``."""
    vertices = _standard_names(_read_vertices(path))
    names = vertices.dtype.names or ()
    missing = [c for c in "xyz" if c not in names]
    if missing:
        raise InputError(f"{path}: PLY vertices have no position (missing {', '.join(missing)})")
    _finite_columns(Path(path), vertices, ["x", "y", "z", *(["confidence"] if "confidence" in names else [])])
    points = np.stack([vertices[c] for c in "xyz"], axis=1).astype(np.float32)
    colors = _colors_to_uint8(Path(path), vertices)
    confidence = vertices["confidence"].astype(np.float32) if "confidence" in names else None
    return points, colors, confidence


@dataclass
class SplatData:
    """Gaussian splats with parameters stored raw, exactly as the INRIA 3DGS PLY stores them.

    Raw (pre-activation) values are kept because that is what training optimises and what every
    viewer reads; :meth:`from_activated` converts from the activated values a network predicts.
    """

    means: np.ndarray  # (N,3) float32, world
    scales_log: np.ndarray  # (N,3) float32, log of per-axis standard deviations
    rotations: np.ndarray  # (N,4) float32, quaternion w x y z (not necessarily unit)
    opacity_logit: np.ndarray  # (N,) float32
    sh_dc: np.ndarray  # (N,3) float32 (f_dc_0..2)
    sh_rest: np.ndarray  # (N,K,3) float32, K in {0,3,8,15}

    def __post_init__(self) -> None:
        """Coerce to float32 and check shapes, so a bad array fails here rather than in a writer."""
        for name in ("means", "scales_log", "rotations", "opacity_logit", "sh_dc", "sh_rest"):
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=np.float32))
        n = len(self.means)
        expected = {
            "means": (n, 3),
            "scales_log": (n, 3),
            "rotations": (n, 4),
            "opacity_logit": (n,),
            "sh_dc": (n, 3),
        }
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"SplatData.{name} must have shape {shape}, got {getattr(self, name).shape}")
        shape = self.sh_rest.shape
        if len(shape) != 3 or shape[0] != n or shape[2] != 3 or shape[1] not in _REST_COUNT_TO_DEGREE:
            raise ValueError(f"SplatData.sh_rest must have shape ({n}, K, 3), K in {{0,3,8,15}}, got {shape}")

    @property
    def sh_degree(self) -> int:
        """Spherical-harmonics degree implied by the number of higher-order coefficients."""
        return _REST_COUNT_TO_DEGREE[self.sh_rest.shape[1]]

    def __len__(self) -> int:
        return len(self.means)

    @classmethod
    def from_activated(
        cls,
        means: np.ndarray,
        scales: np.ndarray,
        rotations: np.ndarray,
        opacities: np.ndarray,
        sh_coeffs: np.ndarray,
    ) -> SplatData:
        """Build splats from activated values.

        Args:
            means: (N,3) world positions.
            scales: (N,3) per-axis standard deviations (> 0; zeros are clipped to 1e-12 before the log).
            rotations: (N,4) quaternions w x y z, stored as given.
            opacities: (N,) or (N,1) opacities in [0,1], clipped to [1e-6, 1-1e-6] before the logit.
            sh_coeffs: SH coefficients, either channel-first (N,3,(d+1)^2) or coefficient-first
                (N,(d+1)^2,3); coefficient 0 is the DC term. The two layouts cannot be confused
                because (d+1)^2 is never 3.
        """
        coeffs = np.asarray(sh_coeffs, dtype=np.float64)
        if coeffs.ndim != 3 or 3 not in coeffs.shape[1:]:
            raise ValueError(f"sh_coeffs must have shape (N,3,(d+1)^2) or (N,(d+1)^2,3), got {coeffs.shape}")
        if coeffs.shape[2] != 3:
            coeffs = coeffs.transpose(0, 2, 1)
        opacities = np.asarray(opacities, dtype=np.float64).reshape(-1)
        opacities = np.clip(opacities, _OPACITY_EPS, 1 - _OPACITY_EPS)
        return cls(
            means=np.asarray(means),
            scales_log=np.log(np.maximum(np.asarray(scales, dtype=np.float64), _MIN_SCALE)),
            rotations=np.asarray(rotations),
            opacity_logit=np.log(opacities) - np.log1p(-opacities),
            sh_dc=coeffs[:, 0, :],
            sh_rest=coeffs[:, 1:, :],
        )

    def select(self, mask: np.ndarray) -> SplatData:
        """Subset of the splats picked by a boolean mask or an index array."""
        return SplatData(
            means=self.means[mask],
            scales_log=self.scales_log[mask],
            rotations=self.rotations[mask],
            opacity_logit=self.opacity_logit[mask],
            sh_dc=self.sh_dc[mask],
            sh_rest=self.sh_rest[mask],
        )


def _splat_property_names(num_rest: int) -> list[str]:
    """INRIA 3DGS vertex property names, in file order, for ``num_rest`` f_rest values."""
    return [
        *("x", "y", "z", "nx", "ny", "nz"),
        *(f"f_dc_{i}" for i in range(3)),
        *(f"f_rest_{i}" for i in range(num_rest)),
        "opacity",
        *(f"scale_{i}" for i in range(3)),
        *(f"rot_{i}" for i in range(4)),
    ]


def write_splat_ply(path: str | os.PathLike[str], splats: SplatData) -> None:
    """Write splats in the INRIA 3DGS PLY layout (binary little-endian, float32, raw values)."""
    n = len(splats)
    # Channel-major f_rest: f_rest_{c*K + k} holds colour c, coefficient k+1.
    rest = splats.sh_rest.transpose(0, 2, 1).reshape(n, 3 * splats.sh_rest.shape[1])
    columns = np.concatenate(
        [
            splats.means,
            np.zeros((n, 3), np.float32),  # normals: unused by 3DGS, present in the layout
            splats.sh_dc,
            rest,
            splats.opacity_logit[:, None],
            splats.scales_log,
            splats.rotations,
        ],
        axis=1,
    )
    names = _splat_property_names(rest.shape[1])
    # Every property is float32, so the row-major float32 table already is the vertex records' bytes.
    vertices = np.ascontiguousarray(columns, dtype="<f4").view([(name, "<f4") for name in names]).reshape(n)
    _write_vertices(path, vertices, comments=["da3_nerfstudio gaussian splats"])


def read_splat_ply(path: str | os.PathLike[str]) -> SplatData:
    """Read an INRIA-layout 3DGS PLY; extra properties and any property order are tolerated."""
    vertices = _read_vertices(path)
    names = set(vertices.dtype.names or ())
    rest_names = sorted((p for p in names if p.startswith("f_rest_")), key=lambda p: int(p[7:]))
    required = [p for p in _splat_property_names(0) if p not in ("nx", "ny", "nz")]
    missing = [p for p in required if p not in names]
    if missing:
        raise InputError(f"{path}: not a 3DGS PLY (missing {', '.join(missing)})")
    num_rest = len(rest_names)
    if (
        rest_names != [f"f_rest_{i}" for i in range(num_rest)]
        or num_rest % 3
        or num_rest // 3 not in (_REST_COUNT_TO_DEGREE)
    ):
        raise InputError(
            f"{path}: 3DGS PLY has {num_rest} f_rest properties; expected f_rest_0..f_rest_{{3K-1}} "
            "with K in {0,3,8,15}"
        )
    n = len(vertices)
    # Every value a renderer or trainer uses must be finite; float32 overflow counts as inf.
    _finite_columns(Path(path), vertices.astype([(p, "<f4") for p in vertices.dtype.names]), [*required, *rest_names])
    quat_norm = np.sqrt(sum(vertices[f"rot_{i}"].astype(np.float64) ** 2 for i in range(4)))
    if np.any(quat_norm == 0):
        raise InputError(
            f"{path}: {int((quat_norm == 0).sum())} vertices have a zero rotation quaternion (rot_0..3), "
            f"first vertex {int(np.argmax(quat_norm == 0))}"
        )

    def stack(props: list[str]) -> np.ndarray:
        if not props:
            return np.zeros((n, 0), np.float32)
        return np.stack([vertices[p] for p in props], axis=1).astype(np.float32)

    k = num_rest // 3
    return SplatData(
        means=stack(["x", "y", "z"]),
        scales_log=stack([f"scale_{i}" for i in range(3)]),
        rotations=stack([f"rot_{i}" for i in range(4)]),
        opacity_logit=vertices["opacity"].astype(np.float32),
        sh_dc=stack([f"f_dc_{i}" for i in range(3)]),
        sh_rest=stack(rest_names).reshape(n, 3, k).transpose(0, 2, 1),
    )
