# Two commands set everything up on a fresh machine with python3 and make:
#   make demo   - venv, install, tiny model + sample dataset, train a LoRA, generate with and without it
#   make test   - venv with the test extras, then pytest
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
LORAPIPE := $(VENV)/bin/lorapipe
DEMO   ?= demo-out
# torch first and pinned: these machines carry a CPU wheel of this release, and installing it explicitly keeps
# pip from resolving a multi-GB CUDA build for diffusers' dependency on torch.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test lint install install-test system-test-deps bench gpu-wheels gpu-check clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# One resolver pass for torch and the package; --no-compile skips byte-compiling thousands of torch files
	# that are never imported (Python compiles what it imports on first use).
	$(PIP) install -q --no-compile "$(TORCH_SPEC)" -e .
	# The real CLIP BPE merges ship inside open-clip-torch; --no-deps keeps torchvision out.
	$(PIP) install -q --no-compile --no-deps "open-clip-torch>=2.20"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q --no-compile -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# Headless Chromium for the web-page test; best effort (needs apt and root, as on CI).
system-test-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	    echo "note: chromium/chromedriver not installed; the web-page test will be skipped"; }

demo: $(VENV)/.installed
	$(PY) examples/demo.py --out $(DEMO)

# Lint first: a finding fails in seconds instead of after the suite. Settings live in pyproject.toml [tool.ruff].
lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples

test: lint system-test-deps
	$(PY) -m pytest -q tests

CPU_BENCHES := dataset_check generate_vs_diffusers generate_lora_step server_overhead invocations train_speed \
	train_learning lora_save pipeline_overhead server_concurrency train_compile caption prepare server_runs eval
bench: $(VENV)/.installed-test
	@for b in $(CPU_BENCHES); do echo "== bench/$$b.py"; OMP_NUM_THREADS=1 $(PY) bench/$$b.py || exit 1; done

# GPU proof (bench/gpu/RESULTS.md). gpu-wheels, here (package index): the pure-Python wheels a bare CUDA machine with
# python3 + torch/transformers/peft lacks, pinned to this venv's versions, for CPython 3.12 on x86-64 Linux (the
# machine's own torch/transformers/peft stay; never torchvision: open-clip-torch is fetched --no-deps for its
# vocabulary). gpu-check, there: install from the tree + wheels and run every step (<= 8 min) into GPU_OUT.
GPU_WHEELS := bench/gpu/wheels
GPU_OUT ?= gpu-out
BITSANDBYTES_SPEC ?= bitsandbytes==0.50.2
GPU_PY_VERSION ?= 3.12
gpu-wheels: $(VENV)/.installed
	mkdir -p $(GPU_WHEELS)
	$(PIP) download -q --no-deps --only-binary=:all: --python-version $(GPU_PY_VERSION) --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d $(GPU_WHEELS) "$(BITSANDBYTES_SPEC)" \
	  $$($(PIP) list --format=freeze 2>/dev/null | grep -i -E '^(diffusers|open.clip.torch|importlib.metadata)==')
	@ls -la $(GPU_WHEELS)

gpu-check:
	bench/gpu/run.sh $(GPU_OUT)

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
