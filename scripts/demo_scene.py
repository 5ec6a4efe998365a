"""Render the demo's own input scene with Blender (bpy), with exact cameras and depth beside the images.

`make demo` must run offline on a fresh machine without committing third-party photos, so the project
builds its input here: a walled, textured yard with a set of primitives in the middle, seen by N cameras
on a ring around it. Cycles renders each view twice: once for the photo (anti-aliased) and once for the
depth with a near-zero pixel filter and one sample, so every depth value is by construction the z-depth
of the ray through the pixel centre. (In Blender 4.5 the Z pass of the anti-aliased render matches it
on all but a handful of silhouette pixels, because the sampler's first sample happens to be central;
the second render costs about 5 % and does not depend on that.)

Lighting is a sun, a dim sky and an ambient term (each material emits a fraction of its own colour,
not sampled as a light), with no diffuse bounces: at 16 samples this is about as clean as a denoised
render, and, unlike OpenImageDenoise (whose output differs by a level on a few pixels between
processes), bit-reproducible.

Outputs in ``--output``:

* ``images/frame_0000.png`` ... (8-bit RGB);
* ``ground_truth.npz`` in the official DA3 npz layout: ``image`` (N,H,W,3) uint8, ``depth`` (N,H,W)
  float32 z-depth in metres, ``conf`` (N,H,W) float32 (1 where a ray hits geometry, else 0 with depth
  0), ``extrinsics`` (N,3,4) world-to-camera in OpenCV axes, ``intrinsics`` (N,3,3) in pixels with the
  continuous convention (pixel (i, j) centred at (j + 0.5, i + 0.5)), ``names``, ``is_metric``.

Every file is written under a temporary name and renamed into place; frames left by an earlier run
with more views are removed at the end, so the folder always matches ``ground_truth.npz``.

The world frame is Blender's (Z up, metres); the ground is the plane z = 0. Everything is seeded, so
two runs give identical arrays and PNG files, whatever the thread count.

Run: ``.venv/bin/python scripts/demo_scene.py --output outputs/demo_scene``.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tyro
from PIL import Image

from da3_nerfstudio.errors import DA3Error, InputError
from da3_nerfstudio.formats.atomic import atomic_write
from da3_nerfstudio.process_exit import exit_process

if TYPE_CHECKING:
    import bpy

#: Cameras sit on a horizontal ring of this radius (metres) around the vertical axis through TARGET.
RING_RADIUS = 4.0
#: Every camera looks at this world point (the middle of the object set), without roll.
TARGET = (0.0, 0.0, 0.5)
#: Camera heights above the ground vary within this range (metres) so the views are not coplanar.
HEIGHT_RANGE = (1.2, 2.2)
#: Lens on a 36 mm wide sensor fitted horizontally: a 62 degree horizontal field of view.
LENS_MM = 30.0
SENSOR_MM = 36.0
#: The yard: walls at |x|, |y| = ROOM_HALF around the ground, WALL_HEIGHT high, open to the sky so
#: the sun gets in; every camera ray in the ring's field of view hits a surface.
ROOM_HALF = 8.0
WALL_HEIGHT = 6.0
#: Cycles' smallest pixel filter: the depth render's single sample goes through the pixel centre.
PIXEL_CENTRE_FILTER = 0.01
#: Sun, sky and ambient strengths: the ambient emission lifts shadows without Monte Carlo noise.
SUN_ENERGY = 3.0
SKY_STRENGTH = 0.2
AMBIENT = 0.3
#: Depth the Z pass reports for rays that hit nothing (Blender writes 1e10 there).
NO_HIT_DEPTH = 1e9


@dataclass(frozen=True)
class DemoSceneConfig:
    """Render the procedural demo scene: N views with exact cameras and depth."""

    output: Path
    """Folder for images/ and ground_truth.npz (created if needed)."""
    views: int = 12
    """Number of cameras on the ring."""
    width: int = 320
    """Image width in pixels."""
    height: int = 240
    """Image height in pixels."""
    samples: int = 16
    """Cycles samples per pixel of the photos."""
    seed: int = 0
    """Seed of the object colours/placement and of Cycles' sampling."""
    threads: int = 0
    """Render threads (0: all cores); the images do not depend on it."""
    verbose: bool = False
    """Show Blender's own render log."""


