"""Which rasterizer ``da3-splat`` uses: every device x gsplat-kernel state x setting, with the exact line.

The decision is a pure function of (setting, device type, kernel state), so CPU tests cover the CUDA cases
by injecting the device type and the kernels' state. The probe and the loader are then run for real against
gsplat 1.4.0's own loader in subprocesses, with PATH / CUDA_HOME / the extension cache pointed at a
temporary folder (no nvcc, a failing nvcc, a cached build), so no real build ever starts here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hostile"))
from hostile import assert_one_line_error, run_tool  # noqa: E402

from da3_nerfstudio.errors import InputError
from da3_nerfstudio.gsplat_kernels import Versions, choose_rasterizer, probe_kernels, select_rasterizer

REPO = Path(__file__).resolve().parents[2]
VERSIONS = Versions(torch="2.14.1+cu130", cuda="13.0", gsplat="1.4.0")
STATES = ("prebuilt", "built", "buildable", "absent", "failed")
DETAIL = (
    "RuntimeError: Error building extension 'gsplat_cuda' (nvcc fatal   : Unsupported gpu architecture 'compute_90')"
)

CPU_LINE = "da3-splat: no CUDA, rendering with the pure-PyTorch rasterizer (slow: for tests and small scenes)"
TORCH_LINE = "da3-splat: rendering with the PyTorch rasterizer on CUDA (--pipeline.model.rasterizer torch)"
BUILD_LINE = (
    "da3-splat: building gsplat's CUDA kernels for their first use, about 3 minutes on 16 CPU cores "
    "(2 min 37 s measured on an H200 machine), longer on fewer; `make gpu` "
    "(python -m da3_nerfstudio.gsplat_kernels) does it ahead"
)
HOW = (
    "gsplat's kernels are faster (speed-up over the PyTorch rasterizer not measured yet): install the CUDA "
    "toolkit (nvcc) and run `make gpu` (python -m da3_nerfstudio.gsplat_kernels), or install gsplat's prebuilt "
    "wheel for torch 2.14.1+cu130 + CUDA 13.0 where one is published: "
    "pip install gsplat==1.4.0 --index-url https://docs.gsplat.studio/whl/pt214cu130"
)
ABSENT = "gsplat's CUDA kernels are not available (no prebuilt kernels, and no CUDA toolkit (nvcc) to build them)"
FAILED = f"gsplat's CUDA kernels failed to load ({DETAIL})"
CPU_REFUSAL = (
    "--pipeline.model.rasterizer gsplat: gsplat needs a CUDA device and this run is on cpu; "
    "use auto or torch for the PyTorch rasterizer"
)
FALLBACK = "da3-splat: {why}, so rendering with the PyTorch rasterizer on CUDA; " + HOW
REFUSAL = (
    "--pipeline.model.rasterizer gsplat: {why}; "
    + HOW
    + "; or use --pipeline.model.rasterizer auto or torch for the PyTorch rasterizer"
)

#: (device, kernels, setting) -> (rasterizer, exact line) or an InputError with the exact line.
EXPECTED: dict[tuple[str, str, str], tuple[str, str]] = {}
for state in STATES:
    EXPECTED["cpu", state, "auto"] = ("torch", CPU_LINE)
    EXPECTED["cpu", state, "torch"] = ("torch", CPU_LINE)
    EXPECTED["cpu", state, "gsplat"] = ("error", CPU_REFUSAL)
    EXPECTED["cuda", state, "torch"] = ("torch", TORCH_LINE)
for state in ("prebuilt", "built"):
    for setting in ("auto", "gsplat"):
        EXPECTED["cuda", state, setting] = ("gsplat", f"da3-splat: rendering with gsplat's CUDA kernels ({state})")
for setting in ("auto", "gsplat"):
    EXPECTED["cuda", "buildable", setting] = ("build", BUILD_LINE)
EXPECTED["cuda", "absent", "auto"] = ("torch", FALLBACK.format(why=ABSENT))
EXPECTED["cuda", "failed", "auto"] = ("torch", FALLBACK.format(why=FAILED))
EXPECTED["cuda", "absent", "gsplat"] = ("error", REFUSAL.format(why=ABSENT))
EXPECTED["cuda", "failed", "gsplat"] = ("error", REFUSAL.format(why=FAILED))


@pytest.mark.parametrize(("device", "kernels", "setting"), sorted(EXPECTED))
def test_choice_for_every_combination(device: str, kernels: str, setting: str) -> None:
    rasterizer, line = EXPECTED[device, kernels, setting]
    assert "\n" not in line
    if rasterizer == "error":
        with pytest.raises(InputError) as err:
            choose_rasterizer(setting, device, kernels, DETAIL, VERSIONS)
        assert str(err.value) == line
    else:
        choice = choose_rasterizer(setting, device, kernels, DETAIL, VERSIONS)
        assert (choice.rasterizer, choice.message) == (rasterizer, line)


def test_every_combination_is_covered() -> None:
    assert len(EXPECTED) == 2 * len(STATES) * 3


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(InputError, match=r"^--pipeline.model.rasterizer 'cuda': must be auto, gsplat or torch$"):
        choose_rasterizer("cuda", "cuda", "built", versions=VERSIONS)  # type: ignore[arg-type]


def test_wheel_index_follows_the_torch_cuda_pair() -> None:
    """gsplat's index names: pt<major><minor>cu<cuda without dots> (e.g. .../whl/pt24cu124 for torch 2.4.1+cu124)."""
    assert Versions("2.4.1+cu124", "12.4", "1.4.0").wheel_index() == "https://docs.gsplat.studio/whl/pt24cu124"
    assert Versions("2.14.1", "13.0", None).wheel_index() == "https://docs.gsplat.studio/whl/pt214cu130"


