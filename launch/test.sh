#!/usr/bin/env bash
# The test command: installs what is needed, builds, runs every test (XCTest in release mode, the MPI
# collectives under mpirun with 2 and 3 ranks, and the command-line checks). Exits non-zero on any failure.
set -euo pipefail
PIXELLM_BUILD_TESTS=1 source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$PIXELLM_ROOT"
status=0

echo "== unit, gradient and PyTorch-fixture tests (swift test -c release)"
swift test -c release -Xswiftc -enable-testing --skip-build 2>&1 | tee /tmp/pixellm-swift-test.log | grep -E "error|failed|Executed .* tests|passed after|failed after" || true
grep -qE "with 0 failures" /tmp/pixellm-swift-test.log && ! grep -qE "Test Suite 'All tests' failed|error:" /tmp/pixellm-swift-test.log || status=1

echo "== MPI collectives under mpirun"
bash launch/test-mpi.sh release || status=1

echo "== command line"
"$PIXELLM" doctor --strict --reps 2 || status=1
OPENBLAS_CORETYPE=Haswell "$PIXELLM" doctor --reps 1 | grep -q "blas core      Haswell   (requested Haswell, from user" \
  && echo "doctor respects a user-set OPENBLAS_CORETYPE" || { echo "FAILED: OPENBLAS_CORETYPE=Haswell was not respected"; status=1; }
"$PIXELLM" demo --steps 200 >/dev/null && echo "demo learns" || { echo "FAILED: demo"; status=1; }

if [ $status -eq 0 ]; then echo "pixellm tests: all passed"; else echo "pixellm tests: FAILED"; fi
exit $status