def validate(config: DemoSceneConfig) -> None:
    """Reject settings that cannot give a usable scene, with one line naming the problem."""
    if config.views < 2:
        raise InputError(f"--views {config.views}: need at least 2 views")
    if config.width < 16 or config.height < 16:
        raise InputError(f"--width/--height {config.width}x{config.height}: need at least 16x16 pixels")
    if config.samples < 1:
        raise InputError(f"--samples {config.samples}: need at least 1 sample")
    if config.threads < 0:
        raise InputError(f"--threads {config.threads}: must be 0 (all cores) or positive")
    if config.output.exists() and not config.output.is_dir():
        raise InputError(f"{config.output}: exists and is not a folder")


def camera_centres(views: int) -> np.ndarray:
    """(N,3) camera centres: evenly spaced on the ring, heights spread by the golden ratio.

    The golden-ratio sequence gives well-spread heights for any N, so neighbouring views never share
    a height and the set is not coplanar (which would make camera solvers degenerate).
    """
    k = np.arange(views)
    azimuth = 2 * np.pi * k / views - np.pi / 2  # view 0 looks along +y, like Blender's front view
    lo, hi = HEIGHT_RANGE
    heights = lo + (hi - lo) * ((k * 0.6180339887498949 + 0.25) % 1.0)
    return np.stack(
        [TARGET[0] + RING_RADIUS * np.cos(azimuth), TARGET[1] + RING_RADIUS * np.sin(azimuth), heights], axis=-1
    )


def look_at_blender(centre: np.ndarray, target: Sequence[float]) -> np.ndarray:
    """4x4 camera-to-world of a Blender camera at ``centre`` looking at ``target`` (local -Z), no roll."""
    forward = np.asarray(target, dtype=np.float64) - centre
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -forward, centre
    return c2w


def blender_c2w_to_opencv_w2c(c2w: np.ndarray) -> np.ndarray:
    """(3,4) OpenCV world-to-camera of a Blender camera-to-world: flip the camera's Y and Z axes."""
    c2w_cv = c2w @ np.diag([1.0, -1.0, -1.0, 1.0])
    return np.linalg.inv(c2w_cv)[:3]


def intrinsics(width: int, height: int) -> np.ndarray:
    """3x3 K of the scene camera: horizontal sensor fit, square pixels, no shift -> centred principal point."""
    f = LENS_MM / SENSOR_MM * width
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


# ------------------------------------------------------------------------------------------ scene


