#!/usr/bin/env bash
# The project's GPU checks in one run on a bare CUDA machine that already has PyTorch (no network):
#   scripts/gpu_checks.sh OUTDIR
# Needs: wheels of tyro (+ docstring-parser, typeguard) and gsplat==1.4.0 in .whl/ (gsplat compiles its CUDA
# kernels on first import, a few minutes), the room sample in $DA3_SAMPLES and the parity fixtures under
# $DA3_SHARED/fixtures (a copy of ../shared carried along). Each step writes OUTDIR/<step>.log:
# CUDA benchmarks of the network and the predictor (bf16), then the CUDA tests (network parity on CUDA, the
# predictor's CUDA path, the pure-PyTorch rasterizer against gsplat).
set -uo pipefail
out=${1:?usage: scripts/gpu_checks.sh OUTDIR}
mkdir -p "$out"
# One arch list for the gsplat build and the tests: torch's JIT rebuilds everything when its flags change.
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl ||
  exit 1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } >"$out/machine.log" 2>&1

# gsplat's JIT build runs beside the benchmarks on 12 of the 16 cores.
(time MAX_JOBS=12 python3 -c "from gsplat.cuda._backend import _C; assert _C is not None") \
  >"$out/gsplat_build.log" 2>&1 &
build=$!

timeout 150 python3 scripts/bench_model.py --devices cuda --views 1 4 8 16 32 64 >"$out/bench_model.log" 2>&1
timeout 120 python3 scripts/bench_predict.py --devices cuda >"$out/bench_predict.log" 2>&1
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_model_parity.py tests/test_predictor.py \
  -k "cuda" >"$out/test_cuda.log" 2>&1
wait "$build"
echo "build exit $?" >>"$out/gsplat_build.log"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_rasterize.py tests/test_splat_init.py -k gsplat \
  >"$out/test_gsplat.log" 2>&1
echo "done"

# ---- issue 13 (perf): ours against the official depth-anything-3 0.1.1 on CUDA, bf16 autocast on both --------
# Random weights, da3nested-giant-large at 504 px, 1/10/50/100/200 views: time and the allocator's peak per side.
# Needs the official network modules in .whl/official, staged beforehand on a machine with the package index:
#   python scripts/bench_vs_official.py --stage-official .whl/official
if [ -d .whl/official ]; then
  timeout 420 python3 scripts/bench_vs_official.py --gpu --official-dir .whl/official \
    >"$out/bench_vs_official_gpu.log" 2>&1
  echo "bench_vs_official exit $?" >>"$out/bench_vs_official_gpu.log"
fi
