# Set-up is two commands: `make serve` and `make test`. Everything installs into .venv.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python

LLAMA_CPP_PYTHON_VERSION := 0.3.36
# The default -march=native build uses AMX tile instructions that some virtual machines forbid
# (SIGILL at the first Q8_0 matmul), so the CPU build names its instruction sets explicitly.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON
LLAMA_KEY := $(shell printf '%s\n%s\n' '$(LLAMA_CPP_PYTHON_VERSION)' '$(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-16)
REQUIREMENTS := model_repository/requirements.txt adapter/requirements.txt stack/requirements.txt tests/requirements.txt

.PHONY: install test lint serve triton bench clean

install: $(VENV)/.deps-stamp $(VENV)/.llama-$(LLAMA_KEY)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.deps-stamp: $(PY) $(REQUIREMENTS)
	$(PY) -m pip install --quiet $(addprefix -r ,$(REQUIREMENTS))
	touch $@

# Keyed on version and flags: changing either rebuilds; nothing changed rebuilds nothing.
$(VENV)/.llama-$(LLAMA_KEY): stack/build_llama_wheel.sh | $(VENV)/.deps-stamp
	PYTHON=$(PY) LLAMA_CPP_PYTHON_VERSION=$(LLAMA_CPP_PYTHON_VERSION) LLAMA_CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' \
		stack/build_llama_wheel.sh
	rm -f $(VENV)/.llama-* && touch $@

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(PY) -m pytest

serve: install
	$(PY) -m stack.serve

triton: install
	$(PY) -m stack.triton_server

bench: install
	$(PY) -m perf.bench

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
