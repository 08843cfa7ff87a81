#!/usr/bin/env bash
# Hyperion's cold stream of a model from a loopback S3 server, next to the
# server's ceiling and Run:ai's streamer, in one run (docs/object-storage.md,
# "Performance"):
#
#   ceiling  the best of plain ranged GETs (8 MiB, 1/2/4/8/16 in flight) of
#            the same object with a bare client, bodies counted and dropped
#            (examples/s3_ceiling.rs)
#   hyperion `hyperion load --budget BUDGET s3://…`: every layer streamed
#            through a budget 1/8 of the model, touched; MB/s and peak RSS
#   runai    runai-model-streamer's SafetensorsStreamer on the same URL
#            (installed for this bench only, into target/s3bench-venv)
#
# Each rep runs the three in turn, each in a fresh process; prints every
# figure and the ratios of the medians.
#
#   scripts/bench-s3.sh [--size BYTES] [--budget BYTES] [--reps N] [--server s3s|moto]
#
# The server: s3s-fs (default; a Rust S3 server over a directory, installed
# for this bench only into target/s3s-fs with `cargo install s3s-fs
# --version =0.14.1 --features binary`, ~1.5 min once), or moto's
# (scripts/s3-server.sh, the tests' server), which copies the whole object
# for every ranged GET, so its ceiling falls with the object's size and the
# number of requests, not the network's.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
size=$((512 << 20))
budget=$((64 << 20))
reps=3
server=moto
while [ $# -gt 0 ]; do
  case "$1" in
  --size) size="$2"; shift 2 ;;
  --budget) budget="$2"; shift 2 ;;
  --reps) reps="$2"; shift 2 ;;
  --server) server="$2"; shift 2 ;;
  *) echo "bench-s3: unknown argument $1" >&2; exit 2 ;;
  esac
done

cd "$root"
. scripts/target-dir.sh
py=$(scripts/python-env.sh)
# BENCH_S3_BIN_DIR: a directory holding `hyperion` and `s3_ceiling` built
# already (with the object-store feature); otherwise they are built here.
if [ -n "${BENCH_S3_BIN_DIR:-}" ]; then
  hyperion="$BENCH_S3_BIN_DIR/hyperion"
  ceiling="$BENCH_S3_BIN_DIR/s3_ceiling"
else
  echo "bench-s3: building hyperion and the ceiling client (object-store feature)" >&2
  cargo build --release --locked -p hyperion-cli --features object-store >&2
  cargo build --release --locked --features object-store --example s3_ceiling >&2
  hyperion="$target_dir/release/hyperion"
  ceiling="$target_dir/release/examples/s3_ceiling"
fi

# Run:ai's streamer, for this bench only: a venv that sees the test venv's
# packages (torch) through a .pth file.
bench_venv="$root/target/s3bench-venv"
if [ ! -f "$bench_venv/.runai-0.17" ]; then
  python3 -m venv "$bench_venv" >&2
  site=$("$py" -c 'import site; print(site.getsitepackages()[0])')
  bsite=$("$bench_venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')
  echo "$site" >"$bsite/pyenv.pth"
  # --ignore-installed: the test venv may hold runai-model-streamer too (the
  # Python bench installs it), and pip, seeing it through the .pth, would not
  # install it here; that copy then finds no S3 plugin beside it ("S3 not
  # supported").
  if "$bench_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --ignore-installed --no-deps \
    runai-model-streamer==0.17.0 runai-model-streamer-s3==0.17.1 >&2; then
    touch "$bench_venv/.runai-0.17"
  fi
fi
runai_ok=0
if "$bench_venv/bin/python" -c 'import runai_model_streamer' 2>/dev/null; then runai_ok=1; fi

work=$(mktemp -d "${TMPDIR:-/tmp}/bench-s3.XXXXXX")
model="$work/model.safetensors"
"$py" scripts/s3_bench.py write "$model" "$size" 32
case "$server" in
s3s)
  s3s="$root/target/s3s-fs/bin/s3s-fs"
  if [ ! -x "$s3s" ]; then
    echo "bench-s3: installing s3s-fs 0.14.1 into target/s3s-fs (bench only)" >&2
    cargo install s3s-fs --version =0.14.1 --features binary --locked --root "$root/target/s3s-fs" >&2
  fi
  mkdir -p "$work/root/bench"
  mv "$model" "$work/root/bench/model.safetensors"
  port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$s3s" --host 127.0.0.1 --port "$port" --access-key bench --secret-key bench-secret "$work/root" >"$work/server.log" 2>&1 &
  server_pid=$!
  cleanup() { kill "$server_pid" 2>/dev/null || true; rm -rf "$work"; }
  trap cleanup EXIT
  endpoint="http://127.0.0.1:$port"
  for _ in $(seq 100); do curl -s -o /dev/null "$endpoint" && break; sleep 0.1; done
  ;;
