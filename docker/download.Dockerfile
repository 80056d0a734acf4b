# syntax=docker/dockerfile:1
# One-shot: downloads jina-reranker-v3-Q8_0.gguf and projector.safetensors into /models (resumable), then
# exits. Used by the compose file's "download" service to fill the models volume.

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/tmp/huggingface
COPY stack/requirements.txt /tmp/requirements.txt
# /models belongs to the same uid as in the Triton image, so a fresh volume is writable here whichever
# container mounts it first.
RUN pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt \
    && useradd --system --uid 10001 --no-create-home reranker \
    && mkdir /models \
    && chown 10001 /models
WORKDIR /app
COPY stack/__init__.py stack/download.py stack/settings.py /app/stack/

VOLUME /models
USER 10001
CMD ["python", "-m", "stack.download", "--dir", "/models"]
