#!/usr/bin/env bash
# Fails when a module of the library imports one above it.
#
# The library's modules form layers (docs/modules.md): each
# may use modules of strictly lower layers only, so dependencies point one way and
# no two modules need each other. Submodules (io/*, format/*, model/*, sys/*
# ...) belong to their top-level module's layer and may use each other.
# A module not in the table fails too, so a new one gets a layer on purpose.
#
# Checks every `crate::NAME` path in code (comments and doc comments are
# skipped: doc links may point anywhere).
set -euo pipefail
cd "$(dirname "$0")/.."

# layer  modules
layers='
0 sys checksum ggml meta policy
1 dtype buffer_pool
2 error
3 config faults index source
4 object
5 files format pagecache budget
6 synth buffer stats
7 io
8 weights
9 cache
10 model
'

declare -A rank
while read -r n mods; do
    [ -n "$n" ] || continue
    for m in $mods; do rank[$m]=$n; done
done <<<"$layers"

status=0
for file in $(find src -name '*.rs' ! -path src/lib.rs | sort); do
    rel=${file#src/}
    top=${rel%%/*}
    top=${top%.rs}
    if [ -z "${rank[$top]:-}" ]; then
        echo "check-layers: $file: module '$top' has no layer in scripts/check-layers.sh"
        status=1
        continue
    fi
    # Every crate::NAME outside comments, with its line number.
    while IFS=: read -r line name; do
        [ "$name" = "$top" ] && continue
        if [ -z "${rank[$name]:-}" ]; then
            echo "check-layers: $file:$line: crate::$name is not a module with a layer (use its module path)"
            status=1
        elif [ "${rank[$name]}" -ge "${rank[$top]}" ]; then
            echo "check-layers: $file:$line: $top (layer ${rank[$top]}) uses $name (layer ${rank[$name]}), not a lower layer"
            status=1
        fi
    done < <(sed 's://.*$::' "$file" | grep -noE 'crate::[A-Za-z_][A-Za-z0-9_]*' | sed 's/crate:://')
done
if [ "$status" = 0 ]; then
    echo "check-layers: every module uses only lower layers ($(find src -name '*.rs' | wc -l) files)"
fi
exit $status
