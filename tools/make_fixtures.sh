#!/usr/bin/env bash
# Regenerates the PyTorch fixtures under Tests/*/Fixtures. Python is only used here, never by the
# product or its tests. Uses virtual environments outside git (.venv-fixtures, .venv-release; ignored).
#
#   tools/make_fixtures.sh                    every generator in tools/fixtures (torch 2.13, transformers 5.24)
#   tools/make_fixtures.sh --release DIR      also the release-parity fixtures from a checkout of
#                                             MaverickRen/PixelLM at ebf0792 (transformers 4.31.0, its own venv)
# The check_*.py scripts are checks of written trees (they take a directory argument), not generators.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
release=""
if [ "${1:-}" = "--release" ]; then release="${2:?--release needs the directory of a PixelLM checkout}"; fi
VENV="${PIXELLM_FIXTURE_VENV:-$ROOT/.venv-fixtures}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.13.0 h5py==3.16.0 numpy==2.4.6 safetensors==0.8.0 sentencepiece==0.2.3 \
    tokenizers==0.23.3 transformers==5.24.0 pillow opencv-python-headless pycocotools scipy
fi
cd "$ROOT/tools/fixtures"
for s in *.py; do
  case "$s" in common.py | check_*.py) continue ;; esac
  echo "== $s"
  "$VENV/bin/python" "$s"
done
if [ -n "$release" ]; then
  RVENV="${PIXELLM_RELEASE_VENV:-$ROOT/.venv-release}"
  if [ ! -x "$RVENV/bin/python" ]; then
    python3 -m venv "$RVENV"
    # the release's pins (transformers 4.31.0, Pillow 9.4.0) and what its modules import
    "$RVENV/bin/pip" install -q torch==2.13.0 transformers==4.31.0 accelerate==0.21.0 pillow==9.4.0 sentencepiece \
      protobuf numpy scipy safetensors opencv-python-headless pycocotools einops matplotlib scikit-image
  fi
  echo "== tools/reference/release_parity.py --release $release"
  "$RVENV/bin/python" "$ROOT/tools/reference/release_parity.py" --release "$release"
fi
