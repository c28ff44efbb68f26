#!/usr/bin/env bash
# Regenerates the table of docs/RELIABILITY.md: runs BadInputCatalogueTests (built with
# `swift build -c release --build-tests -Xswiftc -enable-testing`) with PIXELLM_BAD_INPUT_TABLE set, and puts the
# table it writes between the <!-- bad-inputs:begin --> and <!-- bad-inputs:end --> lines of the document.
# Usage: tools/bad_inputs_table.sh [TABLE.md]   (the table is also left in TABLE.md, default /tmp/bad-inputs.md)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
table=${1:-/tmp/bad-inputs.md}
rm -f "$table"
PIXELLM_BAD_INPUT_TABLE="$table" swift test -c release -Xswiftc -enable-testing --skip-build --filter BadInputCatalogueTests
status=$?
if [ ! -s "$table" ]; then echo "no table written ($table)" >&2; exit 1; fi
doc=docs/RELIABILITY.md
tmp=$(mktemp)
awk -v t="$table" '
  /<!-- bad-inputs:begin -->/ { print; while ((getline l < t) > 0) print l; skip = 1; next }
  /<!-- bad-inputs:end -->/ { skip = 0 }
  !skip { print }' "$doc" > "$tmp" && mv "$tmp" "$doc"
echo "$(grep -c '^| [0-9]' "$table") rows -> $doc (test exit status $status)"
exit $status
