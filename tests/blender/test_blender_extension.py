"""The extension zip: built and validated by Blender's extension tool, installed, enabled and disabled
headless by Blender itself; and the whole add-on suite on Blender 5.x where that environment exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

INSTALL_SCRIPT = """
import json, sys
import bpy
import addon_utils
from da3_nerfstudio.process_exit import exit_process
zip_path = sys.argv[1]
assert bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                enable_on_install=True) == {"FINISHED"}
module = "bl_ext.user_default.da3_blender"
report = {"enabled": module in bpy.context.preferences.addons,
          "operator": hasattr(bpy.types, "DA3_OT_import_splats"),
          "panel": hasattr(bpy.types, "DA3_PT_sidebar"),
          "prefs": type(bpy.context.preferences.addons[module].preferences).__name__}
addon_utils.disable(module, default_set=True)
report["disabled"] = module not in bpy.context.preferences.addons
report["unregistered"] = not hasattr(bpy.types, "DA3_OT_import_splats") and not hasattr(bpy.types, "DA3_PT_sidebar")
print("REPORT " + json.dumps(report))
exit_process(0)
"""


@pytest.fixture(scope="module")
def extension_zip(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_blender_extension.py"), "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


def test_zip_contains_the_addon_and_no_caches(extension_zip):
    names = zipfile.ZipFile(extension_zip).namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_zip_installs_enables_and_disables_headless(extension_zip, tmp_path):
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "blender-user")}
    result = subprocess.run(
        [sys.executable, "-c", INSTALL_SCRIPT, str(extension_zip)], capture_output=True, text=True, env=env, timeout=300
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("REPORT ")), None)
    assert result.returncode == 0 and line, result.stdout + result.stderr
    report = json.loads(line[len("REPORT ") :])
    assert report == {
        "enabled": True,
        "operator": True,
        "panel": True,
        "prefs": "DA3Preferences",
        "disabled": True,
        "unregistered": True,
    }
    installed = tmp_path / "blender-user" / "extensions" / "user_default" / "da3_blender"
    assert (installed / "blender_manifest.toml").is_file()


BLENDER5_PYTHON = REPO / ".venv-blender5" / "bin" / "python"


@pytest.mark.skipif(os.environ.get("DA3_BLENDER_CHILD") == "1", reason="already the Blender 5.x run")
@pytest.mark.skipif(
    not BLENDER5_PYTHON.is_file(), reason=f"no Blender 5.x environment at {BLENDER5_PYTHON.parent.parent}"
)
def test_addon_suite_passes_on_blender5(tmp_path):
    """The same tests under bpy 5.x (Python 3.13): native splats, new modifier-input API, EEVEE id..."""
    env = {**os.environ, "DA3_BLENDER_CHILD": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [str(BLENDER5_PYTHON), "-m", "pytest", "tests/blender", "-x", "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    version = subprocess.run(
        [str(BLENDER5_PYTHON), "-c", "import bpy, os; print(bpy.app.version[0], flush=True); os._exit(0)"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert int(version.stdout.strip().splitlines()[-1]) >= 5
