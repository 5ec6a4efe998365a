"""Which rasterizer ``da3-splat`` renders with, and whether gsplat's CUDA kernels can be used.

gsplat 1.4.0 from PyPI ships CUDA sources, not binaries. Its first CUDA call imports
``gsplat.cuda._backend``, which loads a prebuilt ``gsplat.csrc`` (gsplat's own wheel index), else a JIT
build cached in torch's extension folder, else compiles one with ``nvcc`` (minutes), else prints a line
and leaves the kernels out, after which ``gsplat.rasterization`` fails deep inside with an
AttributeError. A pip-installed torch brings the CUDA runtime but not the toolkit, so on many GPU
machines the kernels are missing. This module finds out which case holds *without* starting a build
(:func:`probe_kernels`), decides with a pure function (:func:`choose_rasterizer`, tested on CPU for every
combination), announces a build before it starts, and turns any failure of gsplat's loader into one line.

``python -m da3_nerfstudio.gsplat_kernels`` (``make gpu``) builds the kernels ahead of training and checks
them against the project's PyTorch rasterizer on the GPU.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from da3_nerfstudio.errors import DA3Error, InputError

Setting = Literal["auto", "gsplat", "torch"]
#: prebuilt: a gsplat wheel with compiled kernels; built: a JIT build in torch's extension cache; buildable:
#: nvcc is on PATH, so the first use compiles them; absent: neither; failed: loading or building raised.
KernelState = Literal["prebuilt", "built", "buildable", "absent", "failed"]

#: gsplat 1.4.0's JIT build, measured by scripts/gpu_checks.sh (MAX_JOBS=12 on a 16-core NVIDIA H200 machine).
BUILD_TIME = "about 3 minutes on 16 CPU cores (2 min 37 s measured on an H200 machine), longer on fewer"
#: gsplat's kernels against the PyTorch rasterizer when training da3-splat; no GPU run has measured it yet.
SPEEDUP = "speed-up over the PyTorch rasterizer not measured yet"
PREPARE = "`make gpu` (python -m da3_nerfstudio.gsplat_kernels)"
OPTION = "--pipeline.model.rasterizer"


@dataclass(frozen=True)
class Versions:
    """The torch/CUDA/gsplat versions that name gsplat's prebuilt wheel index."""

    torch: str
    cuda: str | None
    gsplat: str | None

    @classmethod
    def installed(cls) -> Versions:
        try:
            gsplat = importlib.metadata.version("gsplat")
        except importlib.metadata.PackageNotFoundError:
            gsplat = None
        return cls(torch.__version__, torch.version.cuda, gsplat)

    def wheel_index(self) -> str:
        """gsplat's wheel index for this torch/CUDA pair (``.../whl/pt24cu124`` for torch 2.4 + CUDA 12.4)."""
        major, minor = self.torch.split("+")[0].split(".")[:2]
        cuda = (self.cuda or "").replace(".", "")
        return f"https://docs.gsplat.studio/whl/pt{major}{minor}cu{cuda}"


@dataclass(frozen=True)
class Choice:
    """``gsplat``: load the kernels and use them; ``build``: announce ``message``, build, then choose again
    with the outcome; ``torch``: the project's PyTorch rasterizer. ``message`` is one line to print."""

    rasterizer: Literal["gsplat", "build", "torch"]
    message: str


def _unavailable(kernels: KernelState, detail: str) -> str:
    if kernels == "failed":
        return f"gsplat's CUDA kernels failed to load ({detail})"
    return "gsplat's CUDA kernels are not available (no prebuilt kernels, and no CUDA toolkit (nvcc) to build them)"


def _how_to_get(versions: Versions) -> str:
    pin = f"=={versions.gsplat}" if versions.gsplat else ""
    return (
        f"gsplat's kernels are faster ({SPEEDUP}): install the CUDA toolkit (nvcc) and run {PREPARE}, "
        f"or install gsplat's prebuilt wheel for torch {versions.torch} + CUDA {versions.cuda} where one is "
        f"published: pip install gsplat{pin} --index-url {versions.wheel_index()}"
    )


