#!/usr/bin/env bash
# Builds the fuzzers (once; every module instrumented for coverage and checked by AddressSanitizer) and runs one.
#   fuzz/run.sh TARGET [SECONDS] [libFuzzer options...]     e.g. fuzz/run.sh FuzzSafetensors 600
#   fuzz/run.sh all [SECONDS]                               each target in turn, SECONDS each (default 60)
#   fuzz/run.sh regress                                     every kept input of fuzz/regressions/TARGET/ once
#   fuzz/run.sh list
# Corpus: fuzz/corpus/TARGET (grows; git ignores it). A crash writes fuzz/crashes/TARGET/crash-* and stops: fix it
# and keep the input in fuzz/regressions/TARGET/ (run by `fuzz/run.sh regress`, which launch/test.sh runs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PIXELLM_SKIP_BUILD=1 source ../launch/setup.sh >/dev/null 2>&1 || true   # the Swift toolchain on PATH and the Debian packages (not the main build)
targets=$(grep -o '"Fuzz[A-Za-z]*"' Package.swift | tr -d '"' | grep -v FuzzCommon | sort -u | tr '\n' ' ')
what=${1:-list}; seconds=${2:-60}; shift $(( $# > 2 ? 2 : $# ))
if [ "$what" = list ]; then echo "$targets"; exit 0; fi
export LSAN_OPTIONS="suppressions=$PWD/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
# -sanitize on the command line reaches the dependency's targets too (--sanitize alone instruments only this package)
swift build -c release --sanitize=fuzzer --sanitize=address -Xswiftc -sanitize=fuzzer,address 2>&1 \
  | grep -E "error|Compiling|Build complete" | grep -v "^\[" || true
run_one() {
  local t=$1; shift
  [ -x ".build/release/$t" ] || { echo "no fuzzer $t (fuzz/run.sh list)" >&2; exit 2; }
  mkdir -p "corpus/$t" "crashes/$t"
  echo "== $t for ${seconds}s"
  local status=0
  ".build/release/$t" "corpus/$t" -max_total_time="$seconds" -artifact_prefix="crashes/$t/" -print_final_stats=1 "$@" \
    > "crashes/$t/last-run.log" 2>&1 || status=$?
  grep -E "DONE|stat::number_of_executed_units|stat::peak_rss|ERROR|SUMMARY|Test unit written" "crashes/$t/last-run.log" | tail -5 || true
  return ${status:-0}
}
if [ "$what" = regress ]; then
  for d in regressions/*/; do
    t=$(basename "$d")
    echo "== $t: $(ls "$d" | wc -l) kept input(s)"
    ".build/release/$t" "$d"* > "/tmp/pixellm-fuzz-regress-$t.log" 2>&1 || { tail -30 "/tmp/pixellm-fuzz-regress-$t.log"; exit 1; }
  done
  exit 0
fi
if [ "$what" = all ]; then
  failed=""
  for t in $targets; do [ "$t" = FuzzCommon ] && continue; run_one "$t" "$@" || failed="$failed $t"; done
  [ -z "$failed" ] || { echo "crashes in:$failed (fuzz/crashes/)"; exit 1; }
else
  run_one "$what" "$@"
fi
