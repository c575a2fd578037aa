#!/usr/bin/env bash
# The GPU check: the one command a session runs when a GPU machine is lent (issue 22).
#
#   tests/gpu/run.sh         on the GPU machine, from anywhere: builds core + CLI headless (no Qt,
#                            Release) against the CUDA LibTorch of python3's torch, runs the device
#                            parity tests (bf16 on CUDA against transformers on CUDA, every family),
#                            the static analyses' pass on CUDA against the host kernels, and the
#                            benchmarks on CUDA, and prints a short report last (ES_GPU_STEPS picks
#                            steps: parity, static, bench or one bench_NAME).
#   tests/gpu/run.sh --cpu   the same steps on the CPU, on a tiny case, with the build already in
#                            $BUILD (default build/): CI runs this so that the script keeps working.
#
# Logs and the report go to $OUT when set (the device tool brings that folder back), else to
# build-gpu/report. Every step has a time limit inside $ES_GPU_DEADLINE seconds (default 540), so
# that a slow step leaves the report and the logs of the others.
#
# What the GPU machine lacks travels in .gpu/ (ignored by git; packaging/gpu-deps.sh fetches it):
#   .gpu/debs/*.deb           Debian 12 HDF5, nlohmann-json, oniguruma, utf8proc, pkgconf: unpacked
#                             into a prefix under /tmp, never into /
#   .gpu/debs-fallback/*.deb  libcurl4 and its libraries (libhdf5 needs libcurl.so.4): each library
#                             is used only where the machine has none of that name
#   .gpu/whl/*.whl            the project's pinned transformers, installed into a folder under /tmp
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
MODE=gpu
case "${1:-}" in
    "") ;;
    --cpu) MODE=cpu ;;
    *)
        echo "usage: tests/gpu/run.sh [--cpu]" >&2
        exit 2
        ;;
esac
PY=${PYTHON:-python3}
[ "$MODE" = cpu ] && [ -x "$ROOT/.venv/bin/python" ] && PY=${PYTHON:-$ROOT/.venv/bin/python}
REPORT=${OUT:-$ROOT/build-gpu/report}
# which of the checks after the build run: parity, static (the static analyses' pass on the device
# against the host kernels), bench (bench_forward, bench_dynamic, bench_hybrid, bench_static)
STEPS=${ES_GPU_STEPS:-parity,static,bench}
has() { [[ ",$STEPS," == *",$1,"* ]]; }
wants() { has bench || has "$1"; }  # "bench": all three benchmarks
DEADLINE=${ES_GPU_DEADLINE:-540}
mkdir -p "$REPORT"
SUMMARY=$REPORT/summary.txt
: >"$SUMMARY"
FAILED=0

say() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME LIMIT CMD...: runs CMD with its output in $REPORT/NAME.log, within LIMIT seconds and
# the overall deadline; one line of the report per step
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - SECONDS - 5))
    [ "$limit" -gt "$left" ] && limit=$left
    if [ "$limit" -lt 10 ]; then
        say "$(printf '%-16s %-12s' "$name" "not run (deadline)")"
        FAILED=1
        return 1
    fi
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$REPORT/$name.log" 2>&1
    local rc=$?
    local st=ok
    if [ $rc = 124 ] || [ $rc = 137 ]; then st="TIMEOUT(${limit}s)"; elif [ $rc != 0 ]; then st="FAIL($rc)"; fi
    say "$(printf '%-16s %-12s %5ds' "$name" "$st" $((SECONDS - t0)))"
    if [ $rc != 0 ]; then
        FAILED=1
        tail -n 40 "$REPORT/$name.log" | sed "s/^/    $name| /"
    fi
    return $rc
}

