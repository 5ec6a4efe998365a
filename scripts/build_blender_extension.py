"""Build the installable Blender extension zip of ``blender_addon/`` into ``dist/``.

Uses Blender's own extension tool (``bl_pkg/cli/blender_ext.py``, shipped inside the bpy wheel and runnable
with plain Python), so the manifest is validated and the zip is laid out exactly as ``blender --command
extension build`` would; no Blender binary is needed.

    python scripts/build_blender_extension.py [--output-dir dist]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "blender_addon"


def blender_ext_tool() -> Path:
    """Path of ``blender_ext.py`` inside the installed bpy package (found without importing bpy)."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("bpy is not installed: pip install the project's dev extras to build the Blender extension")
    bpy_dir = Path(next(iter(spec.submodule_search_locations)))
    tools = sorted(bpy_dir.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not tools:
        sys.exit(f"{bpy_dir}: Blender's extension tool (bl_pkg/cli/blender_ext.py) not found")
    return tools[-1]


def run_tool(*args: str) -> str:
    """Run the extension tool; exits with its message on failure."""
    result = subprocess.run([sys.executable, str(blender_ext_tool()), *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"blender_ext {args[0]} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def build(output_dir: Path) -> Path:
    """Validate the manifest, build the zip and validate the zip; returns the zip path."""
    run_tool("validate", str(SOURCE))
    output_dir.mkdir(parents=True, exist_ok=True)
    run_tool("build", "--source-dir", str(SOURCE), "--output-dir", str(output_dir))
    with open(SOURCE / "blender_manifest.toml", "rb") as f:
        manifest = tomllib.load(f)
    archive = output_dir / f"{manifest['id']}-{manifest['version']}.zip"
    run_tool("validate", str(archive))
    return archive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=REPO / "dist", help="where the zip is written")
    args = parser.parse_args()
    print(build(args.output_dir.resolve()))


if __name__ == "__main__":
    main()
