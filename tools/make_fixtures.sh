#!/usr/bin/env bash
# Regenerates the PyTorch fixtures under Tests/*/Fixtures. Python is only used here, never by the
# product or its tests. Uses a virtual environment outside git (.venv-fixtures, ignored).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PIXELLM_FIXTURE_VENV:-$ROOT/.venv-fixtures}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.13.0 h5py==3.16.0 numpy==2.4.6 safetensors==0.8.0 sentencepiece==0.2.3 tokenizers==0.23.3 transformers==5.24.0 
fi
cd "$ROOT/tools/fixtures"
for s in *.py; do
  [ "$s" = common.py ] && continue
  echo "== $s"
  "$VENV/bin/python" "$s"
done
