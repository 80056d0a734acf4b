#!/bin/sh
# Starts tritonserver on the image's model repository, with the stub watchdog beside it; arguments are passed
# on to tritonserver. TRITON_MODEL_CONFIG names a config in the model's configs/ folder ("cpu":
# configs/cpu.pbtxt); empty or unset, Triton reads the GPU config, config.pbtxt.
#
# Triton's Python backend does not replace a backend process that died and keeps reporting READY, so
# stub_watchdog.py stops tritonserver when that happens; this script then exits, and the container's restart
# policy (compose: restart: unless-stopped; Kubernetes: the Pod's) starts a fresh one.
set -eu

http_port="${TRITON_HTTP_PORT:-8000}"
set -- --model-repository="${MODEL_REPOSITORY:?}" --http-port="$http_port" \
    --grpc-port="${TRITON_GRPC_PORT:-8001}" --metrics-port="${TRITON_METRICS_PORT:-8002}" "$@"
if [ -n "${TRITON_MODEL_CONFIG:-}" ]; then
    set -- "$@" --model-config-name="$TRITON_MODEL_CONFIG"
fi

tritonserver "$@" &
triton=$!
trap 'kill -TERM "$triton" 2>/dev/null || true' TERM INT
# When the watchdog itself ends while tritonserver runs (anything but "tritonserver is gone", 0, or "I stopped
# it", 3), nothing watches the backend processes any more: stop tritonserver, so that the container ends.
(
    status=0
    python3 "${STUB_WATCHDOG:-/opt/reranker/stub_watchdog.py}" --pid "$triton" --url "127.0.0.1:$http_port" \
        --model jina_reranker_v3 || status=$?
    if [ "$status" -ne 0 ] && [ "$status" -ne 3 ]; then
        echo "triton-entrypoint: the stub watchdog exited with status $status; stopping tritonserver" >&2
        kill -TERM "$triton" 2>/dev/null || true
    fi
    exit "$status"
) &
watchdog=$!
# wait returns early when a trapped signal arrives; keep waiting until tritonserver itself has exited.
while :; do
    status=0
    wait "$triton" || status=$?
    kill -0 "$triton" 2>/dev/null || break
done
# The watchdog ends by itself within a few seconds of tritonserver; status 3 means it stopped tritonserver,
# any other non-zero status that it died (and its subshell above stopped tritonserver).
watchdog_status=0
wait "$watchdog" || watchdog_status=$?
if [ "$watchdog_status" -eq 3 ]; then
    echo "triton-entrypoint: a Python-backend process died; exiting so that the container is restarted" >&2
    exit 1
fi
if [ "$watchdog_status" -ne 0 ]; then
    echo "triton-entrypoint: the stub watchdog died; exiting so that the container is restarted" >&2
    exit 1
fi
exit "$status"
