#!/usr/bin/env bash
# The subsystem folders of src/ depend one way: a library file includes
# headers of its own folder and of folders listed before it in
# src/README.md's table, never of a folder listed after it.  Unit tests
# (*_test.cc, *_test_util.h) may use any folder.
set -euo pipefail
src=${KVMCDP_SOURCE_DIR:?}/src
order=$(grep -o '^| `[a-z]*/`' "$src/README.md" | tr -d '|` /')
[ -n "$order" ] || { echo "no folder table in src/README.md"; exit 1; }
declare -A rank
i=0
for d in $order; do rank[$d]=$i; i=$((i + 1)); done
bad=0
for dir in "$src"/*/; do
  d=$(basename "$dir")
  [ -n "${rank[$d]:-}" ] || { echo "src/$d/ is not in src/README.md's table"; bad=1; continue; }
  for f in "$dir"*.cc "$dir"*.h; do
    [ -e "$f" ] || continue
    case $f in *_test.cc | *_test_util.h) continue ;; esac
    while IFS= read -r inc; do
      t=${inc%%/*}
      [ -n "${rank[$t]:-}" ] || continue
      if [ "${rank[$t]}" -gt "${rank[$d]}" ]; then
        echo "src/$d/$(basename "$f") includes $inc: $t/ comes after $d/"
        bad=1
      fi
    done < <(sed -n 's/^#include "\([a-z_]*\/[^"]*\)".*/\1/p' "$f")
  done
done
for f in "$src"/*.cc "$src"/*.h; do
  [ -e "$f" ] && { echo "$(basename "$f") is not in a subsystem folder"; bad=1; }
done
exit $bad
