"""The output folder of a dataset: what the tool owns in it, how a new dataset replaces an old one, resume.

The tool owns exactly the files its manifest (``da3/dataset.json``) lists, plus the manifest: a rerun
replaces those and keeps every other entry of the folder (a user's notes, an ``outputs/`` folder), and a
foreign file where the tool writes (e.g. ``images/notes.txt``) is refused up front, with or without
--overwrite, because the tool never deletes a file it did not write.

A dataset is built next to the output under a temporary name (``.NAME.<pid>.<id>.da3-new``, with a marker
file naming its owner). When it is finished, the foreign top-level entries of the old output are moved by
rename into it, and it takes the output's place with one atomic exchange (renameat2 RENAME_EXCHANGE; two
renames where the system lacks it), so the output is either the complete new dataset or whatever was there
before. A later run rolls back an interrupted swap and removes the staging folders of killed runs.
:func:`input_fingerprint` and :func:`dataset_is_current` let batch runs skip datasets that are already
complete. Beyond the top-level names a dataset uses (to tell its entries from a user's), this module knows
nothing of what a dataset holds: :mod:`da3_nerfstudio.dataset` writes it.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from da3_nerfstudio.errors import InputError

TOOL = "da3-process-data"
FORMAT_VERSION = 1
MANIFEST = Path("da3") / "dataset.json"
#: Marker file of every staging folder: owner pid, output name, and the user's entries moved into it.
STAGING_MARKER = ".da3-staging.json"
#: Top-level names the writer uses; foreign entries with these names are in the way of the output.
_OUTPUT_NAMES = re.compile(
    r"^(?:(?:images|depths)(?:_\d+)?|confidence|da3|colmap|transforms\.json|sparse_pc\.ply|splat_init\.ply)$"
)
_STAGING_KINDS = ("da3-new", "da3-old", "frames")
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("tool") == TOOL else None


def is_dataset(folder: str | Path) -> bool:
    """True if ``folder`` was written by this tool (it holds our manifest)."""
    return _read_manifest(Path(folder)) is not None


def _owned_files(folder: Path, manifest: dict[str, Any] | None) -> set[str]:
    """Relative paths of the files this tool wrote in ``folder`` (format 1 manifests had no file list: then
    everything under the writer's own top-level names)."""
    if manifest is None:
        return set()
    files = manifest.get("files")
    if isinstance(files, dict):
        owned = set(files)
    else:
        owned = {
            str(p.relative_to(folder))
            for entry in folder.iterdir()
            if _OUTPUT_NAMES.match(entry.name)
            for p in ([entry] if not entry.is_dir() else entry.rglob("*"))
            if not p.is_dir()
        }
    return owned | {str(MANIFEST), STAGING_MARKER}


def _classify(folder: Path) -> tuple[list[str], list[str]]:
    """(foreign top-level entries to keep, foreign files in the way of the output) of an existing folder."""
    owned = _owned_files(folder, _read_manifest(folder))
    keep, in_the_way = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name in owned:
            continue
        inside = [entry] if entry.is_symlink() or not entry.is_dir() else [*entry.rglob("*")]
        files = [str(p.relative_to(folder)) for p in inside if p.is_symlink() or not p.is_dir()]
        if _OUTPUT_NAMES.match(entry.name):
            in_the_way += [f for f in files if f not in owned]
        elif not any(f in owned for f in files):
            keep.append(entry.name)
        else:  # another name holding files of ours and of someone else (a manifest of another version)
            in_the_way += [f for f in files if f not in owned]
    return keep, in_the_way


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def staging_folder(out: Path, kind: str) -> Path:
    """Create ``.NAME.<pid>.<id>.<kind>`` next to ``out`` with its marker, so later runs recognise it as ours."""
    folder = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{kind}")
    folder.mkdir()
    _write_marker(folder, out, [])
    return folder


def _write_marker(folder: Path, out: Path, moved: list[str]) -> None:
    marker = {"tool": TOOL, "host": socket.gethostname(), "pid": os.getpid(), "output": out.name, "moved": moved}
    tmp = folder / f"{STAGING_MARKER}.tmp"
    tmp.write_text(json.dumps(marker) + "\n", encoding="utf-8")
    os.replace(tmp, folder / STAGING_MARKER)


def _discard_staging(folder: Path, out: Path) -> bool:
    """Remove one of our staging folders, first moving back the user's entries it holds; False (and left in
    place) when it holds anything that is neither ours nor movable back."""
    try:
        marker = json.loads((folder / STAGING_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        marker = None
    if isinstance(marker, dict) and marker.get("tool") == TOOL:
        if marker.get("host", socket.gethostname()) != socket.gethostname():
            return False  # another machine's run on a shared file system: its pid means nothing here
        for name in marker.get("moved", []):
            source = folder / name
            if os.path.lexists(source) and out.is_dir() and not os.path.lexists(out / name):
                os.rename(source, out / name)
            if os.path.lexists(source):
                return False
    elif not all(_OUTPUT_NAMES.match(e.name) or e.name == STAGING_MARKER for e in folder.iterdir()):
        return False  # not recognisably ours: never delete
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()


def remove_stale_staging(out: str | Path) -> list[Path]:
    """Remove the staging folders of ``out`` left by killed runs (ours, and only when their process is gone).

    An interrupted swap is rolled back first: a missing output gets its previous dataset back, and the user's
    entries moved into a staging folder go back into the output. Returns the folders removed.
    """
    out = Path(out)
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(\d+)\.[0-9a-f]{{8}}\.({'|'.join(_STAGING_KINDS)})$")
    stale = []
    if not out.parent.is_dir():
        return stale
    for entry in out.parent.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and not _pid_alive(int(match.group(1))):
            stale.append(entry)
    removed = []
    # Previous datasets (da3-old) first: they restore a missing output before moved entries go back into it.
    for folder in sorted(stale, key=lambda p: not p.name.endswith(".da3-old")):
        if folder.name.endswith(".da3-old") and not os.path.lexists(out):
            os.rename(folder, out)
            removed.append(folder)
        elif _discard_staging(folder, out):
            removed.append(folder)
    return removed


def replace_folder(new: Path, out: Path, backup: Path) -> None:
    """Put folder ``new`` in ``out``'s place; the previous ``out`` ends up at ``new``'s name (for the caller to
    remove). One atomic exchange where the system has it (Linux renameat2), else two renames through ``backup``
    (restored on failure; a kill between them leaves ``backup`` for :func:`remove_stale_staging`)."""
    if not os.path.lexists(out):
        os.rename(new, out)
        return
    if _exchange(new, out):
        return
    os.rename(out, backup)
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(backup, out)
        raise
    os.rename(backup, new)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the system or filesystem cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def check_output_dir(output_dir: str | Path, *, overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> None:
    """Refuse outputs that would destroy data or cannot be written, before any long computation.

    A non-empty folder that is not a previous dataset needs ``overwrite`` (its files are kept either way); a
    file of someone else where the tool writes its output is refused even then; so are an output that is or
    contains the current folder or one of the ``inputs``.
    """
    out = Path(output_dir)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise InputError(f"{out}: exists and is not a folder" + (" (a symbolic link)" if out.is_symlink() else ""))
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise InputError(f"{out}: is the current folder or contains it; choose another output folder")
    for item in inputs:
        if resolved == Path(item).resolve() or resolved in Path(item).resolve().parents:
            raise InputError(f"{out}: the output folder contains the input {item}; choose another output folder")
    if out.is_dir() and any(out.iterdir()):
        if not is_dataset(out) and not overwrite:
            raise InputError(
                f"{out}: folder is not empty and was not written by {TOOL}; pass --overwrite to write into it "
                "(its files are kept)"
            )
        _, in_the_way = _classify(out)
        if in_the_way:
            shown = ", ".join(in_the_way[:3]) + (f" (+{len(in_the_way) - 3} more)" if len(in_the_way) > 3 else "")
            raise InputError(
                f"{out}: {shown} not written by {TOOL} but where it writes its output; move them away or choose "
                "another output folder"
            )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.probe"
        probe.mkdir()
        probe.rmdir()
    except OSError as err:
        raise InputError(f"{out}: cannot write here ({err.strerror or err})") from None


def swap_into_place(stage: Path, out: Path) -> None:
    """Put the finished ``stage`` in ``out``'s place, keeping the user's entries of ``out``; on failure ``out``
    is as it was. The previous dataset ends up at ``stage``'s name (removed by the caller)."""
    keep, in_the_way = _classify(out) if out.exists() else ([], [])
    if in_the_way:  # appeared while the dataset was computed
        raise InputError(f"{out}: {in_the_way[0]} appeared where {TOOL} writes its output; nothing was changed")
    _write_marker(stage, out, keep)
    moved = []
    try:
        for name in keep:
            os.rename(out / name, stage / name)
            moved.append(name)
        replace_folder(stage, out, stage.with_name(stage.name.removesuffix(".da3-new") + ".da3-old"))
    except BaseException:
        for name in reversed(moved):
            os.rename(stage / name, out / name)
        raise
    (out / STAGING_MARKER).unlink(missing_ok=True)


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """A fresh staging folder of ``out`` to build the dataset in (stale ones of killed runs are removed first).

    Whatever the body leaves at the staging folder's name is removed on the way out: a failed build, or the
    previous dataset after :func:`swap_into_place`. An OSError becomes one line naming the output.
    """
    stage: Path | None = None
    try:
        remove_stale_staging(out)
        stage = staging_folder(out, "da3-new")
        yield stage
    except OSError as err:
        raise InputError(f"{out}: writing the dataset failed ({err})") from None
    finally:
        if stage is not None and stage.exists():
            _discard_staging(stage, out)


def write_manifest(stage: Path, fields: Mapping[str, Any], fingerprint: str | None) -> None:
    """Write the manifest into the finished ``stage``: ``fields`` plus every file written (relative path ->
    size), which is what a rerun may replace and what :func:`dataset_is_current` checks."""
    manifest = {
        "tool": TOOL,
        "format": FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **fields,
        "fingerprint": fingerprint,
        "files": {
            str(p.relative_to(stage)): p.stat().st_size
            for p in sorted(stage.rglob("*"))
            if p.is_file() and p.name != STAGING_MARKER
        },
    }
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# Resume: is an existing dataset the result of these inputs and settings?


def input_fingerprint(inputs: Sequence[str | Path], settings: Mapping[str, Any]) -> str:
    """A stable hash of the inputs and of the settings that determine the output (for skipping finished work).

    Each input contributes its name, size and mtime_ns; a folder contributes every visible file directly in
    it (its images, or a COLMAP model's files) by folder-relative name, so adding, removing, editing or
    touching an input changes the fingerprint. ``settings`` must be JSON-serialisable (paths are written as
    text); key order does not matter. File contents are not read, so this is cheap for thousands of photos.
    """
    entries = []
    for index, item in enumerate(inputs):
        path = Path(item)
        try:
            files = (
                sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())
                if path.is_dir()
                else [path]
            )
            for file in files:
                stat = file.stat()
                name = file.name if file == path else f"{path.name}/{file.name}"
                entries.append([index, name, stat.st_size, stat.st_mtime_ns])
        except FileNotFoundError:
            raise InputError(f"{path}: no such file or folder") from None
        except OSError as err:
            raise InputError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        text = json.dumps({"inputs": entries, "settings": settings}, sort_keys=True, default=str)
    except (TypeError, ValueError) as err:
        raise InputError(f"settings cannot be fingerprinted ({err})") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dataset_is_current(output_dir: str | Path, fingerprint: str) -> tuple[bool, str]:
    """(True, "up to date") when ``output_dir`` is a complete dataset of this tool written from inputs and
    settings with this ``fingerprint`` (see :func:`input_fingerprint`): manifest present and every file it
    lists present with its recorded size; else (False, why not)."""
    out = Path(output_dir)
    if not out.is_dir():
        return False, f"{out}: no such folder"
    manifest = _read_manifest(out)
    if manifest is None:
        return False, f"{out}: not a dataset of {TOOL} (no readable {MANIFEST})"
    files = manifest.get("files")
    if not isinstance(files, dict):
        return False, f"{out}: written by an older version (no file list in {MANIFEST})"
    if manifest.get("fingerprint") != fingerprint:
        return False, f"{out}: written from other inputs or settings"
    for name, size in files.items():
        path = out / name
        if not path.is_file():
            return False, f"{path}: missing"
        if path.stat().st_size != size:
            return False, f"{path}: {path.stat().st_size} bytes, the manifest records {size}"
    return True, "up to date"