def choose_rasterizer(
    setting: Setting, device_type: str, kernels: KernelState, detail: str = "", versions: Versions | None = None
) -> Choice:
    """The rasterizer for ``setting`` on ``device_type`` given the kernels' state; raises InputError when
    ``gsplat`` is demanded and cannot run. ``detail``: the failure of a ``failed`` load, in one line."""
    if setting not in ("auto", "gsplat", "torch"):
        raise InputError(f"{OPTION} {setting!r}: must be auto, gsplat or torch")
    if device_type != "cuda":
        if setting == "gsplat":
            raise InputError(
                f"{OPTION} gsplat: gsplat needs a CUDA device and this run is on {device_type}; "
                "use auto or torch for the PyTorch rasterizer"
            )
        return Choice(
            "torch", "da3-splat: no CUDA, rendering with the pure-PyTorch rasterizer (slow: for tests and small scenes)"
        )
    if setting == "torch":
        return Choice("torch", f"da3-splat: rendering with the PyTorch rasterizer on CUDA ({OPTION} torch)")
    if kernels in ("prebuilt", "built"):
        return Choice("gsplat", f"da3-splat: rendering with gsplat's CUDA kernels ({kernels})")
    if kernels == "buildable":
        return Choice(
            "build",
            f"da3-splat: building gsplat's CUDA kernels for their first use, {BUILD_TIME}; {PREPARE} does it ahead",
        )
    versions = versions or Versions.installed()
    if setting == "gsplat":
        raise InputError(
            f"{OPTION} gsplat: {_unavailable(kernels, detail)}; {_how_to_get(versions)}; "
            f"or use {OPTION} auto or torch for the PyTorch rasterizer"
        )
    return Choice(
        "torch",
        f"da3-splat: {_unavailable(kernels, detail)}, so rendering with the PyTorch rasterizer on CUDA; "
        f"{_how_to_get(versions)}",
    )


def _jit_build_dir() -> Path:
    """Where gsplat's JIT build lives (torch's extension cache; torch creates the folder, as gsplat's import does)."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory("gsplat_cuda", verbose=False))


def probe_kernels() -> KernelState:
    """The state of gsplat's kernels, found without importing gsplat's backend (which would build them)."""
    backend = sys.modules.get("gsplat.cuda._backend")
    if backend is not None:  # already imported in this process: its outcome is final
        return "built" if getattr(backend, "_C", None) is not None else "absent"
    if importlib.util.find_spec("gsplat") is None:
        return "absent"
    if importlib.util.find_spec("gsplat.csrc") is not None:
        return "prebuilt"
    if shutil.which("nvcc") is None:  # gsplat 1.4.0 looks for nvcc on PATH before it even tries its cache
        return "absent"
    build = _jit_build_dir()
    if (build / "gsplat_cuda.so").exists() or (build / "gsplat_cuda.lib").exists():
        return "built"
    return "buildable"


def _one_line(err: Exception) -> str:
    """An exception from gsplat's loader in one line: torch's build error carries the whole ninja log, so keep
    its header and the compiler's first error line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    head = lines[0].split(": [", 1)[0][:200]  # "Error building extension 'gsplat_cuda': [1/26] <command>"
    cause = next((line for line in lines[1:] if re.search(r"(^|\s)(error|fatal)\b|\berror:", line, re.I)), None)
    return f"{type(err).__name__}: {head}" + (f" ({cause[:200]})" if cause else "")


def load_kernels() -> str | None:
    """Import gsplat's backend (loading or building the kernels): None when they loaded, else why not, in one line."""
    try:
        from gsplat.cuda._backend import _C
    except Exception as err:  # noqa: BLE001 - any failure of gsplat's loader (ImportError, build errors) means "no kernels"
        return _one_line(err)
    if _C is None:
        return "gsplat found no CUDA toolkit (nvcc)"
    return None


