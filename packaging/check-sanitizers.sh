#!/usr/bin/env bash
# The sanitizer check CI runs after the test suite: a headless build with AddressSanitizer and
# UBSan in build-asan/ (the setup script's own steps, so the same packages and .venv), then the
# tests that feed the readers bad input: the CLI's, the session's, the tokenizer's, the routing
# import's (engines' records) and the fuzz regression suite. A sanitizer report fails the test that triggered it (its own exit code).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=build-asan HEADLESS=1 CMAKE_ARGS="-DEXPERTSCOPE_ASAN=ON -DEXPERTSCOPE_TESTS=ON" packaging/setup.sh
ctest --test-dir build-asan --output-on-failure -j"$(nproc)" -R '^(cli|session|tokenizers|fuzz_regression|import)$'
