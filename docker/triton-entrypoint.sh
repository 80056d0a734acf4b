#!/bin/sh
# Starts tritonserver on the image's model repository, with the stub watchdog beside it; arguments are passed
# on to tritonserver. TRITON_MODEL_CONFIG names a config in the model's configs/ folder ("cpu":
# configs/cpu.pbtxt); empty or unset, Triton reads the GPU config, config.pbtxt.
#
# Triton's Python backend does not restart a backend process that died and keeps reporting READY, so the
# model runs under explicit model control and stub_watchdog.py reloads it when that happens.
set -eu

http_port="${TRITON_HTTP_PORT:-8000}"
set -- --model-repository="${MODEL_REPOSITORY:?}" --http-port="$http_port" \
    --grpc-port="${TRITON_GRPC_PORT:-8001}" --metrics-port="${TRITON_METRICS_PORT:-8002}" \
    --model-control-mode=explicit --load-model=jina_reranker_v3 "$@"
if [ -n "${TRITON_MODEL_CONFIG:-}" ]; then
    set -- "$@" --model-config-name="$TRITON_MODEL_CONFIG"
fi

tritonserver "$@" &
triton=$!
trap 'kill -TERM "$triton" 2>/dev/null || true' TERM INT
python3 "${STUB_WATCHDOG:-/opt/reranker/stub_watchdog.py}" --pid "$triton" --url "127.0.0.1:$http_port" \
    --model jina_reranker_v3 &
watchdog=$!
# wait returns early when a trapped signal arrives; keep waiting until tritonserver itself has exited.
while :; do
    status=0
    wait "$triton" || status=$?
    kill -0 "$triton" 2>/dev/null || break
done
kill "$watchdog" 2>/dev/null || true
exit "$status"
