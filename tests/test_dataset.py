"""The dataset writer, checked by its real consumers against ground truth.

The room sample's exact poses, intrinsics and depth stand in for network output ("oracle
predictions"), so everything the writer produces has an independent truth: nerfstudio's own
``nerfstudio-data`` parser must give back the ground-truth cameras and the seed points, pycolmap's
projection must put every point on the pixel it came from, and that pixel's ground-truth depth must
agree with the point.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image
from plyfile import PlyData
from samples import CV_TO_GL, ROOM, room_truth

from da3_nerfstudio import InputError, Prediction, output_folder
from da3_nerfstudio import dataset as dataset_module
from da3_nerfstudio.dataset import downscale_factors, split_indices, write_dataset
from da3_nerfstudio.dataset_options import DatasetOptions
from da3_nerfstudio.formats.ply import read_point_cloud_ply, read_splat_ply
from da3_nerfstudio.geometry import unproject_depth
from da3_nerfstudio.output_folder import MANIFEST, dataset_is_current, input_fingerprint
from da3_nerfstudio.points import voxel_downsample

pytestmark = pytest.mark.skipif(not ROOM.is_dir(), reason=f"sample data not found at {ROOM}")
#: Small clouds keep the tests fast where the point count is not what is tested.
SMALL = DatasetOptions(num_points=5_000, num_gaussians=20_000)


def room_gt() -> dict[str, np.ndarray]:
    """Ground truth: w2c (8,4,4) OpenCV, K (8,3,3) continuous pixel convention, depth, images."""
    truth = room_truth()
    return {"c2w": truth.c2w, "w2c": truth.w2c, "K": truth.K, "depth": truth.depth, "images": truth.images}


def room_prediction(gt: dict[str, np.ndarray], views: list[int] | None = None) -> Prediction:
    views = list(range(8)) if views is None else views
    return Prediction(
        depth=gt["depth"][views],
        extrinsics=gt["w2c"][views, :3].astype(np.float32),
        intrinsics=gt["K"][views].astype(np.float32),
        images=gt["images"][views],
        conf=np.ones_like(gt["depth"][views]),
    )


def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path -> sha1 of every file below ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def leftovers(parent: Path) -> list[str]:
    """Temporary folders of the writer or the CLI left next to the output."""
    return [p.name for p in parent.iterdir() if p.name.startswith(".") and p.name.endswith(("-new", "-old", "frames"))]


def nerfstudio_outputs(out: Path, split: str, **kwargs):  # noqa: ANN201 (nerfstudio type)
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    config = NerfstudioDataParserConfig(data=out, depth_unit_scale_factor=1.0, load_3D_points=True, **kwargs)
    return config.setup().get_dataparser_outputs(split=split)


def nerfstudio_c2w_in_data_frame(outputs) -> np.ndarray:  # noqa: ANN001
    """nerfstudio's normalised camera-to-world (OpenGL) mapped back through its own transform and scale."""
    transform = np.eye(4)
    transform[:3] = outputs.dataparser_transform.numpy()
    c2w = np.tile(np.eye(4), (len(outputs.image_filenames), 1, 1))
    c2w[:, :3] = outputs.cameras.camera_to_worlds.numpy()
    c2w[:, :3, 3] /= outputs.dataparser_scale
    return np.linalg.inv(transform) @ c2w


def frame_index(path: Path) -> int:
    """0-based view index of ``.../frame_0000k.ext``."""
    return int(Path(path).stem.split("_")[1]) - 1


