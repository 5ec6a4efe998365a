"""``da3-process-data batch``: bad captures and options are refused up front, in one line, with nothing written
(and no Ray runtime started: every case fails before the cluster is touched)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile import assert_one_line_error, assert_unchanged, snapshot
from samples import SOH

from da3_nerfstudio.cli.process_data import main


def _layout(tmp: Path) -> dict[str, Path]:
    """Two captures that share a name, an unrelated folder where a dataset would go, a stray image."""
    for parent in ("a", "b"):
        (tmp / parent / "scene").mkdir(parents=True)
        for name in ("000.png", "010.png"):
            (tmp / parent / "scene" / name).write_bytes((SOH / name).read_bytes())
    (tmp / "root" / "scene").mkdir(parents=True)
    (tmp / "root" / "scene" / "thesis.tex").write_text("\\chapter{Introduction}")
    return {
        "a": tmp / "a" / "scene",
        "b": tmp / "b" / "scene",
        "root": tmp / "root",
        "image": tmp / "a" / "scene" / "000.png",
    }


CASES = {
    "name clash": (lambda p: ["--inputs", p["a"], p["b"], "--output-root", p["root"] / "new"],
                   lambda p: f"{p['a']} and {p['b']} would both be written to <output-root>/scene; rename one"),
    "missing capture": (lambda p: ["--inputs", p["a"].parent / "nope", "--output-root", p["root"] / "new"],
                        lambda p: f"{p['a'].parent / 'nope'}: no such capture"),
    "glob matches nothing": (lambda p: ["--inputs", str(p["a"].parent / "*.mov"), "--output-root", p["root"] / "new"],
                             lambda p: f"{p['a'].parent / '*.mov'}: no capture matches this pattern"),
    "single image": (lambda p: ["--inputs", p["image"], "--output-root", p["root"] / "new"],
                     lambda p: f"{p['image']}: a single image is not a capture"),
    "unrelated folder in the way": (lambda p: ["--inputs", p["a"], "--output-root", p["root"]],
                                    lambda p: f"{p['root'] / 'scene'}: folder is not empty and was not written by"),
    "zero workers": (lambda p: ["--inputs", p["a"], "--output-root", p["root"] / "new", "--workers", "0"],
                     lambda p: "--workers must be at least 1, got 0"),
    "negative cpus": (lambda p: ["--inputs", p["a"], "--output-root", p["root"] / "new", "--cpus-per-worker", "-1"],
                      lambda p: "--cpus-per-worker and --gpus-per-worker must not be negative"),
    "one frame per video": (lambda p: ["--inputs", p["a"], "--output-root", p["root"] / "new",
                                       "--num-frames-target", "1"],
                            lambda p: "--num-frames-target must be at least 2, got 1"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_batch_refuses_up_front(case: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    paths = _layout(tmp_path)
    args, message = CASES[case]
    before = snapshot(tmp_path)
    code = main(["batch", *map(str, args(paths)), "--model", str(tmp_path / "no-model")])
    out, err = capsys.readouterr()
    assert code == 1
    assert_one_line_error(code, out, err, message(paths))
    assert_unchanged(before, tmp_path)
