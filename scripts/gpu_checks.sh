#!/usr/bin/env bash
# The project's GPU checks in one call on a bare CUDA machine with Python, PyTorch and nvcc but no network:
#   scripts/gpu_checks.sh OUTDIR [network] [train]          (both when none is named)
# Needs outputs/gpu/ from `make gpu-prepare` (run where there is network and bpy; carry the folder along):
# wheels/ (nerfstudio, gsplat, tyro and what they import that the GPU image lacks, for Python 3.12, installed
# without network or dependencies) and demo_data/ (the demo scene with its ground-truth geometry).
#   network: CUDA benchmarks of the network and the predictor (bf16) and the CUDA tests (network parity on CUDA,
#            the predictor's CUDA path); needs the parity fixtures under $DA3_SHARED/fixtures (a copy of ../shared).
#            They run while gsplat's kernels build.
#   train:   gsplat's kernels built and checked by `python -m da3_nerfstudio.gsplat_kernels` (what `make gpu`
#            runs), the PyTorch rasterizer against gsplat, then scripts/bench_gpu_train.py: da3-splat with gsplat
#            and with the PyTorch rasterizer, splatfacto from sparse points and from random Gaussians, 45 s of
#            training each. About 8 minutes on an H100 (the build about 2.5, the runs about 4.5).
# Each step writes OUTDIR/<step>.log (at most 8 files, as the device tool brings back).
set -uo pipefail
out=${1:?usage: scripts/gpu_checks.sh OUTDIR [network] [train]}
shift
steps=" ${*:-network train} "
mkdir -p "$out"
# One arch list for the gsplat build and the tests: torch's JIT rebuilds everything when its flags change.
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  outputs/gpu/wheels/*.whl || exit 1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  python3 -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__)"
  command -v nvcc && nvcc --version | tail -2; } >"$out/machine.log" 2>&1

# gsplat's JIT build (announced, then checked against the PyTorch rasterizer), beside the network steps if any.
jobs=$([[ $steps == *" network "* ]] && echo 12 || echo 16)
(time MAX_JOBS=$jobs timeout 300 python3 -m da3_nerfstudio.gsplat_kernels) >"$out/gsplat_kernels.log" 2>&1 &
build=$!

if [[ $steps == *" network "* ]]; then
  timeout 150 python3 scripts/bench_model.py --devices cuda --views 1 4 8 16 32 64 >"$out/bench_model.log" 2>&1
  timeout 120 python3 scripts/bench_predict.py --devices cuda >"$out/bench_predict.log" 2>&1
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_model_parity.py tests/test_predictor.py \
    -k "cuda" >"$out/test_cuda.log" 2>&1
fi
wait "$build"
echo "exit $?" >>"$out/gsplat_kernels.log"

if [[ $steps == *" train "* ]]; then
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_rasterize.py tests/test_splat_init.py \
    -k gsplat >"$out/test_gsplat.log" 2>&1
  timeout 360 python3 scripts/bench_gpu_train.py --data outputs/gpu/demo_data --workdir /tmp/bench_gpu_train \
    >"$out/bench_gpu_train.log" 2>&1
  tail -n 40 /tmp/bench_gpu_train/*.log >"$out/train_runs.log" 2>&1
fi
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