def _material(
    name: str,
    texture: str,
    colours: tuple[Sequence[float], Sequence[float]],
    scale: float,
    roughness: float = 0.7,
    metallic: float = 0.0,
    options: dict[str, Any] | None = None,
    noise: float = 0.0,
) -> bpy.types.Material:
    """Principled material whose base colour is a procedural texture's factor through a two-colour ramp.

    Object-space texture coordinates pin the pattern to the surface, so it is the same in every view:
    this is the texture the splat optimisation matches photometrically. ``noise`` blends that
    weight of fractal noise into the factor, to texture a pattern's flat areas.
    """
    import bpy

    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = nodes["Principled BSDF"]
    bsdf.inputs["Roughness"].default_value = roughness
    bsdf.inputs["Metallic"].default_value = metallic
    bsdf.inputs["Emission Strength"].default_value = AMBIENT
    mat.cycles.emission_sampling = "NONE"  # ambient only: sampling it as a light would add noise
    coords = nodes.new("ShaderNodeTexCoord")
    tex = nodes.new(f"ShaderNodeTex{texture}")
    for key, value in (options or {}).items():
        setattr(tex, key, value)
    tex.inputs["Scale"].default_value = scale
    links.new(coords.outputs["Object"], tex.inputs["Vector"])
    ramp = nodes.new("ShaderNodeValToRGB")
    for element, colour in zip(ramp.color_ramp.elements, colours, strict=True):
        element.color = (*colour, 1.0)
    factor = tex.outputs["Distance"] if texture == "Voronoi" else tex.outputs["Fac"]
    if noise > 0:
        fractal = nodes.new("ShaderNodeTexNoise")
        fractal.inputs["Scale"].default_value = 2.0 * scale
        fractal.inputs["Detail"].default_value = 4.0
        links.new(coords.outputs["Object"], fractal.inputs["Vector"])
        weighted = nodes.new("ShaderNodeMath")
        weighted.operation = "MULTIPLY"
        weighted.inputs[1].default_value = noise
        links.new(fractal.outputs["Fac"], weighted.inputs[0])
        blend = nodes.new("ShaderNodeMath")
        blend.operation = "MULTIPLY_ADD"  # factor * (1 - noise) + noise * fractal
        blend.inputs[1].default_value = 1.0 - noise
        links.new(factor, blend.inputs[0])
        links.new(weighted.outputs["Value"], blend.inputs[2])
        factor = blend.outputs["Value"]
    links.new(factor, ramp.inputs["Fac"])
    links.new(ramp.outputs["Color"], bsdf.inputs["Base Color"])
    links.new(ramp.outputs["Color"], bsdf.inputs["Emission Color"])
    return mat


def _add_mesh(
    name: str,
    build: Callable[[Any], object],
    material: bpy.types.Material,
    location: Sequence[float],
    smooth: bool = False,
) -> bpy.types.Object:
    """Link a mesh object made by ``build(bm)`` (bmesh operators, no context needed headless)."""
    import bmesh
    import bpy

    bm = bmesh.new()
    build(bm)
    mesh = bpy.data.meshes.new(name)
    bm.to_mesh(mesh)
    bm.free()
    if smooth:
        mesh.shade_smooth()
    mesh.materials.append(material)
    obj = bpy.data.objects.new(name, mesh)
    obj.location = location
    bpy.context.scene.collection.objects.link(obj)
    return obj


def _walls(bm: Any) -> None:
    """The yard's four walls: a box without top (the sun comes in) or bottom (the ground is its own mesh)."""
    import bmesh
    from mathutils import Matrix

    transform = Matrix.Translation((0.0, 0.0, WALL_HEIGHT / 2)) @ Matrix.Diagonal(
        (2 * ROOM_HALF, 2 * ROOM_HALF, WALL_HEIGHT, 1.0)
    )
    bmesh.ops.create_cube(bm, size=1.0, matrix=transform)
    bmesh.ops.delete(bm, geom=[f for f in bm.faces if f.normal.z > 0.5 or f.normal.z < -0.5], context="FACES_ONLY")


