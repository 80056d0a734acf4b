# syntax=docker/dockerfile:1
# The rerank API (Jina's, and the old service's POST /rerank) on port 80. Build from the repository root:
#   docker build -f docker/adapter.Dockerfile -t jina-reranker-v3-adapter .
# Settings come from the environment (adapter/settings.py); TRITON_URL names the Triton gRPC endpoint.

# The Python the CI tests the adapter with (the Makefile's PYTHON).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY adapter/requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt \
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