def plan_rasterizer(setting: Setting, device_type: str, probe: Callable[[], KernelState] = probe_kernels) -> Choice:
    """The choice for ``setting`` on ``device_type`` from what the kernels' state is before loading them (the
    probe runs only where gsplat could be used); raises InputError for ``gsplat`` when it cannot run."""
    kernels: KernelState = probe() if device_type == "cuda" and setting != "torch" else "absent"
    return choose_rasterizer(setting, device_type, kernels)


def select_rasterizer(
    setting: Setting,
    device_type: str,
    announce: Callable[[str], None],
    probe: Callable[[], KernelState] = probe_kernels,
    load: Callable[[], str | None] = load_kernels,
) -> Literal["gsplat", "torch"]:
    """Decide, load (or build, announced first) gsplat's kernels when chosen, and fall back or refuse on failure.

    Every decision is printed through ``announce`` as one line; raises InputError for ``gsplat`` when it
    cannot run.
    """
    choice = plan_rasterizer(setting, device_type, probe)
    if choice.rasterizer == "torch":
        announce(choice.message)
        return "torch"
    if choice.rasterizer == "build":
        announce(choice.message)
    failure = load()
    if failure is None:
        if choice.rasterizer == "build":
            announce(choose_rasterizer(setting, device_type, "built").message)
        else:
            announce(choice.message)
        return "gsplat"
    announce(choose_rasterizer(setting, device_type, "failed", failure).message)
    return "torch"


def _check_on_gpu() -> float:
    """Render a random scene with gsplat and with the PyTorch rasterizer on CUDA; the largest difference."""
    from gsplat.rendering import rasterization as gsplat_rasterization

    from da3_nerfstudio.rasterize import rasterization

    g = torch.Generator().manual_seed(0)
    n, width, height = 2000, 160, 120
    means = torch.randn(n, 3, generator=g) * torch.tensor([0.8, 0.6, 0.5]) + torch.tensor([0.0, 0.0, 3.0])
    args = [means, torch.randn(n, 4, generator=g), torch.rand(n, 3, generator=g) * 0.1 + 0.02]
    args += [torch.rand(n, generator=g) * 0.9 + 0.05, torch.rand(n, 3, generator=g)]
    K = torch.tensor([[[120.0, 0.0, width / 2], [0.0, 120.0, height / 2], [0.0, 0.0, 1.0]]])
    args = [t.cuda() for t in (*args, torch.eye(4)[None], K)]
    ours, ours_alpha, _ = rasterization(*args, width, height)
    ref, ref_alpha, _ = gsplat_rasterization(*args, width, height)
    return max(float((ours - ref).abs().max()), float((ours_alpha - ref_alpha).abs().max()))


def main() -> None:
    """Build (if needed) and check gsplat's CUDA kernels ahead of training; ``error: ...`` and exit 1 if impossible."""
    try:
        if not torch.cuda.is_available():
            raise DA3Error("no CUDA device: gsplat's kernels run on CUDA only (da3-splat uses the PyTorch rasterizer)")
        start = time.perf_counter()
        select_rasterizer("gsplat", "cuda", print)  # uses gsplat or raises
        seconds = time.perf_counter() - start
        diff = _check_on_gpu()
    except DA3Error as err:
        raise SystemExit(f"error: {err}") from None
    if diff > 1e-3:
        raise SystemExit(f"error: gsplat's kernels and the PyTorch rasterizer differ by {diff:.2e} (more than 1e-3)")
    print(
        f"gsplat's CUDA kernels ready ({seconds:.0f} s to load/build); they agree with the PyTorch rasterizer "
        f"to {diff:.1e} on {torch.cuda.get_device_name()}"
    )


if __name__ == "__main__":
    main()
