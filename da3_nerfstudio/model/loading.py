"""Checkpoint loading for the official Hugging Face layout: ``config.json`` + ``model.safetensors``.

Loading is strict (the official loader is not: a wrong key map silently leaves random weights), and
every failure is a one-line :class:`CheckpointError`. Only safetensors is read: pickle checkpoints
can execute code and are refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from da3_nerfstudio.errors import CheckpointError
from da3_nerfstudio.model.presets import PRESETS

CHECKPOINT_FILES = ("config.json", "model.safetensors")
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")
_SHOW = 5
#: safetensors dtypes accepted for weights. They are cast to the model's float32 parameters: exact for
#: float16 and bfloat16 (the official checkpoints are float32 or bfloat16; a float16 export loses
#: nothing more on loading), rounding for float64; every value must then be finite.
FLOAT_DTYPES = ("F32", "BF16", "F16", "F64")


def _refuse_pickle(path: Path) -> None:
    raise CheckpointError(
        f"{path}: pickle checkpoints ({', '.join(PICKLE_SUFFIXES)}) are not loaded (they can run code); "
        "use the official model.safetensors"
    )


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A local folder holding the official files, downloading a hub repo (or preset's repo) if needed."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            _refuse_pickle(path)
        if path.name in CHECKPOINT_FILES:
            return path.parent
        raise CheckpointError(f"{path}: expected a checkpoint folder with {' + '.join(CHECKPOINT_FILES)}")
    if path.is_dir():
        return path
    name = str(name_or_path)
    repo = PRESETS[name].hub_repos[0] if name in PRESETS and PRESETS[name].hub_repos else name
    if repo.count("/") != 1 or os.sep in repo.replace("/", "") or repo.startswith((".", "/", "~")):
        raise CheckpointError(
            f"{name}: no such checkpoint folder, and not a hub repo id like depth-anything/DA3-LARGE-1.1"
        )
    return _download(repo)


def _download(repo: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo, allow_patterns=list(CHECKPOINT_FILES)))
    except RepositoryNotFoundError:
        raise CheckpointError(f"{repo}: no such model repository on the Hugging Face hub") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise CheckpointError(
            f"{repo}: weights not cached and the hub is unreachable ({type(err).__name__}); download "
            f"{' and '.join(CHECKPOINT_FILES)} from https://huggingface.co/{repo} into a folder and pass that folder"
        ) from None


def read_model_name(folder: Path) -> str:
    config = folder / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{folder}: missing config.json (the official layout is {' + '.join(CHECKPOINT_FILES)})")
    try:
        data = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config}: not valid JSON ({err})") from None
    except OSError as err:
        raise CheckpointError(f"{config}: cannot be read ({err.strerror or err})") from None
    name = data.get("model_name") if isinstance(data, dict) else None
    if not isinstance(name, str):
        raise CheckpointError(f'{config}: no "model_name" entry')
    if name not in PRESETS:
        raise CheckpointError(f"{config}: unknown model_name {name!r}; known: {', '.join(PRESETS)}")
    return name


def weights_file(folder: Path) -> Path:
    weights = folder / "model.safetensors"
    if weights.is_file():
        return weights
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        _refuse_pickle(pickles[0])
    raise CheckpointError(f"{folder}: missing model.safetensors")


def _first(keys: set[str]) -> str:
    shown = sorted(keys)[:_SHOW]
    return ", ".join(shown) + (f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def load_state_dict_strict(model: torch.nn.Module, weights: Path) -> None:
    """Load a safetensors file into ``model``, requiring exactly its keys and shapes, floating-point
    weights (cast to the model's dtype) and finite values; the first offending key is named."""
    expected = model.state_dict()
    try:
        with safe_open(str(weights), framework="pt") as f:
            keys = set(f.keys())
            missing, unexpected = set(expected) - keys, keys - set(expected)
            if missing or unexpected:
                parts = []
                if missing:
                    parts.append(f"{len(missing)} missing keys: {_first(missing)}")
                if unexpected:
                    parts.append(f"{len(unexpected)} unexpected keys: {_first(unexpected)}")
                raise CheckpointError(f"{weights}: does not match the model's keys; " + "; ".join(parts))
            tensors = {}
            for key in expected:
                view = f.get_slice(key)
                shape, dtype = tuple(view.get_shape()), view.get_dtype()
                if shape != tuple(expected[key].shape):
                    raise CheckpointError(
                        f"{weights}: shape mismatch for {key}: file {list(shape)}, model {list(expected[key].shape)}"
                    )
                if dtype not in FLOAT_DTYPES:
                    raise CheckpointError(
                        f"{weights}: {key} has dtype {dtype}; weights must be floating point "
                        f"({', '.join(FLOAT_DTYPES)})"
                    )
                # Cast to the model's dtype first: float64 values beyond float32's range become inf here.
                tensor = f.get_tensor(key).to(expected[key].dtype)
                # min and max propagate NaN and show inf: one pass, about 8x cheaper than isfinite().all().
                if tensor.numel() and not all(torch.isfinite(v) for v in torch.aminmax(tensor)):
                    bad = int((~torch.isfinite(tensor)).sum())
                    raise CheckpointError(f"{weights}: {key} has {bad} non-finite values (NaN or inf)")
                tensors[key] = tensor
    except SafetensorError as err:
        raise CheckpointError(f"{weights}: corrupt or not a safetensors file ({err})") from None
    except (OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{weights}: cannot be read ({err})") from None
    model.load_state_dict(tensors, strict=True, assign=True)
