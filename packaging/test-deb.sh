#!/usr/bin/env bash
# The Debian package's test (CI runs it after the test suite; it needs root, or sudo, and a
# Debian 12 machine with the build's packages): builds build/expertscope_*.deb, checks its
# desktop file, AppStream metainfo and man pages, installs it with dpkg -i, runs the installed
# CLI on the installed demo from an empty directory with a temporary HOME (the man page's own
# examples) and the installed app offscreen for a few seconds, then purges the package and checks
# that no file of it is left behind. The package is purged on failure too.
#   packaging/test-deb.sh [BUILD_DIR (default build)]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
B=${1:-build}
SUDO=""
[ "$(id -u)" != 0 ] && SUDO=sudo
fail() { echo "test-deb: FAIL: $*" >&2; exit 1; }

if dpkg-query -W -f='${Status}' expertscope 2>/dev/null | grep -q "install ok installed"; then
  fail "an expertscope package is installed already; this test installs and purges its own"
fi
for p in desktop-file-utils appstream man-db; do
  dpkg-query -W -f='${Status}' $p 2>/dev/null | grep -q "install ok installed" ||
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $p; }
done

echo "== desktop file, metainfo, man pages"
desktop-file-validate packaging/org.expertscope.ExpertScope.desktop
appstreamcli validate --no-net packaging/org.expertscope.ExpertScope.metainfo.xml  # no network here
for m in packaging/expertscope-cli.1 packaging/expertscope.1; do
  w=$(man --warnings -l "$m" 2>&1 >/dev/null) || fail "man could not format $m"
  [ -z "$w" ] || fail "$m: $w"
done
# every command of the CLI's usage is in its man page
USAGE=$("$B/bin/expertscope-cli" --help) || fail "expertscope-cli --help failed"
COMMANDS=$(sed -n 's/^  expertscope-cli \([a-z-]*\).*/\1/p' <<<"$USAGE" | sort -u)
[ "$(wc -w <<<"$COMMANDS")" -ge 8 ] || fail "expertscope-cli --help lists too few commands: $COMMANDS"
for c in $COMMANDS; do
  pat=$(sed 's/-/\\\\-/g' <<<"$c")  # troff writes a minus as \-
  grep -q "^\.B expertscope-cli $pat\b" packaging/expertscope-cli.1 ||
    fail "expertscope-cli $c is not in packaging/expertscope-cli.1"
done

echo "== building the package"
rm -f "$B"/expertscope_*.deb
cmake --build "$B" --target package
DEB=$(ls "$B"/expertscope_*.deb)
VERSION=$("$B/bin/expertscope-cli" --version | awk '{print $2}')
[[ "$DEB" == *"expertscope_${VERSION}_"* ]] || fail "$DEB does not carry the version $VERSION"
grep -q "<release version=\"$VERSION\"" packaging/org.expertscope.ExpertScope.metainfo.xml ||
  fail "the metainfo has no release $VERSION"
dpkg-deb -I "$DEB"
DEPENDS=$(dpkg-deb -f "$DEB" Depends)
for lib in libqt6widgets6 libqt6svg6 libhdf5 libqcustomplot libonig5 libutf8proc qt6-qpa-plugins; do
  [[ "$DEPENDS" == *"$lib"* ]] || fail "Depends lacks $lib: $DEPENDS"
done
[[ "$DEPENDS" != *torch* ]] || fail "Depends names LibTorch, which the package carries: $DEPENDS"
CONTENTS=$(dpkg-deb -c "$DEB")
for f in ./usr/bin/expertscope ./usr/bin/expertscope-cli ./usr/bin/expertscope-verify \
         ./usr/lib/expertscope/libtorch_cpu.so ./usr/share/expertscope/demo/moe/config.json \
         ./usr/share/doc/expertscope/views.md ./usr/share/applications/org.expertscope.ExpertScope.desktop \
         ./usr/share/metainfo/org.expertscope.ExpertScope.metainfo.xml \
         ./usr/share/icons/hicolor/scalable/apps/org.expertscope.ExpertScope.svg \
         ./usr/share/icons/hicolor/48x48/apps/org.expertscope.ExpertScope.png \
         ./usr/share/man/man1/expertscope-cli.1.gz; do
  grep -q " $f\$" <<<"$CONTENTS" || fail "the package lacks $f"
