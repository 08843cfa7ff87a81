#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ (one per file parser) for SECONDS
# each (default 60), in release mode with debug assertions and overflow checks
# on, under AddressSanitizer.
#
#   scripts/fuzz.sh 120
#
# Each target starts from its committed seeds (fuzz/corpus/<target>/, read
# only) and grows a working corpus in target/fuzz-corpus/<target>/. A crash
# stops the script; its input is in fuzz/artifacts/<target>/, and adding it to
# fuzz/corpus/<target>/ makes `cargo test --test fuzz_corpus` replay it.
#
# cargo-fuzz needs nightly compiler flags; on a stable toolchain
# RUSTC_BOOTSTRAP=1 unlocks them. cargo-fuzz is installed if missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds="${1:-60}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

cd "$root/fuzz"
targets=$(cargo fuzz list)
cargo fuzz build -O -a
for target in $targets; do
  work="$root/target/fuzz-corpus/$target"
  seeds="$root/fuzz/corpus/$target"
  mkdir -p "$work" "$seeds"
  echo "=== fuzz $target for ${seconds}s"
  cargo fuzz run -O -a "$target" "$work" "$seeds" -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
    -print_final_stats=1
done
echo "fuzz: every target ran ${seconds}s without a crash"
