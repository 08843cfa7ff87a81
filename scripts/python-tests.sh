#!/usr/bin/env bash
# The Python package's tests: builds the wheel and installs it into the
# project venv (scripts/python-package.sh), then runs pytest on
# hyperion-py/tests, comparing against the reference readers (safetensors,
# gguf-py) on the real models the venv holds. Extra arguments go to pytest.
# Fails on any failure, set-up included. Temp files go under cargo's target
# directory (on disk, where O_DIRECT works) and are removed after a pass.
#
#   scripts/python-tests.sh [-k PATTERN] [-x] ...
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$("$root/scripts/python-package.sh")"
. "$root/scripts/target-dir.sh"
tmp="$target_dir/pytest-tmp"
cd "$root"
"$py" -m pytest -q -p no:cacheprovider hyperion-py/tests --basetemp="$tmp" "$@"
rm -rf "$tmp"
