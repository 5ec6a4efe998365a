"""Gaussians stored in a predictions npz (the DA3 Gaussian head's output) imported as splats."""

from __future__ import annotations

import bpy
import numpy as np
import pytest
from blender_inputs import k_matrix, random_cameras, write_predictions

# Native Gaussian splats came with PointCloud.resize (Blender 5.3); the add-on switches on that feature.
NATIVE = "resize" in bpy.types.PointCloud.bl_rna.functions


def attribute(data: bpy.types.ID, name: str, key: str, width: int) -> np.ndarray:
    attr = data.attributes[name]
    out = np.empty(len(attr.data) * width, np.float32)
    attr.data.foreach_get(key, out)
    return out.reshape(-1, width) if width > 1 else out


def head_output(m: int, sh_count: int = 9, seed: int = 0) -> dict[str, np.ndarray]:
    """Gaussians in the head's activated form: std-dev scales, wxyz rotations, (M,3,K) SH, opacity in (0,1)."""
    rng = np.random.default_rng(seed)
    return {
        "means": rng.normal(size=(m, 3)).astype(np.float32),
        "scales": rng.uniform(0.01, 0.1, size=(m, 3)).astype(np.float32),
        "rotations": rng.normal(size=(m, 4)).astype(np.float32),
        "harmonics": rng.normal(scale=0.3, size=(m, 3, sh_count)).astype(np.float32),
        "opacities": rng.uniform(0.05, 0.95, size=m).astype(np.float32),
        "views": np.arange(m) % 2,
    }


def write_npz(path, gaussians: dict[str, np.ndarray] | None) -> None:
    w2c = random_cameras(2, seed=3)
    ks = np.stack([k_matrix(60.0, 60.0, 32.0, 24.0)] * 2)
    write_predictions(path, w2c, ks, np.ones((2, 48, 64)), gaussians=gaussians)


def splat_values(data: bpy.types.ID, sh_rest: int) -> dict[str, np.ndarray]:
    """Position, activated scale/rotation/opacity, DC and rest SH as (M,3,K), whichever layout was built."""
    values = {
        "means": attribute(data, "position", "vector", 3),
        "scales": attribute(data, "scale", "vector", 3),
        "rotations": attribute(data, "rotation", "value", 4),
    }
    if NATIVE:
        base = attribute(data, "radiance:base", "vector", 4)
        dc, values["opacities"] = base[:, :3], base[:, 3]
        rest_name = "radiance:sh_{}"
    else:
        dc, values["opacities"] = attribute(data, "f_dc", "vector", 3), attribute(data, "opacity", "value", 1)
        rest_name = "sh_rest_{}"
    rest = [attribute(data, rest_name.format(k), "vector", 3) for k in range(sh_rest)]
    values["harmonics"] = np.stack([dc, *rest], axis=2)
    return values


def splat_objects() -> list[bpy.types.Object]:
    return [o for o in bpy.context.scene.objects if o.name.endswith(" splats")]


@pytest.mark.parametrize("sh_count", [1, 9, 16], ids=["sh0", "sh2-da3", "sh3"])
def test_prediction_gaussians_become_splats(addon, tmp_path, sh_count):
    """Attribute values equal the head's output: activated values survive the raw-value conversion."""
    gaussians = head_output(400, sh_count)
    gaussians["means"][7] = np.nan  # a non-finite Gaussian is dropped, the rest kept in order
    gaussians["harmonics"][11, 2, 0] = np.inf
    write_npz(tmp_path / "pred.npz", gaussians)
    assert bpy.ops.da3.import_predictions(filepath=str(tmp_path / "pred.npz"), z_up=True) == {"FINISHED"}
    assert len([o for o in bpy.context.scene.objects if o.type == "CAMERA"]) == 2
    (obj,) = splat_objects()
    assert obj.parent is not None and obj.parent.get("da3_root")  # moves with the cameras' root
    assert obj.parent == bpy.data.objects["pred_000"].parent
    keep = np.setdiff1d(np.arange(400), [7, 11])
    got = splat_values(obj.data, sh_count - 1)
    np.testing.assert_array_equal(got["means"], gaussians["means"][keep])
    np.testing.assert_allclose(got["scales"], gaussians["scales"][keep], rtol=1e-5)
    unit = gaussians["rotations"][keep] / np.linalg.norm(gaussians["rotations"][keep], axis=1, keepdims=True)
    np.testing.assert_allclose(got["rotations"], unit, atol=1e-6)
    np.testing.assert_allclose(got["opacities"], gaussians["opacities"][keep], atol=1e-6)
    np.testing.assert_allclose(got["harmonics"], gaussians["harmonics"][keep], atol=1e-6)
    rest_name = "radiance:sh_{}" if NATIVE else "sh_rest_{}"
    assert rest_name.format(sh_count - 1) not in obj.data.attributes
    if NATIVE:
        assert obj.type == "POINTCLOUD" and obj.data.type == "GAUSSIAN_SPLAT"
    else:
        assert obj.modifiers["DA3 Splats"].node_group is not None


