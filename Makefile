# Fresh-machine entry points; each target sets up its own virtual environment first.
#   make demo   - the built-in CPU demo (GRPO on the tiny world)
#   make test   - lint, the test suite, and the installed-wheel smoke test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra pip arguments for torch, e.g. the CPU wheel index from PyTorch's install page on a machine whose
# package index would otherwise hand out the (multi-GB) CUDA build.
TORCH_PIP_ARGS ?=

.PHONY: demo test lint wheel-smoke clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIP_ARGS) -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/blip3o-rl train demo

lint: $(VENV)/.installed
	$(BIN)/ruff check .

test: lint $(VENV)/.installed
	$(BIN)/python -m pytest
	$(MAKE) wheel-smoke

wheel-smoke: $(VENV)/.installed
	PYTHON=$(BIN)/python TORCH_PIP_ARGS="$(TORCH_PIP_ARGS)" bash scripts/wheel_smoke.sh

clean:
	rm -rf $(VENV) build dist *.egg-info
