#!/usr/bin/env bash
# perf_analyzer, from NVIDIA's Triton SDK container, against a RUNNING Triton that serves jina_reranker_v3:
# each workload in perf/workloads/ (the --input-data files perf/load/workloads.py writes), over HTTP and gRPC,
# with a concurrency sweep. One CSV per workload and protocol in perf/results/perf_analyzer/.
#
#   make serve                                   # or the compose stack (docker/), in another terminal
#   perf/load/perf_analyzer.sh                        # every workload, both protocols, concurrency 1..8
#   WORKLOADS=docs-20x400 PROTOCOLS=grpc CONCURRENCY=1:32:2 perf/load/perf_analyzer.sh
#
# Settings (environment):
#   TRITON_HOST (127.0.0.1), TRITON_HTTP_PORT (8000), TRITON_GRPC_PORT (8001): the server; the container
#     uses the host's network, so loopback-only ports are reachable
#   WORKLOADS ("short docs-20x400 long librechat-search"), PROTOCOLS ("http grpc")
#   CONCURRENCY (1:8:1): perf_analyzer's --concurrency-range start:end:step
#   WINDOW_REQUESTS (20): requests per measurement window (count_windows mode; a window also lasts >= 1 s).
#     perf_analyzer wants 3 windows within 20 % of each other per level. On a CPU server a docs-20x400
#     request takes a minute or more: use WINDOW_REQUESTS=2 CONCURRENCY=1:2 there, or perf/load/loadgen.py.
#   TRITON_RELEASE (24.12, as docker/triton.Dockerfile) or SDK_IMAGE: the SDK container to run
#
# Needs a Docker engine (perf_analyzer ships in the SDK container; PyPI's perf-analyzer is a placeholder).
# This project's build machines have none, so this script is not run there: `make bench` measures the same
# paths with perf/load/loadgen.py instead. perf_analyzer asks for every output the model declares, DOC_EMBEDDINGS
# included (n x 512 floats per request), where the adapter and perf/load/loadgen.py ask for SCORES and TOKENS only.
set -euo pipefail
cd "$(dirname "$0")/../.."

TRITON_HOST=${TRITON_HOST:-127.0.0.1}
TRITON_HTTP_PORT=${TRITON_HTTP_PORT:-8000}
TRITON_GRPC_PORT=${TRITON_GRPC_PORT:-8001}
WORKLOADS=${WORKLOADS:-short docs-20x400 long librechat-search}
PROTOCOLS=${PROTOCOLS:-http grpc}
CONCURRENCY=${CONCURRENCY:-1:8:1}
WINDOW_REQUESTS=${WINDOW_REQUESTS:-20}
SDK_IMAGE=${SDK_IMAGE:-nvcr.io/nvidia/tritonserver:${TRITON_RELEASE:-24.12}-py3-sdk}
MODEL=jina_reranker_v3
OUT=perf/results/perf_analyzer

if ! docker info >/dev/null 2>&1; then
    echo "perf_analyzer.sh: needs a running Docker engine to start ${SDK_IMAGE}; without one, use" \
         "python -m perf.load.loadgen (see perf/README.md)" >&2
    exit 2
fi
mkdir -p "${OUT}"
for workload in ${WORKLOADS}; do
    [[ -f perf/workloads/${workload}.json ]] || { echo "no perf/workloads/${workload}.json" >&2; exit 2; }
    for protocol in ${PROTOCOLS}; do
        case ${protocol} in
            http) port=${TRITON_HTTP_PORT} ;;
            grpc) port=${TRITON_GRPC_PORT} ;;
            *) echo "protocol must be http or grpc, not ${protocol}" >&2; exit 2 ;;
        esac
        echo "== ${workload} over ${protocol} (${TRITON_HOST}:${port}), concurrency ${CONCURRENCY}"
        # Each entry of the input file is one batch-1 request ([1, 1] query, [1, n] documents; the file gives
        # the shapes), sent round robin.
        docker run --rm --network host -v "${PWD}/perf:/perf" "${SDK_IMAGE}" \
            perf_analyzer -m "${MODEL}" -u "${TRITON_HOST}:${port}" -i "${protocol}" \
                --input-data "/perf/workloads/${workload}.json" \
                --concurrency-range "${CONCURRENCY}" \
                --measurement-mode count_windows --measurement-request-count "${WINDOW_REQUESTS}" \
                --stability-percentage 20 --max-trials 6 \
                -f "/perf/results/perf_analyzer/${workload}-${protocol}.csv"
    done
done
echo "CSV reports in ${OUT}/"
