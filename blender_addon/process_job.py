"""Run ``da3-process-data`` from an external Python environment without blocking Blender.

torch and the model cannot live inside Blender's Python (extension policy, and size), so the add-on
starts the project's console script in the user's environment as a subprocess. A reader thread drains
its output so the pipe never fills, and the UI polls :meth:`ProcessJob.poll` from a timer.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

from .errors import InputError

# Resolves the console script through the environment's own package metadata, so it works whatever
# module implements it and wherever the environment's bin/ folder is.
_ENTRY_POINT = (
    "import sys\n"
    "if sys.path and sys.path[0] == '':\n"
    "    del sys.path[0]  # like a console script: the working folder must not shadow the environment\n"
    "from importlib.metadata import entry_points\n"
    "found = list(entry_points(group='console_scripts', name='da3-process-data'))\n"
    "if not found:\n"
    "    sys.exit('da3-process-data is not installed in this Python environment')\n"
    "sys.argv[0] = 'da3-process-data'\n"
    "sys.exit(found[0].load()())\n"
)
_PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)\s*%")
_FRACTION = re.compile(r"\b(\d+)\s*/\s*(\d+)\b")


def resolve_python(setting: str) -> Path:
    """The interpreter named by the preference: a python executable or an environment folder."""
    if not setting.strip():
        raise InputError("DA3 Python environment is not set: choose it in the add-on preferences")
    path = Path(os.path.expanduser(setting.strip()))
    if path.is_dir():
        for candidate in (path / "bin" / "python", path / "Scripts" / "python.exe", path / "python.exe"):
            if candidate.is_file():
                return candidate
        raise InputError(f"{path}: no Python interpreter in this environment folder")
    if not path.is_file():
        raise InputError(f"{path}: DA3 Python interpreter not found")
    return path


def process_command(
    python: Path, input_path: str | os.PathLike, output_dir: str | os.PathLike, extra_args: list[str] | None = None
) -> list[str]:
    """argv for ``da3-process-data {images|video} --data IN --output-dir OUT [extra]``."""
    if not str(input_path).strip():  # Path("") is the working folder, which exists
        raise InputError("choose an images folder or a video as DA3's input")
    if Path(output_dir).is_file():
        raise InputError(f"{output_dir}: is a file; choose a folder for DA3's output")
    source = Path(input_path)
    if not source.exists():
        raise InputError(f"{source}: input images folder or video not found")
    kind = "images" if source.is_dir() else "video"
    return [
        str(python),
        "-c",
        _ENTRY_POINT,
        kind,
        "--data",
        str(source),
        "--output-dir",
        str(output_dir),
        *(extra_args or []),
    ]


class ProcessJob:
    """A running subprocess with its recent output and a best-effort progress fraction."""

    def __init__(self, argv: list[str], output_dir: str | os.PathLike, keep_lines: int = 200) -> None:
        self.argv, self.output_dir = argv, Path(output_dir)
        self.lines: deque[str] = deque(maxlen=keep_lines)
        self.progress: float | None = None
        self.cancelled = False
        # Blender's own Python settings must not leak into the external environment.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        flags = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if sys.platform == "win32" else {}
        self._proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env={**env, "PYTHONUNBUFFERED": "1"},
            **flags,
        )
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            for line in re.split(r"[\r\n]+", raw):
                if line.strip():
                    self.lines.append(line.rstrip())
                    self._update_progress(line)

    def _update_progress(self, line: str) -> None:
        percent = _PERCENT.findall(line)
        if percent:
            self.progress = min(float(percent[-1]) / 100.0, 1.0)
            return
        fraction = _FRACTION.findall(line)
        if fraction:
            done, total = (int(x) for x in fraction[-1])
            if 0 < total and done <= total:
                self.progress = done / total

    def poll(self) -> int | None:
        """The exit code once the process has ended and its output is fully read, else None."""
        code = self._proc.poll()
        if code is None:
            return None
        self._reader.join(timeout=1.0)
        return code

    def wait(self, timeout: float | None = None) -> int:
        """Block until the process ends (tests and scripts; the UI uses poll)."""
        code = self._proc.wait(timeout)
        self._reader.join(timeout=1.0)
        return code

    @property
    def last_line(self) -> str:
        return self.lines[-1] if self.lines else ""

    def error_summary(self, max_lines: int = 3) -> str:
        """The last lines of output, where tracebacks end with the actual error."""
        return " | ".join(list(self.lines)[-max_lines:]) or f"exit code {self._proc.returncode}"

    def cancel(self) -> None:
        """Terminate, then kill if the process ignores the request."""
        self.cancelled = True
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
