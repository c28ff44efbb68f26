#!/usr/bin/env bash
# The main job, for now: installs what is needed, builds, shows what the machine computes with
# (`pixellm doctor`), runs the data pipeline on the embedded synthetic dataset (`synth` -> `prepare` under
# mpirun -np 2 -> `inspect`), trains a tiny model with the autograd core (`pixellm demo`), and measures the
# project's matmul against raw OpenBLAS (`pixellm bench gemm`). The single-node smoke training run on the
# synthetic dataset replaces this when it exists.
# Output goes to $PIXELLM_DEMO_DIR (default /tmp/pixellm-demo).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
demo="${PIXELLM_DEMO_DIR:-/tmp/pixellm-demo}"
rm -rf "$demo/data" "$demo/shards" "$demo/inspect"
mkdir -p "$demo"
"$PIXELLM" doctor
echo
echo "== the synthetic dataset in the reference's layout (MUSE, refcoco, ade20k, llava vqa, ReasonSeg, a tokenizer)"
"$PIXELLM" synth --out "$demo/data" --train 40 --val 10 --test 10 --size 224
echo
echo "== HDF5 shards, packed by 2 ranks (one BLAS thread each)"
mpirun $MPIRUN_FLAGS -np 2 "$PIXELLM" prepare --dataset-dir "$demo/data" \
  --dataset "sem_seg||refer_seg||vqa||multi_reason_seg" --out "$demo/shards" --image-size 224 --shard-size 32 2>&1 |
  grep -v '^warning: .* does not exist; skipping this sub-dataset'
echo
echo "== what the model sees for sample 130 (a MUSE image): $demo/inspect"
"$PIXELLM" inspect --shards "$demo/shards" --index 130 --out "$demo/inspect"
ls "$demo/inspect"
echo
"$PIXELLM" demo
echo
"$PIXELLM" bench gemm --only synth-small --min-seconds 0.1
echo
echo "== the same doctor under mpirun -np 2 (one BLAS thread per rank)"
mpirun $MPIRUN_FLAGS -np 2 "$PIXELLM" doctor --reps 2
