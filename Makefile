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

.PHONY: demo test install install-test system-test-deps bench clean

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

test: $(VENV)/.installed-test system-test-deps
	$(PY) -m pytest -q tests

CPU_BENCHES := dataset_check generate_vs_diffusers generate_lora_step server_overhead invocations train_speed \
	train_learning lora_save pipeline_overhead server_concurrency train_compile caption prepare server_runs eval
bench: $(VENV)/.installed-test
	@for b in $(CPU_BENCHES); do echo "== bench/$$b.py"; OMP_NUM_THREADS=1 $(PY) bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