class Loader:
    """A kernel loader that records what had been announced when it ran."""

    def __init__(self, failure: str | None, lines: list[str]) -> None:
        self.failure, self.lines, self.seen_at_call = failure, lines, None

    def __call__(self) -> str | None:
        self.seen_at_call = list(self.lines)
        return self.failure


@pytest.mark.parametrize("setting", ["auto", "gsplat"])
def test_build_is_announced_before_it_starts_and_then_used(setting: str) -> None:
    lines: list[str] = []
    load = Loader(None, lines)
    assert select_rasterizer(setting, "cuda", lines.append, probe=lambda: "buildable", load=load) == "gsplat"
    assert load.seen_at_call == [BUILD_LINE]
    assert lines == [BUILD_LINE, "da3-splat: rendering with gsplat's CUDA kernels (built)"]


@pytest.mark.parametrize("state", ["buildable", "prebuilt", "built"])
def test_failing_build_or_load_falls_back_under_auto(state: str) -> None:
    """A build that fails, or prebuilt/cached kernels that do not load, give the fallback line, not a traceback."""
    lines: list[str] = []
    load = Loader(DETAIL, lines)
    assert select_rasterizer("auto", "cuda", lines.append, probe=lambda: state, load=load) == "torch"
    assert lines[-1].startswith(f"da3-splat: {FAILED}, so rendering with the PyTorch rasterizer on CUDA; ")
    assert lines == ([BUILD_LINE] if state == "buildable" else []) + [lines[-1]]


@pytest.mark.parametrize("state", ["buildable", "prebuilt", "absent"])
def test_gsplat_setting_refuses_when_kernels_fail_or_are_absent(state: str) -> None:
    lines: list[str] = []
    load = Loader(DETAIL, lines)
    with pytest.raises(InputError) as err:
        select_rasterizer("gsplat", "cuda", lines.append, probe=lambda: state, load=load)
    why = ABSENT if state == "absent" else FAILED
    assert str(err.value).startswith(f"--pipeline.model.rasterizer gsplat: {why}; ")
    assert load.seen_at_call is None if state == "absent" else load.seen_at_call is not None


@pytest.mark.parametrize(("device", "setting"), [("cpu", "auto"), ("cpu", "torch"), ("cuda", "torch")])
def test_no_probe_and_no_load_when_the_pytorch_rasterizer_is_chosen(device: str, setting: str) -> None:
    def forbidden() -> None:
        raise AssertionError("gsplat's kernels must not be probed or loaded")

    lines: list[str] = []
    assert select_rasterizer(setting, device, lines.append, probe=forbidden, load=forbidden) == "torch"
    assert lines == [CPU_LINE if device == "cpu" else TORCH_LINE]


# -- the real probe and gsplat 1.4.0's real loader, in subprocesses with a controlled toolkit -------------------

