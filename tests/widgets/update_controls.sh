#!/bin/sh
# Refreshes the control images of the render checks (tests/data/controls) from the current
# renderer. Run it by hand, after looking at the renders it prints: CI and the tests never
# write controls.
#
#     tests/widgets/update_controls.sh [BUILD_DIR]
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$here/build}
out=$build/test-output
QT_QPA_PLATFORM=offscreen ES_TEST_OUTPUT=$out EXPERTSCOPE_CLI=$build/bin/expertscope-cli \
    "$build/tests/test_figureview" renderChecksAgainstControlImages >/dev/null 2>&1 || true
ls "$out"/render/*.png >/dev/null
mkdir -p "$here/tests/data/controls"
cp "$out"/render/*.png "$here/tests/data/controls/"
echo "controls refreshed from $out/render:"
ls "$here/tests/data/controls"
