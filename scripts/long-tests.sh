#!/usr/bin/env bash
# The long versions of the load and reliability tests (too slow for every CI
# run): 1000 tasks × 100 random operations per backend, and so on.
set -euo pipefail
cd "$(dirname "$0")/.."
HYPERION_LONG=1 cargo test --release --all-features --test load --test cancellation -- --nocapture
