#!/usr/bin/env bash
# Sorts a campaign's findings (build-fuzz/findings/TARGET/crash-*, timeout-*, oom-*) by where the
# sanitizer stopped: the first stack frame outside the sanitizer runtime names the library.
# Findings inside libhdf5 are the class the CLI and the app contain in a child process
# (openCheckedSession); any other is a bug of ours to fix and add to tests/fuzz/cases.py.
#   tests/fuzz/triage.sh [TARGET ...]
set -uo pipefail
cd "$(dirname "$0")/../.."
B=build-fuzz
for t in ${@:-safetensors config tokenizer session}; do
  for f in $B/findings/$t/crash-* $B/findings/$t/timeout-* $B/findings/$t/oom-*; do
    [ -e "$f" ] || continue
    out=$(ASAN_OPTIONS=detect_leaks=0:detect_odr_violation=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
          timeout 60 $B/bin/fuzz_$t -timeout=10 "$f" 2>&1)
    kind=$(grep -m1 -oE "ERROR: [A-Za-z]+: [A-Za-z-]+( after [0-9]+ seconds)?|runtime error: .*|out-of-memory" <<<"$out")
    # the first frame that is neither the sanitizer's nor libFuzzer's; a timeout's stack starts
    # in libFuzzer's alarm handler, entered through libc's signal trampoline
    frames=$(grep -E "^ +#[0-9]+ 0x" <<<"$out" | grep -vE "__interceptor|__asan|__ubsan|__sanitizer|libclang_rt|fuzzer::")
    [[ "$kind" == *timeout* ]] && frames=$(sed '0,/libc\.so/{/libc\.so/d}' <<<"$frames")
    frame=$(head -1 <<<"$frames")
    where=other
    grep -q "libhdf5" <<<"$frame" && where=libhdf5
    echo "$t $(basename "$f") [$where] ${kind:-no report on rerun}: $(sed -E 's/^ +#[0-9]+ 0x[0-9a-f]+ in //' <<<"$frame" | cut -c1-140)"
  done
done
