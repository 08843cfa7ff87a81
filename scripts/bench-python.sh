#!/usr/bin/env bash
# The Python package against the Python loaders, in one run, on one
# generated safetensors file (scripts/peers.py's, the one
# scripts/bench-peers.sh uses): hyperion.load_file ("np" and "pt"), the
# Rust CLI's `hyperion load` (the same read without Python),
# safetensors.numpy / safetensors.torch load_file and Run:ai's
# SafetensorsStreamer (default concurrency and 16), each cold (page cache
# dropped with posix_fadvise) and warm, each run in a fresh process,
# interleaved, repeated. Prints a table with the ratios and peak RSS; writes
# everything as JSON. docs/python.md shows a run. A benchmark, not a test:
# nothing fails on a missed target.
#
#   scripts/bench-python.sh [--size BYTES] [--reps N] [--loaders a,b,...] [--memory M]
#
#   --size    bytes of the generated file (KiB/MiB/GiB suffixes; default 2GiB)
#   --reps    repetitions (default 3)
#   --loaders a subset, comma-separated (see scripts/bench_python.py)
#   --memory  settled (default: a 5 s pause right before each load call, so
#             every loader starts with the memory freed before it given back
#             to the host) or as-is (no pause); see scripts/bench_python.py
#
# Uses the project venv (scripts/python-package.sh builds and installs the
# package into it) plus runai-model-streamer, which this script alone
# installs (--no-deps: the venv has its torch and numpy already).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
size_arg=2GiB
reps=3
loaders=""
memory=settled
while [ $# -gt 0 ]; do
  case "$1" in
  --size) size_arg="${2:?--size needs a value}"; shift 2 ;;
  --reps) reps="${2:?--reps needs a value}"; shift 2 ;;
  --loaders) loaders="${2:?--loaders needs a value}"; shift 2 ;;
  --memory) memory="${2:?--memory needs a value}"; shift 2 ;;
  -h | --help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "bench-python: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ "$size_arg" =~ ^([0-9]+)([KMG])?(i?B)?$ ]]; then
  case "${BASH_REMATCH[2]}" in
  K) size=$((BASH_REMATCH[1] << 10)) ;;
  M) size=$((BASH_REMATCH[1] << 20)) ;;
  G) size=$((BASH_REMATCH[1] << 30)) ;;
  *) size=${BASH_REMATCH[1]} ;;
  esac
else
  echo "bench-python: --size $size_arg: not a size" >&2
  exit 2
fi
[[ "$reps" =~ ^[1-9][0-9]*$ ]] || { echo "bench-python: --reps $reps: a positive whole number" >&2; exit 2; }

py="$("$root/scripts/python-package.sh")"
venv="$(dirname "$(dirname "$py")")"
runai_version=0.17.0
stamp="$venv/.bench-python-runai-$runai_version"
exec 9>"$venv.lock"
flock 9
if [ ! -f "$stamp" ]; then
  "$py" -m pip install --quiet --disable-pip-version-check --no-deps "runai-model-streamer==$runai_version" humanize >&2
  "$py" -c 'import runai_model_streamer' >&2
  touch "$stamp"
fi
exec 9>&-

. "$root/scripts/target-dir.sh"
(cd "$root" && cargo build --release --quiet --bin hyperion) >&2
dir="$target_dir/peers"
mkdir -p "$dir"
file="$dir/peers-$size.safetensors"
"$py" "$root/scripts/peers.py" generate --size "$size" --out "$file" >&2
args=(run --file "$file" --reps "$reps" --memory "$memory" --json "$dir/bench-python-$size.json" --hyperion "$target_dir/release/hyperion")
[ -n "$loaders" ] && args+=(--loaders "$loaders")
"$py" "$root/scripts/bench_python.py" "${args[@]}"
echo "bench-python: the full report is in $dir/bench-python-$size.json" >&2
