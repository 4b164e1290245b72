# Fresh-machine entry points; each target sets up its own virtual environment first.
#   make demo   - the built-in CPU demo (GRPO on the tiny world)
#   make test   - lint (ruff, import layers, mypy), the test suite, and the installed-wheel smoke test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra pip arguments for torch, e.g. the CPU wheel index from PyTorch's install page on a machine whose
# package index would otherwise hand out the (multi-GB) CUDA build.
TORCH_PIP_ARGS ?=

# The package's own folders (the repository root is the package `blip3o_rl`).
PACKAGE_DIRS := configs policies rewards rl scripts $(wildcard tiny)

.PHONY: demo test lint typecheck wheel-smoke clean FORCE

# The dev install is a strict editable install: a tree of links under build/ that type checkers and IDEs
# follow (setuptools' default editable mode is an import hook they cannot read). A new or removed file
# needs a reinstall, so the install depends on the list of the package's files, rewritten only when it
# changes (editing a file changes nothing here).
$(VENV)/.installed: pyproject.toml constraints.txt $(VENV)/.sources
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIP_ARGS) -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]' --config-settings editable_mode=strict
	touch $@

$(VENV)/.sources: FORCE
	@mkdir -p $(VENV)
	@{ ls *.py py.typed; find $(PACKAGE_DIRS) -type f \( -name '*.py' -o -name '*.yaml' -o -name '*.jsonl' -o -name '*.txt' \); } | LC_ALL=C sort >$@.new
	@if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi

demo: $(VENV)/.installed
	$(BIN)/blip3o-rl train demo --overwrite  # a re-run moves the last one to runs/demo.old-<time>

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed
	$(BIN)/mypy

test: lint typecheck $(VENV)/.installed
	$(BIN)/python -m pytest
	$(MAKE) wheel-smoke

wheel-smoke: $(VENV)/.installed
	PYTHON=$(BIN)/python TORCH_PIP_ARGS="$(TORCH_PIP_ARGS)" bash scripts/wheel_smoke.sh

clean:
	rm -rf $(VENV) build dist *.egg-info
