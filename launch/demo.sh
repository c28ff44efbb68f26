#!/usr/bin/env bash
# The main job, for now: installs what is needed, builds, shows what the machine computes with
# (`pixellm doctor`), trains a tiny model with the autograd core (`pixellm demo`), and measures the
# project's matmul against raw OpenBLAS (`pixellm bench gemm`). The single-node smoke training run on
# the embedded synthetic dataset replaces this when it exists.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
"$PIXELLM" doctor
echo
"$PIXELLM" demo
echo
"$PIXELLM" bench gemm --only synth-small --min-seconds 0.1
echo
echo "== the same doctor under mpirun -np 2 (one BLAS thread per rank)"
mpirun $MPIRUN_FLAGS -np 2 "$PIXELLM" doctor --reps 2
