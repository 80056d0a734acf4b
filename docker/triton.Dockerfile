# Triton with the jina-reranker-v3 model and llama.cpp built for CUDA. Build from the repository root:
#   DOCKER_BUILDKIT=1 docker build -f docker/triton.Dockerfile -t jina-reranker-v3-triton .
# Behind a TLS-inspecting proxy: --secret id=pip_cert,src=/path/to/ca-bundle.pem (docker/triton-cpu.Dockerfile).
# Model files are never baked in: mount them at /models (see docker/compose.yaml).

# Triton 24.12 is Ubuntu 24.04 with Python 3.12 and CUDA 12.6.3 (its release notes); the builder must use
# the same CUDA and Ubuntu, so that the wheel's Python tag and its libcudart/libcublas match the runtime's.
ARG TRITON_RELEASE=24.12
ARG CUDA_VERSION=12.6.3
ARG UBUNTU_VERSION=24.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS builder
# Same version as the Makefile's LLAMA_CPP_PYTHON_VERSION (tests/test_docker.py checks it).
ARG LLAMA_CPP_PYTHON_VERSION=0.3.36
# Ampere (80, 86), Ada (89), Hopper (90). Blackwell (100, 120) needs a CUDA 12.8+ release pair.
ARG CUDA_ARCHITECTURES="80;86;89;90"
# Compilers and Python headers from the distribution (pip brings CMake and Ninja); the CUDA toolkit is pinned
# by the image tag.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential python3-dev python3-venv patch \
    && rm -rf /var/lib/apt/lists/*
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY stack/__init__.py stack/build_llama_wheel.sh stack/cpu_features.py stack/cpu_dispatch.py stack/gpu_features.py stack/
COPY stack/patches/ stack/patches/
# The recipe of `make install` and of the CPU image (stack/build_llama_wheel.sh), with this project's patches:
# LLAMA_DISPATCH=1 builds the CPU backend as runtime-dispatch variants (AVX2, AVX-512 VNNI, AVX-512 BF16) and,
# from stack/gpu_features.py, CUDA for CUDA_ARCHITECTURES (no GPU needed to build) linked with
# --exclude-libs,ALL (without it a CUDA 13 build crashed at model load on an H200). The engine loads the CUDA
# and CPU modules at start-up (rerank_engine/cpu_backends.py). Also:
#   GGML_CUDA_NO_VMM=ON: libggml-cuda needs only libcudart and libcublas (both in the Triton image), not
#     libcuda, which only the NVIDIA runtime mounts. Compute buffers then use llama.cpp's plain CUDA pool.
# A build without CUDA flags (no nvcc found) stops here rather than shipping a CPU-only wheel.
RUN --mount=type=cache,id=jina-reranker-llama-cuda,target=/cache \
    --mount=type=secret,id=pip_cert \
    if [ -f /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && cuda_flags="$(python3 -m stack.gpu_features cmake-args --architectures "${CUDA_ARCHITECTURES}")" \
    && [[ "$cuda_flags" == *-DGGML_CUDA=ON* ]] \
    && python3 -m venv /opt/build \
    && PYTHON=/opt/build/bin/python LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION} LLAMA_DISPATCH=1 \
        LLAMA_CMAKE_ARGS="$cuda_flags -DGGML_CUDA_NO_VMM=ON" LLAMA_BUILD_ONLY=1 CACHE_DIR=/cache \
        stack/build_llama_wheel.sh | tee /tmp/build.log \
    && mkdir /wheels && cp "$(tail -n 1 /tmp/build.log)" /wheels/

FROM nvcr.io/nvidia/tritonserver:${TRITON_RELEASE}-py3
# The Python backend runs the image's own python3, so the packages go into its system site-packages.
COPY model_repository/requirements.txt /tmp/requirements.txt
# One resolver run, so that llama-cpp-python's numpy requirement honours numpy<2. The import check fails the
# build if the wheel does not fit this Python or a CUDA library it links is missing.
RUN --mount=type=bind,from=builder,source=/wheels,target=/tmp/wheels \
    --mount=type=secret,id=pip_cert \
    if [ -f /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -m pip install --no-cache-dir --break-system-packages \
        /tmp/wheels/llama_cpp_python-*.whl -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt \
    && python3 -c "import llama_cpp, numpy, safetensors; assert int(numpy.__version__.split('.')[0]) < 2" \
    && useradd --system --uid 10001 --no-create-home reranker \
    && mkdir /models \
    && chown 10001 /models

COPY model_repository/jina_reranker_v3/ /opt/reranker/model_repository/jina_reranker_v3/
COPY --chmod=0755 docker/triton-entrypoint.sh /usr/local/bin/triton-entrypoint.sh
COPY stack/stub_watchdog.py /opt/reranker/stub_watchdog.py

ENV MODEL_REPOSITORY=/opt/reranker/model_repository
# Empty: the GPU config (config.pbtxt). "cpu": configs/cpu.pbtxt.
ENV TRITON_MODEL_CONFIG=""
VOLUME /models
USER 10001
# HTTP, gRPC, metrics.
EXPOSE 8000 8001 8002
# Ready means the model is loaded and warmed up; with the Q8_0 weights on a GPU that takes seconds.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
# NVIDIA's entrypoint first (driver checks, CUDA forward compatibility), then ours; arguments go to tritonserver.
ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh", "/usr/local/bin/triton-entrypoint.sh"]
CMD []
