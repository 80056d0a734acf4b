# Triton on the CPU, lean: Debian's Python, the Triton server and Python backend from the nvidia-pytriton wheel
# (as `make serve` runs them, stack/triton_server.py), this project's engine and llama.cpp with its patches, built
# for runtime CPU dispatch (stack/build_llama_wheel.sh LLAMA_DISPATCH=1: the best of the AVX2, AVX-512 VNNI and
# AVX-512 BF16 variants is loaded at start-up). Build from the repository root:
#   DOCKER_BUILDKIT=1 docker build -f docker/triton-cpu.Dockerfile -t jina-reranker-v3-triton-cpu .
# Behind a TLS-inspecting proxy, give pip the proxy's CA bundle as a build secret (never stored in a layer):
#   ... build --secret id=pip_cert,src=/path/to/ca-bundle.pem ...
# Model files are never baked in: mount them at /models (docker/compose.yaml's triton-cpu service).

ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS python
# Debian's Python 3.11 (the stubs of nvidia-pytriton include one for it), libpython for the stub, OpenMP for ggml.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv libpython3.11 libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM python AS wheel
# Same version as the Makefile's LLAMA_CPP_PYTHON_VERSION (tests/test_docker.py checks it).
ARG LLAMA_CPP_PYTHON_VERSION=0.3.36
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends build-essential python3-dev patch cmake ninja-build \
    && rm -rf /var/lib/apt/lists/*
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY stack/__init__.py stack/build_llama_wheel.sh stack/cpu_features.py stack/cpu_dispatch.py stack/
COPY stack/patches/ stack/patches/
# The sdist and the built wheel are kept in a cache mount keyed as `make install` keys them (version, flags,
# patches): a rebuild with nothing changed compiles nothing.
RUN --mount=type=cache,id=jina-reranker-llama,target=/cache \
    --mount=type=secret,id=pip_cert \
    if [ -f /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -m venv /opt/build \
    && PYTHON=/opt/build/bin/python LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION} LLAMA_DISPATCH=1 \
        LLAMA_BUILD_ONLY=1 CACHE_DIR=/cache stack/build_llama_wheel.sh | tee /tmp/build.log \
    && mkdir /wheels && cp "$(tail -n 1 /tmp/build.log)" /wheels/

FROM python
# Same as tests/requirements.txt's pin (tests/test_docker.py checks it).
ARG PYTRITON_VERSION=0.7.0
ENV VIRTUAL_ENV=/opt/venv
ENV SITE=/opt/venv/lib/python3.11/site-packages
# The stub embeds the first python3 on PATH (the venv's); tritonserver and the stub need the wheel's libraries and
# libpython (stack/triton_server.py's server_environment).
ENV PATH=/opt/venv/bin:${SITE}/pytriton/tritonserver/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu:${SITE}/nvidia_pytriton.libs \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY model_repository/requirements.txt /tmp/requirements.txt
# One resolver run (numpy<2 holds for llama-cpp-python too); the Python backend and its 3.11 stub where
# tritonserver looks by default (/opt/tritonserver/backends); the import check fails the build if the wheel's
# libraries do not load here.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    --mount=type=cache,id=jina-reranker-pip,target=/root/.cache/pip \
    --mount=type=secret,id=pip_cert \
    if [ -f /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -m venv /opt/venv \
    && pip install "nvidia-pytriton==${PYTRITON_VERSION}" /tmp/wheels/llama_cpp_python-*.whl -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt \
    && mkdir -p /opt/tritonserver/backends/python \
    && cp "$SITE"/pytriton/tritonserver/backends/python/*.* "$SITE"/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub \
        /opt/tritonserver/backends/python/ \
    && rm -rf "$SITE"/pytriton/tritonserver/python_backend_stubs "$SITE"/pytriton/tritonserver/backends \
    && python3 -c "import llama_cpp, numpy; assert int(numpy.__version__.split('.')[0]) < 2" \
    && command -v tritonserver >/dev/null \
    && useradd --system --uid 10001 --no-create-home reranker \
    && mkdir /models \
    && chown 10001 /models

COPY model_repository/jina_reranker_v3/ /opt/reranker/model_repository/jina_reranker_v3/
COPY --chmod=0755 docker/triton-entrypoint.sh /usr/local/bin/triton-entrypoint.sh
COPY stack/stub_watchdog.py /opt/reranker/stub_watchdog.py

ENV MODEL_REPOSITORY=/opt/reranker/model_repository \
    TRITON_MODEL_CONFIG=cpu
VOLUME /models
USER 10001
# HTTP, gRPC, metrics.
EXPOSE 8000 8001 8002
# Ready means the model is loaded and warmed up: on 2 cores with the Q8_0 weights, under a minute.
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
ENTRYPOINT ["/usr/local/bin/triton-entrypoint.sh"]
CMD []