FAKE_NVCC = "#!/bin/sh\necho \"nvcc fatal   : Unsupported gpu architecture 'compute_90'\" >&2\nexit 1\n"
#: Answers torch's compiler version checks, fails to compile anything.
FAKE_CXX = (
    '#!/bin/sh\ncase "$1" in --version|-dumpversion|-dumpfullversion) echo "g++ (GCC) 12.2.0"; exit 0;; esac\nexit 1\n'
)
PROBE_AND_LOAD = (
    "from da3_nerfstudio.gsplat_kernels import load_kernels, probe_kernels; print(probe_kernels()); "
    "print(load_kernels())"
)


def _toolkit(tmp_path: Path, nvcc: bool, cached_build: bool = False) -> dict[str, str]:
    """An environment whose PATH has no real nvcc (a failing fake one when ``nvcc``) and a private extension cache."""
    bin_dir = tmp_path / "cuda" / "bin"
    bin_dir.mkdir(parents=True)
    for name, text in (("nvcc", FAKE_NVCC), ("c++", FAKE_CXX)) if nvcc else ():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH", "MAX_JOBS")}
    env.update(
        PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
        CUDA_HOME=str(tmp_path / "cuda"),
        CXX=str(bin_dir / "c++"),
        TORCH_CUDA_ARCH_LIST="9.0",
        TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    if cached_build:
        (tmp_path / "ext" / "gsplat_cuda").mkdir(parents=True)
        (tmp_path / "ext" / "gsplat_cuda" / "gsplat_cuda.so").write_bytes(b"")
    return env


def _probe(env: dict[str, str], code: str = PROBE_AND_LOAD) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()


def test_real_loader_without_toolkit_is_absent_not_a_traceback(tmp_path: Path) -> None:
    env = _toolkit(tmp_path, nvcc=False)
    lines = _probe(env)  # gsplat's own "No CUDA toolkit found" line comes between the two
    assert (lines[0], lines[-1]) == ("absent", "gsplat found no CUDA toolkit (nvcc)")


def test_real_loader_with_a_failing_build_gives_one_line(tmp_path: Path) -> None:
    """gsplat's JIT build through torch and ninja fails at nvcc: the probe said buildable, the loader one line."""
    env = _toolkit(tmp_path, nvcc=True)
    lines = _probe(env)
    assert (lines[0], lines[-1]) == ("buildable", DETAIL)


def test_real_probe_finds_a_cached_build_without_loading_it(tmp_path: Path) -> None:
    env = _toolkit(tmp_path, nvcc=True, cached_build=True)
    code = "import sys; from da3_nerfstudio.gsplat_kernels import probe_kernels; print(probe_kernels()); "
    code += "print('gsplat.cuda._backend' in sys.modules)"
    assert _probe(env, code) == ["built", "False"]


def test_real_probe_finds_prebuilt_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wheel from gsplat's index ships ``gsplat/csrc.*.so``; any importable ``gsplat.csrc`` counts."""
    gsplat = pytest.importorskip("gsplat")
    (tmp_path / "csrc.py").write_text("")
    monkeypatch.setattr(gsplat, "__path__", [*gsplat.__path__, str(tmp_path)])
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvcc: prebuilt kernels do not need it
    assert probe_kernels() == "prebuilt"


def test_ns_train_refuses_gsplat_on_cpu_in_one_line(room_dataset: Path, tmp_path: Path) -> None:
    """The real consumer: ``ns-train da3-splat --pipeline.model.rasterizer gsplat`` on a CPU stops at its first
    render with the refusal line on stderr and a non-zero exit, no traceback, no checkpoint."""
    args = ["ns-train", "da3-splat", "--data", room_dataset, "--output-dir", tmp_path / "out", "--vis", "tensorboard"]
    args += ["--machine.device-type", "cpu", "--max-num-iterations", "5", "--pipeline.model.rasterizer", "gsplat"]
    code, out, err = run_tool(args, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    line = assert_one_line_error(code, out, err)
    assert line == f"error: {CPU_REFUSAL}"
    assert not list((tmp_path / "out").rglob("*.ckpt"))


def test_prepare_command_without_cuda_is_one_line(tmp_path: Path) -> None:
    """``make gpu`` (python -m da3_nerfstudio.gsplat_kernels) on a machine without a CUDA device."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "da3_nerfstudio.gsplat_kernels"], env=env, capture_output=True, text=True, timeout=300
    )
    line = assert_one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert line == "error: no CUDA device: gsplat's kernels run on CUDA only (da3-splat uses the PyTorch rasterizer)"
