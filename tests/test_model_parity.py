"""The network computes the official function: parity with the reference outputs of the official
DA3 code on deterministic weights, loaded through ``DA3Model.from_pretrained`` from a real
``config.json`` + ``model.safetensors`` folder."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from da3_fixtures import MODELS, load_case, manifest, write_checkpoint

from da3_nerfstudio.model import DA3Model

CASES = {case["name"]: case for case in manifest()["cases"]}
#: Fixture array -> model output key (Gaussian fields are compared under ``gaussians``).
OUTPUTS = {
    "out_depth": "depth",
    "out_depth_conf": "depth_conf",
    "head_ray": "ray",
    "head_ray_conf": "ray_conf",
    "out_extrinsics": "extrinsics",
    "out_intrinsics": "intrinsics",
    "out_sky": "sky",
}
#: Relative tolerances (max |a - b| / max |b|) the official code itself meets (fixture README).
TOLERANCE = {torch.float64: 1e-7, torch.float32: 2e-4}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {name: write_checkpoint(root / name.replace(":", "_"), name) for name in MODELS}


@pytest.fixture(scope="module")
def models(checkpoints: dict[str, Path]) -> dict[tuple[str, torch.dtype], DA3Model]:
    out = {}
    for name, folder in checkpoints.items():
        model = DA3Model.from_pretrained(folder)
        out[name, torch.float32] = model
        out[name, torch.float64] = DA3Model.from_pretrained(folder).double()
    return out


def compared_arrays(data: dict[str, np.ndarray]) -> list[str]:
    return [k for k in data if k in OUTPUTS or k.startswith("gs_")]


@pytest.fixture
def exact_cuda_float32() -> Iterator[None]:
    """TF32 (on by default for cuDNN convolutions) keeps 10 mantissa bits: off, as on the CPU."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_parity(case: str, dtype: torch.dtype, device: str, models: dict, exact_cuda_float32: None) -> None:
    spec = CASES[case]
    data = load_case(case)
    model = models[spec["model"], dtype]
    if device != "cpu":
        model = copy.deepcopy(model).to(device)
    extrinsics = torch.from_numpy(data["in_extrinsics"]).to(device, dtype) if "in_extrinsics" in data else None
    intrinsics = torch.from_numpy(data["in_intrinsics"]).to(device, dtype) if "in_intrinsics" in data else None
    x = torch.from_numpy(data["x"]).to(device, dtype)
    with torch.inference_mode():
        out = model(x, extrinsics, intrinsics, infer_gs="gs_means" in data, rays="head_ray" in data)
    keys = compared_arrays(data)
    assert keys, f"case {case} has no outputs to compare"
    for key in keys:
        actual = out["gaussians"][key[3:]] if key.startswith("gs_") else out[OUTPUTS[key]]
        assert actual.dtype == dtype, f"{key}: computed in {actual.dtype}, expected {dtype}"
        reference = torch.from_numpy(data[key]).double()
        error = (actual.cpu().double().reshape(reference.shape) - reference).abs().max().item()
        bound = TOLERANCE[dtype] * reference.abs().max().item()
        assert error <= bound, f"{case}/{key} ({dtype}): max error {error:.3e} > {bound:.3e}"


def test_backbone_features_match_reference(models: dict) -> None:
    """The 4 intermediate outputs (patch tokens with the asymmetric norm, raw camera token)."""
    data = load_case("small_mono")
    backbone = models["da3-small", torch.float64].model.backbone
    with torch.inference_mode():
        feats = backbone(torch.from_numpy(data["x"]).double())
    for i, (patches, token) in enumerate(feats):
        for name, actual in (("patch", patches), ("token", token)):
            reference = torch.from_numpy(data[f"feat{i}_{name}"]).double()
            error = (actual - reference).abs().max().item()
            # The reference features were stored in float32: allow its rounding.
            assert error <= 1e-6 * reference.abs().max().item(), f"feat{i}_{name}: {error:.2e}"


def test_reference_view_reordering_is_undone(models: dict) -> None:
    """Outputs come back in the caller's view order whatever reference view is chosen.

    The reference view is chosen from per-view features and global attention is otherwise
    symmetric in the views, so permuting the input views must permute every output the same way.
    """
    data = load_case("small_four_refview")
    model = models["da3-small", torch.float64]
    x = torch.from_numpy(data["x"]).double()
    perm = [2, 0, 3, 1]
    with torch.inference_mode():
        first = model(x, ref_view_strategy="first")
        saddle = model(x)
        permuted = model(x[:, perm])
    assert not torch.allclose(first["depth"], saddle["depth"]), "saddle_balanced should pick another view"
    for key in ("depth", "depth_conf", "extrinsics", "intrinsics"):
        assert torch.allclose(permuted[key], saddle[key][:, perm], rtol=1e-9, atol=1e-12), key


def test_ray_maps_only_when_asked(models: dict) -> None:
    """The ray head runs only for ``rays=True`` or ray poses; skipping it changes no other output."""
    data = load_case("small_pair")
    model = models["da3-small", torch.float64]
    x = torch.from_numpy(data["x"]).double()
    with torch.inference_mode():
        plain, with_rays = model(x), model(x, rays=True)
        ray_pose, ray_pose_and_rays = model(x, use_ray_pose=True), model(x, use_ray_pose=True, rays=True)
    assert "ray" not in plain and "ray_conf" not in plain and "ray" not in ray_pose
    reference = torch.from_numpy(data["head_ray"]).double()
    assert (with_rays["ray"].reshape(reference.shape) - reference).abs().max() <= 1e-7 * reference.abs().max()
    for key in ("depth", "depth_conf", "extrinsics", "intrinsics"):
        assert torch.equal(plain[key], with_rays[key]), key
        assert torch.equal(ray_pose[key], ray_pose_and_rays[key]), key
    assert not torch.allclose(ray_pose["extrinsics"], plain["extrinsics"]), "ray poses come from the ray maps"


def test_autocast_keeps_heads_in_float32(models: dict) -> None:
    """Under bf16 autocast only the backbone runs in low precision: outputs are float32 and close
    to the float64 reference (bf16 has 8 bits of mantissa, hence the loose bound)."""
    data = load_case("small_pair")
    model = models["da3-small", torch.float32]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.from_numpy(data["x"]).float(), rays=True)
    for key in ("depth", "depth_conf", "ray", "extrinsics", "intrinsics"):
        assert out[key].dtype == torch.float32, key
    reference = torch.from_numpy(data["out_depth"]).float()
    relative = ((out["depth"] - reference).abs() / reference).median().item()
    assert relative < 0.05, relative
