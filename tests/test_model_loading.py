"""State-dict layout of every preset and the strict checkpoint loader's errors."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from da3_fixtures import STATE_DICT_KEYS, write_checkpoint
from safetensors.torch import load_file, save_file

from da3_nerfstudio.errors import CheckpointError
from da3_nerfstudio.model import PRESETS, DA3Model
from da3_nerfstudio.model.loading import resolve_checkpoint

OFFICIAL_COUNTS = {
    "da3-small": 443,
    "da3-base": 443,
    "da3-large": 643,
    "da3-giant": 977,
    "da3metric-large": 406,
    "da3mono-large": 406,
    "da3nested-giant-large": 1383,
}


def official_keys() -> dict[str, dict[str, tuple[int, ...]]]:
    table: dict[str, dict[str, tuple[int, ...]]] = defaultdict(dict)
    for line in STATE_DICT_KEYS.read_text().splitlines():
        if line.startswith("#") or line.startswith("preset\t"):
            continue
        preset, key, shape = line.split("\t")
        table[preset][key] = tuple(int(d) for d in shape.split("x"))
    return table


@pytest.mark.parametrize("preset", sorted(OFFICIAL_COUNTS))
def test_state_dict_matches_official_layout(preset: str) -> None:
    expected = official_keys()[preset]
    assert len(expected) == OFFICIAL_COUNTS[preset]
    with torch.device("meta"):
        model = DA3Model(preset)
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(actual) == set(
        expected
    ), f"missing {sorted(set(expected) - set(actual))[:5]}, unexpected {sorted(set(actual) - set(expected))[:5]}"
    mismatched = {k: (actual[k], expected[k]) for k in expected if actual[k] != expected[k]}
    assert not mismatched, f"shape mismatches: {list(mismatched.items())[:5]}"


def test_all_presets_are_defined() -> None:
    assert set(OFFICIAL_COUNTS) | {"test-small-gs", "test-small-metric"} == set(PRESETS)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "da3-small", "da3-small")


def clone_checkpoint(src: Path, dst: Path, edit=None) -> Path:
    """Copy a checkpoint folder, optionally editing its state dict."""
    dst.mkdir(parents=True)
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = load_file(str(src / "model.safetensors"))
    if edit is not None:
        edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def test_loads_and_resolves_file_path(small_checkpoint: Path) -> None:
    model = DA3Model.from_pretrained(small_checkpoint / "model.safetensors")
    assert model.name == "da3-small" and not model.training
    reference = load_file(str(small_checkpoint / "model.safetensors"))
    assert torch.equal(model.state_dict()["model.head.norm.weight"], reference["model.head.norm.weight"])


def test_wrong_key(small_checkpoint: Path, tmp_path: Path) -> None:
    def rename(t: dict) -> None:
        t["model.head.norm.weights"] = t.pop("model.head.norm.weight")

    folder = clone_checkpoint(small_checkpoint, tmp_path / "c", rename)
    with pytest.raises(CheckpointError, match=r"1 missing keys: model\.head\.norm\.weight;.*unexpected.*norm\.weights"):
        DA3Model.from_pretrained(folder)


def test_missing_key(small_checkpoint: Path, tmp_path: Path) -> None:
    folder = clone_checkpoint(small_checkpoint, tmp_path / "c", lambda t: t.pop("model.cam_dec.fc_t.bias"))
    with pytest.raises(CheckpointError, match=r"1 missing keys: model\.cam_dec\.fc_t\.bias$"):
        DA3Model.from_pretrained(folder)


def test_wrong_shape(small_checkpoint: Path, tmp_path: Path) -> None:
    def grow(t: dict) -> None:
        t["model.cam_dec.fc_t.bias"] = torch.zeros(4)

    folder = clone_checkpoint(small_checkpoint, tmp_path / "c", grow)
    expected = r"shape mismatch for model\.cam_dec\.fc_t\.bias: file \[4\], model \[3\]"
    with pytest.raises(CheckpointError, match=expected):
        DA3Model.from_pretrained(folder)


def test_corrupt_file(small_checkpoint: Path, tmp_path: Path) -> None:
    folder = clone_checkpoint(small_checkpoint, tmp_path / "c")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: 1 << 20])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: (corrupt|cannot be read)"):
        DA3Model.from_pretrained(folder)
    weights.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: (corrupt|cannot be read)"):
        DA3Model.from_pretrained(folder)


def test_pickle_checkpoints_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_name": "da3-small"}))
    torch.save({"x": torch.zeros(1)}, folder / "model.pth")
    with pytest.raises(CheckpointError, match=r"model\.pth: pickle checkpoints .* are not loaded"):
        DA3Model.from_pretrained(folder)
    with pytest.raises(CheckpointError, match=r"model\.pth: pickle checkpoints"):
        DA3Model.from_pretrained(folder / "model.pth")


def test_unknown_model_name_and_bad_config(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_name": "da3-huge"}))
    with pytest.raises(CheckpointError, match=r"unknown model_name 'da3-huge'; known: da3-small"):
        DA3Model.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        DA3Model.from_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing config\.json"):
        DA3Model.from_pretrained(folder)


def test_offline_hub_id_says_what_to_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint("depth-anything/DA3-SMALL")
    message = str(info.value)
    assert "\n" not in message
    assert "config.json and model.safetensors" in message and "huggingface.co/depth-anything/DA3-SMALL" in message
    with pytest.raises(CheckpointError, match="huggingface.co/depth-anything/DA3-SMALL"):
        resolve_checkpoint("da3-small")  # a preset name resolves to its hub repo


def test_not_a_path_nor_repo(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        resolve_checkpoint(str(tmp_path / "nowhere" / "deeper" / "still"))
