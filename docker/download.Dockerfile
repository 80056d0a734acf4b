# One-shot: downloads a release's GGUF and projector.safetensors into /models (resumable), then exits. Used by
# the compose file's "download" service and the Kubernetes download job to fill the models volume.
# RERANKER_RELEASE picks the release (v3, the default, or v3.5; stack/download.py --release).
# Behind a TLS-inspecting proxy: --secret id=pip_cert,src=/path/to/ca-bundle.pem at build time, and the same bundle
# mounted at run time with REQUESTS_CA_BUNDLE pointing to it.

ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/tmp/huggingface \
    RERANKER_RELEASE=v3
COPY stack/requirements.txt /tmp/requirements.txt
# /models belongs to the same uid as in the Triton image, so a fresh volume is writable here whichever
# container mounts it first.
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
    && useradd --system --uid 10001 --no-create-home reranker \
    && mkdir /models \
    && chown 10001 /models
WORKDIR /app
COPY stack/__init__.py stack/download.py stack/settings.py /app/stack/

VOLUME /models
USER 10001
CMD ["python", "-m", "stack.download", "--dir", "/models"]
