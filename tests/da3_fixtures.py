"""Deterministic DA3 weights and reference cases from the parity fixtures.

Each weight tensor is float32(mean + std * u) with u a splitmix64 sequence seeded by the key's
CRC32, so the fixtures need not ship weight files; a real ``config.json`` + ``model.safetensors``
folder is written from them and loaded through the public loader.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

#: The workplace's shared folder beside the checkout (``../shared``), or ``$DA3_SHARED``: the parity
#: fixtures and the official state-dict key table are read from there, never copied into the repository.
SHARED = Path(os.environ.get("DA3_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FIXTURES = SHARED / "fixtures" / "da3_parity"
STATE_DICT_KEYS = SHARED / "reference" / "da3_state_dict_keys.tsv"
if not (FIXTURES / "manifest.json").is_file():
    # A failure, not a skip: without the official reference outputs the network's correctness is unproven.
    raise FileNotFoundError(f"{FIXTURES}: DA3 parity fixtures not found (set DA3_SHARED to the shared folder)")
#: Fixture model name -> (project preset, recipe file).
MODELS = {
    "da3-small": ("da3-small", "weights_da3_small.json"),
    "custom:small-gs": ("test-small-gs", "weights_small_gs.json"),
    "custom:small-metric": ("test-small-metric", "weights_small_metric.json"),
}


def unit_sequence(key: str, n: int) -> np.ndarray:
    """Zero-mean unit-variance splitmix64 sequence of length n for a state-dict key."""
    seed = np.uint64(zlib.crc32(key.encode("utf-8")))
    with np.errstate(over="ignore"):
        z = np.arange(n, dtype=np.uint64) + (seed << np.uint64(32))
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(np.float64) * 2.0**-53 - 0.5) * np.sqrt(12.0)


def build_state_dict(recipe: str) -> dict[str, torch.Tensor]:
    rows = json.loads((FIXTURES / recipe).read_text())
    out = {}
    for row in rows:
        n = int(np.prod(row["shape"])) if row["shape"] else 1
        values = (row["mean"] + row["std"] * unit_sequence(row["key"], n)).astype(np.float32)
        out[row["key"]] = torch.from_numpy(values.reshape(row["shape"]))
    return out


def write_checkpoint(folder: Path, fixture_model: str) -> Path:
    """Write the official layout for a fixture model into ``folder``; returns the folder."""
    preset, recipe = MODELS[fixture_model]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_name": preset}))
    save_file(build_state_dict(recipe), str(folder / "model.safetensors"))
    return folder


def load_case(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"case_{name}.npz") as data:
        return dict(data)


def manifest() -> dict:
    return json.loads((FIXTURES / "manifest.json").read_text())
