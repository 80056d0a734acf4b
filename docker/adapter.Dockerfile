# The rerank API (Jina's, and the old service's POST /rerank) on port 80. Build from the repository root:
#   DOCKER_BUILDKIT=1 docker build -f docker/adapter.Dockerfile -t jina-reranker-v3-adapter .
# Behind a TLS-inspecting proxy: --secret id=pip_cert,src=/path/to/ca-bundle.pem (docker/triton-cpu.Dockerfile).
# Settings come from the environment (adapter/settings.py); TRITON_URL names the Triton gRPC endpoint.

# The CPU Triton image's base and Python (Debian's 3.11, the Makefile's PYTHON).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY adapter/requirements.txt /tmp/requirements.txt
# hadolint ignore=DL3008
RUN --mount=type=cache,id=jina-reranker-pip,target=/root/.cache/pip \
    --mount=type=secret,id=pip_cert \
    apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && if [ -f /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -m venv /opt/venv \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt \
    && useradd --system --uid 10001 --no-create-home adapter
WORKDIR /app
COPY adapter/ /app/adapter/

# Port 80 like the old service. A non-root process may bind it because Docker starts containers with
# net.ipv4.ip_unprivileged_port_start=0; elsewhere (host networking, some Kubernetes runtimes) set ADAPTER_PORT.
ENV ADAPTER_HOST=0.0.0.0 \
    ADAPTER_PORT=80
USER 10001
EXPOSE 80
# Ready means Triton answers and the model is READY (else /ready is 503). The slim image has no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['ADAPTER_PORT'] + '/ready', timeout=4)"]
CMD ["python", "-m", "adapter"]
