# Two commands do all the set-up on a fresh machine:
#   make run    the main job (see README); `make run PORT=7861` serves the app on another port, until Ctrl-C
#   make test   the test suite
# Another Python or venv: `make test PYTHON=python3.10 VENV=.venv-3.10`. A machine without a GPU can take torch's
# CPU wheels instead of the CUDA ones: `make TORCH_INDEX=https://download.pytorch.org/whl/cpu run`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 7860
TORCH_INDEX ?=

.PHONY: run test bench gpu-check browser compiler

$(BIN)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || \
		{ echo "make: $(PYTHON) not found: install Python >= 3.10 (Debian: apt-get install python3 python3-venv)" >&2; exit 1; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || \
		{ echo "make: $(PYTHON) -m venv does not work: install Debian's python3-venv (apt-get install python3-venv)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install --quiet torch torchvision --index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

run: $(BIN)/.installed compiler
	$(BIN)/apg compare --model builtin --classes cat ship --scales 1 4 8 15 --seeds 0 1 --out grid.png
	$(BIN)/python app/app.py --port $(PORT)

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/bench_guidance.py

# The GPU check (benchmarks/gpu_check.py): one table; without CUDA one line and exit 0. `make gpu-check ARGS=--quick`.
gpu-check: $(BIN)/.installed compiler
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

# $(call apt_install,COMMAND,PACKAGE): install Debian's PACKAGE when COMMAND is missing and we are root.
apt_install = @command -v $(1) >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
	(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null)

# Headless Chromium for the browser test of the app (without root the test skips).
browser:
	$(call apt_install,chromium,chromium)

# A C compiler for apg's fused CPU kernel (without one apg warns and uses torch ops, and its tests skip).
compiler:
	$(call apt_install,cc,gcc)

test: $(BIN)/.installed browser compiler
	$(BIN)/python -m pytest
