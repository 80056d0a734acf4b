# Set-up is two commands: `make serve` and `make test`. Everything installs into .venv.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python

LLAMA_CPP_PYTHON_VERSION := 0.3.36
# The default -march=native build uses AMX tile instructions that some virtual machines forbid
# (SIGILL at the first Q8_0 matmul), so the CPU build names its instruction sets explicitly, as this
# CPU has them. AMX only with LLAMA_AMX=1 (the repacked Q8_0 path ran faster on the Xeons measured;
# stack/cpu_features.py), where the kernel permits it, and then with our patch of ggml's AMX code.
# Where nvcc and an NVIDIA GPU are present, CUDA too, for the GPUs' compute capabilities
# (LLAMA_CUDA_ARCHITECTURES=90 or =none overrides them; stack/gpu_features.py). Part of the key below.
LLAMA_AMX ?= 0
LLAMA_CUDA_ARCHITECTURES ?=
CPU_FEATURES_OPTIONS := $(if $(filter 1,$(LLAMA_AMX)),--amx)
LLAMA_CMAKE_ARGS ?= $(strip $(shell $(PYTHON) stack/cpu_features.py cmake-args $(CPU_FEATURES_OPTIONS)) \
	$(shell $(PYTHON) stack/gpu_features.py cmake-args --architectures '$(LLAMA_CUDA_ARCHITECTURES)'))
# The patches to ggml, space-separated, applied in order: our x86 kernels for the repacked Q8_0 path and the
# flash-attention fix on every build, the AMX fix with AMX. Each must apply exactly; their text is part of the key.
LLAMA_PATCH ?= $(shell $(PYTHON) stack/cpu_features.py patch $(CPU_FEATURES_OPTIONS))
LLAMA_KEY := $(shell { printf '%s\n%s\n' '$(LLAMA_CPP_PYTHON_VERSION)' '$(LLAMA_CMAKE_ARGS)'; \
	$(if $(LLAMA_PATCH),cat $(LLAMA_PATCH);) } | sha256sum | cut -c1-16)
REQUIREMENTS := model_repository/requirements.txt adapter/requirements.txt stack/requirements.txt tests/requirements.txt \
	perf/requirements.txt
# The bench's PyTorch CPU peer only: torch and transformers, never installed by install or test.
PEER_REQUIREMENTS := perf/peers/requirements.txt
# The engine's folder and the repository root on the virtualenv's import path, as Triton and pytest's pythonpath
# put them (the benches import rerank_engine and triton_contract): a .pth file in its site-packages, written
# again only when they change (a moved checkout: the key is the paths).
IMPORT_PATHS := $(CURDIR)/model_repository/jina_reranker_v3/1 $(CURDIR)
IMPORT_PATHS_KEY := $(shell printf '%s\n' $(IMPORT_PATHS) | sha256sum | cut -c1-16)

.PHONY: install test lint serve triton bench bench-aiperf clean clean-cache import-paths

install: $(VENV)/.deps-stamp $(VENV)/.llama-$(LLAMA_KEY) $(VENV)/.checkov-stamp $(VENV)/.import-paths-$(IMPORT_PATHS_KEY)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

import-paths: $(VENV)/.import-paths-$(IMPORT_PATHS_KEY)

$(VENV)/.import-paths-$(IMPORT_PATHS_KEY): | $(PY)
	printf '%s\n' $(IMPORT_PATHS) > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/jina_reranker_v3_triton.pth"
	rm -f $(VENV)/.import-paths-* && touch $@

$(VENV)/.deps-stamp: $(PY) $(REQUIREMENTS)
	$(PY) -m pip install --quiet $(addprefix -r ,$(REQUIREMENTS))
	touch $@

# checkov, which lints the Kubernetes manifests in `make test`, in a virtualenv of its own: its pins would
# downgrade the project's packages.
CHECKOV_REQUIREMENTS := tests/checkov-requirements.txt
$(VENV)/.checkov-stamp: $(CHECKOV_REQUIREMENTS) | $(PY)
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/python -m pip install --quiet -r $(CHECKOV_REQUIREMENTS)
	touch $@

# Keyed on version and flags: changing either rebuilds; nothing changed rebuilds nothing. The wheel is built (or
# found under .cache/wheels) with nothing but the virtualenv's interpreter, beside the dependencies' install, and
# installed after it: llama-cpp-python's own numpy requirement must find the pinned numpy there.
LLAMA_WHEEL_ENV = PYTHON=$(PY) LLAMA_CPP_PYTHON_VERSION=$(LLAMA_CPP_PYTHON_VERSION) \
	LLAMA_CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' LLAMA_PATCH='$(LLAMA_PATCH)'
$(VENV)/.wheel-$(LLAMA_KEY): stack/build_llama_wheel.sh | $(PY)
	$(LLAMA_WHEEL_ENV) LLAMA_BUILD_ONLY=1 stack/build_llama_wheel.sh
	rm -f $(VENV)/.wheel-* && touch $@

$(VENV)/.llama-$(LLAMA_KEY): $(VENV)/.wheel-$(LLAMA_KEY) | $(VENV)/.deps-stamp
	$(LLAMA_WHEEL_ENV) stack/build_llama_wheel.sh
	rm -f $(VENV)/.llama-* && touch $@

lint: install
	$(VENV)/bin/ruff check .