def build_scene(seed: int) -> None:
    """Create the world, the light, the ground, the walls and the object set in the current scene."""
    import bmesh
    import bpy
    from mathutils import Matrix

    rng = np.random.default_rng(seed)
    scene = bpy.context.scene

    world = bpy.data.worlds.new("sky")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.55, 0.68, 0.85, 1.0)
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = SKY_STRENGTH
    scene.world = world

    sun = bpy.data.lights.new("sun", type="SUN")
    sun.energy = SUN_ENERGY
    sun.angle = math.radians(0.5)
    sun_obj = bpy.data.objects.new("sun", sun)
    sun_obj.rotation_euler = (math.radians(35.0), 0.0, math.radians(30.0 + 60.0 * rng.random()))
    scene.collection.objects.link(sun_obj)

    def colour() -> tuple[float, float, float]:
        return tuple(float(c) for c in rng.uniform(0.05, 0.75, size=3))

    # Noise inside the checker squares: flat squares would give the optimisation nothing to match.
    ground = _material("ground", "Checker", ((0.1, 0.09, 0.08), (0.75, 0.7, 0.6)), scale=1.0, roughness=0.9, noise=0.45)
    _add_mesh(
        "ground", lambda bm: bmesh.ops.create_grid(bm, x_segments=1, y_segments=1, size=ROOM_HALF), ground, (0, 0, 0)
    )
    # Only 3D textures on vertical faces: 2D ones (brick) smear into stripes along z there.
    walls = _material("walls", "Voronoi", ((0.7, 0.62, 0.55), (0.3, 0.28, 0.3)), scale=1.2, roughness=0.95)
    _add_mesh("walls", _walls, walls, (0, 0, 0))

    # Object set: distinct shapes, colours and materials on a circle around the target, one in the middle.
    shapes: list[tuple[str, Callable[[Any], object], bpy.types.Material, float, bool]] = [
        (
            "cube",
            lambda bm: bmesh.ops.create_cube(bm, size=0.8),
            _material("cube", "Wave", (colour(), colour()), scale=3.0),
            0.4,
            False,
        ),
        (
            "sphere",
            lambda bm: bmesh.ops.create_uvsphere(bm, u_segments=32, v_segments=16, radius=0.45),
            _material("sphere", "Voronoi", (colour(), colour()), scale=6.0, roughness=0.4),
            0.45,
            True,
        ),
        (
            "cone",
            lambda bm: bmesh.ops.create_cone(bm, cap_ends=True, segments=24, radius1=0.45, radius2=0.0, depth=1.0),
            _material("cone", "Noise", (colour(), colour()), scale=5.0),
            0.5,
            False,
        ),
        (
            "cylinder",
            lambda bm: bmesh.ops.create_cone(bm, cap_ends=True, segments=24, radius1=0.3, radius2=0.3, depth=1.2),
            _material("cylinder", "Checker", (colour(), colour()), scale=4.0, noise=0.3),
            0.6,
            True,
        ),
        (
            "monkey",
            # bmesh's Suzanne faces +z; stand her up facing -y.
            lambda bm: bmesh.ops.create_monkey(bm, matrix=Matrix.Rotation(math.pi / 2, 4, "X") @ Matrix.Scale(0.35, 4)),
            _material("monkey", "Noise", (colour(), colour()), scale=3.0, roughness=0.35, metallic=0.5),
            0.3,
            True,
        ),
        (
            "icosphere",
            lambda bm: bmesh.ops.create_icosphere(bm, subdivisions=2, radius=0.35),
            _material("icosphere", "Magic", (colour(), colour()), scale=2.0),
            0.35,
            False,
        ),
        (
            "column",
            lambda bm: bmesh.ops.create_cone(bm, cap_ends=True, segments=6, radius1=0.25, radius2=0.2, depth=1.6),
            _material("column", "Wave", (colour(), colour()), scale=4.0, options={"bands_direction": "Z"}),
            0.8,
            False,
        ),
    ]
    around = len(shapes) - 1
    angles = 2 * np.pi * np.arange(around) / around + rng.uniform(-0.15, 0.15, size=around)
    radii = rng.uniform(1.1, 1.6, size=around)
    for index, (name, build, material, lift, smooth) in enumerate(shapes):
        if index == 0:
            x, y = 0.0, 0.0
        else:
            x, y = radii[index - 1] * math.cos(angles[index - 1]), radii[index - 1] * math.sin(angles[index - 1])
        obj = _add_mesh(name, build, material, (x + TARGET[0], y + TARGET[1], lift), smooth)
        obj.rotation_euler.z = float(rng.uniform(0, 2 * np.pi))


