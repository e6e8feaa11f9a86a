#!/usr/bin/env bash
# Build llama.cpp's CPU binaries (llama-bench, llama-simple, llama-server) as the CPU speed anchor for herd.
#
#     bash benchmarks/llama_cpp_setup.sh            # then: python benchmarks/llama_cpp.py --model HF_DIR
#
# The llama.cpp tree is the one vendored in the llama-cpp-python *source* package on PyPI
# (`pip download --no-binary :all: --no-deps llama-cpp-python`), so only the package registry is
# needed. It also carries convert_hf_to_gguf.py and gguf-py, which benchmarks/llama_cpp.py uses.
#
# Everything lives outside the repo, under $HERD_BENCH_CACHE/llama.cpp (default ~/.cache/herd-bench):
#     llama_cpp_python-<ver>.tar.gz       the sdist
#     llama_cpp_python-<ver>/vendor/llama.cpp   the source tree
#     build/bin/llama-bench, llama-simple, llama-server, llama-quantize, llama-perplexity, llama-tokenize
#     build/BUILD_INFO                          version, commit, flags and build time
#
# Release build, GGML_NATIVE=ON (-march=native), CPU backend only: no CUDA/Metal/Vulkan, no BLAS
# (ggml's own f32/bf16 kernels are what llama.cpp uses at batch 1 and BLAS only helps large
# prompt batches in f32; keep it off for a plain, reproducible anchor). Idempotent: does nothing
# when the binaries exist (FORCE=1 rebuilds).
#
# Environment:
#     HERD_BENCH_CACHE            cache root (default ~/.cache/herd-bench)
#     LLAMA_CPP_PYTHON_VERSION    sdist version (default 0.3.36, vendoring llama.cpp 0c1e570, the one
#                                 this was checked with; "latest": the newest on PyPI, or any sdist
#                                 already in the cache)
#     JOBS                        parallel compile jobs (default 2)
#     PYTHON                      python with pip (default: the repo's .venv, else python3)
#     FORCE=1                     rebuild even if the binaries exist

set -euo pipefail

CACHE="${HERD_BENCH_CACHE:-$HOME/.cache/herd-bench}/llama.cpp"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
JOBS="${JOBS:-2}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
BUILD="$CACHE/build"
BIN="$BUILD/bin"
TARGETS=(llama-bench llama-simple llama-server llama-quantize llama-perplexity llama-tokenize)

have_all() {
    local t
    for t in "${TARGETS[@]}"; do [[ -x "$BIN/$t" ]] || return 1; done
}

if have_all && [[ "${FORCE:-0}" != 1 ]]; then
    echo "llama.cpp already built (FORCE=1 to rebuild):"
    [[ -f "$BUILD/BUILD_INFO" ]] && sed 's/^/    /' "$BUILD/BUILD_INFO"
    echo "binaries: $BIN"
    exit 0
fi

mkdir -p "$CACHE"
cd "$CACHE"

# 1. The sdist (skipped when already downloaded).
if [[ "$VERSION" == latest ]]; then
    SPEC=llama-cpp-python
    SDIST="$(ls -t llama_cpp_python-*.tar.gz 2>/dev/null | head -1 || true)"
else
    SPEC="llama-cpp-python==$VERSION"
    SDIST="llama_cpp_python-$VERSION.tar.gz"
    [[ -f "$SDIST" ]] || SDIST=""
fi
if [[ -z "$SDIST" ]]; then
    echo "downloading $SPEC (sdist) into $CACHE"
    "$PYTHON" -m pip download --no-binary :all: --no-deps --dest "$CACHE" "$SPEC"
    SDIST="$(ls -t llama_cpp_python-*.tar.gz | head -1)"
fi
SRC_ROOT="$CACHE/${SDIST%.tar.gz}"
SRC="$SRC_ROOT/vendor/llama.cpp"

# 2. Unpack.
if [[ ! -f "$SRC/CMakeLists.txt" ]]; then
    echo "unpacking $SDIST"
    tar -xzf "$SDIST" -C "$CACHE"
fi
[[ -f "$SRC/convert_hf_to_gguf.py" && -d "$SRC/gguf-py" ]] || { echo "no llama.cpp tree in $SDIST" >&2; exit 1; }
ln -sfn "$SRC" "$CACHE/src"  # stable path for benchmarks/llama_cpp.py

# 3. Configure and build only what we need.
START=$(date +%s)
cmake -S "$SRC" -B "$BUILD" -G "Unix Makefiles" \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DGGML_CPU=ON -DGGML_BLAS=OFF \
    -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_OPENCL=OFF -DGGML_RPC=OFF \
    -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF
cmake --build "$BUILD" --config Release -j "$JOBS" --target "${TARGETS[@]}"
ELAPSED=$(( $(date +%s) - START ))

COMMIT="$(git -C "$SRC" rev-parse --short HEAD 2>/dev/null || echo unknown)"
{
    echo "sdist:      $SDIST"
    echo "llama.cpp:  $SRC (commit $COMMIT)"
    echo "flags:      Release, GGML_NATIVE=ON, CPU only, BLAS off, static"
    echo "build time: ${ELAPSED}s with -j$JOBS on $(nproc) cores ($(date -u +%Y-%m-%dT%H:%MZ))"
} > "$BUILD/BUILD_INFO"
sed 's/^/    /' "$BUILD/BUILD_INFO"
have_all || { echo "build finished but binaries are missing in $BIN" >&2; exit 1; }
echo "binaries: $BIN ($(cd "$BIN" && echo "${TARGETS[*]}"))"
