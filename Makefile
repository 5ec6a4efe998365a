# Two entry points, both self-contained on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A second environment with Blender 5.x (bpy 5.x needs Python 3.13) for the add-on tests on new Blender.
B5 := .venv-blender5
B5STAMP := $(B5)/.installed
PY313 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13) $(shell command -v python3.13 2>/dev/null))

.PHONY: demo test lint format clean-venv

$(STAMP): pyproject.toml
	@# open3d (imported by nerfstudio for seed points) needs libusb from Debian.
	test -e /usr/lib/x86_64-linux-gnu/libusb-1.0.so.0 || (apt-get update -qq && apt-get install -y -qq libusb-1.0-0)
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

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean-venv:
	rm -rf $(VENV) $(B5)
