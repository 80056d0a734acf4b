# syntax=docker/dockerfile:1
# Triton with the jina-reranker-v3 model and llama.cpp built for CUDA. Build from the repository root:
#   docker build -f docker/triton.Dockerfile -t jina-reranker-v3-triton .
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
    && apt-get install -y --no-install-recommends build-essential python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/*
# No GPU is needed to build: nothing links the driver library (GGML_CUDA_NO_VMM below).
#   GGML_NATIVE=OFF: a portable AVX2 build, not one for the build host's CPU.
#   GGML_CUDA_NO_VMM=ON: libggml-cuda needs only libcudart and libcublas (both in the Triton image), not
#     libcuda, which only the NVIDIA runtime mounts; so the image also loads on a host without a GPU (the CPU
#     profile). Compute buffers then use llama.cpp's plain CUDA pool instead of virtual memory.
#   LLAVA_BUILD=OFF: the multimodal library is never used.
#   --exclude-libs,ALL: symbols of static archives stay inside each library (stack/gpu_features.py's
#     CUDA_LINK_FLAGS: without it a CUDA 13 build crashed at model load on an H200).
# --no-binary and --no-cache-dir: always compiled here with these flags, never a cached or prebuilt wheel.
RUN python3 -m venv /opt/build \
    && CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES} -DGGML_NATIVE=OFF -DGGML_CUDA_NO_VMM=ON -DLLAVA_BUILD=OFF -DCMAKE_SHARED_LINKER_FLAGS=-Wl,--exclude-libs,ALL" \
       /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-binary llama-cpp-python \
       "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}" -w /wheels

FROM nvcr.io/nvidia/tritonserver:${TRITON_RELEASE}-py3
# The Python backend runs the image's own python3, so the packages go into its system site-packages.
COPY model_repository/requirements.txt /tmp/requirements.txt
# One resolver run, so that llama-cpp-python's numpy requirement honours numpy<2. The import check fails the
# build if the wheel does not fit this Python or a CUDA library it links is missing.
RUN --mount=type=bind,from=builder,source=/wheels,target=/tmp/wheels \
    python3 -m pip install --no-cache-dir --break-system-packages \
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
