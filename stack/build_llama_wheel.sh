#!/usr/bin/env bash
# Build (once) and install the llama-cpp-python wheel for this CPU.
#
# pip caches wheels built from an sdist without keying them on CMAKE_ARGS, so a
# wheel built with the wrong flags would be silently reused. We keep our own
# wheel folder keyed on the version and the exact flags, and never let pip's
# cache take part in the build. The sdist is kept too: it carries the real
# Qwen2 BPE vocabulary that the test-model generator can use.
#
# LLAMA_PATCH, when set, names the patches applied to the sdist before building, space-separated, in order
# (stack/cpu_features.py patch); each must apply exactly or the build stops. All are part of the key.
#
# LLAMA_BUILD_ONLY=1 builds (or finds) the wheel and prints its path instead of installing it: the
# benchmark's second build, the same version without AMX (perf/builds/amx_bench.py).
set -euo pipefail

PYTHON="${PYTHON:?set PYTHON to the virtualenv interpreter}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:?}"
CMAKE_ARGS="${LLAMA_CMAKE_ARGS:?}"
read -r -a PATCH_FILES <<<"${LLAMA_PATCH:-}"
CACHE="${CACHE_DIR:-.cache}"

sdist="$CACHE/sdist/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$sdist" ]; then
    mkdir -p "$CACHE/sdist"
    "$PYTHON" -m pip download --no-cache-dir --no-deps --no-binary :all: \
        "llama-cpp-python==$VERSION" -d "$CACHE/sdist"
fi

key=$( { printf '%s\n%s\n' "$VERSION" "$CMAKE_ARGS"; for p in "${PATCH_FILES[@]}"; do cat "$p"; done; } \
      | sha256sum | cut -c1-16)
wheel_dir="$CACHE/wheels/llama-cpp-python-$VERSION-$key"
# One build per key at a time: a second build of the same key (two test runs at once) waits, then finds the wheel.
mkdir -p "$CACHE/wheels"
exec 9>"$wheel_dir.lock"
flock 9
if ! ls "$wheel_dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $VERSION (flags key $key); this takes several minutes"
    tmp="$wheel_dir.tmp"
    rm -rf "$tmp" && mkdir -p "$tmp"
    source="$sdist"
    if [ "${#PATCH_FILES[@]}" -gt 0 ]; then
        tar -xzf "$sdist" -C "$tmp"
        source="$tmp/llama_cpp_python-$VERSION"
        for p in "${PATCH_FILES[@]}"; do
            if ! patch -d "$source" -p1 --forward --fuzz=0 --batch --no-backup-if-mismatch <"$p"; then
                echo "error: $p does not apply to llama-cpp-python $VERSION; update the patch" >&2
                exit 1
            fi
        done
    fi
    CMAKE_ARGS="$CMAKE_ARGS" "$PYTHON" -m pip wheel --no-cache-dir --no-deps "$source" -w "$tmp"
    rm -rf "$tmp/llama_cpp_python-$VERSION"
    printf '%s\n%s\n' "$CMAKE_ARGS" "${PATCH_FILES[*]}" >"$tmp/BUILD_FLAGS"
    rm -rf "$wheel_dir" && mv "$tmp" "$wheel_dir"
fi

wheel=$(ls "$wheel_dir"/llama_cpp_python-*.whl)
if [ "${LLAMA_BUILD_ONLY:-0}" = 1 ]; then
    echo "$wheel"
    exit 0
fi
"$PYTHON" -m pip install --no-deps --force-reinstall --no-cache-dir "$wheel"
"$PYTHON" -m pip install --no-cache-dir "$wheel"
