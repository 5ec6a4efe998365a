"""PLY reading with numpy only.

Blender's Python has numpy but not plyfile, and 3DGS files hold millions of vertices with 60 properties,
so the vertex element is read with a single structured-dtype ``np.fromfile`` (binary) instead of per-row
Python code. ASCII files are supported for small hand-made clouds.

The builders hand every attribute to Blender's ``foreach_set``, which copies at memory speed only from a
C-contiguous float32 buffer. Properties are therefore gathered block by block into exactly such
buffers: one pass over the file's records that stays in cache, with long inner loops (one column of a
block at a time). Copying a (N, 3) group out of 248-byte records in one numpy call runs an inner loop of
3 elements per row and is about 3x slower.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .scene_data import PointData, SplatData

_SCALAR_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}
_FORMATS = {"ascii": "", "binary_little_endian": "<", "binary_big_endian": ">"}
_MAX_HEADER = 1 << 20
# Rows per gather block: 8192 records of a 3DGS SH3 file are 2 MB, which stays in cache while its
# columns are copied out.
_BLOCK_ROWS = 8192


@dataclass
class _Element:
    name: str
    count: int
    properties: list[tuple[str, str]]  # (name, numpy type code); list properties have code "list"


def _parse_header(path: Path) -> tuple[str, list[_Element], int]:
    """Return (format, elements, byte offset of the body)."""
    with open(path, "rb") as f:
        head = f.read(_MAX_HEADER)
    if not head.startswith(b"ply"):
        raise InputError(f"{path}: not a PLY file (it does not start with 'ply')")
    end = head.find(b"end_header")
    if end < 0:
        raise InputError(f"{path}: PLY header has no 'end_header' line (truncated or not a PLY file)")
    newline = head.find(b"\n", end)
    if newline < 0:
        raise InputError(f"{path}: PLY header is truncated after 'end_header'")
    fmt = ""
    elements: list[_Element] = []
    for raw in head[:end].decode("ascii", errors="replace").splitlines()[1:]:
        words = raw.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        try:
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                elements.append(_Element(words[1], int(words[2]), []))
                if elements[-1].count < 0:
                    raise InputError(f"{path}: PLY element {words[1]!r} has a negative count")
            elif words[0] == "property" and words[1] == "list":
                elements[-1].properties.append((words[4], "list"))
            elif words[0] == "property":
                elements[-1].properties.append((words[2], _SCALAR_TYPES[words[1]]))
            else:
                raise InputError(f"{path}: unexpected PLY header line {raw.strip()!r}")
        except (IndexError, ValueError, KeyError) as exc:
            raise InputError(f"{path}: malformed PLY header line {raw.strip()!r}") from exc
    if fmt not in _FORMATS:
        raise InputError(f"{path}: unsupported PLY format {fmt!r} (expected ascii or binary)")
    return fmt, elements, newline + 1


def read_ply_vertices(path: str | os.PathLike) -> np.ndarray:
    """Read the ``vertex`` element of a PLY file as a structured array (field names = PLY properties)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    fmt, elements, offset = _parse_header(path)
    names = [e.name for e in elements]
    if "vertex" not in names:
        raise InputError(f"{path}: PLY has no 'vertex' element")
    index = names.index("vertex")
    vertex = elements[index]
    if any(code == "list" for _, code in vertex.properties):
        raise InputError(f"{path}: PLY vertex element has list properties, which are not supported")
    if len({n for n, _ in vertex.properties}) != len(vertex.properties):
        raise InputError(f"{path}: PLY vertex element repeats a property name")
    endian = _FORMATS[fmt]
    dtype = np.dtype([(n, endian + code) for n, code in vertex.properties])
    if fmt == "ascii":
        return _read_ascii(path, offset, elements, index, dtype)
    for before in elements[:index]:
        if any(code == "list" for _, code in before.properties):
            raise InputError(f"{path}: PLY element {before.name!r} with list properties precedes 'vertex'")
        offset += before.count * np.dtype([(n, endian + c) for n, c in before.properties]).itemsize
    needed = vertex.count * dtype.itemsize
    available = path.stat().st_size - offset
    if available < needed:
        raise InputError(
            f"{path}: truncated PLY: {vertex.count} vertices need {needed} bytes, only {max(available, 0)} present"
        )
    return np.fromfile(path, dtype=dtype, count=vertex.count, offset=offset)


def _read_ascii(path: Path, offset: int, elements: list[_Element], index: int, dtype: np.dtype) -> np.ndarray:
    """ASCII body: one line per element instance, so earlier elements are skipped line by line."""
    skip = sum(e.count for e in elements[:index])
    count = elements[index].count
    with open(path, "rb") as f:
        f.seek(offset)
        lines = f.read().decode("ascii", errors="replace").splitlines()
    rows = [line for line in lines if line.strip()][skip : skip + count]
    values = " ".join(rows).split()
    width = len(dtype.names)
    if len(rows) < count or len(values) != count * width:
        raise InputError(f"{path}: truncated ASCII PLY: expected {count} vertex rows of {width} values")
    try:
        table = np.asarray(values, dtype=np.float64).reshape(count, width)
    except ValueError as exc:
        raise InputError(f"{path}: ASCII PLY vertex rows contain non-numeric values") from exc
    out = np.empty(count, dtype=dtype.newbyteorder("="))
    for k, name in enumerate(dtype.names):
        out[name] = table[:, k]
    return out


def _gather(vertices: np.ndarray, groups: list[list[str]], outs: list[np.ndarray]) -> None:
    """Copy each group of properties into its (N, len(group)) float32 C-contiguous ``out``, block by block."""
    for start in range(0, len(vertices), _BLOCK_ROWS):
        block = vertices[start : start + _BLOCK_ROWS]
        stop = start + len(block)
        for names, out in zip(groups, outs, strict=True):
            for j, name in enumerate(names):
                out[start:stop, j] = block[name]


