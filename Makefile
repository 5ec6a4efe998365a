# Two entry points, both self-contained on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A second environment with Blender 5.x (bpy 5.x needs Python 3.13) for the add-on tests on new Blender.
B5 := .venv-blender5
B5STAMP := $(B5)/.installed
PY313 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13) $(shell command -v python3.13 2>/dev/null))

.PHONY: demo test lint format clean-venv gpu gpu-prepare

$(STAMP): pyproject.toml
	@# open3d (imported by nerfstudio for seed points) needs libusb from Debian.
	test -e /usr/lib/x86_64-linux-gnu/libusb-1.0.so.0 || (apt-get update -qq && apt-get install -y -qq libusb-1.0-0)
	@# ns-render refuses to start without the ffmpeg program.
	command -v ffmpeg >/dev/null || (apt-get update -qq && apt-get install -y -qq ffmpeg)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,nerfstudio,cluster]'
	touch $(STAMP)

$(B5STAMP): pyproject.toml
	@if [ -n "$(PY313)" ]; then \
		$(PY313) -m venv $(B5) && $(B5)/bin/python -m pip install --quiet --upgrade pip && \
		$(B5)/bin/python -m pip install --quiet 'bpy==5.3.*' numpy pytest pytest-timeout plyfile pycolmap pillow \
			opencv-python-headless && touch $(B5STAMP); \
	else echo "python3.13 not found: the Blender 5.x add-on tests will be skipped"; fi

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

test: $(STAMP) $(B5STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

# On a CUDA machine: build gsplat's CUDA kernels once (a few minutes; needs nvcc) and check them against the
# PyTorch rasterizer, so that ns-train da3-splat starts with them instead of compiling on first use.
gpu: $(STAMP)
	$(BIN)/python -m da3_nerfstudio.gsplat_kernels

# What scripts/gpu_checks.sh needs on a GPU machine without network, in outputs/gpu/ (carry it along): wheels for
# its Python 3.12 of the packages the GPU image lacks (versions as tested here; fpsample 0.3.3, the newest
# with a cp312 wheel) and the demo scene's dataset (rendered here with bpy; ground-truth geometry).
GPU_WHEELS := appdirs==1.4.4 defusedxml==0.7.1 dill==0.4.1 docstring_parser==0.18.0 fpsample==0.3.3 gsplat==1.4.0 \
	msgspec==0.23.0 multiprocess==0.70.19 nerfacc==0.5.2 nerfstudio==1.1.5 pathos==0.3.5 plyfile==1.1.3 ppft==1.7.8 \
	pyquaternion==0.9.9 pytorch-msssim==1.0.0 rawpy==0.28.0 splines==0.3.0 tensorly==0.10.0 torch-fidelity==0.4.0 \
	typeguard==4.6.1 tyro==1.0.17 viser==0.2.7 websockets==17.4 zstandard==0.25.0 PySocks==1.7.1
gpu-prepare: $(STAMP)
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		--platform manylinux1_x86_64 -d outputs/gpu/wheels $(GPU_WHEELS)
	test -d outputs/gpu/demo_data || $(BIN)/python scripts/bench_gpu_train.py --prepare --data outputs/gpu/demo_data

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean-venv:
	rm -rf $(VENV) $(B5)
