#!/usr/bin/env bash
# Hyperion next to the Python loaders on one safetensors file, in one run:
# safetensors (numpy and torch load_file, safe_open), torch.load(mmap=True),
# runai-model-streamer (default and RUNAI_STREAMER_CONCURRENCY=16), and
# `hyperion load` (whole, buffered, streaming), each cold (page cache dropped
# with posix_fadvise) and warm, each run in a fresh process, interleaved,
# repeated. Prints one table; writes everything as JSON. docs/performance.md
# ("Peers") explains the figures.
#
#   scripts/bench-peers.sh [--size BYTES] [--dir DIR] [--reps N]
#                          [--loaders a,b,...] [--json OUT] [--dry-run]
#
#   --size    bytes of the generated file (suffixes KiB/MiB/GiB allowed;
#             default 2GiB); --size 64MiB --reps 1 is a quick smoke run
#   --dir     where the file is written and kept for reuse (default target/peers)
#   --reps    repetitions (default 3)
#   --loaders a subset, comma-separated (default: all; see scripts/peers.py)
#   --json    the report (default DIR/peers-SIZE.json)
#   --dry-run check the arguments and print the plan; install and run nothing
#
# The venv is target/peers-venv (not target/pyenv, which the tests use). Only
# PyPI is reachable here, where torch's Linux wheels are CUDA builds whose
# nvidia-* dependencies come to ~5 GB. torch is installed with --no-deps plus
# the CUDA libraries it links against (it cannot be imported without them)
# but not triton, cuSOLVER, NVTX or cuda-bindings, which import does not
# need: ~4.1 GB instead of ~5.4 GB. If that import fails, the full
# dependency set is installed instead. Idempotent: re-running reuses the
# venv, the Hyperion build and the generated file.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

size_arg=2GiB
dir="$root/target/peers"
reps=3
loaders=""
json=""
dry_run=0

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }
die() {
  echo "bench-peers: $*" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
  --size) size_arg="${2:?--size needs a value}"; shift 2 ;;
  --dir) dir="${2:?--dir needs a value}"; shift 2 ;;
  --reps) reps="${2:?--reps needs a value}"; shift 2 ;;
  --loaders) loaders="${2:?--loaders needs a value}"; shift 2 ;;
  --json) json="${2:?--json needs a value}"; shift 2 ;;
  --dry-run) dry_run=1; shift ;;
  -h | --help) usage; exit 0 ;;
  *) die "unknown argument: $1 (see --help)" ;;
  esac
done

# BYTES with an optional KiB/MiB/GiB (or K/M/G) suffix.
to_bytes() {
  local v="$1" n unit
  if [[ "$v" =~ ^([0-9]+)([KMG]i?B?)?$ ]]; then
    n="${BASH_REMATCH[1]}"
    unit="${BASH_REMATCH[2]}"
    case "${unit:0:1}" in
    K) echo $((n << 10)) ;;
    M) echo $((n << 20)) ;;
    G) echo $((n << 30)) ;;
    *) echo "$n" ;;
    esac
  else
    die "--size $v: not a size (BYTES, or a number with KiB, MiB or GiB)"
  fi
}
size="$(to_bytes "$size_arg")"
[ "$size" -ge $((16 << 20)) ] || die "--size $size_arg: at least 16MiB"
[[ "$reps" =~ ^[1-9][0-9]*$ ]] || die "--reps $reps: a positive whole number"
mkdir -p "$dir" 2>/dev/null || die "cannot create --dir $dir"
dir="$(cd "$dir" && pwd)"
file="$dir/peers-$size.safetensors"
json="${json:-$dir/peers-$size.json}"

venv="$root/target/peers-venv"
stamp="$venv/.peers-packages-v1"
torch_version=2.15.0
runai_version=0.17.0
# What `import torch` (2.15.0, CUDA 13 build) loads: its direct nvidia deps
# minus triton, cuda-bindings and the cuda-toolkit extras cusolver and nvtx.
torch_libs=(
  "cuda-toolkit[cublas,cudart,cufft,cufile,cupti,cusparse,nvjitlink,nvrtc]==13.2.2"
  "nvidia-cudnn-cu13==9.26.0.51"
  "nvidia-cusparselt-cu13==0.8.1"
  "nvidia-nccl-cu13==2.30.7"
  "nvidia-nvshmem-cu13==3.7.2"
)
pure=(numpy==2.* safetensors==0.8.* humanize filelock "typing-extensions>=4.13" "sympy>=1.13.3"
  "networkx>=2.5.1" jinja2 "fsspec>=0.8.5" "setuptools>=77.0.3")

echo "bench-peers: file $file ($size bytes), $reps repetition(s), loaders ${loaders:-all}" >&2
echo "bench-peers: venv $venv; report $json" >&2
if [ "$dry_run" = 1 ]; then
  echo "bench-peers: dry run: would install torch==$torch_version (--no-deps + ${#torch_libs[@]} CUDA packages)," \
    "runai-model-streamer==$runai_version, ${pure[*]};" \
    "build target/release/hyperion; generate the file and a .pt copy; run" >&2
  exit 0
fi

# The venv, once (one creator at a time).
mkdir -p "$root/target"
exec 9>"$venv.lock"
flock 9
if [ ! -f "$stamp" ]; then
  echo "bench-peers: creating $venv (downloads ~2 GB from PyPI the first time)" >&2
  python3 -m venv "$venv" >&2
  pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
  "${pip[@]}" --no-deps "torch==$torch_version" "runai-model-streamer==$runai_version" >&2
  # pip warns that torch's other requirements are missing: that is the point.
  "${pip[@]}" "${pure[@]}" "${torch_libs[@]}" 2>&1 | grep -v "requires\|dependency resolver\|dependency conflicts" >&2 || true
  if ! "$venv/bin/python" -c 'import torch, runai_model_streamer' >/dev/null 2>&1; then
    echo "bench-peers: import torch failed with the reduced set; installing torch's full dependencies" >&2
    "${pip[@]}" "torch==$torch_version" "runai-model-streamer==$runai_version" >&2
  fi
  "$venv/bin/python" -c 'import torch, safetensors, numpy, runai_model_streamer' >&2
  touch "$stamp"
fi
exec 9>&-
py="$venv/bin/python"

# Hyperion.
(cd "$root" && cargo build --release --quiet --bin hyperion) >&2
hyperion="$root/target/release/hyperion"

# The file (reused when it is already there with the same size).
"$py" "$root/scripts/peers.py" generate --size "$size" --out "$file" --pt >&2

args=(run --file "$file" --hyperion "$hyperion" --reps "$reps" --json "$json")
[ -n "$loaders" ] && args+=(--loaders "$loaders")
"$py" "$root/scripts/peers.py" "${args[@]}"
echo "bench-peers: the full report is in $json" >&2
