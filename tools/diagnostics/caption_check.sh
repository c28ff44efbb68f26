#!/bin/bash
# Does a model read the image? Asks it "What objects are there in the image?" (the caption turn of
# `pixellm synth --vqa-captions`) on the first 20 images of a synthetic dataset's MUSE val split and compares the
# answer with the objects there, left to right: how many answers give the right count, how many objects are named
# exactly (size colour shape), and per word how often the first object named matches the leftmost one. A diagnostic (docs/evaluation.md), not a test.
# usage: tools/diagnostics/caption_check.sh MODEL DATA   (MODEL: consolidated, run directory or checkpoint; DATA: synth output)
set -euo pipefail
M=$1; D=$2
PIXELLM=${PIXELLM:-$(cd "$(dirname "$0")/../.." && pwd)/.build/release/pixellm}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for i in $(seq -w 1 20); do
  gt=$(python3 -c "
import json; d=json.load(open('$D/muse_val.json'))[int('$i')-1]; print(', '.join(n for _,n in sorted((a['bbox'][0]+a['bbox'][2]/2, a['rephrased_name']) for a in d['ann_list'])))")
  a=$("$PIXELLM" chat --model "$M" --image "$D"/refer_seg/images/mscoco/images/val2017/synth_val_0000$i.png --prompt "What objects are there in the image?" --max-new-tokens 80 --out-dir "$OUT/q$i" 2>&1 | grep "answer:" | sed 's/answer: //')
  echo "GT: $gt"; echo "A : $a"
done | python3 -c "
import sys,re
L=sys.stdin.read().strip().split('\n')
n=0; cnt=0; hit=0; tot=0; first=[0, 0, 0]
for g,a in zip(L[0::2],L[1::2]):
  gt=[x.strip() for x in g[4:].split(',')]
  pa=re.findall(r'the ((?:small|medium|large) \w+ \w+)', a)
  m=re.search(r'There (?:are|is) (\d+)', a)
  n+=1; cnt+= (m is not None and int(m.group(1))==len(gt))
  pool=list(gt)
  for p in pa:
    if p in pool: pool.remove(p); hit+=1
  tot+=len(gt)
  # the first object named against the leftmost one, word by word (one-object scenes: size, colour, shape right)
  if pa:
    for k, (x, y) in enumerate(zip(pa[0].split(), gt[0].split())): first[k] += x == y
  print(g); print(a)
print(f'images {n}  count right {cnt}  objects named exactly {hit}/{tot}')
print(f'first object named against the leftmost, words right of {n}: size {first[0]}  colour {first[1]}  shape {first[2]}')
"