def check_nerfstudio(out: Path, c2w_cv: np.ndarray, K: np.ndarray, sizes: list[tuple[int, int]]) -> None:
    """nerfstudio-data loads train and eval; cameras equal (c2w_cv, K at ``sizes``), seed points equal
    sparse_pc.ply after nerfstudio's transform, and every frame has an existing depth file."""
    points, colours, _ = read_point_cloud_ply(out / "sparse_pc.ply")
    seen = set()
    for split in ("train", "val"):
        outputs = nerfstudio_outputs(out, split)
        index = [frame_index(p) for p in outputs.image_filenames]
        seen.update(index)
        scale = np.max(np.abs(c2w_cv[:, :3, 3])) + 1.0
        got = nerfstudio_c2w_in_data_frame(outputs)
        expected = c2w_cv[index] @ CV_TO_GL
        np.testing.assert_allclose(got[:, :3, 3], expected[:, :3, 3], atol=1e-5 * scale, rtol=0)
        np.testing.assert_allclose(got[:, :3, :3], expected[:, :3, :3], atol=1e-5, rtol=0)
        cams = outputs.cameras
        np.testing.assert_allclose(cams.fx[:, 0].numpy(), K[index, 0, 0], rtol=1e-6)
        np.testing.assert_allclose(cams.fy[:, 0].numpy(), K[index, 1, 1], rtol=1e-6)
        np.testing.assert_allclose(cams.cx[:, 0].numpy(), K[index, 0, 2], rtol=1e-6)
        np.testing.assert_allclose(cams.cy[:, 0].numpy(), K[index, 1, 2], rtol=1e-6)
        assert [(int(w), int(h)) for w, h in zip(cams.width[:, 0], cams.height[:, 0], strict=True)] == [
            sizes[i] for i in index
        ]
        for path, w, h in zip(outputs.image_filenames, cams.width[:, 0], cams.height[:, 0], strict=True):
            with Image.open(path) as im:
                assert im.size == (int(w), int(h))
        depth_files = outputs.metadata["depth_filenames"]
        assert len(depth_files) == len(index) and all(Path(p).is_file() for p in depth_files)
        homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1)
        expected_points = homogeneous @ outputs.dataparser_transform.numpy().T * outputs.dataparser_scale
        np.testing.assert_allclose(outputs.metadata["points3D_xyz"].numpy(), expected_points, atol=1e-5)
        np.testing.assert_array_equal(outputs.metadata["points3D_rgb"].numpy(), colours)
    assert seen == set(range(len(c2w_cv)))


def check_colmap(out: Path, w2c: np.ndarray, K: np.ndarray, depth: np.ndarray, depth_K: np.ndarray) -> int:
    """pycolmap reads colmap/sparse/0 and every point reprojects (pycolmap's own projection) within
    0.5 px of its observation; independently, the point lies on the ground-truth depth of the pixel it
    projects to in the ground-truth camera. Returns the number of points."""
    rec = pycolmap.Reconstruction(out / "colmap" / "sparse" / "0")
    names = {image_id: rec.image(image_id).name for image_id in rec.reg_image_ids()}
    assert sorted(names.values()) == sorted(p.name for p in (out / "images").iterdir())
    worst = 0.0
    xyz, views, observed = [], [], []
    for point_id in rec.point3D_ids():
        point = rec.point3D(point_id)
        assert point.track.length() >= 1
        for element in point.track.elements:
            image = rec.image(element.image_id)
            projected = image.project_point(point.xyz)
            keypoint = image.points2D[element.point2D_idx].xy
            worst = max(worst, float(np.linalg.norm(projected - keypoint)))
            xyz.append(point.xyz)
            views.append(frame_index(Path(image.name)))
            observed.append(keypoint)
    assert worst < 0.5, f"worst reprojection {worst} px"
    xyz, views, observed = np.array(xyz), np.array(views), np.array(observed)
    # Independent truth: the observation is where the ground-truth camera sees the point ...
    cam = np.einsum("nij,nj->ni", w2c[views, :3, :3], xyz) + w2c[views, :3, 3]
    uv = np.einsum("nij,nj->ni", K[views], cam)
    uv = uv[:, :2] / uv[:, 2:]
    assert np.max(np.linalg.norm(uv - observed, axis=1)) < 0.5
    # ... and the point is on the ground-truth surface there (depth maps at their own resolution).
    uv_depth = np.einsum("nij,nj->ni", depth_K[views], cam)[:, :2] / cam[:, 2:]
    cols = np.clip(np.floor(uv_depth[:, 0]).astype(int), 0, depth.shape[2] - 1)
    rows = np.clip(np.floor(uv_depth[:, 1]).astype(int), 0, depth.shape[1] - 1)
    # Points are stored as float32 world coordinates (~1e-6 m resolution at the room's 10 m extent).
    np.testing.assert_allclose(cam[:, 2], depth[views, rows, cols], rtol=1e-5, atol=1e-5)
    return len(xyz)


# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gt() -> dict[str, np.ndarray]:
    return room_gt()


@pytest.fixture(scope="module")
def room_dataset(gt: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("room") / "dataset"
    write_dataset(room_prediction(gt), out, options=DatasetOptions(num_points=20_000, num_gaussians=50_000))
    return out


def test_nerfstudio_loads_ground_truth_cameras_and_seed_points(room_dataset: Path, gt: dict) -> None:
    check_nerfstudio(room_dataset, gt["c2w"], gt["K"], [(434, 350)] * 8)
    meta = json.loads((room_dataset / "transforms.json").read_text())
    assert meta["camera_model"] == "PINHOLE" and meta["ply_file_path"] == "sparse_pc.ply"
    assert meta["val_filenames"] == ["images/frame_00005.png"] and len(meta["train_filenames"]) == 7
    for i, frame in enumerate(meta["frames"]):
        np.testing.assert_array_equal(np.load(room_dataset / frame["depth_file_path"]), gt["depth"][i])


def test_da3_data_parser_reads_splats_and_confidence(room_dataset: Path) -> None:
    """The project's own nerfstudio parser (da3-data) finds the initial Gaussians and confidence maps."""
    from da3_nerfstudio.nerfstudio_method.dataparser import DA3DataParserConfig

    outputs = DA3DataParserConfig(data=room_dataset).setup().get_dataparser_outputs(split="train")
    assert len(outputs.metadata["splat_init"]["means"]) == len(read_splat_ply(room_dataset / "splat_init.ply"))
    confidence = outputs.metadata["confidence_filenames"]
    assert [frame_index(p) for p in confidence] == [frame_index(p) for p in outputs.image_filenames]
    assert all(np.load(p).shape == (350, 434) for p in confidence)


def test_colmap_points_reproject_onto_ground_truth(room_dataset: Path, gt: dict) -> None:
    n = check_colmap(room_dataset, gt["w2c"], gt["K"], gt["depth"], gt["K"])
    points, _, _ = read_point_cloud_ply(room_dataset / "sparse_pc.ply")
    assert n == len(points) and 0.9 * 20_000 <= n <= 20_000


def test_splats_from_depth_sit_on_the_ground_truth_surface(gt: dict, tmp_path: Path) -> None:
    views = [0, 1]
    pred = room_prediction(gt, views)
    valid = int((pred.depth > 0).sum())
    options = DatasetOptions(num_points=5_000, num_gaussians=valid, eval_interval=0)
    write_dataset(pred, tmp_path / "out", options=options)
    # plyfile directly (memory-mapped): read_splat_ply takes plyfile's row-by-row path, ~20 s for 300k splats.
    vertices = PlyData.read(str(tmp_path / "out" / "splat_init.ply"))["vertex"].data
    means = np.stack([vertices[c] for c in "xyz"], axis=1)
    points = unproject_depth(gt["depth"][views].astype(np.float64), gt["K"][views], gt["w2c"][views])
    np.testing.assert_allclose(means, points[gt["depth"][views] > 0], atol=1e-4)
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["summary"]["gaussian_source"] == "depth (every pixel)"


@pytest.mark.parametrize("eval_interval", [8, 0])
def test_held_out_views_seed_no_points_or_gaussians(gt: dict, tmp_path: Path, eval_interval: int) -> None:
    """A held-out view stays unseen: none of its pixels becomes a point or an initial Gaussian (ns-eval
    would otherwise score a view the initialisation copied). View 4, held out by eval_interval 8, is made
    to see a wall 100 m away that no other view sees; with eval_interval 0 (no hold-out) the wall is there."""
    pred = room_prediction(gt)
    pred.depth[4] = np.where(pred.depth[4] > 0, 100.0, 0.0)
    out = tmp_path / "out"
    write_dataset(
        pred, out, options=DatasetOptions(num_points=5_000, num_gaussians=20_000, eval_interval=eval_interval)
    )
    centre = gt["c2w"][4, :3, 3]
    points, _, _ = read_point_cloud_ply(out / "sparse_pc.ply")
    means = read_splat_ply(out / "splat_init.ply").means
    for seeds in (points, means):
        far = np.linalg.norm(seeds - centre, axis=1) > 50
        assert far.any() == (eval_interval == 0), far.sum()
    reconstruction = pycolmap.Reconstruction(str(out / "colmap" / "sparse" / "0"))
    seen_in = {
        reconstruction.images[el.image_id].name for p in reconstruction.points3D.values() for el in p.track.elements
    }
    assert ("frame_00005.png" in seen_in) == (eval_interval == 0)


def test_gaussian_head_output_is_used_when_present(gt: dict, tmp_path: Path) -> None:
    pred = room_prediction(gt, [0, 1])
    rng = np.random.default_rng(0)
    m = 500
    pred.gaussians = {
        "means": rng.normal(size=(m, 3)).astype(np.float32),
        "scales": rng.uniform(0.01, 0.1, (m, 3)).astype(np.float32),
        "rotations": np.tile([1.0, 0.0, 0.0, 0.0], (m, 1)).astype(np.float32),
        "harmonics": rng.normal(size=(m, 3, 9)).astype(np.float32),
        "opacities": rng.uniform(0.1, 0.9, m).astype(np.float32),
        "views": np.zeros(m, np.int64),
    }
    write_dataset(pred, tmp_path / "out", options=SMALL)
    splats = read_splat_ply(tmp_path / "out" / "splat_init.ply")
    np.testing.assert_allclose(splats.means, pred.gaussians["means"], atol=1e-6)
    np.testing.assert_allclose(np.exp(splats.scales_log), pred.gaussians["scales"], rtol=1e-5)
    assert splats.sh_rest.shape == (m, 8, 3)


def test_large_images_get_the_downscaled_folders_nerfstudio_uses(gt: dict, tmp_path: Path) -> None:
    views = [0, 1, 2]
    photos = tmp_path / "photos"
    photos.mkdir()
    paths = []
    for i in views:  # 8x the room: 3472x2800, so nerfstudio wants images_4 (868x700)
        paths.append(photos / f"{i}.jpg")
        Image.fromarray(gt["images"][i]).resize((3472, 2800), Image.Resampling.NEAREST).save(paths[-1], quality=90)
    out = tmp_path / "out"
    summary = write_dataset(room_prediction(gt, views), out, image_paths=paths, options=SMALL)
    assert summary.downscales == [2, 4] == downscale_factors([(3472, 2800)])
    for factor in (2, 4):
        for i in range(3):
            with Image.open(out / f"images_{factor}" / f"frame_{i + 1:05d}.jpg") as im:
                assert im.size == (3472 // factor, 2800 // factor)
            np.testing.assert_array_equal(np.load(out / f"depths_{factor}" / f"frame_{i + 1:05d}.npy"), gt["depth"][i])
    outputs = nerfstudio_outputs(out, "train")
    assert all(Path(p).parent.name == "images_4" for p in outputs.image_filenames)
    assert all(Path(p).parent.name == "depths_4" and Path(p).is_file() for p in outputs.metadata["depth_filenames"])
    K8 = gt["K"][views] * np.array([[8.0], [8.0], [1.0]])
    np.testing.assert_allclose(outputs.cameras.fx[:, 0].numpy(), K8[:, 0, 0] / 4, rtol=1e-6)
    np.testing.assert_allclose(outputs.cameras.cx[:, 0].numpy(), K8[:, 0, 2] / 4, rtol=1e-6)
    assert (outputs.cameras.width == 868).all() and (outputs.cameras.height == 700).all()
    assert (out / "images" / "frame_00001.jpg").read_bytes() == paths[0].read_bytes()  # copied, not re-encoded


def test_exif_rotated_photos_are_written_upright(gt: dict, tmp_path: Path) -> None:
    """A photo stored sideways with EXIF orientation 6 (display rotated 90 degrees clockwise)."""
    photo = tmp_path / "sideways.png"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(gt["images"][0])).save(photo, exif=exif.tobytes())
    write_dataset(room_prediction(gt, [0]), tmp_path / "out", image_paths=[photo], options=SMALL)
    with Image.open(tmp_path / "out" / "images" / "frame_00001.png") as im:
        assert "exif" not in im.info
        np.testing.assert_array_equal(np.asarray(im), gt["images"][0])
    frame = json.loads((tmp_path / "out" / "transforms.json").read_text())["frames"][0]
    assert (frame["w"], frame["h"], frame["fl_x"], frame["cx"]) == (434, 350, gt["K"][0, 0, 0], gt["K"][0, 0, 2])


def test_cropped_view_depth_is_placed_on_the_full_image(gt: dict, tmp_path: Path) -> None:
    """A view the network saw centre-cropped (mixed input sizes): depth is resampled onto the full image."""
    pad = 20
    photo = tmp_path / "wide.png"
    padded = np.zeros((350, 434 + 2 * pad, 3), np.uint8)
    padded[:, pad : pad + 434] = gt["images"][0]
    Image.fromarray(padded).save(photo)
    pred = room_prediction(gt, [0])
    pred.original_sizes = np.array([[434 + 2 * pad, 350]])
    pred.transforms = np.array([[[1.0, 0.0, -pad], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    write_dataset(pred, tmp_path / "out", image_paths=[photo], options=SMALL)
    frame = json.loads((tmp_path / "out" / "transforms.json").read_text())["frames"][0]
    assert (frame["w"], frame["h"]) == (434 + 2 * pad, 350)
    assert frame["cx"] == pytest.approx(gt["K"][0, 0, 2] + pad) and frame["fl_x"] == pytest.approx(gt["K"][0, 0, 0])
    depth = np.load(tmp_path / "out" / frame["depth_file_path"])
    assert depth.shape == (350, 434 + 2 * pad)
    np.testing.assert_array_equal(depth[:, pad : pad + 434], gt["depth"][0])
    assert not depth[:, :pad].any() and not depth[:, pad + 434 :].any()


def test_voxel_downsample_keeps_the_best_point_per_voxel() -> None:
    rng = np.random.default_rng(1)
    points = np.concatenate([rng.uniform(0, 1, (200_000, 2)), np.zeros((200_000, 1))], axis=1)
    priority = rng.uniform(size=len(points))
    keep, size = voxel_downsample(points, 5_000, priority)
    assert 4_500 <= len(keep) <= 5_000 and size > 0
    cells = np.floor((points - points.min(0)) / size).astype(np.int64)
    keys = cells[:, 0] * 10**7 + cells[:, 1]
    assert len(np.unique(keys[keep])) == len(keep)
    best = {}
    for i in np.argsort(priority):
        best[keys[i]] = i  # the last write per voxel is its highest priority
    assert sorted(best.values()) == sorted(keep.tolist())
    all_kept, zero = voxel_downsample(points[:100], 5_000, priority[:100])
    assert len(all_kept) == 100 and zero == 0


def test_voxel_counts_by_bitmap_and_by_sorting_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """The voxel search counts small grids with a bitmap and large ones by sorting: the same choice either way."""
    from da3_nerfstudio import points as points_module

    rng = np.random.default_rng(2)
    cloud = rng.normal(size=(50_000, 3)) * [4.0, 1.0, 0.2]
    priority = rng.uniform(size=len(cloud))
    by_bitmap = voxel_downsample(cloud, 2_000, priority)
    monkeypatch.setattr(points_module, "_MAX_BITMAP_CELLS", 0)
    by_sorting = voxel_downsample(cloud, 2_000, priority)
    assert np.array_equal(by_bitmap[0], by_sorting[0]) and by_bitmap[1] == by_sorting[1]


def test_split_holds_out_every_eighth_view() -> None:
    assert split_indices(16, 8) == ([i for i in range(16) if i not in (4, 12)], [4, 12])
    assert split_indices(3, 8) == ([0, 1, 2], [0, 1, 2])
    assert split_indices(5, 0) == (list(range(5)), list(range(5)))


def test_rerun_replaces_only_the_tools_files_and_keeps_the_users(gt: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_dataset(room_prediction(gt, [0, 1, 2]), out, options=SMALL)
    manifest = json.loads((out / MANIFEST).read_text())
    written = {str(p.relative_to(out)): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    assert manifest["files"] == {k: v for k, v in written.items() if k != str(MANIFEST)}
    (out / "notes.md").write_text("lens: 24 mm")
    (out / "outputs" / "da3-splat").mkdir(parents=True)
    (out / "outputs" / "da3-splat" / "step-000029999.ckpt").write_bytes(b"trained for a day")
    users = {k: v for k, v in tree_digest(out).items() if k.startswith(("notes", "outputs"))}
    write_dataset(room_prediction(gt, [3, 4]), out, options=SMALL)
    assert len(json.loads((out / "transforms.json").read_text())["frames"]) == 2
    assert not (out / "images" / "frame_00003.png").exists() and leftovers(tmp_path) == []
    assert {k: v for k, v in tree_digest(out).items() if k.startswith(("notes", "outputs"))} == users
    assert ".da3-staging.json" not in {p.name for p in out.iterdir()}

    unrelated = tmp_path / "photos_of_my_cat"
    unrelated.mkdir()
    (unrelated / "cat.txt").write_text("precious")
    with pytest.raises(InputError, match="not written by da3-process-data; pass --overwrite"):
        write_dataset(room_prediction(gt, [0, 1]), unrelated)
    assert (unrelated / "cat.txt").read_text() == "precious" and leftovers(tmp_path) == []
    # --overwrite writes the dataset into the folder and still keeps what the tool did not write.
    write_dataset(room_prediction(gt, [0, 1]), unrelated, overwrite=True, options=SMALL)
    assert (unrelated / "cat.txt").read_text() == "precious" and (unrelated / "transforms.json").is_file()
    assert "cat.txt" not in json.loads((unrelated / MANIFEST).read_text())["files"]


def test_a_failing_write_leaves_the_previous_dataset_untouched(
    gt: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    write_dataset(room_prediction(gt, [0, 1]), out, options=SMALL)
    before = tree_digest(out)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dataset_module, "write_splat_ply", disk_full)
    with pytest.raises(InputError, match="writing the dataset failed.*No space left"):
        write_dataset(room_prediction(gt, [2, 3, 4]), out, options=SMALL)
    assert tree_digest(out) == before and leftovers(tmp_path) == []


def test_images_of_the_wrong_shape_are_refused(gt: dict, tmp_path: Path) -> None:
    portrait = tmp_path / "portrait.png"
    Image.fromarray(np.zeros((434, 350, 3), np.uint8)).save(portrait)
    with pytest.raises(InputError, match="portrait.png: image is 350x434 but view 0"):
        write_dataset(room_prediction(gt, [0]), tmp_path / "out", image_paths=[portrait])
    with pytest.raises(InputError, match="2 images given for a prediction of 1 views"):
        write_dataset(room_prediction(gt, [0]), tmp_path / "out", image_paths=[portrait, portrait])
    cameraless = room_prediction(gt, [0, 1])
    cameraless.intrinsics[:] = 0  # what the predictor returns for depth-only models
    with pytest.raises(InputError, match="the prediction has no cameras"):
        write_dataset(cameraless, tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_input_fingerprint_follows_inputs_and_settings(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        (photos / f"{i}.png").write_bytes(bytes([i]) * (10 + i))
    known = tmp_path / "known.json"
    known.write_text("{}")
    settings = {"process_res": 504, "model": "depth-anything/DA3-SMALL", "output": tmp_path / "out"}
    first = input_fingerprint([photos, known], settings)
    assert len(first) == 64 and first == input_fingerprint([photos, known], dict(reversed(settings.items())))
    changed = [
        input_fingerprint([photos, known], {**settings, "process_res": 518}),
        input_fingerprint([known, photos], settings),
        input_fingerprint([photos], settings),
    ]
    (photos / "1.png").write_bytes(b"edited, other size")
    changed.append(input_fingerprint([photos, known], settings))
    os.utime(photos / "0.png", ns=(1, 1))
    changed.append(input_fingerprint([photos, known], settings))
    (photos / "3.png").write_bytes(b"new photo")
    changed.append(input_fingerprint([photos, known], settings))
    (photos / "3.png").rename(photos / "4.png")
    changed.append(input_fingerprint([photos, known], settings))
    assert len({first, *changed}) == len(changed) + 1
    (photos / ".DS_Store").write_bytes(b"hidden files are not inputs")
    assert input_fingerprint([photos, known], settings) == changed[-1]
    with pytest.raises(InputError, match="missing.png: no such file or folder"):
        input_fingerprint([tmp_path / "missing.png"], settings)


def test_dataset_is_current_checks_manifest_files_and_fingerprint(gt: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert dataset_is_current(out, "f") == (False, f"{out}: no such folder")
    write_dataset(room_prediction(gt, [0, 1]), out, options=SMALL, fingerprint="f" * 64)
    assert dataset_is_current(out, "f" * 64) == (True, "up to date")
    assert dataset_is_current(out, "e" * 64) == (False, f"{out}: written from other inputs or settings")
    (out / "notes.md").write_text("the user's files do not matter")
    assert dataset_is_current(out, "f" * 64) == (True, "up to date")
    depth = out / "depths" / "frame_00002.npy"
    size = depth.stat().st_size
    depth.write_bytes(depth.read_bytes()[:-4])
    expected = f"{depth}: {size - 4} bytes, the manifest records {size}"
    assert dataset_is_current(out, "f" * 64) == (False, expected)
    depth.unlink()
    assert dataset_is_current(out, "f" * 64) == (False, f"{depth}: missing")
    write_dataset(room_prediction(gt, [0, 1]), out, options=SMALL)  # no fingerprint: never current
    assert dataset_is_current(out, "f" * 64) == (False, f"{out}: written from other inputs or settings")
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["files"]
    (out / MANIFEST).write_text(json.dumps(manifest))
    assert dataset_is_current(out, "f" * 64) == (
        False,
        f"{out}: written by an older version (no file list in da3/dataset.json)",
    )
    (out / MANIFEST).write_text("{broken")
    assert (
        dataset_is_current(out, "f" * 64)[1]
        == f"{out}: not a dataset of da3-process-data (no readable da3/dataset.json)"
    )


def test_rerun_without_an_atomic_exchange_keeps_the_users_files(
    gt: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Systems without renameat2 (macOS, some filesystems) swap with two renames through a .da3-old folder."""
    out = tmp_path / "out"
    write_dataset(room_prediction(gt, [0, 1, 2]), out, options=SMALL)
    (out / "notes.md").write_text("keep me")
    monkeypatch.setattr(output_folder, "_exchange", lambda a, b: False)
    write_dataset(room_prediction(gt, [3, 4]), out, options=SMALL)
    assert (out / "notes.md").read_text() == "keep me" and leftovers(tmp_path) == []
    assert len(json.loads((out / "transforms.json").read_text())["frames"]) == 2
