#!/usr/bin/env bash
# The one-shot GPU check: build llama.cpp's CUDA libraries for this GPU, then check the engine's fidelity on it
# and measure it beside PyTorch (perf/gpu/gpu_check.py), writing perf/results/gpu-<gpu>.json.
#
#   perf/gpu/gpu_check.sh prepare   # where `make install` ran: the carried folder .cache/gpu-check/ (trimmed
#                               # llama.cpp source, pure-Python packages); see perf/gpu/gpu_check_prepare.py
#   perf/gpu/gpu_check.sh run       # on the GPU host: build, then measure (the two steps below); needs python3
#                               # with numpy, safetensors, torch, transformers, and CMake, ninja, nvcc; no network
#   perf/gpu/gpu_check.sh build     # the CUDA libraries into .cache/gpu-build/ (reused while flags and source stay)
#   perf/gpu/gpu_check.sh measure   # perf/gpu/gpu_check.py on them
#   perf/gpu/gpu_check.sh           # all three (a GPU host with the project installed: `make gpu-check`)
#
# Environment: PYTHON (default: .venv/bin/python where present, else python3); LLAMA_CUDA_ARCHITECTURES
# (default: the GPUs' compute capabilities, stack/gpu_features.py); GPU_CHECK_ARGS (more arguments for
# perf/gpu/gpu_check.py, e.g. "--lengths 1024"); GPU_CHECK_MEASURE_TIMEOUT_S (stop measuring then, keeping the
# steps done); OUT (a folder that also receives the results, the log and the build's record).
#
# Where one command may run 10 minutes at most (this project's H200, carrying .cache/gpu-check each time):
# `perf/gpu/gpu_check.sh build`, then at once, while the machine still holds the build,
# `GPU_CHECK_MEASURE_TIMEOUT_S=300 perf/gpu/gpu_check.sh measure`.
set -euo pipefail
cd "$(dirname "$0")/../.."

CARRY=.cache/gpu-check
WORK=.cache/gpu-build
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
step="${1:-all}"

failed() {
    tail -40 "$1" >&2
    if [ -n "${OUT:-}" ]; then cp "$1" "$OUT/"; fi
    exit 1
}

prepare() {
    "$PYTHON" -m perf.gpu.gpu_check_prepare --out "$CARRY"
}

build() {
    local src="$WORK/src/llama-src" cuda cpu args stamp
    cuda=$("$PYTHON" stack/gpu_features.py cmake-args)
    if [ -z "$cuda" ]; then
        "$PYTHON" stack/gpu_features.py describe >&2
        echo "error: no CUDA build here (an NVIDIA GPU and nvcc are both needed)" >&2
        exit 1
    fi
    # The CPU part without AMX: every layer runs on the GPU, and AMX would need this project's patch.
    cpu=$("$PYTHON" -c 'from stack import cpu_features as c; print(" ".join(c.cmake_args(c.cpu_flags(), False)))')
    args="-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF \
-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON -DCMAKE_INSTALL_RPATH_USE_LINK_PATH=ON $cpu $cuda"
    stamp="$WORK/build-$(printf '%s\n' "$args" | cat - "$CARRY/llama-src.tar.gz" | sha256sum | cut -c1-16).json"
    if [ -f "$stamp" ]; then
        echo "CUDA libraries already built with these flags ($stamp)"
    else
        echo "building ggml/llama.cpp with: $cuda"
        rm -rf "$WORK/src" "$WORK/build" "$WORK"/build-*.json && mkdir -p "$WORK/src"
        tar -xzf "$CARRY/llama-src.tar.gz" -C "$WORK/src"
        local started=$SECONDS
        # shellcheck disable=SC2086  # the flags are words
        cmake -S "$src/vendor/llama.cpp" -B "$WORK/build" -G Ninja $args '-DCMAKE_INSTALL_RPATH=$ORIGIN' \
            >"$WORK/cmake.log" 2>&1 || failed "$WORK/cmake.log"
        cmake --build "$WORK/build" --target llama -j "$(nproc)" >"$WORK/build.log" 2>&1 || failed "$WORK/build.log"
        local seconds=$((SECONDS - started))
        "$PYTHON" - "$stamp" "$seconds" "$cuda" "$args" <<'EOF'
import json, os, subprocess, sys
stamp, seconds, cuda, args = sys.argv[1:]
compiler = next(a.split("=", 1)[1] for a in cuda.split() if a.startswith("-DCMAKE_CUDA_COMPILER="))
version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
json.dump({"seconds": int(seconds), "jobs": os.cpu_count(), "cuda_flags": cuda, "cmake_args": args,
           "nvcc": version[-1] if version else None, "target": "llama (ggml, ggml-base, ggml-cpu, ggml-cuda)"},
          open(stamp, "w"), indent=1)
EOF
        echo "built in ${seconds} s"
    fi
    # The llama_cpp package of the same sdist, its lib/ holding these libraries: the engine loads
    # libggml-base.so from the package's lib/ too, so LLAMA_CPP_LIB_PATH alone would mix two builds.
    rm -rf "$WORK/site" && mkdir -p "$WORK/site"
    cp -r "$src/llama_cpp" "$WORK/site/llama_cpp"
    mkdir -p "$WORK/site/llama_cpp/lib"
    find "$WORK/build" -name 'lib*.so*' -exec cp -P {} "$WORK/site/llama_cpp/lib/" \;
    cp "$stamp" "$WORK/build.json"
    # The real Qwen2 vocabulary, for the stand-in model (models/generate_test_model.py looks here first).
    [ -f .cache/ggml-vocab-qwen2.gguf ] || cp "$src/vendor/llama.cpp/models/ggml-vocab-qwen2.gguf" .cache/
}

measure() {
    local log="$WORK/gpu_check.log" status=0 limit=()
    if [ ! -f "$WORK/build.json" ]; then
        echo "error: no CUDA build in $WORK; run perf/gpu/gpu_check.sh build first" >&2
        exit 1
    fi
    if [ -n "${GPU_CHECK_MEASURE_TIMEOUT_S:-}" ]; then limit=(timeout --signal=INT "$GPU_CHECK_MEASURE_TIMEOUT_S"); fi
    # The engine's folder and the repository too: a carried tree has no virtualenv, so no .pth file naming them.
    # shellcheck disable=SC2086  # GPU_CHECK_ARGS are words
    PYTHONPATH="$WORK/site:$CARRY/pydeps:$PWD/model_repository/jina_reranker_v3/1:$PWD${PYTHONPATH:+:$PYTHONPATH}" \
        PYTHONUNBUFFERED=1 \
        "${limit[@]}" "$PYTHON" -m perf.gpu.gpu_check --build-info "$WORK/build.json" --revision "$CARRY/revision.json" \
        ${GPU_CHECK_ARGS:-} 2>&1 | tee "$log" || status=$?
    if [ -n "${OUT:-}" ]; then
        cp "$log" "$WORK/build.json" "$OUT/" 2>/dev/null || true
        cp perf/results/gpu-*.json "$OUT/" 2>/dev/null || true
    fi
    return "$status"
}

case "$step" in
    prepare) prepare ;;
    build) build ;;
    measure) measure ;;
    run) build && measure ;;
    all) prepare && build && measure ;;
    *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
