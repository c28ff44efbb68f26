#!/usr/bin/env bash
# The test command: installs what is needed, builds, runs every test (XCTest in release mode, the MPI
# collectives under mpirun with 2 and 3 ranks, and the command-line checks). Exits non-zero on any failure
# and ends with one line "tests: N passed, M failed".
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$PIXELLM_ROOT"
passed=0
failed=0
check() {  # check NAME COMMAND...: runs a check and counts it
  local name="$1"; shift
  if "$@"; then passed=$((passed + 1)); echo "ok: $name"; else failed=$((failed + 1)); echo "FAILED: $name"; fi
}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== unit, gradient and PyTorch-fixture tests (swift test -c release)"
set +e
swift test -c release -Xswiftc -enable-testing --skip-build >"$log" 2>&1
rc=$?
set -e
grep -E "error:|: error|failed \(|Executed [0-9]+ tests" "$log" | grep -v "^Test Suite" | tail -25 || true
failing=$(grep -E "^Test Case '.*' failed" "$log" | sed -E "s/^Test Case '-?\[?([^]' ]+)[] ]?([^']*)' failed.*/\1\2/" | sort -u || true)
if [ -n "$failing" ]; then echo "failing tests:"; echo "$failing" | sed 's/^/  /'; fi
summary=$(grep -E "^[[:space:]]*Executed [0-9]+ tests" "$log" | tail -1)
n=$(echo "$summary" | sed -nE 's/.*Executed ([0-9]+) tests.*/\1/p'); n=${n:-0}
s=$(echo "$summary" | sed -nE 's/.*with ([0-9]+) tests? skipped.*/\1/p'); s=${s:-0}
f=$(echo "$summary" | sed -nE 's/.* ([0-9]+) failures?.*/\1/p'); f=${f:-0}
if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi   # a crash or build failure counts
if [ "$n" -eq 0 ]; then echo "no XCTest ran"; f=$((f + 1)); fi
passed=$((passed + n - s - f)); failed=$((failed + f))

echo "== MPI collectives under mpirun (2 and 3 ranks, failure propagation)"
check "MPI collectives under mpirun -np 2 and -np 3" bash launch/test-mpi.sh release

echo "== command line"
check "doctor --strict: OpenBLAS runs a specific core" "$PIXELLM" doctor --strict --reps 2
check "doctor respects a user-set OPENBLAS_CORETYPE" bash -c \
  "OPENBLAS_CORETYPE=Haswell '$PIXELLM' doctor --reps 1 | grep -q 'blas core      Haswell   (requested Haswell, from user'"
check "doctor under mpirun -np 2 reports rank/size" bash -c \
  "mpirun $MPIRUN_FLAGS -np 2 '$PIXELLM' doctor --reps 1 | grep -q 'rank 0 of 2 (launched by mpirun)'"
check "tokenize: SEG tokens keep distinct ids, decode round-trips" bash -c \
  "'$PIXELLM' tokenize --tokenizer Tests/PixelTextTests/Fixtures/llava-sp --text 'It is [SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5].' | grep -q '1503, 1504, 1505, 1506, 1507, 1508' && \
   '$PIXELLM' tokenize --tokenizer Tests/PixelTextTests/Fixtures/llava-sp --decode --skip-special --text \"\$('$PIXELLM' tokenize --tokenizer Tests/PixelTextTests/Fixtures/llava-sp --text 'a red square')\" | grep -qx '\"a red square\"'"
prep_equal() {  # prepare under mpirun -np 2 writes the same shards and manifest as one rank
  local d; d=$(mktemp -d)
  "$PIXELLM" synth --out "$d/data" --train 12 --val 2 --test 2 --size 64 >/dev/null &&
  "$PIXELLM" prepare --dataset-dir "$d/data" --out "$d/one" --image-size 64 --shard-size 8 >/dev/null 2>&1 &&
  mpirun $MPIRUN_FLAGS -np 2 "$PIXELLM" prepare --dataset-dir "$d/data" --out "$d/two" --image-size 64 --shard-size 8 >/dev/null 2>&1 &&
  [ "$(ls "$d/one"/shard-*.h5 | wc -l)" -ge 4 ] &&
  for f in "$d/one"/shard-*.h5; do cmp -s "$f" "$d/two/$(basename "$f")" || { echo "differs: $f"; rm -rf "$d"; return 1; }; done &&
  diff <(sed "s#$d/one#X#" "$d/one/index.json") <(sed "s#$d/two#X#" "$d/two/index.json") >/dev/null
  local rc=$?; rm -rf "$d"; return $rc
}
check "prepare under mpirun -np 2 writes the same shards as one rank" prep_equal
check "demo: the autograd core learns" bash -c "'$PIXELLM' demo --steps 200 >/dev/null"

echo "== fuzzing (fuzz/: libFuzzer + AddressSanitizer; the first run builds the fuzz package)"
check "fuzz: the kept crash inputs no longer crash or leak" bash fuzz/run.sh regress
check "fuzz: every parser target 5 s without a crash" bash fuzz/run.sh all 5

echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
