#!/usr/bin/env bash
# The sanitizer check CI runs after the test suite: a headless build with AddressSanitizer and
# UBSan in build-asan/ (the setup script's own steps, so the same packages and .venv), then the
# tests that feed the readers bad input: the CLI's, the session's, the tokenizer's, the routing
# import's (engines' records) and the fuzz regression suite. A sanitizer report fails the test that triggered it (its own exit code).
# Built with clang (the main build is GCC's): so the code keeps building with both compilers, as the
# libFuzzer build (docs/fuzzing.md) needs clang.
set -euo pipefail
cd "$(dirname "$0")/.."
# (the compilers as cache variables: a build-asan/ configured with GCC before is configured again)
EXTRA_DEBS="clang-14 libclang-rt-14-dev libomp-14-dev" BUILD_DIR=build-asan HEADLESS=1 \
  CMAKE_ARGS="-DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 -DEXPERTSCOPE_ASAN=ON -DEXPERTSCOPE_TESTS=ON" \
  packaging/setup.sh
ctest --test-dir build-asan --output-on-failure -j"$(nproc)" -R '^(cli|session|tokenizers|fuzz_regression|import)$'