say "== ExpertScope GPU check ($MODE mode), $(date -u '+%Y-%m-%d %H:%M UTC')"
if [ "$MODE" = gpu ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /' |
        tee -a "$SUMMARY"
fi

# -- dependencies the machine lacks (GPU mode) ---------------------------------------------------
if [ "$MODE" = gpu ]; then
    PREFIX=/tmp/es-gpu-prefix
    rm -rf "$PREFIX" && mkdir -p "$PREFIX/fallback"
    for f in .gpu/debs/*.deb; do [ -e "$f" ] && dpkg-deb -x "$f" "$PREFIX"; done
    if [ -d .gpu/debs-fallback ]; then
        mkdir -p "$PREFIX/curl"
        for f in .gpu/debs-fallback/*.deb; do [ -e "$f" ] && dpkg-deb -x "$f" "$PREFIX/curl"; done
        # a library of the fallback set serves only where the machine has none of its name
        have=$(ldconfig -p | awk 'NR > 1 {print $1}')
        for lib in "$PREFIX"/curl/usr/lib/x86_64-linux-gnu/*.so.* "$PREFIX"/curl/lib/x86_64-linux-gnu/*.so.*; do
            [ -e "$lib" ] || continue
            name=$(basename "$lib")
            grep -qxF "$name" <<<"$have" || ln -sf "$lib" "$PREFIX/fallback/$name"
        done
        echo "fallback libraries used: $(ls "$PREFIX/fallback" | tr '\n' ' ')" >>"$REPORT/deps.log"
    fi
    MULTI=$PREFIX/usr/lib/x86_64-linux-gnu
    rm -f "$PREFIX"/usr/bin/h5*  # Debian's compiler wrappers name /usr paths: CMake searches the prefix
    # the .pc files name /usr (prefix=/usr, libdir=/usr/lib/..., -I/usr/include, -L/usr/lib): point
    # them at the prefix
    sed -i -e "s|=/usr|=$PREFIX/usr|g" -e "s| -I/usr| -I$PREFIX/usr|g" -e "s| -L/usr| -L$PREFIX/usr|g" \
        "$MULTI"/pkgconfig/*.pc "$PREFIX"/usr/share/pkgconfig/*.pc 2>/dev/null
    export PKG_CONFIG_PATH=$MULTI/pkgconfig:$PREFIX/usr/share/pkgconfig
    export LD_LIBRARY_PATH=$MULTI:$PREFIX/fallback${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    command -v pkg-config >/dev/null || export PATH=$PATH:$PREFIX/usr/bin
    command -v nvcc >/dev/null || export PATH=$PATH:/usr/local/cuda/bin
    if ls .gpu/whl/*.whl >/dev/null 2>&1; then
        step wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/es-gpu-site .gpu/whl/*.whl && export PYTHONPATH=/tmp/es-gpu-site${PYTHONPATH:+:$PYTHONPATH}
    fi
fi
# the oracles import, and in GPU mode torch sees the GPU (else every device test would skip)
step python 120 "$PY" -c "
import sys, torch, transformers, h5py
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device'
print(f'python3: torch {torch.__version__}, transformers {transformers.__version__}, {gpu}')
sys.exit(1 if '$MODE' == 'gpu' and not torch.cuda.is_available() else 0)" &&
    tee -a "$SUMMARY" <"$REPORT/python.log"

# -- build: core + CLI headless against python3's LibTorch (GPU mode) -----------------------------
if [ "$MODE" = gpu ]; then
    BUILD=${BUILD:-$ROOT/build-gpu}
    TORCH_PREFIX=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
    GEN=()
    command -v ninja >/dev/null && GEN=(-G Ninja)
    # no -Werror: another compiler's new warnings are reported, not fatal, on a machine we visit once
    step configure 150 cmake -S . -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DEXPERTSCOPE_HEADLESS=ON -DEXPERTSCOPE_WERROR=OFF \
        -DEXPERTSCOPE_PYTHON="$(command -v "$PY")" -DHDF5_ROOT="$MULTI/hdf5/serial" \
        -Dnlohmann_json_DIR="$PREFIX/usr/share/cmake/nlohmann_json" || { say "FAILED: configure"; exit 1; }
    step build 330 cmake --build "$BUILD" -j"$(nproc)" --target expertscope-cli expertscope-verify bench_forward \
        bench_analyses || { say "FAILED: build"; exit 1; }
    grep -c "warning:" "$REPORT/build.log" | sed 's/^/compiler warnings: /' | tee -a "$SUMMARY"
    DEV=cuda
else
    BUILD=${BUILD:-$ROOT/build}
    [ -x "$BUILD/bin/expertscope-cli" ] || { say "FAILED: no $BUILD/bin/expertscope-cli (packaging/setup.sh builds it)"; exit 1; }
    DEV=cpu
fi
say "cli: $BUILD/bin/expertscope-cli"

# -- device parity: bf16 on the device against transformers on the device -------------------------
# CI=true: a missing oracle fails instead of skipping (tests/conftest.py)
export EXPERTSCOPE_CLI=$BUILD/bin/expertscope-cli EXPERTSCOPE_BUILD_DIR=$BUILD EXPERTSCOPE_TEST_DEVICE=$DEV \
    HF_HUB_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1 OMP_NUM_THREADS=2 CI=true
XDIST=()
"$PY" -c 'import xdist' 2>/dev/null && XDIST=(-n "$(($(nproc) < 8 ? $(nproc) : 8))")
SELECT="device_bfloat16"
# CPU mode: two families, one with its own reference
[ "$MODE" = cpu ] && SELECT="device_bfloat16 and (mixtral_gqa or test_deepseek_moe)"
# tests NAME LIMIT LABEL PYTEST_ARGS...: a pytest step; a run that skipped a test (no GPU seen, say)
# or passed none is a failure here
tests() {
    local name=$1 limit=$2 label=$3
    shift 3
    step "$name" "$limit" "$PY" -m pytest -q -p no:cacheprovider --rootdir=tests "${XDIST[@]}" -rs "$@"
    local last
    last=$(tail -n 1 "$REPORT/$name.log" 2>/dev/null)
    if [[ "$last" == *" passed"* && "$last" != *skipped* ]]; then
        say "$label: $last"
    else
        say "$label: FAILED, tests skipped or none passed: $last"
        FAILED=1
    fi
}
has parity && tests parity 240 parity tests/parity -k "$SELECT"
# -- the static analyses on the device: the pass over the weights (S1, S2, S6, S7's products) on it,
# every layout the tests have (bf16, x @ W, FP8 block scales, MXFP4 and DeepSeek-V4's FP4 decoded
# there), against the host kernels
has static && tests static 150 "static on $DEV" tests/analysis/test_analyses.py tests/parity/test_gpt_oss.py \
    tests/parity/test_deepseek_v4.py -k "static_on_device"

# -- benchmarks on the device ---------------------------------------------------------------------
if [ "$MODE" = gpu ]; then
    FORWARD=(--device cuda --tokens 2048 --reps 5 --threads 8 --profile /tmp/es-gpu-profile)
    DYNAMIC=(--device cuda --prompts 8 --length 512)
    HYBRID=(--device cuda --tokens 512,4096 --reps 3 --threads 8)
    STATIC=(--device cuda --shape qwen3-30b-a3b)
    LIMITS=(180 90 90 120)
else  # the mid-size model alone, one short prompt
    FORWARD=(--skip-mixtral --skip-prompts --tokens 64 --reps 1 --threads 2)
    DYNAMIC=(--device cpu --prompts 1 --length 64)
    HYBRID=(--device cpu --tokens 64,128 --reps 1 --threads 2)
    STATIC=()
    LIMITS=(300 120 120 0)
fi
if wants bench_forward; then
    step bench_forward "${LIMITS[0]}" "$PY" tests/bench/run_bench.py --build "$BUILD" "${FORWARD[@]}" &&
        grep -E "^\[|HF transformers|ours|prompts|HF batched|HF one|span|  (kernel|gpu_memcpy|cuda_runtime):" \
            "$REPORT/bench_forward.log" | tee -a "$SUMMARY"
fi
if wants bench_dynamic; then
    step bench_dynamic "${LIMITS[1]}" "$PY" tests/bench/bench_analyses.py --build "$BUILD" --skip-static \
        "${DYNAMIC[@]}" && grep "^dynamic" "$REPORT/bench_dynamic.log" | tee -a "$SUMMARY"
fi
if wants bench_hybrid; then
    step bench_hybrid "${LIMITS[2]}" "$PY" tests/bench/bench_hybrid.py --build "$BUILD" "${HYBRID[@]}" &&
        grep -E "^\[(hybrid|linear)\]|tokens" "$REPORT/bench_hybrid.log" | tee -a "$SUMMARY"
fi

# Qwen3-30B-A3B's layer dimensions (2 layers, bf16): the GEMM floor on the GPU, the static sets
# with their pass there (GPU mode only: on the CPU this is minutes, tests/bench's to run)
if [ "$MODE" = gpu ] && wants bench_static; then
    step bench_static "${LIMITS[3]}" "$PY" tests/bench/bench_analyses.py --build "$BUILD" --skip-dynamic \
        "${STATIC[@]}" && grep -E "^static|^  " "$REPORT/bench_static.log" | tee -a "$SUMMARY"
fi

say "== $([ $FAILED = 0 ] && echo "all steps passed" || echo "SOME STEPS FAILED") in ${SECONDS}s; logs in $REPORT"
exit $FAILED