def configure_render(config: DemoSceneConfig) -> None:
    """Cycles on CPU, fixed seed and thread count, plain sRGB output, no metadata that varies per run."""
    import bpy

    scene = bpy.context.scene
    render = scene.render
    render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.seed = config.seed
    scene.cycles.use_animated_seed = False
    scene.cycles.use_adaptive_sampling = False
    scene.cycles.use_denoising = False
    # Glossy reflections (the metallic monkey) but no diffuse interreflection: the ambient term
    # stands in for it without its noise.
    scene.cycles.max_bounces = 2
    scene.cycles.diffuse_bounces = 0
    scene.cycles.glossy_bounces = 1
    scene.cycles.transmission_bounces = 0
    scene.cycles.volume_bounces = 0
    scene.cycles.caustics_reflective = False
    scene.cycles.caustics_refractive = False
    render.threads_mode = "FIXED"
    render.threads = config.threads or os.cpu_count() or 1
    render.resolution_x, render.resolution_y, render.resolution_percentage = config.width, config.height, 100
    render.pixel_aspect_x = render.pixel_aspect_y = 1.0
    render.dither_intensity = 0.0
    render.image_settings.file_format = "PNG"
    render.image_settings.color_mode = "RGB"
    render.image_settings.color_depth = "8"
    for prop in render.bl_rna.properties:
        if prop.identifier.startswith("use_stamp"):
            setattr(render, prop.identifier, False)
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.view_layers[0].use_pass_z = True


def _photo_mode(samples: int) -> None:
    """Anti-aliased photo; the compositor (depth file output) stays off."""
    import bpy

    scene = bpy.context.scene
    scene.cycles.samples = samples
    scene.cycles.filter_width = 1.5
    scene.render.use_compositing = False


def _depth_mode(folder: Path) -> None:
    """One sample through each pixel centre, no bounces; the compositor writes the Z pass as float EXR."""
    import bpy

    scene = bpy.context.scene
    scene.cycles.samples = 1
    scene.cycles.filter_width = PIXEL_CENTRE_FILTER
    scene.render.use_compositing = True
    scene.use_nodes = True
    tree = scene.node_tree
    tree.nodes.clear()
    layers = tree.nodes.new("CompositorNodeRLayers")
    output = tree.nodes.new("CompositorNodeOutputFile")
    output.base_path = str(folder)
    output.format.file_format = "OPEN_EXR"
    output.format.color_depth = "32"
    output.format.color_mode = "RGB"
    output.file_slots[0].path = "depth_"
    tree.links.new(layers.outputs["Depth"], output.inputs[0])
    composite = tree.nodes.new("CompositorNodeComposite")
    tree.links.new(layers.outputs["Image"], composite.inputs["Image"])


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """Silence Blender's C-level render log (it writes to file descriptor 1 directly)."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def _read_exr_depth(folder: Path) -> np.ndarray:
    """(H,W) float32 of the single EXR the depth render wrote into ``folder``, top row first."""
    import bpy

    (path,) = folder.glob("depth_*.exr")
    image = bpy.data.images.load(str(path))
    try:
        image.colorspace_settings.name = "Non-Color"
        width, height = image.size
        pixels = np.empty(width * height * 4, dtype=np.float32)
        image.pixels.foreach_get(pixels)
    finally:
        bpy.data.images.remove(image)
    # Blender images start at the bottom row.
    return pixels.reshape(height, width, 4)[::-1, :, 0].copy()


def render_depth(folder: Path, quiet: bool = True) -> np.ndarray:
    """Z pass (H,W) float32 of the scene camera through each pixel centre, top row first.

    ``folder`` must be new or empty (the EXR is written there). Rays that hit nothing read 1e10.
    """
    import bpy

    _depth_mode(folder)
    with _quiet(quiet):
        bpy.ops.render.render()
    return _read_exr_depth(folder)


def depth_and_confidence(z_pass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth (0 where a ray hits nothing) and confidence (1 on a hit, else 0), both float32."""
    hit = z_pass < NO_HIT_DEPTH
    return np.where(hit, z_pass, 0.0).astype(np.float32), hit.astype(np.float32)