# librechat-client: LibreChat's own reranker client (npm, pinned, cached under .cache/) for the tests that
# drive the stack through it. On a fresh clone the wheel build (CPU-bound, minutes) runs beside the dependencies',
# checkov's and LibreChat's installs (network-bound): four jobs, each one's output kept together.
#
# pytest in two passes: first every test but the timed ones, in PYTEST_WORKERS processes (pytest-xdist, a whole
# module per worker, so that a module's servers start once, handed out in the order tests/conftest.py collects them:
# the soak first); then the timed ones (wall-clock bounds: deadlines, budgets, fault timings), in one process with
# the CPU to themselves. Each pass fails on no tests (exit code 5).
# One worker more than CPUs: a third of the first pass's CPU time was idle with one per CPU, the workers waiting on
# servers (Triton's python backend sleeps a second per instance it stops). On 2 cores: 252 s with 2, 218 s with 3.
PYTEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
test:
	$(MAKE) --jobs=4 --output-sync=target install librechat-client browser
	$(MAKE) lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder -m 'not docker and not timed'
	$(PY) -m pytest -m 'timed and not docker'

serve: install
	$(PY) -m stack.serve

triton: install
	$(PY) -m stack.triton_server

$(VENV)/.peer-stamp: $(PEER_REQUIREMENTS) | $(VENV)/.deps-stamp
	$(PY) -m pip install --quiet -r $(PEER_REQUIREMENTS)
	touch $@

# BENCH=quick (default, under 5 minutes on 2 cores) or BENCH=full (every workload; hours on 2 cores).
BENCH ?= quick
# Each bench target then writes perf/README.md's figures from the results files (perf/report.py).
bench: install $(VENV)/.peer-stamp
	$(PY) -m perf.load.bench --mode $(BENCH)
	$(PY) -m perf.report

# On a host with an NVIDIA GPU and nvcc: llama.cpp's CUDA libraries for this GPU, the engine's fidelity on it, its
# speed beside PyTorch bf16 (perf/gpu/gpu_check.sh; results in perf/results/gpu-<gpu>.json).
.PHONY: gpu-check
gpu-check: install $(VENV)/.peer-stamp
	PYTHON=$(PY) perf/gpu/gpu_check.sh

# NVIDIA's AIPerf beside perf/load/loadgen.py (perf/aiperf/aiperf_bench.py), in its own virtualenv: its dependencies need
# numpy 2, the serving side numpy < 2. Installed here only, once per change of its requirements file.
AIPERF_VENV := .cache/aiperf-venv
AIPERF_REQUIREMENTS := perf/aiperf/requirements.txt
$(AIPERF_VENV)/.stamp: $(AIPERF_REQUIREMENTS)
	$(PYTHON) -m venv $(AIPERF_VENV)
	$(AIPERF_VENV)/bin/python -m pip install --quiet -r $(AIPERF_REQUIREMENTS)
	touch $@

# Starts Triton (CPU config) and the adapter on the stand-in, or benchmarks a running deployment:
# AIPERF_ADAPTER_URL=http://host:8080 [AIPERF_TRITON_URL=host:8000]. AIPERF_WORKLOADS: comma-separated.
AIPERF_WORKLOADS ?= short
AIPERF_CONCURRENCY ?= 1,5
bench-aiperf: install $(AIPERF_VENV)/.stamp
	$(PY) -m perf.aiperf.aiperf_bench --workloads $(AIPERF_WORKLOADS) --concurrency $(AIPERF_CONCURRENCY) \
		$(if $(AIPERF_ADAPTER_URL),--adapter-url $(AIPERF_ADAPTER_URL) \
		$(if $(AIPERF_TRITON_URL),--triton-url $(AIPERF_TRITON_URL),--targets adapter))
	$(PY) -m perf.report

# LibreChat's web-search load sent by LibreChat's own reranker client (npm @librechat/agents, pinned, installed
# under .cache/librechat-agents by librechat-client): 10 searches of 5 pages against a stack started as make
# serve does on the stand-in, or LIBRECHAT_URL=http://host:8080 (a running adapter).
.PHONY: bench-librechat librechat-client
librechat-client: $(VENV)/.deps-stamp
	$(PY) -m perf.load.librechat_bench --client-only

# Debian's Chromium for the /docs browser test (tests/test_docs_browser.py): nothing to do where it is on PATH;
# installed where missing, as root with apt-get; where that cannot be, one line says so and the test skips.
.PHONY: browser
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -q \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } || \
		echo "no chromium (installing it needs root and apt-get): tests/test_docs_browser.py will skip"

bench-librechat: librechat-client
	$(PY) -m perf.load.librechat_bench $(if $(LIBRECHAT_URL),--url $(LIBRECHAT_URL))
	$(PY) -m perf.report

# The images under a real Docker engine (tests/test_docker_live.py, the docker marker): built from a clean
# checkout of HEAD, run with the compose file's CPU profile on generated models, driven through their published
# ports; the CPU image's speed beside make serve's native build goes to perf/results/docker-cpu.json. Not part of
# make test (slow). Needs a running engine (it says how to start one) and docker-compose.
.PHONY: docker-test
docker-test: install librechat-client
	$(PY) -m pytest -m docker tests/test_docker_live.py
	$(PY) -m perf.report

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache

# The llama.cpp builds under .cache/ whose key no longer matches their own inputs (a patch edited since, another
# llama-cpp-python version, a virtualenv rebuilt or gone): wheels, their unpacked copies, the AMX-emulation and
# repacked-Q8_0 test builds, other versions' sdists. Keeps every build whose inputs are unchanged (the comparisons'
# and another checkout's too, where .cache is shared), builds in progress, models, virtualenvs, clients, logs
# (stack/build_cache.py). Opt-in, never run by install or test. CLEAN_CACHE_ARGS=--dry-run lists only.
clean-cache:
	$(PYTHON) -m stack.build_cache prune --version $(LLAMA_CPP_PYTHON_VERSION) $(CLEAN_CACHE_ARGS)