done

echo "== installing"
W=$(mktemp -d)
cleanup() {
  rm -rf "$W"
  dpkg-query -W expertscope >/dev/null 2>&1 && $SUDO dpkg --purge expertscope >/dev/null 2>&1 || true
}
trap cleanup EXIT
$SUDO dpkg -i "$DEB"
FILES=$(dpkg -L expertscope)
# the CLI's man page as the package ships it (read from the package: a minimal system may keep
# no man pages on disk)
dpkg-deb --fsys-tarfile "$DEB" | tar -xO ./usr/share/man/man1/expertscope-cli.1.gz | zcat > "$W/expertscope-cli.1"

echo "== the installed CLI, from an empty directory, with a temporary HOME"
(
  cd "$W"
  export HOME="$W/home" QT_QPA_PLATFORM=offscreen
  mkdir -p "$HOME"
  unset EXPERTSCOPE_DEMO_DIR LD_LIBRARY_PATH
  [ "$(command -v expertscope-cli)" = /usr/bin/expertscope-cli ] || fail "expertscope-cli is not /usr/bin's"
  for exe in expertscope-cli expertscope expertscope-verify; do
    lib=$(ldd /usr/bin/$exe | awk '/libtorch_cpu.so/ {print $3}') || fail "ldd /usr/bin/$exe failed"
    [ "$(realpath "$lib")" = /usr/lib/expertscope/libtorch_cpu.so ] || fail "$exe: LibTorch from '$lib'"
  done
  for exe in expertscope-cli expertscope expertscope-verify; do
    ! ldd /usr/bin/$exe | grep -q "not found" || fail "$exe: unresolved libraries: $(ldd /usr/bin/$exe | grep 'not found')"
  done
  expertscope-cli --version | grep -qx "expertscope-cli $VERSION (LibTorch .*)" || fail "expertscope-cli --version"
  expertscope --version | grep -q "^expertscope $VERSION " || fail "expertscope --version"
  # the man page's examples, as the packaged page writes them (one .nf block; \e: a backslash,
  # \-: a minus; any other escape would need translating: refused)
  [ "$(sed -n '/^\.SH EXAMPLES/,/^\.SH/p' "$W/expertscope-cli.1" | grep -c '^\.nf')" = 1 ] ||
    fail "the man page's EXAMPLES should be one .nf block"
  awk '/^\.SH EXAMPLES/ {s = 1; next} s && /^\.nf/ {n = 1; next} n && /^\.fi/ {exit} n {print}' "$W/expertscope-cli.1" |
    sed -e 's/\\e$/\\/' -e 's/\\-/-/g' > examples.sh
  [ "$(grep -c '^expertscope-cli' examples.sh)" -ge 4 ] || fail "the man page's examples did not parse: $(cat examples.sh)"
  ! grep -q '\\.' examples.sh || fail "an escape left in the man page's examples: $(grep '\\.' examples.sh)"
  bash -euo pipefail examples.sh
  [ -s s.h5 ] && [ -s routing.png ] || fail "the examples wrote no session or image"
  expertscope-cli session s.h5 --verify >/dev/null
  cmp -s -n 8 <(printf '\x89PNG\r\n\x1a\n') routing.png || fail "routing.png is not a PNG"
  # the app, offscreen for a few seconds: it opens the demo and runs its prompts
  rc=0
  timeout 8 expertscope > app.log 2>&1 || rc=$?
  sed 's/^/  app: /' app.log | head -20
  [ "$rc" = 124 ] || fail "the installed app ended (exit $rc) before it was stopped: $(cat app.log)"
  ! grep -qi "error\|cannot\|not found" app.log || fail "the app reported: $(cat app.log)"
)

echo "== purging"
$SUDO dpkg --purge expertscope
trap - EXIT
left=()
while read -r f; do
  [ -z "$f" ] && continue
  if [ -L "$f" ] || [ -f "$f" ]; then left+=("$f"); fi
done <<<"$FILES"
for d in /usr/lib/expertscope /usr/share/expertscope /usr/share/doc/expertscope; do
  [ -e "$d" ] && left+=("$d")
done
[ ${#left[@]} -eq 0 ] || fail "left behind: ${left[*]}"
echo "test-deb: OK ($DEB, $(du -h "$DEB" | cut -f1))"