def render_views(config: DemoSceneConfig, image_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Render every view, photos saved into ``image_dir``: names, images (N,H,W,3), depth (N,H,W), c2w (N,4,4)."""
    import bpy
    from mathutils import Matrix

    scene = bpy.context.scene
    camera = bpy.data.cameras.new("camera")
    camera.sensor_fit = "HORIZONTAL"
    camera.sensor_width = SENSOR_MM
    camera.lens = LENS_MM
    camera.clip_start, camera.clip_end = 0.05, 100.0
    camera_obj = bpy.data.objects.new("camera", camera)
    scene.collection.objects.link(camera_obj)
    scene.camera = camera_obj

    names, images, depths, poses = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="da3-demo-scene-") as scratch:
        for index, centre in enumerate(camera_centres(config.views)):
            camera_obj.matrix_world = Matrix(look_at_blender(centre, TARGET).tolist())
            bpy.context.view_layer.update()
            # Read the pose back from Blender: it is what the render used.
            poses.append(np.array(camera_obj.matrix_world, dtype=np.float64))
            name = f"frame_{index:04d}.png"
            _photo_mode(config.samples)
            with _quiet(not config.verbose):
                bpy.ops.render.render()
            photo = Path(scratch) / "photo.png"
            bpy.data.images["Render Result"].save_render(filepath=str(photo))
            # Re-encoded without Blender's metadata (it records render times), so files are reproducible too.
            with Image.open(photo) as png:
                images.append(np.asarray(png.convert("RGB")))
            with atomic_write(image_dir / name) as tmp:
                Image.fromarray(images[-1]).save(tmp, format="PNG")
            depths.append(render_depth(Path(scratch) / f"view_{index:04d}", quiet=not config.verbose))
            names.append(name)
    return names, np.stack(images), np.stack(depths), np.stack(poses)


def generate(config: DemoSceneConfig) -> Path:
    """Build, render and save the scene; returns the path of ``ground_truth.npz``."""
    validate(config)
    try:
        import bpy
    except ImportError:
        raise InputError(f"{sys.executable}: bpy is not installed (pip install 'bpy==4.5.*')") from None

    bpy.ops.wm.read_factory_settings(use_empty=True)
    build_scene(config.seed)
    configure_render(config)
    image_dir = config.output / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    names, images, depth, c2w = render_views(config, image_dir)

    depth, conf = depth_and_confidence(depth)
    K = intrinsics(config.width, config.height)
    arrays = {
        "image": images,
        "depth": depth,
        "conf": conf,
        "extrinsics": np.stack([blender_c2w_to_opencv_w2c(T) for T in c2w]).astype(np.float32),
        "intrinsics": np.repeat(K[None], len(names), axis=0).astype(np.float32),
        "names": np.array(names, dtype=str),
        "is_metric": np.array(True),
    }
    path = config.output / "ground_truth.npz"
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    # Frames of an earlier, longer run would not match the new ground truth.
    for stale in sorted(set(p.name for p in image_dir.glob("frame_*.png")) - set(names)):
        (image_dir / stale).unlink()
    return path


def main() -> int:
    """Command line: one line on success (with timings) or one error line and exit code 2."""
    config = tyro.cli(DemoSceneConfig, description=__doc__.split("\n\n")[0])
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        path = generate(config)
    except DA3Error as err:
        print(f"demo_scene: {err}", file=sys.stderr)
        return 2
    # CPU time (all render threads) next to wall time: on a busy machine the wall time alone misleads.
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(
        f"demo_scene: {config.views} views at {config.width}x{config.height}, {config.samples} samples "
        f"in {wall:.1f} s ({cpu:.1f} s CPU) -> {path}"
    )
    return 0


if __name__ == "__main__":
    exit_process(main())  # bpy was loaded: skip its exit-time destructors, which can deadlock