def test_prediction_splats_equal_the_project_ply_export(addon, tmp_path):
    """Same Blender attributes as exporting the head output with the project's own converter and PLY writer."""
    pytest.importorskip("torch", reason="the project's Gaussian converter needs torch")
    from da3_nerfstudio.formats.ply import write_splat_ply
    from da3_nerfstudio.splat_init import splats_from_gaussian_head

    gaussians = head_output(300, 9, seed=1)
    write_npz(tmp_path / "pred.npz", gaussians)
    write_splat_ply(tmp_path / "head.ply", splats_from_gaussian_head(gaussians))
    bpy.ops.da3.import_predictions(filepath=str(tmp_path / "pred.npz"), z_up=False)
    bpy.ops.da3.import_splats(filepath=str(tmp_path / "head.ply"), z_up=False)
    (ours,) = splat_objects()
    reference = bpy.context.scene.objects["head"]
    for name in ours.data.attributes.keys():
        if name.startswith("."):
            continue
        data_type = ours.data.attributes[name].data_type
        key = {"FLOAT": "value", "QUATERNION": "value", "FLOAT_COLOR": "color"}.get(data_type, "vector")
        width = {"FLOAT": 1, "QUATERNION": 4, "FLOAT4": 4, "FLOAT_COLOR": 4}.get(data_type, 3)
        assert reference.data.attributes[name].data_type == data_type, name
        np.testing.assert_allclose(
            attribute(ours.data, name, key, width),
            attribute(reference.data, name, key, width),
            atol=2e-6,
            err_msg=name,
        )


def test_gaussians_can_be_left_out(addon, tmp_path):
    write_npz(tmp_path / "pred.npz", head_output(50))
    assert bpy.ops.da3.import_predictions(filepath=str(tmp_path / "pred.npz"), splats=False) == {"FINISHED"}
    assert not splat_objects()
    assert len([o for o in bpy.context.scene.objects if o.type == "CAMERA"]) == 2


def test_predictions_without_gaussians_import_cameras_only(addon, tmp_path):
    write_npz(tmp_path / "pred.npz", None)
    assert bpy.ops.da3.import_predictions(filepath=str(tmp_path / "pred.npz")) == {"FINISHED"}
    assert not splat_objects()


def _drop(key: str) -> dict[str, np.ndarray]:
    gaussians = head_output(20)
    del gaussians[key]
    return gaussians


@pytest.mark.parametrize(
    ("gaussians", "message"),
    [
        (_drop("harmonics"), r"Gaussians are incomplete, missing keys \['gaussians_harmonics'\]"),
        ({**head_output(20), "scales": np.ones((19, 3))}, r"'gaussians_scales' must be \(M, 3\) with M = 20"),
        ({**head_output(20), "rotations": np.ones((20, 3))}, r"'gaussians_rotations' must be \(M, 4\)"),
        (head_output(20, sh_count=5), "5 SH coefficients per channel, expected one of"),
    ],
    ids=["missing-key", "count-mismatch", "rotation-width", "sh-count"],
)
def test_bad_gaussians_give_one_line_errors(addon, tmp_path, gaussians, message):
    path = tmp_path / "bad.npz"
    write_npz(path, gaussians)
    with pytest.raises(RuntimeError, match=message) as info:
        bpy.ops.da3.import_predictions(filepath=str(path))
    assert str(path) in str(info.value) and len(str(info.value).strip().splitlines()) == 1
    assert not [o for o in bpy.context.scene.objects if o.type == "CAMERA"]
