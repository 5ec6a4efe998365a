"""Benchmark the Blender add-on's bulk imports: 1M splats (target <= 2 s) and 1M points (target <= 1 s).

Files are written by the project's own PLY writers; each import runs through the add-on's operator on a
fresh factory scene (read + build, as a user triggers it). The operator's time includes the first
geometry-nodes evaluation, which Blender runs before the operator returns. Points are imported with the
default Solid Colours choice (automatic: point primitives at 1M), with Solid Colours forced on
(tetrahedra whose colours Solid view shows; no target) and forced on at the automatic limit (the largest
cloud that starts with it, target 1 s); splats also at their Solid Colours limit (realised ellipsoids;
no target). A re-evaluation of each output (what every threshold/radius/opacity change costs) is timed on
its own. Prints a table; the last line is JSON.

    .venv/bin/python scripts/bench_blender.py [--count 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from da3_nerfstudio.formats.ply import SplatData, write_point_cloud_ply, write_splat_ply
from da3_nerfstudio.process_exit import exit_process

REPO = Path(__file__).resolve().parents[1]


def write_inputs(folder: Path, n: int, n_limit: int, n_splat_limit: int) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(n, 3)).astype(np.float32)
    colours = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    confidence = rng.uniform(1, 5, n).astype(np.float32)
    write_point_cloud_ply(folder / "points.ply", points, colours, confidence)
    write_point_cloud_ply(folder / "limit.ply", points[:n_limit], colours[:n_limit], confidence[:n_limit])
    paths = {"points": folder / "points.ply", "limit": folder / "limit.ply"}
    for degree, rest in ((0, 0), (3, 15)):
        splats = SplatData(
            means=points,
            scales_log=rng.uniform(-6, -2, (n, 3)).astype(np.float32),
            rotations=rng.normal(size=(n, 4)).astype(np.float32),
            opacity_logit=rng.normal(size=n).astype(np.float32),
            sh_dc=rng.normal(size=(n, 3)).astype(np.float32),
            sh_rest=rng.normal(scale=0.1, size=(n, rest, 3)).astype(np.float32),
        )
        paths[f"splats_sh{degree}"] = folder / f"splats_sh{degree}.ply"
        write_splat_ply(paths[f"splats_sh{degree}"], splats)
    paths["splats_limit"] = folder / "splats_limit.ply"
    write_splat_ply(paths["splats_limit"], SplatData(**{k: v[:n_splat_limit] for k, v in vars(splats).items()}))
    return paths


def time_evaluation(bpy: object, modifier: str, outputs: dict[str, bool]) -> dict[str, float]:
    """Seconds to evaluate the imported object's modifier with Solid Colours set as ``outputs`` says."""
    from da3_blender.build_common import SOLID_COLOURS_INPUT, set_modifier_input

    obj = next(o for o in bpy.context.scene.objects if modifier in o.modifiers)
    seconds = {}
    for output, solid in outputs.items():
        set_modifier_input(obj.modifiers[modifier], SOLID_COLOURS_INPUT, solid)
        start = time.perf_counter()
        bpy.context.evaluated_depsgraph_get().update()
        seconds[output] = time.perf_counter() - start
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import bpy  # imported late: bpy can be imported only once per process and takes ~0.5 s

    with tempfile.TemporaryDirectory(prefix="da3-bench-blender-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "addons").mkdir()
        (tmp_path / "addons" / "da3_blender").symlink_to(REPO / "blender_addon", target_is_directory=True)
        sys.path.insert(0, str(tmp_path / "addons"))
        import addon_utils

        addon_utils.enable("da3_blender", default_set=True)
        from da3_blender.build_points import SOLID_COLOURS_MAX_POINTS
        from da3_blender.build_splats import SOLID_COLOURS_MAX_SPLATS

        limit = min(SOLID_COLOURS_MAX_POINTS, args.count)
        splat_limit = min(SOLID_COLOURS_MAX_SPLATS, args.count)
        paths = write_inputs(tmp_path, args.count, limit, splat_limit)
        cases = [
            ("points", "import_points", paths["points"], 1.0, {}),
            ("points_solid", "import_points", paths["points"], None, {"solid_colours": "ON"}),
            ("points_solid_limit", "import_points", paths["limit"], 1.0, {"solid_colours": "ON"}),
            ("splats_sh0", "import_splats", paths["splats_sh0"], 2.0, {}),
            ("splats_sh3", "import_splats", paths["splats_sh3"], 2.0, {}),
            ("splats_solid_limit", "import_splats", paths["splats_limit"], None, {}),
        ]
        results = {}
        evaluated = {
            "points_solid": ("DA3 Points", {"tetrahedra": True, "primitives": False}),
            "splats_solid_limit": ("DA3 Splats", {"realised splats": True, "splat instances": False}),
        }
        evaluations: dict[str, list[float]] = {o: [] for _, outputs in evaluated.values() for o in outputs}
        for name, operator_name, path, target, options in cases:
            times = []
            for _ in range(args.repeats):
                bpy.ops.wm.read_factory_settings(use_empty=True)
                addon_utils.enable("da3_blender", default_set=True)
                operator = getattr(bpy.ops.da3, operator_name)
                start = time.perf_counter()
                assert operator(filepath=str(path), **options) == {"FINISHED"}
                times.append(time.perf_counter() - start)
                if name in evaluated:
                    for output, seconds in time_evaluation(bpy, *evaluated[name]).items():
                        evaluations[output].append(seconds)
            results[name] = {"best_s": min(times), "target_s": target, "mb": path.stat().st_size / 1e6}

    print(
        f"bpy {bpy.app.version_string}, {args.count:,} elements ({limit:,} points and {splat_limit:,} splats at the "
        f"Solid Colours limits), best of {args.repeats}"
    )
    print(f"{'import':<19} {'file MB':>8} {'best s':>8} {'target s':>9}  ok")
    for name, r in results.items():
        if r["target_s"] is None:
            print(f"{name:<19} {r['mb']:>8.1f} {r['best_s']:>8.3f} {'-':>9}  -")
            continue
        ok = "yes" if r["best_s"] <= r["target_s"] else "NO"
        print(f"{name:<19} {r['mb']:>8.1f} {r['best_s']:>8.3f} {r['target_s']:>9.1f}  {ok}")
    for output, seconds in evaluations.items():
        print(f"geometry-nodes evaluation ({output}): best {min(seconds):.3f} s")
    summary = {"blender": bpy.app.version_string, "count": args.count, "solid_colours_limit": limit}
    summary["splat_solid_colours_limit"] = splat_limit
    summary.update({f"{name}_s": round(r["best_s"], 4) for name, r in results.items()})
    summary.update({f"eval_{output.replace(' ', '_')}_s": round(min(s), 4) for output, s in evaluations.items()})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
    exit_process(0)  # bpy was loaded: skip its exit-time destructors, which can deadlock
