#!/bin/sh
# Regenerates the README's and docs/first-hour.md's screenshots (docs/screenshots) from the
# main-window test, which draws the window offscreen on the demo model.
#
#     packaging/update-screenshots.sh [BUILD_DIR]
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build}
out=$build/test-output
QT_QPA_PLATFORM=offscreen ES_TEST_OUTPUT=$out EXPERTSCOPE_CLI=$build/bin/expertscope-cli \
    "$build/tests/test_mainwindow" opensTheDemoModel opensAnEmoeModel opensTheJetMoeDemo runSelectExportSaveReopen \
    runRunsWhatTheButtonSays emptyViewsSayWhatTheyNeed helpMenuExplainsAndShowsTheDocs importRoutingFromTheApp
mkdir -p "$here/docs/screenshots"
cp "$out"/window-*.png "$out"/first-hour-*.png "$here/docs/screenshots/"
cp "$out/mainwindow-demo.png" "$here/docs/screenshots/mainwindow.png"
echo "screenshots updated in docs/screenshots"
