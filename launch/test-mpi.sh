#!/usr/bin/env bash
# Runs the PixelDistributed XCTest suite under mpirun with 2 and 3 ranks, every rank checking its own results,
# then checks that failures surface: a failed assertion on one rank, abort(message:) and a failing MPI call
# must each make mpirun exit non-zero (and quickly: no rank may be left hanging).
#
# Usage: launch/test-mpi.sh [debug|release|<dir containing pixellmPackageTests.xctest>]
#   debug / release mean $SCRATCH/<config>, with SCRATCH defaulting to .build (e.g. SCRATCH=.build-mpi).
#   Build first: swift build --build-tests [--scratch-path $SCRATCH]
#   (release: add -c release -Xswiftc -enable-testing; the tests use @testable import to shrink the MPI chunk)
# Environment: TIMEOUT (seconds per mpirun, default 120), MPIRUN (default mpirun).
set -u

cd "$(dirname "$0")/.."
arg="${1:-debug}"
case "$arg" in
debug | release) dir="${SCRATCH:-.build}/$arg" ;;
*) dir="$arg" ;;
esac
bundle="$dir/pixellmPackageTests.xctest"
if [ ! -x "$bundle" ]; then
    hint="swift build --build-tests${SCRATCH:+ --scratch-path $SCRATCH}"
    [ "$arg" = release ] && hint="$hint -c release -Xswiftc -enable-testing"
    echo "test-mpi: no test bundle at $bundle; build it with: $hint" >&2
    exit 2
fi
MPIRUN="${MPIRUN:-mpirun}"
TIMEOUT="${TIMEOUT:-120}"
# Root needs --allow-run-as-root; one BLAS thread per rank (ranks x threads <= cores).
common=(--allow-run-as-root -x OPENBLAS_NUM_THREADS=1 -x OMP_NUM_THREADS=1)

# corelibs XCTest filters by Module.Class[/test], comma-separated; there is no module-level filter.
filter=$("$bundle" --list-tests | grep '^PixelDistributedTests\.' | cut -d/ -f1 | sort -u | paste -sd, -)
if [ -z "$filter" ]; then
    echo "test-mpi: no PixelDistributedTests in $bundle" >&2
    exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0

# run NAME NP EXTRA-MPIRUN-ARGS... -- TEST-FILTER: runs the bundle, one output directory per rank.
run() {
    local name=$1 np=$2
    shift 2
    local extra=()
    while [ "$1" != "--" ]; do extra+=("$1"); shift; done
    shift
    local out="$work/$name"
    local t0=$SECONDS
    timeout -k 10 "$TIMEOUT" "$MPIRUN" "${common[@]}" "${extra[@]}" -np "$np" --output-filename "$out" \
        "$bundle" "$1" >"$out.log" 2>&1
    rc=$?
    elapsed=$((SECONDS - t0))
}

# rank_file NAME RANK STREAM
rank_file() { find "$work/$1" -path "*rank.$2/$3" 2>/dev/null | head -1; }

for np in 2 3; do
    extra=()
    [ "$np" -gt "$(nproc)" ] && extra+=(--oversubscribe)
    run "np$np" "$np" "${extra[@]}" -- "$filter"
    echo "== np=$np: mpirun exit $rc (${elapsed}s)"
    ok=1
    [ "$rc" -eq 0 ] || ok=0
    for ((r = 0; r < np; r++)); do
        f=$(rank_file "np$np" $r stdout)
        summary=$([ -n "$f" ] && grep -A1 "^Test Suite 'Selected tests' \(passed\|failed\)" "$f" | tail -1 | sed 's/^[[:space:]]*//')
        verdict=$([ -n "$f" ] && grep -o "^Test Suite 'Selected tests' \(passed\|failed\)" "$f" | awk '{print $NF}')
        echo "   rank $r: ${verdict:-no summary} - ${summary:-}"
        [ "$verdict" = passed ] || ok=0
        [ -n "$f" ] && grep -E ": error: " "$f" | head -5 | sed "s/^/   rank $r: /"
    done
    if [ $ok -ne 1 ]; then
        status=1
        echo "   FAILED; last lines of the mpirun output:"
        tail -20 "$work/np$np.log" | sed 's/^/   | /'
    fi
done

# Failures must surface through mpirun's exit code, and aborts must not hang.
# expect_failure NAME ENV-ASSIGNMENT TEST PATTERN
expect_failure() {
    local name=$1 envset=$2 test=$3 pattern=$4
    run "$name" 2 -x "$envset" -- "PixelDistributedTests.EnvironmentTests/$test"
    local text
    text=$(cat "$work/$name.log"; find "$work/$name" -type f -exec cat {} + 2>/dev/null)
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] && grep -q "$pattern" <<<"$text"; then
        echo "== $name: mpirun exit $rc (${elapsed}s) as expected; saw \"$(grep -o "$pattern[^\"]*" <<<"$text" | head -1)\""
    else
        status=1
        echo "== $name: FAILED: mpirun exit $rc (${elapsed}s; 124/137 = timed out), expected non-zero with \"$pattern\""
        tail -20 "$work/$name.log" | sed 's/^/   | /'
    fi
}
expect_failure xctest-failure PIXEL_TEST_FAIL=1 testDeliberateFailure "deliberate failure on rank 1"
expect_failure abort-message PIXEL_TEST_ABORT=message testDeliberateAbort "rank 1/2\]: deliberate abort"
expect_failure abort-mpi-error PIXEL_TEST_ABORT=mpi testDeliberateAbort "MPI_Allreduce failed on rank 1: "

if [ $status -eq 0 ]; then echo "test-mpi: all passed"; else echo "test-mpi: FAILURES"; fi
exit $status
