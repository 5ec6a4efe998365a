"""Blender add-on tests with bpy from pip (Blender as a Python module).

The add-on is enabled through ``addon_utils`` under its extension id from a temporary folder that
links to ``blender_addon/``, exactly as Blender loads an installed add-on (relative imports only,
preferences registered under ``__package__``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy", reason="bpy (Blender as a Python module) is not installed in this environment")
import addon_utils  # noqa: E402  (only importable once bpy is)

REPO = Path(__file__).resolve().parents[2]
SAMPLES = Path(os.environ.get("DA3_SAMPLES", REPO.parent / "shared" / "samples"))
MODULE = "da3_blender"

# The add-on's own modules are imported by tests, so the link folder must exist at collection time.
_LINK_DIR = Path(tempfile.mkdtemp(prefix="da3-blender-addon-"))
(_LINK_DIR / MODULE).symlink_to(REPO / "blender_addon", target_is_directory=True)
sys.path.insert(0, str(_LINK_DIR))


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_LINK_DIR, ignore_errors=True)


@pytest.fixture
def addon() -> Iterator[object]:
    """An empty factory scene with the add-on enabled; disabled (unregistered) afterwards."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    module = addon_utils.enable(MODULE, default_set=True)
    assert module is not None, "the add-on failed to enable"
    yield module
    addon_utils.disable(MODULE, default_set=True)


@pytest.fixture
def room_gt() -> dict:
    """8 views of a room with exact poses (c2w OpenCV), intrinsics and z-depth."""
    path = SAMPLES / "room_gt" / "condition.npz"
    if not path.is_file():
        pytest.skip(f"shared samples not found at {SAMPLES} (set DA3_SAMPLES)")
    with __import__("numpy").load(path) as npz:
        return {k: npz[k] for k in npz.files} | {"rgb_dir": path.parent / "rgb"}
