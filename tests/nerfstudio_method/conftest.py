"""Fixtures for the nerfstudio method tests: skip cleanly without nerfstudio or the room samples."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # da3_fixtures

from room_dataset import ROOM, build_room_dataset  # noqa: E402

pytest.importorskip("nerfstudio", reason="nerfstudio is not installed (pip install -e '.[nerfstudio]')")


@pytest.fixture(scope="session")
def room_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """room_gt at 1/4 resolution as a da3-process-data folder (views 1 and 6 held out)."""
    if not ROOM.is_dir():
        pytest.skip(f"room_gt samples not found at {ROOM} (set DA3_SAMPLES)")
    return build_room_dataset(tmp_path_factory.mktemp("room") / "data", factor=4, init_stride=2)
