"""Side by side with the official ``depth-anything-3`` package: network forward, photos to a dataset, start-up.

The official package (pinned, with only what ``depth_anything_3.api`` needs to import; no dependency
resolution) is installed once into ``~/.cache/da3-nerfstudio/official/<version>``, outside the repository.
Both sides load ONE checkpoint folder (official layout) built from the parity-fixture recipe (deterministic,
untrained weights: timing and memory are representative, the geometry is not). Every measurement runs in its
own process, ours and official alternating (the first of each pair swaps every round), on the same input:

- network: da3-small forward, CPU float32 on both sides (official ``model.forward`` without its autocast),
  for each view count and size; wall time, process CPU time and peak resident memory (the process's peak
  RSS; ``+MB`` is the part above the RSS just before the forward, i.e. the forward's own working memory).
  Both return the same outputs: depth, confidence and cameras (the official forward also computes the ray
  maps and drops them unless ``use_ray_pose``; ours computes them only when asked);
- attention floor: for each network row, the time of its scaled-dot-product-attention calls alone (the
  same PyTorch kernel on both sides), i.e. the most any float32 implementation on that kernel can gain;
- end to end: ``da3-process-data images`` (our default precision: auto) against the official
  ``DepthAnything3.inference(..., export_format="colmap")`` on the same photos (frames of the sample video)
  and checkpoint, whole processes (interpreter start-up, imports, loading, inference, writing);
- start-up: ``da3-process-data --help`` and the first line of progress of a real run;
- ``--gpu``: on CUDA, bf16 autocast on both sides (the official API's choice; heads in float32 on both), a
  preset with RANDOM weights (default the largest, da3nested-giant-large), one process per side running the
  view counts in ascending order: forward time and the CUDA allocator's peak per view count (a table like
  the one VGGT publishes). Needs only torch and the official package's network modules (no checkpoint).

Times are the minimum over rounds (the machine may be shared); prints one line per measurement, a summary
table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OFFICIAL_VERSION = "0.1.1"
#: depth-anything-3 and what ``import depth_anything_3.api`` needs beyond this project's environment (torch,
#: numpy, cv2, PIL, pycolmap, huggingface_hub, safetensors, trimesh, imageio, plyfile are already installed).
OFFICIAL_PINS = (
    f"depth-anything-3=={OFFICIAL_VERSION}",
    "einops==0.8.1",
    "addict==2.4.0",
    "omegaconf==2.3.0",
    "antlr4-python3-runtime==4.9.3",
    "moviepy==1.0.3",
    "decorator==5.3.2",
    "proglog==0.1.12",
    "imageio-ffmpeg==0.8.1",
    "evo==1.38.1",
)
CACHE = Path(os.environ.get("DA3_BENCH_CACHE", Path.home() / ".cache" / "da3-nerfstudio"))
OFFICIAL_DIR = CACHE / "official" / OFFICIAL_VERSION
CHECKPOINT = CACHE / "bench" / "da3-small-parity"
ROOT = Path(__file__).resolve().parents[1]
SAMPLES = Path(os.environ.get("DA3_SAMPLES", ROOT.parent / "shared" / "samples"))
PRESET = "da3-small"


def ensure_official() -> Path:
    """Install the pinned official package into the cache once (into a temporary folder, then renamed)."""
    if (OFFICIAL_DIR / "depth_anything_3" / "api.py").is_file():
        return OFFICIAL_DIR
    OFFICIAL_DIR.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=OFFICIAL_DIR.parent, prefix=".install-") as tmp:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", tmp, *OFFICIAL_PINS]
        subprocess.run(cmd, check=True)
        os.replace(tmp, OFFICIAL_DIR)
    return OFFICIAL_DIR


def ensure_checkpoint() -> Path:
    """One checkpoint folder in the official layout from the parity recipe (tests/da3_fixtures.py)."""
    if (CHECKPOINT / "model.safetensors").is_file():
        return CHECKPOINT
    sys.path.insert(0, str(ROOT / "tests"))
    from da3_fixtures import write_checkpoint

    CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CHECKPOINT.parent, prefix=".ckpt-") as tmp:
        write_checkpoint(Path(tmp) / "ckpt", PRESET)
        os.replace(Path(tmp) / "ckpt", CHECKPOINT)
    return CHECKPOINT


def ensure_photos(views: int) -> Path:
    """A folder of ``views`` evenly spaced frames of the sample video, cached."""
    folder = CACHE / "bench" / f"photos_{views}"
    if not folder.is_dir():
        from da3_nerfstudio.video import extract_frames

        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".photos-") as tmp:
            extract_frames(SAMPLES / "robot_unitree.mp4", Path(tmp) / "photos", views)
            os.replace(Path(tmp) / "photos", folder)
    return folder


#: What the official network modules import beyond torch (for a GPU machine without the network): pure
#: Python, a few MB; PyYAML falls back to pure Python where its C extension does not match.
OFFICIAL_NET_PACKAGES = ("depth_anything_3", "einops", "addict", "omegaconf", "antlr4", "yaml")


def stage_official(folder: Path) -> None:
    """Copy the official network modules and their pure-Python imports into ``folder`` (for --official-dir)."""
    import importlib.util

    sys.path.insert(0, str(ensure_official()))
    for name in OFFICIAL_NET_PACKAGES:
        source = Path(next(iter(importlib.util.find_spec(name).submodule_search_locations)))
        shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)


def current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------- children
def child_network(impl: str, views: int, height: int, width: int, runs: int) -> dict:
    """One process: load the model, forward ``runs`` times (the first warms up when runs > 1), measure."""
    import torch

    if impl == "ours":
        from da3_nerfstudio.model import DA3Model

        model = DA3Model.from_pretrained(CHECKPOINT, device="cpu")

        def forward() -> None:
            model(x)
    else:
        sys.path.insert(0, str(OFFICIAL_DIR))
        from depth_anything_3.api import DepthAnything3

        net = DepthAnything3.from_pretrained(str(CHECKPOINT)).eval().model

        def forward() -> None:
            net(x, None, None, [], False, False, "saddle_balanced")

    x = torch.randn(1, views, 3, height, width, generator=torch.Generator().manual_seed(0))
    loaded_rss = current_rss_mb()
    seconds, cpu = [], []
    with torch.inference_mode():
        for _ in range(runs):
            start, start_cpu = time.perf_counter(), time.process_time()
            forward()
            seconds.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    timed = slice(1, None) if runs > 1 else slice(None)
    peak = peak_rss_mb()
    return {
        "seconds": min(seconds[timed]),
        "cpu_seconds": min(cpu[timed]),
        "peak_rss_mb": peak,
        "forward_mb": peak - loaded_rss,
        "threads": torch.get_num_threads(),
    }


def child_attention(views: int, height: int, width: int) -> dict:
    """One process: only the scaled-dot-product-attention calls of a da3-small forward (8 per-view blocks, 4
    global ones), on random q/k/v of their exact shapes. Both implementations make exactly these calls
    (PyTorch's fused CPU kernel), so official time / this time bounds any float32 speed-up."""
    import torch
    import torch.nn.functional as F

    heads, head_dim, local_blocks, global_blocks = 6, 64, 8, 4
    tokens = (height // 14) * (width // 14) + 1
    generator = torch.Generator().manual_seed(0)

    def attend(batch: int, n: int) -> float:
        q, k, v = (torch.randn(batch, heads, n, head_dim, generator=generator) for _ in range(3))
        start = time.perf_counter()
        F.scaled_dot_product_attention(q, k, v)
        return time.perf_counter() - start

    attend(1, 256)  # warm-up
    seconds = local_blocks * attend(views, tokens) + global_blocks * attend(1, views * tokens)
    return {"seconds": seconds}


def build_official_net(preset: str) -> object:
    """The official network with random weights, built from its own YAML preset on the current device
    (its network modules need only einops, addict and omegaconf, not the API's export stack)."""
    sys.path.insert(0, str(OFFICIAL_DIR))
    from depth_anything_3.cfg import create_object, load_config
    from depth_anything_3.registry import MODEL_REGISTRY

    return create_object(load_config(MODEL_REGISTRY[preset])).eval()


def child_gpu(impl: str, preset: str, views: list[int], side: int, device: str = "cuda") -> list[dict]:
    """One process: random weights, bf16 autocast, each view count after a warm-up call of the same shape.
    (``device`` cpu only smoke-tests this path: no memory figure there.)"""
    import torch

    cuda = device == "cuda"
    torch.manual_seed(0)
    with torch.device(device):
        if impl == "ours":
            from da3_nerfstudio.model import DA3Model

            net = DA3Model(preset).eval()
        else:
            net = build_official_net(preset)
    height, width = side * 3 // 4 // 14 * 14, side
    rows = []
    for n in views:
        x = torch.randn(1, n, 3, height, width, device=device)
        args = (x,) if impl == "ours" else (x, None, None, [], False, False, "saddle_balanced")
        try:
            with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16):
                net(*args)  # warm-up: kernels and allocator at this shape
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                net(*args)
                if cuda:
                    torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
            rows.append({"views": n, "seconds": time.perf_counter() - start, "peak_gb": peak})
        except torch.OutOfMemoryError:
            rows.append({"views": n, "seconds": None, "peak_gb": None, "oom": True})
        del x
        if cuda:
            torch.cuda.empty_cache()
        print(f"  gpu {impl} {preset} {width}x{height} views={n}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def bench_gpu(preset: str, views: list[int], side: int) -> dict:
    import torch

    sides = {
        impl: child(
            [
                sys.executable,
                __file__,
                "--official-dir",
                str(OFFICIAL_DIR),
                "--child-gpu",
                impl,
                preset,
                "cuda",
                str(side),
                *map(str, views),
            ]
        )
        for impl in ("ours", "official")
    }
    print(f"GPU {torch.cuda.get_device_name()}, {preset} (random weights), bf16 autocast, {side} px wide")
    print("| views | ours time | ours peak | official time | official peak | speed-up | memory ratio |")
    print("|---|---|---|---|---|---|---|")
    table = []
    for o, f in zip(sides["ours"], sides["official"], strict=True):
        ok = o["seconds"] is not None and f["seconds"] is not None
        row = {
            "views": o["views"],
            "ours": o,
            "official": f,
            "speedup": f["seconds"] / o["seconds"] if ok else None,
            "peak_ratio": o["peak_gb"] / f["peak_gb"] if ok else None,
        }
        table.append(row)
        cell = lambda r, k, u: "OOM" if r[k] is None else f"{r[k]:.3f} {u}"  # noqa: E731
        print(
            f"| {o['views']} | {cell(o, 'seconds', 's')} | {cell(o, 'peak_gb', 'GB')} | {cell(f, 'seconds', 's')} "
            f"| {cell(f, 'peak_gb', 'GB')} | {row['speedup'] or 0:.2f}x | {row['peak_ratio'] or 0:.2f}x |"
        )
    return {"gpu": torch.cuda.get_device_name(), "preset": preset, "width": side, "rows": table}


def child_official_e2e(photos: Path, out: Path) -> None:
    """The official photos -> COLMAP path, as its README shows it (CPU: its forward autocasts to fp16)."""
    sys.path.insert(0, str(OFFICIAL_DIR))
    from depth_anything_3.api import DepthAnything3

    model = DepthAnything3.from_pretrained(str(CHECKPOINT)).eval()
    paths = [str(p) for p in sorted(photos.iterdir())]
    out.mkdir(parents=True)  # its COLMAP writer (pycolmap 4) needs the folder to exist
    model.inference(paths, export_dir=str(out), export_format="colmap", process_res=504)


def run_process(cmd: list[str], env: dict | None = None) -> dict:
    """Run a whole process; its wall time, peak RSS (from wait4) and the time of its first output line."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    first_line, lines = None, []
    for line in proc.stdout:
        if first_line is None and line.strip():
            first_line = time.perf_counter() - start
        lines.append(line)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{''.join(lines[-20:])}")
    return {
        "seconds": seconds,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "first_line_s": first_line,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "first_output": lines[0].strip() if lines else "",
    }


def child(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- driver
def ratio(ours: dict, official: dict, key: str) -> float:
    return ours[key] / official[key]


def bench_network(views: list[int], sizes: list[tuple[int, int]], rounds: int) -> list[dict]:
    rows = []
    for height, width in sizes:
        for n in views:
            best: dict[str, dict] = {}
            runs = 2 if n <= 4 else 1
            for r in range(rounds):
                for impl in ("ours", "official") if (r + n) % 2 == 0 else ("official", "ours"):
                    cmd = [sys.executable, __file__, "--child", impl, str(n), str(height), str(width), str(runs)]
                    res = child(cmd)
                    prev = best.get(impl)
                    best[impl] = (
                        res
                        if prev is None
                        else {
                            "seconds": min(prev["seconds"], res["seconds"]),
                            "cpu_seconds": min(prev["cpu_seconds"], res["cpu_seconds"]),
                            "peak_rss_mb": min(prev["peak_rss_mb"], res["peak_rss_mb"]),
                            "forward_mb": min(prev["forward_mb"], res["forward_mb"]),
                            "threads": res["threads"],
                        }
                    )
                    print(
                        f"  net {width}x{height} views={n:2d} round {r} {impl:8s} {res['seconds']:8.2f} s "
                        f"(cpu {res['cpu_seconds']:7.2f} s)  peak {res['peak_rss_mb']:7.0f} MB "
                        f"(+{res['forward_mb']:.0f} MB)",
                        flush=True,
                    )
            o, f = best["ours"], best["official"]
            row = {
                "size": f"{width}x{height}",
                "views": n,
                "ours": o,
                "official": f,
                "speedup": 1 / ratio(o, f, "seconds"),
                "cpu_speedup": 1 / ratio(o, f, "cpu_seconds"),
                "peak_rss_ratio": ratio(o, f, "peak_rss_mb"),
                "forward_mb_ratio": ratio(o, f, "forward_mb"),
            }
            rows.append(row)
            print(
                f"NET {row['size']} views={n:2d}: ours {o['seconds']:7.2f} s {o['peak_rss_mb']:6.0f} MB "
                f"(+{o['forward_mb']:.0f}) | official {f['seconds']:7.2f} s {f['peak_rss_mb']:6.0f} MB "
                f"(+{f['forward_mb']:.0f}) | {row['speedup']:.2f}x faster (cpu time {row['cpu_speedup']:.2f}x), "
                f"peak RSS {row['peak_rss_ratio']:.2f}x, forward memory {row['forward_mb_ratio']:.2f}x",
                flush=True,
            )
    return rows


def bench_attention(rows: list[dict]) -> list[dict]:
    """The attention floor of each network row: its SDPA calls alone, against the official forward time."""
    out = []
    for row in rows:
        width, height = (int(v) for v in row["size"].split("x"))
        res = child([sys.executable, __file__, "--child-attention", str(row["views"]), str(height), str(width)])
        official = row["official"]["seconds"]
        entry = {
            "size": row["size"],
            "views": row["views"],
            "seconds": res["seconds"],
            "share_of_official": res["seconds"] / official,
            "speedup_ceiling": official / res["seconds"],
        }
        out.append(entry)
        print(
            f"ATTN {row['size']} views={row['views']:2d}: attention alone {res['seconds']:7.2f} s = "
            f"{entry['share_of_official']:.0%} of the official forward: no float32 forward on PyTorch's attention "
            f"kernel can be more than {entry['speedup_ceiling']:.2f}x faster",
            flush=True,
        )
    return out


def bench_end_to_end(views: list[int], rounds: int, work: Path) -> list[dict]:
    rows = []
    tool = Path(sys.executable).with_name("da3-process-data")
    for n in views:
        photos = ensure_photos(n)
        best: dict[str, dict] = {}
        for r in range(rounds):
            for impl in ("ours", "official") if r % 2 == 0 else ("official", "ours"):
                out = work / f"{impl}_{n}_{r}"
                if impl == "ours":
                    cmd = [
                        str(tool),
                        "images",
                        "--data",
                        str(photos),
                        "--output-dir",
                        str(out),
                        "--model",
                        str(CHECKPOINT),
                        "--device",
                        "cpu",
                    ]
                else:
                    cmd = [sys.executable, __file__, "--child-official-e2e", str(photos), str(out)]
                res = run_process(cmd)
                shutil.rmtree(out, ignore_errors=True)
                prev = best.get(impl)
                best[impl] = res if prev is None or res["seconds"] < prev["seconds"] else prev
                print(
                    f"  e2e views={n:2d} round {r} {impl:8s} {res['seconds']:8.2f} s  peak "
                    f"{res['peak_rss_mb']:7.0f} MB  first line {res['first_line_s']:.2f} s",
                    flush=True,
                )
        o, f = best["ours"], best["official"]
        row = {
            "views": n,
            "ours": o,
            "official": f,
            "speedup": 1 / ratio(o, f, "seconds"),
            "peak_rss_ratio": ratio(o, f, "peak_rss_mb"),
        }
        rows.append(row)
        print(
            f"E2E views={n:2d}: ours {o['seconds']:7.2f} s {o['peak_rss_mb']:6.0f} MB | official "
            f"{f['seconds']:7.2f} s {f['peak_rss_mb']:6.0f} MB | {row['speedup']:.2f}x faster, "
            f"peak RSS {row['peak_rss_ratio']:.2f}x",
            flush=True,
        )
    return rows


def bench_startup(rounds: int, work: Path) -> dict:
    tool = Path(sys.executable).with_name("da3-process-data")
    helps = [run_process([str(tool), "--help"])["seconds"] for _ in range(rounds)]
    photos = ensure_photos(8)
    firsts = []
    for r in range(rounds):
        res = run_process(
            [
                str(tool),
                "images",
                "--data",
                str(photos),
                "--output-dir",
                str(work / f"startup_{r}"),
                "--model",
                str(CHECKPOINT),
                "--device",
                "cpu",
                "--max-views-per-chunk",
                "4",
            ]
        )
        shutil.rmtree(work / f"startup_{r}", ignore_errors=True)
        firsts.append(res["first_line_s"])
        print(f"  start-up round {r}: first line after {res['first_line_s']:.2f} s: {res['first_output']!r}")
    out = {"help_s": min(helps), "first_progress_line_s": min(firsts)}
    print(f"START-UP: --help {out['help_s']:.2f} s, first progress line {out['first_progress_line_s']:.2f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--sizes", nargs="+", default=["504x378", "378x280"], help="WIDTHxHEIGHT")
    parser.add_argument("--e2e-views", type=int, nargs="*", default=[8, 32])
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per measurement")
    parser.add_argument("--skip", nargs="*", default=[], choices=["network", "attention", "e2e", "startup"])
    parser.add_argument("--gpu", action="store_true", help="the CUDA table (random weights) instead of the CPU runs")
    parser.add_argument("--gpu-preset", default="da3nested-giant-large")
    parser.add_argument("--gpu-views", type=int, nargs="+", default=[1, 10, 50, 100, 200])
    parser.add_argument("--gpu-width", type=int, default=504)
    parser.add_argument("--official-dir", type=Path, help="an installed official package (no pip install)")
    parser.add_argument("--stage-official", type=Path, help="copy the official network modules there and exit")
    parser.add_argument("--child-gpu", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--child-official-e2e", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-attention", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global OFFICIAL_DIR
    OFFICIAL_DIR = args.official_dir or OFFICIAL_DIR
    if args.stage_official:
        stage_official(args.stage_official)
        return
    if args.child_gpu:
        impl, preset, device, side, *views = args.child_gpu
        print(json.dumps(child_gpu(impl, preset, list(map(int, views)), int(side), device)))
        return
    if args.child:
        impl, *numbers = args.child
        print(json.dumps(child_network(impl, *map(int, numbers))))
        return
    if args.child_attention:
        print(json.dumps(child_attention(*args.child_attention)))
        return
    if args.child_official_e2e:
        child_official_e2e(*map(Path, args.child_official_e2e))
        return

    import torch

    if args.gpu:
        if not args.official_dir:
            ensure_official()
        print(json.dumps(bench_gpu(args.gpu_preset, args.gpu_views, args.gpu_width)))
        return
    ensure_official()
    ensure_checkpoint()
    sizes = [tuple(int(v) for v in s.split("x"))[::-1] for s in args.sizes]
    result = {
        "benchmark": "ours vs official depth-anything-3",
        "official": OFFICIAL_VERSION,
        "preset": PRESET,
        "weights": "parity-fixture recipe (untrained): timing and memory only",
        "device": "cpu",
        "cpu_threads": torch.get_num_threads(),
        "load_average_start": os.getloadavg(),
        "rounds": args.rounds,
    }
    with tempfile.TemporaryDirectory(prefix="bench_vs_official_") as tmp:
        if "network" not in args.skip:
            result["network"] = bench_network(args.views, sizes, args.rounds)
            if "attention" not in args.skip:
                result["attention"] = bench_attention(result["network"])
        if "e2e" not in args.skip and args.e2e_views:
            result["end_to_end"] = bench_end_to_end(args.e2e_views, args.rounds, Path(tmp))
        if "startup" not in args.skip:
            result["startup"] = bench_startup(args.rounds, Path(tmp))
    result["load_average_end"] = os.getloadavg()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