def _columns(vertices: np.ndarray, names: list[str]) -> np.ndarray:
    """Properties ``names`` as one (N, len(names)) float32 C-contiguous array."""
    out = np.empty((len(vertices), len(names)), dtype=np.float32)
    _gather(vertices, [names], [out])
    return out


def _field(vertices: np.ndarray, name: str) -> np.ndarray:
    """One property as an (N,) float32 contiguous array."""
    return _columns(vertices, [name])[:, 0]


def _finite(path: str | os.PathLike, what: str, values: np.ndarray) -> np.ndarray:
    """``values``, or an InputError saying how many rows hold NaN or inf: such a point has no place in a scene."""
    finite = np.isfinite(values)
    if not finite.all():
        rows = int((~finite.reshape(len(values), -1).all(axis=1)).sum())
        raise InputError(f"{path}: {rows} of {len(values)} vertices have non-finite {what} (NaN or inf)")
    return values


# Colour property names in order of preference: the common PLY spelling, the short one, and the
# ``diffuse_*`` one of some scanners and meshing tools. (The core reader, da3_nerfstudio.formats.ply,
# accepts the same names; tests/blender/test_reader_conformance.py keeps them in step.)
COLOUR_NAMES = (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue"))
CONFIDENCE_NAMES = ("confidence", "conf", "quality")


def _colors(vertices: np.ndarray) -> np.ndarray | None:
    """sRGB colours in [0, 1]: integer channels are scaled by their type's maximum, floats kept."""
    names = vertices.dtype.names
    for keys in COLOUR_NAMES:
        if all(k in names for k in keys):
            kind = vertices.dtype[keys[0]]
            colors = _columns(vertices, list(keys))
            if kind.kind in "ui":
                colors /= np.float32(np.iinfo(kind).max)
            return colors
    return None


def read_point_cloud_ply(path: str | os.PathLike) -> PointData:
    """Positions, colours and confidence (``confidence``/``conf``/``quality``) from a point-cloud PLY."""
    vertices = read_ply_vertices(path)
    names = vertices.dtype.names
    missing = [k for k in ("x", "y", "z") if k not in names]
    if missing:
        raise InputError(f"{path}: PLY vertices lack coordinate properties {missing}")
    if len(vertices) == 0:
        raise InputError(f"{path}: PLY contains no points")
    positions = _finite(path, "coordinates", _columns(vertices, ["x", "y", "z"]))
    colors = _colors(vertices)
    if colors is not None:
        _finite(path, "colours", colors)
    confidence = next((_field(vertices, k) for k in CONFIDENCE_NAMES if k in names), None)
    if confidence is not None:
        _finite(path, "confidence", confidence)
    return PointData(positions=positions, colors=colors, confidence=confidence)


_SPLAT_REQUIRED = (
    ["x", "y", "z", "opacity"]
    + [f"f_dc_{i}" for i in range(3)]
    + [f"scale_{i}" for i in range(3)]
    + [f"rot_{i}" for i in range(4)]
)


def read_splat_ply(path: str | os.PathLike) -> SplatData:
    """Raw 3DGS attributes from an INRIA-layout PLY (SH degree 0-3; extra properties are ignored).

    ``f_rest`` is stored channel-major (all red coefficients, then green, then blue). ``sh_rest`` is
    returned as (N, K, 3) whose memory is coefficient-major (K, N, 3), so ``sh_rest[:, k]``, the
    (R, G, B) of coefficient k that becomes one Blender attribute, is contiguous and needs no copy.
    """
    vertices = read_ply_vertices(path)
    names = set(vertices.dtype.names)
    missing = [k for k in _SPLAT_REQUIRED if k not in names]
    if missing:
        raise InputError(
            f"{path}: not a 3D Gaussian splatting PLY (missing properties: {', '.join(missing)}); "
            "import it as a point cloud instead"
        )
    if len(vertices) == 0:
        raise InputError(f"{path}: PLY contains no splats")
    n_rest = 0
    while f"f_rest_{n_rest}" in names:
        n_rest += 1
    if n_rest not in (0, 9, 24, 45):
        raise InputError(f"{path}: {n_rest} f_rest properties do not match SH degree 1, 2 or 3 (9, 24, 45)")
    n, k = len(vertices), n_rest // 3
    groups = [
        ["x", "y", "z"],
        [f"scale_{i}" for i in range(3)],
        [f"rot_{i}" for i in range(4)],
        ["opacity"],
        [f"f_dc_{i}" for i in range(3)],
    ]
    outs = [np.empty((n, len(g)), dtype=np.float32) for g in groups]
    rest = np.empty((k, n, 3), dtype=np.float32)
    groups += [[f"f_rest_{c * k + j}" for c in range(3)] for j in range(k)]
    _gather(vertices, groups, outs + list(rest))
    for what, values in zip(("positions", "scales", "rotations", "opacities", "f_dc colours"), outs, strict=True):
        _finite(path, what, values)
    _finite(path, "f_rest coefficients", rest.transpose(1, 0, 2))
    means, scales_log, rotations, opacity, sh_dc = outs
    zero = ~rotations.any(axis=1)
    if zero.any():  # no orientation to normalise to; the core reader refuses these too
        raise InputError(
            f"{path}: {int(zero.sum())} of {len(zero)} vertices have a zero rotation quaternion (rot_0..3)"
        )
    return SplatData(
        means=means,
        scales_log=scales_log,
        rotations=rotations,
        opacity_logit=opacity[:, 0],
        sh_dc=sh_dc,
        sh_rest=rest.transpose(1, 0, 2),
    )
