#!/bin/bash
# How often colour alone tells an object apart in a synthetic dataset's MUSE training scenes: the share of objects
# that are the only one of their colour in their scene, the share that are not but are the only one of their colour
# and size, and the rest (they need the shape, or a position). A diagnostic (docs/evaluation.md), not a test.
# usage: tools/diagnostics/colour_uniqueness.sh DATA   (DATA: `pixellm synth` output)
set -euo pipefail
python3 - "$1/muse_train.json" <<'PY'
import json, sys
objects = colour = colour_size = 0
for scene in json.load(open(sys.argv[1])):
    names = [a['rephrased_name'].split() for a in scene['ann_list']]
    for size, col, _ in names:
        objects += 1
        same = [n for n in names if n[1] == col]
        if len(same) == 1: colour += 1
        elif sum(1 for n in same if n[0] == size) == 1: colour_size += 1
print(f'objects {objects}: the only one of their colour {colour / objects:.3f}, else of their colour and size '
      f'{colour_size / objects:.3f}, neither (shape or position needed) {1 - (colour + colour_size) / objects:.3f}')
PY
