"""Build the demo's ``.blend`` headless with the add-on's importers and render a Cycles preview of the splats.

Run with a Python that has ``bpy`` (the project's ``.venv`` carries bpy 4.5)::

    .venv/bin/python scripts/demo_blend.py --dataset D --splats splat.ply \\
        --dataparser-transforms run/dataparser_transforms.json --blend demo.blend --preview preview.png

The add-on is enabled exactly as Blender loads an installed extension (from a link named after its id),
and the scene is built only through its importers: ``import_dataset`` (cameras and the dataset's point
cloud) and ``import_splats`` (the trained splats). The splats come out of ``ns-export`` in nerfstudio's
normalised frame, so their import root is parented under the dataset's root with the inverse of the
normalisation nerfstudio recorded in ``dataparser_transforms.json``: cameras, points and splats then sit
in the dataset's frame under one root, and moving that root moves the whole demo.

The preview is a Cycles CPU render of the splats alone (the points are hidden from renders, since they
sit on the same surfaces) through a held-out camera, saved beside the held-out photo: render | photo.
The ``.blend`` keeps those render settings, so F12 in Blender renders the same view.

The last line printed is one JSON object (object counts, render size and times) for ``scripts/demo.py``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tyro
from PIL import Image

from da3_nerfstudio.errors import DA3Error, InputError
from da3_nerfstudio.formats.atomic import atomic_write
from da3_nerfstudio.formats.transforms import saved_to_training_frame
from da3_nerfstudio.process_exit import exit_process

if TYPE_CHECKING:
    import bpy

ROOT = Path(__file__).resolve().parents[1]
#: The add-on's extension id (blender_addon/blender_manifest.toml): the module name Blender imports it as.
ADDON_MODULE = "da3_blender"
DEMO_ROOT_NAME = "DA3 demo"


@dataclass(frozen=True)
class BlendConfig:
    """Build a .blend with cameras, points and trained splats under one root; render a preview."""

    dataset: Path
    """da3-process-data folder (transforms.json, images/, sparse_pc.ply)."""
    splats: Path
    """3DGS PLY exported by ``ns-export gaussian-splat`` (nerfstudio's normalised frame)."""
    dataparser_transforms: Path
    """The training run's dataparser_transforms.json (dataset frame -> normalised frame)."""
    blend: Path
    """The .blend to write."""
    preview: Path
    """Side-by-side PNG to write: Cycles render of the splats | held-out photo."""
    view: str | None = None
    """file_path of the view to render from (default: the dataset's first test view)."""
    width: int = 160
    """Preview width in pixels (height follows the view's aspect ratio)."""
    samples: int = 16
    """Cycles samples per pixel of the preview (denoised)."""
    z_up: bool = False
    """Rotate the dataset root from an OpenCV world (y down) to Blender's Z-up (for DA3 output)."""


@contextmanager
def enabled_addon() -> Iterator[object]:
    """Enable ``blender_addon/`` under its extension id, as Blender does for an installed extension."""
    import addon_utils

    with tempfile.TemporaryDirectory(prefix="da3-demo-addon-") as folder:
        (Path(folder) / ADDON_MODULE).symlink_to(ROOT / "blender_addon", target_is_directory=True)
        sys.path.insert(0, folder)
        try:
            module = addon_utils.enable(ADDON_MODULE, default_set=True)
            if module is None:
                raise DA3Error(f"{ROOT / 'blender_addon'}: the add-on failed to enable")
            yield module
        finally:
            sys.path.remove(folder)


def normalising_matrix(dataparser_transforms: Path, transforms_json: Path) -> np.ndarray:
    """4x4 similarity taking transforms.json coordinates to the normalised frame the splats live in.

    nerfstudio's recorded transform also contains the dataset's ``applied_transform``, which the saved poses
    already carry (see :func:`~da3_nerfstudio.formats.transforms.saved_to_training_frame`).
    """
    try:
        recorded = json.loads(dataparser_transforms.read_text())
        transform = np.eye(4)
        transform[:3] = np.asarray(recorded["transform"], dtype=np.float64)
        scale = float(recorded["scale"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{dataparser_transforms}: not a nerfstudio dataparser_transforms.json ({err})") from None
    return np.diag([scale, scale, scale, 1.0]) @ saved_to_training_frame(transform, _read_json(transforms_json))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read JSON ({err})") from None


def held_out_view(transforms_json: Path, view: str | None) -> str:
    """The view to render: the one asked for, else the first test view (the first frame without a split)."""
    meta = _read_json(transforms_json)
    frames = [f["file_path"] for f in meta.get("frames", [])]
    if view is not None:
        if view not in frames:
            raise InputError(f"{transforms_json}: no frame with file_path {view}")
        return view
    tests = meta.get("test_filenames") or meta.get("val_filenames") or frames
    if not tests:
        raise InputError(f"{transforms_json}: has no frames")
    return tests[0]


def _render_pixels(scene: bpy.types.Scene) -> np.ndarray:
    """Render the scene camera and return (H,W,3) uint8 sRGB, top row first (via a PNG, as Blender saves it)."""
    import bpy

    bpy.ops.render.render()
    with tempfile.TemporaryDirectory(prefix="da3-demo-render-") as folder:
        path = Path(folder) / "render.png"
        bpy.data.images["Render Result"].save_render(filepath=str(path), scene=scene)
        with Image.open(path) as png:
            return np.asarray(png.convert("RGB"))


def _configure_preview(scene: bpy.types.Scene, camera: bpy.types.Object, size: tuple[int, int], samples: int) -> None:
    """Cycles CPU through ``camera``, fixed seed, denoised, plain sRGB, black world."""
    import bpy

    scene.camera = camera
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.seed = 0
    # A few samples through many overlapping transparent ellipsoids are noisy; the denoiser cleans that up.
    scene.cycles.use_denoising = True
    scene.cycles.denoiser = "OPENIMAGEDENOISE"
    scene.cycles.use_adaptive_sampling = False
    scene.render.resolution_x, scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    # The splat material emits the stored colours; Standard maps them back to the same sRGB values.
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    world = bpy.data.worlds.new("DA3 demo world")
    world.color = (0.0, 0.0, 0.0)
    scene.world = world


def _count(obj: bpy.types.Object) -> int:
    """Number of points stored in a point-carrying object (a vertex-only mesh, or a 5.3+ point cloud)."""
    return len(obj.data.attributes["position"].data)


def build(config: BlendConfig) -> dict:
    """Import, merge under one root, save the .blend, render the preview; returns the counts and times."""
    import bpy

    if config.width < 64 or config.samples < 1:
        raise InputError(f"--width {config.width} / --samples {config.samples}: need width >= 64, samples >= 1")
    # Blender resolves relative paths against its own idea of the current file, not the process's cwd.
    paths = ("dataset", "splats", "dataparser_transforms", "blend", "preview")
    config = replace(config, **{name: getattr(config, name).resolve() for name in paths})
    transforms_json = config.dataset / "transforms.json"
    for path in (transforms_json, config.splats, config.dataparser_transforms):
        if not path.is_file():
            raise InputError(f"{path}: not found")
    to_normalised = normalising_matrix(config.dataparser_transforms, transforms_json)
    view = held_out_view(transforms_json, config.view)
    photo_path = config.dataset / view

    start = time.perf_counter()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    with enabled_addon():
        # The add-on, as Blender imports it; its own one-line error (it cannot import the project's).
        from da3_blender.errors import InputError as AddonInputError
        from da3_blender.importers import import_dataset, import_splats
        from mathutils import Matrix

        scene = bpy.context.scene
        try:
            dataset = import_dataset(scene, config.dataset, z_up=config.z_up, import_points=True)
            splats = import_splats(scene, config.splats, z_up=False)
        except AddonInputError as err:
            raise InputError(str(err)) from None
        for warning in dataset.warnings:
            print(f"demo_blend: {warning}")
        root = dataset.root
        root.name = root.users_collection[0].name = DEMO_ROOT_NAME
        # The splat import (root empty + its collection) moves under the dataset's root and collection.
        splats.root.parent = root
        splats.root.matrix_parent_inverse = Matrix.Identity(4)
        splats.root.matrix_basis = Matrix(np.linalg.inv(to_normalised).tolist())
        splat_collection = splats.root.users_collection[0]
        scene.collection.children.unlink(splat_collection)
        root.users_collection[0].children.link(splat_collection)

        cameras = [o for o in dataset.objects if o.type == "CAMERA"]
        points = [o for o in dataset.objects if o.type != "CAMERA"]
        if not points:
            raise InputError(f"{transforms_json}: no point cloud (ply_file_path) was imported")
        for obj in points:
            obj.hide_render = True  # the preview shows the splats; the points stay visible in the viewport
        camera = bpy.data.objects.get(Path(view).stem)
        if camera is None or camera not in cameras:
            raise InputError(f"{transforms_json}: no camera was imported for {view}")
        if not photo_path.is_file():
            raise InputError(f"{photo_path}: held-out photo not found")
        photo = Image.open(photo_path).convert("RGB")
        size = (config.width, max(1, round(config.width * photo.height / photo.width)))
        _configure_preview(scene, camera, size, config.samples)
        imported = time.perf_counter() - start

        with atomic_write(config.blend) as tmp:
            # Same folder as the final file, so paths remapped relative to it stay right after the rename.
            bpy.ops.wm.save_as_mainfile(filepath=str(tmp), relative_remap=True)
        start = time.perf_counter()
        render = _render_pixels(scene)
        rendered = time.perf_counter() - start

    side = np.concatenate([render, np.asarray(photo.resize(size, Image.Resampling.LANCZOS))], axis=1)
    with atomic_write(config.preview) as tmp:
        Image.fromarray(side).save(tmp, format="PNG")
    return {
        "cameras": len(cameras),
        "points": _count(points[0]),
        "splats": _count(splats.objects[0]),
        "view": view,
        "preview_size": list(size),
        "import_seconds": round(imported, 2),
        "render_seconds": round(rendered, 2),
    }


def main() -> int:
    """Command line: progress lines, then one JSON line; a bad input is one error line (exit 2)."""
    config = tyro.cli(BlendConfig, description=__doc__.split("\n\n")[0])
    try:
        result = build(config)
    except DA3Error as err:
        print(f"demo_blend: {err}", file=sys.stderr)
        return 2
    print(f"demo_blend: {config.blend} ({result['cameras']} cameras, {result['splats']} splats), {config.preview}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    exit_process(main())  # bpy was loaded: skip its exit-time destructors, which can deadlock
