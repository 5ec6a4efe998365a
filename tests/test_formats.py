"""File formats against independent consumers: plyfile, pycolmap, nerfstudio and real room geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from numpy.lib.recfunctions import repack_fields
from PIL import Image
from plyfile import PlyData, PlyElement
from samples import CV_TO_GL, ROOM, room_truth

from da3_nerfstudio.errors import InputError
from da3_nerfstudio.formats import ply as ply_module
from da3_nerfstudio.formats.atomic import atomic_write
from da3_nerfstudio.formats.colmap import Observations, read_colmap_model, write_colmap_model
from da3_nerfstudio.formats.ply import (
    SplatData,
    read_point_cloud_ply,
    read_splat_ply,
    write_point_cloud_ply,
    write_splat_ply,
)
from da3_nerfstudio.formats.transforms import frames_from_cameras, read_transforms_json, write_transforms_json


@pytest.fixture(scope="module")
def room() -> dict[str, np.ndarray]:
    """Ground-truth room: c2w OpenCV poses, intrinsics in the +0.5 pixel-centre convention, z-depths."""
    if not (ROOM / "condition.npz").is_file():
        pytest.skip(f"room_gt samples not found at {ROOM} (set DA3_SAMPLES)")
    truth = room_truth()
    return {"poses": truth.c2w, "intrinsics": truth.K, "depths": truth.depth}


def unproject(depth: np.ndarray, k: np.ndarray, c2w: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """World points of every ``step``-th valid pixel of a z-depth map, and their (u, v) pixel centres."""
    rows, cols = np.mgrid[0 : depth.shape[0] : step, 0 : depth.shape[1] : step]
    z = depth[rows, cols]
    valid = z > 0
    uv = np.stack([cols[valid] + 0.5, rows[valid] + 0.5], axis=1)
    rays = np.linalg.solve(k, np.concatenate([uv, np.ones((len(uv), 1))], axis=1).T).T
    cam = rays * z[valid][:, None]
    return cam @ c2w[:3, :3].T + c2w[:3, 3], uv


def random_splats(rng: np.random.Generator, n: int, degree: int) -> SplatData:
    k = (degree + 1) ** 2 - 1
    return SplatData(
        means=rng.normal(size=(n, 3)),
        scales_log=rng.normal(size=(n, 3)) - 3,
        rotations=rng.normal(size=(n, 4)),
        opacity_logit=rng.normal(size=n),
        sh_dc=rng.normal(size=(n, 3)),
        sh_rest=rng.normal(size=(n, k, 3)),
    )


def assert_splats_equal(a: SplatData, b: SplatData) -> None:
    for name in ("means", "scales_log", "rotations", "opacity_logit", "sh_dc", "sh_rest"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype == np.float32, name
        assert x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), f"{name} differs"


# --------------------------------------------------------------------------------------------- PLY


@pytest.mark.parametrize("with_confidence", [True, False])
def test_point_cloud_round_trip_is_bit_exact(tmp_path: Path, with_confidence: bool) -> None:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(500, 3)).astype(np.float32)
    colors = rng.integers(0, 256, size=(500, 3), dtype=np.uint8)
    confidence = rng.random(500).astype(np.float32) if with_confidence else None
    path = tmp_path / "cloud.ply"
    write_point_cloud_ply(path, points, colors, confidence)

    raw = PlyData.read(str(path))
    assert not raw.text and raw.byte_order == "<"
    vertex = raw["vertex"]
    expected = ["x", "y", "z", "red", "green", "blue"] + (["confidence"] if with_confidence else [])
    assert [p.name for p in vertex.properties] == expected
    assert [vertex.data.dtype[p].str for p in expected] == ["<f4"] * 3 + ["|u1"] * 3 + ["<f4"] * with_confidence
    np.testing.assert_array_equal(np.stack([vertex["x"], vertex["y"], vertex["z"]], 1), points)

    got_points, got_colors, got_confidence = read_point_cloud_ply(path)
    assert got_points.tobytes() == points.tobytes()
    assert got_colors.dtype == np.uint8 and np.array_equal(got_colors, colors)
    if with_confidence:
        assert got_confidence is not None and got_confidence.tobytes() == confidence.tobytes()
    else:
        assert got_confidence is None


def test_ascii_ply_with_float_colours_extra_properties_and_faces(tmp_path: Path) -> None:
    """Files from other tools: ASCII, 0..1 float colours, unknown properties and a face element."""
    vertices = np.array(
        [(0.5, -1.0, 2.0, 1.0, 0.0, 0.5, 7), (1.0, 2.0, 3.0, 0.2, 0.4, 1.0, 8)],
        dtype=[
            ("x", "f4"),
            ("y", "f4"),
            ("z", "f4"),
            ("red", "f4"),
            ("green", "f4"),
            ("blue", "f4"),
            ("id", "i4"),
        ],
    )
    faces = np.array([([0, 1, 1],)], dtype=[("vertex_indices", "i4", (3,))])
    path = tmp_path / "ascii.ply"
    PlyData([PlyElement.describe(vertices, "vertex"), PlyElement.describe(faces, "face")], text=True).write(str(path))
    assert path.read_bytes().startswith(b"ply\nformat ascii 1.0")

    points, colors, confidence = read_point_cloud_ply(path)
    np.testing.assert_array_equal(points, [[0.5, -1.0, 2.0], [1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(colors, [[255, 0, 128], [51, 102, 255]])
    assert confidence is None


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _good_cloud_bytes(tmp_path: Path) -> bytes:
    rng = np.random.default_rng(1)
    write_point_cloud_ply(tmp_path / "good.ply", rng.normal(size=(50, 3)), rng.integers(0, 256, (50, 3)))
    return (tmp_path / "good.ply").read_bytes()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "does not exist"),
        ("empty", "file is empty"),
        ("truncated", "early end-of-file"),
        ("not_ply", "not a readable PLY"),
        ("no_vertex_element", "no vertices"),
        ("zero_vertices", "no vertices"),
        ("no_colour", "missing red"),
    ],
)
def test_bad_point_cloud_files_raise_one_line_input_error(tmp_path: Path, case: str, message: str) -> None:
    path = tmp_path / f"{case}.ply"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        path.write_bytes(_good_cloud_bytes(tmp_path)[:-100])
    elif case == "not_ply":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    elif case == "no_vertex_element":
        faces = np.array([([0, 1, 2],)], dtype=[("vertex_indices", "i4", (3,))])
        PlyData([PlyElement.describe(faces, "face")]).write(str(path))
    elif case == "zero_vertices":
        write_point_cloud_ply(path, np.zeros((0, 3)), np.zeros((0, 3), np.uint8))
    elif case == "no_colour":
        xyz = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
        PlyData([PlyElement.describe(xyz, "vertex")]).write(str(path))
    with pytest.raises(InputError) as info:
        read_point_cloud_ply(path)
    text = str(info.value)
    assert str(path) in text and message in text and "\n" not in text


INRIA_PREFIX = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
INRIA_SUFFIX = ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_splat_round_trip_is_bit_exact_in_inria_layout(tmp_path: Path, degree: int) -> None:
    rng = np.random.default_rng(degree)
    splats = random_splats(rng, 300, degree)
    path = tmp_path / "splat.ply"
    write_splat_ply(path, splats)

    raw = PlyData.read(str(path))
    assert not raw.text and raw.byte_order == "<"
    vertex = raw["vertex"]
    k = (degree + 1) ** 2 - 1
    names = INRIA_PREFIX + [f"f_rest_{i}" for i in range(3 * k)] + INRIA_SUFFIX
    assert [p.name for p in vertex.properties] == names
    assert all(vertex.data.dtype[name].str == "<f4" for name in names)
    assert len(names) == {0: 17, 1: 26, 2: 41, 3: 62}[degree]  # 62 as in INRIA / ns-export, degree 3
    # Channel-major f_rest, raw values, zero normals: checked on the file, not through our reader.
    for c in range(3):
        for j in range(k):
            assert vertex[f"f_rest_{c * k + j}"].tobytes() == splats.sh_rest[:, j, c].tobytes()
    assert vertex["opacity"].tobytes() == splats.opacity_logit.tobytes()
    assert vertex["rot_0"].tobytes() == splats.rotations[:, 0].tobytes()
    assert vertex["scale_2"].tobytes() == splats.scales_log[:, 2].tobytes()
    assert not np.any(vertex["nx"]) and not np.any(vertex["nz"])

    back = read_splat_ply(path)
    assert back.sh_degree == degree and len(back) == 300
    assert_splats_equal(back, splats)


def test_splat_reader_tolerates_extra_properties_and_any_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    splats = random_splats(rng, 40, 1)
    columns = {
        **{axis: splats.means[:, i] for i, axis in enumerate("xyz")},
        **{f"f_dc_{c}": splats.sh_dc[:, c] for c in range(3)},
        **{f"f_rest_{c * 3 + j}": splats.sh_rest[:, j, c] for c in range(3) for j in range(3)},
        "opacity": splats.opacity_logit,
        **{f"scale_{i}": splats.scales_log[:, i] for i in range(3)},
        **{f"rot_{i}": splats.rotations[:, i] for i in range(4)},
        "red": rng.integers(0, 256, 40),
        "filter_3D": rng.random(40),
    }
    order = list(columns)
    rng.shuffle(order)  # no normals, extra properties, shuffled order, mixed dtypes
    dtypes = {"red": "u1", "filter_3D": "f8"}
    vertices = np.empty(40, dtype=[(name, dtypes.get(name, "f4")) for name in order])
    for name in order:
        vertices[name] = columns[name]
    path = tmp_path / "other_tool.ply"
    PlyData([PlyElement.describe(vertices, "vertex")], byte_order=">").write(str(path))
    assert_splats_equal(read_splat_ply(path), splats)


def test_non_3dgs_ply_is_rejected_naming_missing_properties(tmp_path: Path) -> None:
    path = tmp_path / "cloud.ply"
    write_point_cloud_ply(path, np.zeros((3, 3)), np.zeros((3, 3), np.uint8))
    with pytest.raises(InputError, match=r"not a 3DGS PLY \(missing f_dc_0.*opacity.*rot_3\)") as info:
        read_splat_ply(path)
    assert str(path) in str(info.value)


def test_splat_ply_with_incomplete_sh_bands_is_rejected(tmp_path: Path) -> None:
    splats = random_splats(np.random.default_rng(2), 5, 1)
    write_splat_ply(tmp_path / "s.ply", splats)
    raw = PlyData.read(str(tmp_path / "s.ply"))
    keep = [p.name for p in raw["vertex"].properties if p.name != "f_rest_8"]
    element = PlyElement.describe(repack_fields(raw["vertex"].data[keep]), "vertex")
    PlyData([element]).write(str(tmp_path / "bad.ply"))
    with pytest.raises(InputError, match="8 f_rest properties"):
        read_splat_ply(tmp_path / "bad.ply")


def test_from_activated_inverts_the_standard_activations() -> None:
    rng = np.random.default_rng(3)
    n = 64
    means = rng.normal(size=(n, 3))
    scales = np.exp(rng.normal(size=(n, 3)) - 4)
    quats = rng.normal(size=(n, 4))
    opacities = rng.random(n)
    opacities[:2] = [0.0, 1.0]  # must be clipped to finite logits
    coeffs = rng.normal(size=(n, 16, 3))  # coefficient-first

    splats = SplatData.from_activated(means, scales, quats, opacities, coeffs)
    assert splats.sh_degree == 3 and len(splats) == n
    np.testing.assert_allclose(np.exp(splats.scales_log), scales, rtol=1e-6)
    sigmoid = 1 / (1 + np.exp(-splats.opacity_logit.astype(np.float64)))
    assert np.all(np.isfinite(splats.opacity_logit))
    np.testing.assert_allclose(sigmoid[2:], opacities[2:], atol=1e-6)
    assert 0 < sigmoid[0] < 1e-5 and 1 - 1e-5 < sigmoid[1] < 1
    np.testing.assert_array_equal(splats.rotations, quats.astype(np.float32))
    np.testing.assert_array_equal(splats.sh_dc, coeffs[:, 0].astype(np.float32))
    np.testing.assert_array_equal(splats.sh_rest, coeffs[:, 1:].astype(np.float32))

    channel_first = SplatData.from_activated(means, scales, quats, opacities, coeffs.transpose(0, 2, 1))
    assert_splats_equal(channel_first, splats)
    dc_only = SplatData.from_activated(means, scales, quats, opacities, coeffs[:, :1].transpose(0, 2, 1))
    assert dc_only.sh_degree == 0 and dc_only.sh_rest.shape == (n, 0, 3)

    mask = opacities > 0.5
    subset = splats.select(mask)
    assert len(subset) == mask.sum()
    np.testing.assert_array_equal(subset.sh_rest, splats.sh_rest[mask])
    np.testing.assert_array_equal(splats.select(np.array([5, 1])).means, splats.means[[5, 1]])


# ------------------------------------------------------------------------------------------ atomic


def test_atomic_write_keeps_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"previous result")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target) as tmp:
        assert tmp.parent == target.parent and not tmp.exists()
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]

    with atomic_write(target) as tmp:
        tmp.write_bytes(b"new result")
    assert target.read_bytes() == b"new result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_splat_writer_failing_mid_write_leaves_existing_ply_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "splat.ply"
    old = random_splats(np.random.default_rng(7), 10, 0)
    write_splat_ply(path, old)
    before = path.read_bytes()

    def failing_write(self: PlyData, stream: str) -> None:
        Path(stream).write_bytes(b"ply\nformat binary_little_endian 1.0\n")  # partial output, then disk full
        raise OSError("No space left on device")

    monkeypatch.setattr(ply_module.PlyData, "write", failing_write)
    with pytest.raises(OSError, match="No space"):
        write_splat_ply(path, random_splats(np.random.default_rng(8), 10, 1))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["splat.ply"]


# ------------------------------------------------------------------------------------------ COLMAP


def _look_at_w2c(center: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """OpenCV w2c of a camera at ``center`` looking at ``target`` with a random roll."""
    forward = (target - center) / np.linalg.norm(target - center)
    right = np.cross(forward, rng.normal(size=3))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])  # rows: camera axes in world
    return np.concatenate([rotation, -rotation @ center[:, None]], axis=1)


def test_colmap_model_reprojects_through_pycolmap(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    n, m = 6, 400
    w2c = np.stack([_look_at_w2c(rng.normal(size=3) * 4 + [0, 0, -6], np.zeros(3), rng) for _ in range(n)])
    sizes = [(int(rng.integers(200, 640)), int(rng.integers(150, 480))) for _ in range(n)]
    intrinsics = np.stack(
        [
            np.array([[f * 1.02, 0, w / 2 + 3.25], [0, f, h / 2 - 1.5], [0, 0, 1]])
            for (w, h), f in zip(sizes, rng.uniform(150, 500, n), strict=True)
        ]
    )
    points = rng.uniform(-1, 1, size=(m, 3))
    colors = rng.integers(0, 256, size=(m, 3), dtype=np.uint8)
    # Observations from our own pinhole projection, in every image where the point lands inside.
    observations = []
    for p in points:
        sightings = []
        for i in range(n):
            cam = w2c[i, :, :3] @ p + w2c[i, :, 3]
            u, v = (intrinsics[i] @ cam)[:2] / cam[2]
            if cam[2] > 0 and 0 <= u < sizes[i][0] and 0 <= v < sizes[i][1]:
                sightings.append((i, (u, v)))
        observations.append(sightings)
    assert sum(map(len, observations)) > m  # most points are seen several times
    names = [f"img_{i:03d}.jpg" for i in range(n)]
    folder = tmp_path / "sparse" / "0"
    write_colmap_model(folder, w2c, intrinsics, sizes, names, points, colors, observations)

    rec = pycolmap.Reconstruction(folder)
    assert rec.num_reg_images() == n and rec.num_points3D() == m
    by_name = {image.name: image for image in rec.images.values()}
    for i, name in enumerate(names):
        image = by_name[name]
        camera = rec.cameras[image.camera_id]
        assert camera.model_name == "PINHOLE" and (camera.width, camera.height) == sizes[i]
        k = intrinsics[i]
        np.testing.assert_array_equal(camera.params, [k[0, 0], k[1, 1], k[0, 2], k[1, 2]])
        np.testing.assert_allclose(image.cam_from_world().matrix(), w2c[i], atol=1e-12)
    checked = 0
    for point in rec.points3D.values():
        for element in point.track.elements:
            image = rec.images[element.image_id]
            projected = image.project_point(point.xyz)
            observed = image.point2D(element.point2D_idx).xy
            # The task allows 0.5 px; a pixel-convention or pose bug shows up far above 1e-6 px.
            assert np.linalg.norm(projected - observed) < 1e-6
            checked += 1
    assert checked == sum(map(len, observations))

    model = read_colmap_model(folder)
    assert model.image_names == names and model.image_sizes == sizes
    np.testing.assert_allclose(model.w2c, w2c, atol=1e-12)
    np.testing.assert_array_equal(model.intrinsics, intrinsics)
    np.testing.assert_array_equal(model.points, points)
    np.testing.assert_array_equal(model.colors, colors)


def test_colmap_room_ground_truth_round_trip(tmp_path: Path, room: dict[str, np.ndarray]) -> None:
    """Points unprojected from view 0's true depth land on view 1's true depth through pycolmap."""
    w2c = np.linalg.inv(room["poses"])[:, :3]
    n, height, width = room["depths"].shape
    points, uv = unproject(room["depths"][0], room["intrinsics"][0], room["poses"][0], step=7)
    observations = [[(0, (u, v))] for u, v in uv]
    names = [f"{i}.png" for i in range(n)]
    colors = np.full((len(points), 3), 200, np.uint8)
    write_colmap_model(tmp_path, w2c, room["intrinsics"], [(width, height)] * n, names, points, colors, observations)

    rec = pycolmap.Reconstruction(tmp_path)
    images = {image.name: image for image in rec.images.values()}
    view0, view1 = images["0.png"], images["1.png"]
    errors, inside = [], 0
    for point in rec.points3D.values():
        observed = view0.point2D(point.track.elements[0].point2D_idx).xy
        # COLMAP stores rotations as unit quaternions, which re-orthonormalises the float32 ground
        # truth (orthonormal to ~1e-7): that moves projections by ~1e-4 px, far inside 0.5 px.
        assert np.linalg.norm(view0.project_point(point.xyz) - observed) < 1e-3
        uv1 = view1.project_point(point.xyz)
        if uv1 is None or not (0 <= uv1[0] < width and 0 <= uv1[1] < height):
            continue
        inside += 1
        z1 = (view1.cam_from_world() * point.xyz)[2]
        true_z = room["depths"][1][int(uv1[1]), int(uv1[0])]  # pixel index = floor(continuous coordinate)
        if true_z > 0:
            errors.append(abs(z1 - true_z) / true_z)
    assert inside > 100
    # Occluded points differ, but most points seen by both views must agree with view 1's true depth.
    assert np.median(errors) < 0.01

    model = read_colmap_model(tmp_path)
    np.testing.assert_allclose(model.w2c, w2c, atol=1e-6)
    np.testing.assert_allclose(model.intrinsics, room["intrinsics"], atol=1e-12)
    np.testing.assert_allclose(model.points, points, atol=0)


def _tiny_model(folder: Path, focal: float = 100.0) -> None:
    k = np.array([[focal, 0, 32.0], [0, focal, 24.0], [0, 0, 1]])
    write_colmap_model(
        folder, np.eye(4)[None, :3], k[None], [(64, 48)], ["a.png"], np.array([[0.0, 0, 2]]), np.zeros((1, 3))
    )


@pytest.mark.parametrize(
    "observations, needle",
    [
        ([[(0, (1.0, 2.0))]], "one entry per point (2), got 1"),
        ([[(0, (1.0, 2.0))], [(3, (1.0, 2.0))]], "point 1 is observed by image 3, but there are 1"),
        ([[(-1, (1.0, 2.0))], []], "point 0 is observed by image -1"),
        (Observations(np.array([0, 5]), np.array([0, 0]), np.zeros((2, 2))), "refer to the 2 points"),
    ],
)
def test_colmap_writer_refuses_observations_that_do_not_fit(observations: object, needle: str, tmp_path: Path) -> None:
    """Sightings of missing points or images are refused before anything is written."""
    k = np.array([[100.0, 0, 32.0], [0, 100.0, 24.0], [0, 0, 1]])
    points = np.array([[0.0, 0, 2], [0.1, 0, 2]])
    folder = tmp_path / "model"
    with pytest.raises(ValueError) as info:
        write_colmap_model(folder, np.eye(4)[None, :3], k[None], [(64, 48)], ["a.png"], points, np.zeros((2, 3)),
                           observations)  # fmt: skip
    assert needle in str(info.value)
    assert not folder.exists()


def test_colmap_writer_keeps_unrelated_files_and_replaces_stale_text_model(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    rec = pycolmap.Reconstruction()
    _tiny_model(tmp_path / "old", focal=50.0)
    rec.read(tmp_path / "old")
    rec.write_text(folder)  # an older text model in the same folder
    _tiny_model(folder, focal=100.0)
    assert (folder / "notes.txt").read_text() == "mine"
    assert not (folder / "cameras.txt").exists()
    assert {"cameras.bin", "images.bin", "points3D.bin"} <= {p.name for p in folder.iterdir()}
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    assert read_colmap_model(folder).intrinsics[0, 0, 0] == 100.0


def test_colmap_writer_failure_keeps_previous_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "model"
    _tiny_model(folder, focal=50.0)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def failing_write(self: pycolmap.Reconstruction, path: Path) -> None:
        (Path(path) / "cameras.bin").write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(pycolmap.Reconstruction, "write", failing_write)
    with pytest.raises(OSError, match="No space"):
        _tiny_model(folder, focal=100.0)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    with pytest.raises(OSError, match="No space"):
        _tiny_model(tmp_path / "fresh", focal=100.0)
    assert not (tmp_path / "fresh").exists()


def test_colmap_reader_text_models_and_distorted_cameras(tmp_path: Path) -> None:
    _tiny_model(tmp_path / "bin")
    rec = pycolmap.Reconstruction(tmp_path / "bin")
    text = tmp_path / "text"
    text.mkdir()
    rec.write_text(text)
    for legacy in ("rigs.txt", "frames.txt"):  # models from COLMAP < 3.12 have no rigs/frames
        (text / legacy).unlink()
    model = read_colmap_model(text)
    np.testing.assert_array_equal(model.intrinsics[0], [[100, 0, 32], [0, 100, 24], [0, 0, 1]])
    assert model.image_names == ["a.png"]

    rec.cameras[1] = pycolmap.Camera(
        camera_id=1, model="OPENCV", width=64, height=48, params=[110, 120, 31, 25, -0.1, 0.01, 0, 0]
    )
    (tmp_path / "opencv").mkdir()
    rec.write(tmp_path / "opencv")
    with pytest.warns(UserWarning, match="OPENCV; its distortion parameters .* are ignored"):
        model = read_colmap_model(tmp_path / "opencv")
    np.testing.assert_array_equal(model.intrinsics[0], [[110, 0, 31], [0, 120, 25], [0, 0, 1]])


@pytest.mark.parametrize("case", ["missing", "empty_folder", "truncated"])
def test_bad_colmap_models_raise_input_error(tmp_path: Path, case: str) -> None:
    folder = tmp_path / "model"
    if case == "empty_folder":
        folder.mkdir()
    elif case == "truncated":
        _tiny_model(folder)
        data = (folder / "images.bin").read_bytes()
        (folder / "images.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        read_colmap_model(folder)
    assert str(folder) in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------------- transforms.json


def test_transforms_round_trip_with_room_ground_truth(tmp_path: Path, room: dict[str, np.ndarray]) -> None:
    n, height, width = room["depths"].shape
    w2c = np.linalg.inv(room["poses"])[:, :3]
    files = [f"images/frame_{i:05d}.png" for i in range(n)]
    depths = [f"depths/frame_{i:05d}.npy" for i in range(n)]
    frames = frames_from_cameras(w2c, room["intrinsics"], [(width, height)] * n, files, depths)
    path = tmp_path / "transforms.json"
    write_transforms_json(path, frames, ply_file_path="sparse_pc.ply", extra={"applied_transform": np.eye(4)[:3]})

    meta = json.loads(path.read_text())
    assert meta["camera_model"] == "PINHOLE" and meta["ply_file_path"] == "sparse_pc.ply"
    assert meta["applied_transform"] == np.eye(4)[:3].tolist()
    for i, frame in enumerate(meta["frames"]):
        # The ground truth c2w with camera y and z flipped is the OpenGL pose nerfstudio expects.
        np.testing.assert_allclose(frame["transform_matrix"], room["poses"][i] @ CV_TO_GL, atol=1e-9)
        assert (frame["w"], frame["h"], frame["depth_file_path"]) == (width, height, depths[i])
        assert (frame["cx"], frame["cy"]) == (width / 2, height / 2)

    got_w2c, got_k, got_sizes, got_files = read_transforms_json(path)
    np.testing.assert_allclose(got_w2c[:, :3], w2c, atol=1e-9)
    np.testing.assert_array_equal(got_w2c[:, 3], np.tile([0, 0, 0, 1.0], (n, 1)))
    np.testing.assert_array_equal(got_k, room["intrinsics"])
    assert got_sizes == [(width, height)] * n and got_files == files


def test_transforms_reader_accepts_global_and_blender_style_intrinsics(tmp_path: Path) -> None:
    c2w = np.eye(4)
    c2w[:3, 3] = [1, 2, 3]
    meta = {"fl_x": 80.0, "fl_y": 90.0, "cx": 40.0, "cy": 30.0, "w": 81, "h": 61, "frames": []}
    meta["frames"] = [
        {"file_path": "a.png", "transform_matrix": c2w.tolist()},
        {"file_path": "b.png", "transform_matrix": c2w.tolist(), "fl_x": 70.0, "w": 100},
    ]
    (tmp_path / "global.json").write_text(json.dumps(meta))
    w2c, k, sizes, files = read_transforms_json(tmp_path / "global.json")
    np.testing.assert_array_equal(k[0], [[80, 0, 40], [0, 90, 30], [0, 0, 1]])
    np.testing.assert_array_equal(k[1], [[70, 0, 40], [0, 90, 30], [0, 0, 1]])
    assert sizes == [(81, 61), (100, 61)] and files == ["a.png", "b.png"]
    # OpenGL camera at (1,2,3) looking down -z: the OpenCV camera flips y and z.
    np.testing.assert_allclose(w2c[0], [[1, 0, 0, -1], [0, -1, 0, 2], [0, 0, -1, 3], [0, 0, 0, 1]])

    # NeRF-synthetic style: camera_angle_x only, image size from the image, file_path without ".png".
    (tmp_path / "train").mkdir()
    Image.new("RGB", (40, 20)).save(tmp_path / "train" / "r_0.png")
    focal = 35.0
    blender = {
        "camera_angle_x": 2 * np.arctan(40 / (2 * focal)),
        "frames": [meta["frames"][0] | {"file_path": "./train/r_0"}],
    }
    (tmp_path / "blender.json").write_text(json.dumps(blender))
    _, k, sizes, _ = read_transforms_json(tmp_path / "blender.json")
    np.testing.assert_allclose(k[0], [[focal, 0, 20], [0, focal, 10], [0, 0, 1]], rtol=1e-12)
    assert sizes == [(40, 20)]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("not_json", "not valid JSON"),
        ("no_frames", "no 'frames' list"),
        ("empty_frames", "no 'frames' list"),
        ("no_file_path", "'file_path' string"),
        ("matrix_3x3", "must be 4x4"),
        ("matrix_text", "non-numeric transform_matrix"),
        ("nan", "non-finite"),
        ("scaled_rotation", "pose is not rigid"),
        ("reflection", "pose rotation is a reflection"),
        ("no_focal", "no focal length"),
        ("bad_focal", "fl_x must be a finite number"),
        ("no_size_no_image", "cannot be read"),
        ("equirectangular", "not a pinhole camera"),
    ],
)
def test_malformed_transforms_raise_input_error(tmp_path: Path, case: str, message: str) -> None:
    frame = {"file_path": "a.png", "transform_matrix": np.eye(4).tolist(), "fl_x": 50.0, "w": 64, "h": 48}
    meta: dict = {"camera_model": "PINHOLE", "frames": [frame]}
    if case == "no_frames":
        del meta["frames"]
    elif case == "empty_frames":
        meta["frames"] = []
    elif case == "no_file_path":
        del frame["file_path"]
    elif case == "matrix_3x3":
        frame["transform_matrix"] = np.eye(3).tolist()
    elif case == "matrix_text":
        frame["transform_matrix"] = "identity"
    elif case == "nan":
        frame["transform_matrix"][0][3] = float("nan")
    elif case == "scaled_rotation":
        frame["transform_matrix"] = (np.diag([2.0, 2.0, 2.0, 1.0])).tolist()
    elif case == "reflection":
        frame["transform_matrix"] = (np.diag([1.0, 1.0, -1.0, 1.0])).tolist()
    elif case == "no_focal":
        del frame["fl_x"]
    elif case == "bad_focal":
        frame["fl_x"] = "fifty"
    elif case == "no_size_no_image":
        del frame["w"], frame["h"]
    elif case == "equirectangular":
        meta["camera_model"] = "EQUIRECTANGULAR"
    path = tmp_path / "transforms.json"
    path.write_text("{not json" if case == "not_json" else json.dumps(meta, allow_nan=True))
    with pytest.raises(InputError) as info:
        read_transforms_json(path)
    assert str(path) in str(info.value) and message in str(info.value) and "\n" not in str(info.value)


def test_transforms_reader_warns_about_ignored_distortion(tmp_path: Path) -> None:
    frame = {"file_path": "a.png", "transform_matrix": np.eye(4).tolist(), "fl_x": 50.0, "w": 64, "h": 48}
    (tmp_path / "t.json").write_text(json.dumps({"camera_model": "OPENCV", "k1": 0.1, "frames": [frame]}))
    with pytest.warns(UserWarning, match="distortion of 1 frame"):
        read_transforms_json(tmp_path / "t.json")


def test_nerfstudio_dataparser_loads_written_dataset(tmp_path: Path, room: dict[str, np.ndarray]) -> None:
    """nerfstudio's own parser reads our images, cameras, depths and seed cloud in the expected frame."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    n, height, width = room["depths"].shape
    (tmp_path / "images").mkdir()
    (tmp_path / "depths").mkdir()
    files, depth_files = [], []
    for i in range(n):
        files.append(f"images/frame_{i:05d}.png")
        depth_files.append(f"depths/frame_{i:05d}.npy")
        Image.new("RGB", (width, height), (i * 30, 80, 160)).save(tmp_path / files[-1])
        np.save(tmp_path / depth_files[-1], room["depths"][i])
    points, _ = unproject(room["depths"][0], room["intrinsics"][0], room["poses"][0], step=11)
    colors = np.random.default_rng(4).integers(0, 256, size=(len(points), 3), dtype=np.uint8)
    write_point_cloud_ply(tmp_path / "sparse_pc.ply", points, colors, np.ones(len(points)))
    w2c = np.linalg.inv(room["poses"])[:, :3]
    frames = frames_from_cameras(w2c, room["intrinsics"], [(width, height)] * n, files, depth_files)
    # Listed in reverse to check that nerfstudio's filename sort meets our order.
    write_transforms_json(tmp_path / "transforms.json", frames[::-1], ply_file_path="sparse_pc.ply")

    config = NerfstudioDataParserConfig(data=tmp_path, eval_mode="all", load_3D_points=True)
    outputs = config.setup().get_dataparser_outputs("train")

    assert [Path(f).relative_to(tmp_path).as_posix() for f in outputs.image_filenames] == files
    assert [Path(f).relative_to(tmp_path).as_posix() for f in outputs.metadata["depth_filenames"]] == depth_files
    cameras = outputs.cameras
    np.testing.assert_allclose(cameras.fx.numpy()[:, 0], room["intrinsics"][:, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(cameras.fy.numpy()[:, 0], room["intrinsics"][:, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(cameras.cx.numpy()[:, 0], room["intrinsics"][:, 0, 2], rtol=1e-6)
    np.testing.assert_allclose(cameras.cy.numpy()[:, 0], room["intrinsics"][:, 1, 2], rtol=1e-6)
    assert (cameras.width == width).all() and (cameras.height == height).all()

    # nerfstudio's documented normalisation: poses = transform @ c2w_gl, translations times scale.
    transform = np.concatenate([outputs.dataparser_transform.numpy(), [[0, 0, 0, 1]]])
    scale = outputs.dataparser_scale
    expected = transform @ room["poses"] @ CV_TO_GL
    expected[:, :3, 3] *= scale
    np.testing.assert_allclose(cameras.camera_to_worlds.numpy(), expected[:, :3], atol=1e-5)

    # Seed points go through the same transform; open3d truncates colours (c / 255 * 255) by up to 1.
    expected_points = (points @ transform[:3, :3].T + transform[:3, 3]) * scale
    np.testing.assert_allclose(outputs.metadata["points3D_xyz"].numpy(), expected_points, atol=1e-5)
    rgb = outputs.metadata["points3D_rgb"].numpy().astype(int)
    assert np.all((colors.astype(int) - rgb >= 0) & (colors.astype(int) - rgb <= 1))


def test_colmap_model_is_read_by_nerfstudio_colmap_reader(tmp_path: Path) -> None:
    """nerfstudio's ``colmap`` dataparser has its own binary reader; it must see the same model."""
    from nerfstudio.data.utils.colmap_parsing_utils import qvec2rotmat, read_model

    rng = np.random.default_rng(12)
    w2c = np.stack([_look_at_w2c(rng.normal(size=3) * 3 + [0, 0, -5], np.zeros(3), rng) for _ in range(3)])
    k = np.array([[300.0, 0, 160.5], [0, 310.0, 120.25], [0, 0, 1]])
    points = rng.normal(size=(20, 3))
    colors = rng.integers(0, 256, size=(20, 3), dtype=np.uint8)
    observations = [[(i % 3, (float(i), float(2 * i)))] for i in range(20)]
    names = ["a.png", "b.png", "c.png"]
    write_colmap_model(tmp_path, w2c, np.stack([k] * 3), [(320, 240)] * 3, names, points, colors, observations)

    cameras, images, points3d = read_model(str(tmp_path), ".bin")
    for image in images.values():
        i = names.index(image.name)
        assert cameras[image.camera_id].model == "PINHOLE"
        np.testing.assert_array_equal(cameras[image.camera_id].params, [300.0, 310.0, 160.5, 120.25])
        np.testing.assert_allclose(qvec2rotmat(image.qvec), w2c[i, :, :3], atol=1e-12)
        np.testing.assert_allclose(image.tvec, w2c[i, :, 3], atol=1e-12)
    got = sorted(
        (tuple(p.xyz), tuple(p.rgb), tuple(images[p.image_ids[0]].xys[p.point2D_idxs[0]])) for p in points3d.values()
    )
    want = sorted((tuple(p), tuple(c), obs[0][1]) for p, c, obs in zip(points, colors, observations, strict=True))
    assert got == want
