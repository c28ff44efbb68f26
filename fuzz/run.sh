#!/usr/bin/env bash
# Builds the fuzzers (once; every module instrumented for coverage and checked by AddressSanitizer) and runs one.
#   fuzz/run.sh TARGET [SECONDS] [libFuzzer options...]     e.g. fuzz/run.sh FuzzSafetensors 600
#   fuzz/run.sh all [SECONDS]                               each target in turn, SECONDS each (default 60; not FuzzShardHDF5)
#   fuzz/run.sh regress                                     every kept input of fuzz/regressions/TARGET/ once
#   fuzz/run.sh list
# Corpus: fuzz/corpus/TARGET (grows; git ignores it), started from fuzz/seeds/TARGET where there is one. A crash writes fuzz/crashes/TARGET/crash-* and stops: fix it
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
  # seed inputs: fuzz/seeds/TARGET, and for the .bin / zip readers the repository's torch_bin fixtures
  local seeds=()
  [ -d "seeds/$t" ] && seeds+=("seeds/$t")
  case "$t" in FuzzZip|FuzzTorchBin) seeds+=("../Tests/PixelTensorTests/Fixtures/torch_bin") ;; esac
  # FuzzShard's fields need a hundred bytes or so from the start (libFuzzer otherwise grows inputs slowly)
  local extra=()
  [ "$t" = FuzzShard ] && extra+=(-max_len=1024 -len_control=0)
  ".build/release/$t" "corpus/$t" "${seeds[@]}" "${extra[@]}" -max_total_time="$seconds" -artifact_prefix="crashes/$t/" -print_final_stats=1 "$@" \
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
  # FuzzShardHDF5 feeds raw bytes to libhdf5, which crashes on some of them (fuzz/libhdf5-findings): by hand only
  for t in $targets; do [ "$t" = FuzzCommon ] || [ "$t" = FuzzShardHDF5 ] && continue; run_one "$t" "$@" || failed="$failed $t"; done
  [ -z "$failed" ] || { echo "crashes in:$failed (fuzz/crashes/)"; exit 1; }
else
  run_one "$what" "$@"
fi