moto)
  exec 3> >(scripts/s3-server.sh >"$work/endpoint")
  cleanup() { exec 3>&-; rm -rf "$work"; }
  trap cleanup EXIT
  for _ in $(seq 100); do [ -s "$work/endpoint" ] && break; sleep 0.2; done
  endpoint=$(head -1 "$work/endpoint")
  [ -n "$endpoint" ] || { echo "bench-s3: the server did not start" >&2; exit 1; }
  "$py" scripts/s3_bench.py put "$endpoint" bench model.safetensors "$model"
  rm -f "$model"
  ;;
*) echo "bench-s3: --server s3s or moto" >&2; exit 2 ;;
esac
echo "bench-s3: $server at $endpoint" >&2
url="s3://bench/model.safetensors"
export AWS_ENDPOINT_URL="$endpoint" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret \
  AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING=0

results="$work/results"
: >"$results"
for rep in $(seq "$reps"); do
  c=$("$ceiling" "$url" "$((4 << 20))")
  echo "ceiling $c" | tee -a "$results" >&2
  h=$("$hyperion" load --json --budget "$budget" "$url" | tr -d "\n")
  echo "hyperion $h" | tee -a "$results" >&2
  if [ "$runai_ok" = 1 ]; then
    # Run:ai's streamer does not retry: a failed chunk fails the whole read.
    if r=$("$bench_venv/bin/python" scripts/s3_bench.py runai "$url" 2>"$work/runai.err"); then
      echo "runai $r" | tee -a "$results" >&2
    else
      echo "runai-failed {\"error\": $(tail -1 "$work/runai.err" | "$py" -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))')}" | tee -a "$results" >&2
    fi
  fi
done

"$py" - "$results" "$size" "$budget" "$server" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, data = line.split(" ", 1)
    rows.setdefault(name, []).append(json.loads(data))
size, budget = int(sys.argv[2]), int(sys.argv[3])
med = lambda name, key: statistics.median(r[key] for r in rows[name])
ceiling = med("ceiling", "best_mb_s")
hyper = med("hyperion", "mb_s")
print(f"server {sys.argv[4]}, model {size / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB, {len(rows['hyperion'])} reps (medians; MB/s)")
print(f"  ceiling (best plain ranged GETs) {ceiling:8.1f}   runs {[r['best_mb_s'] for r in rows['ceiling']]}")
print(f"  hyperion load --budget           {hyper:8.1f}   runs {[round(r['mb_s'], 1) for r in rows['hyperion']]}")
rss = max(r["peak_rss_bytes"] for r in rows["hyperion"])
print(f"  hyperion peak RSS {rss / 2**20:.1f} MiB (limit budget + 64 MiB = {(budget + (64 << 20)) / 2**20:.0f} MiB): {'met' if rss <= budget + (64 << 20) else 'NOT met'}")
print(f"  hyperion / ceiling = {hyper / ceiling:.2f} (target >= 0.8)")
if "runai-failed" in rows:
    print(f"  runai streamer failed {len(rows['runai-failed'])} of {len(rows['hyperion'])} runs: {rows['runai-failed'][0]['error']}")
if "runai" in rows:
    runai = med("runai", "mb_s")
    print(f"  runai streamer                   {runai:8.1f}   runs {[round(r['mb_s'], 1) for r in rows['runai']]}")
    print(f"  hyperion / runai = {hyper / runai:.2f} (target >= 1.2)")
elif "runai-failed" not in rows:
    print("  runai streamer: not installed here")
PY
