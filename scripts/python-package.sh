#!/usr/bin/env bash
# Builds the `hyperion` Python package (hyperion-py/: PyO3, abi3 for
# CPython >= 3.10) into a wheel with maturin and installs it into the
# project's venv (scripts/python-env.sh makes it: target/pyenv, with numpy,
# torch, safetensors, gguf, pytest and maturin). Prints the venv's python on
# stdout; everything else goes to stderr.
#
#   PY=$(scripts/python-package.sh) && "$PY" -c 'import hyperion'
#
# In a venv of your own, `pip install ./hyperion-py` builds the same wheel
# (pip fetches maturin for the build).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$("$root/scripts/python-env.sh")"
. "$root/scripts/target-dir.sh"
wheels="$target_dir/python-wheels"
rm -f "$wheels"/hyperion-*.whl
"$(dirname "$py")/maturin" build --release --quiet \
  --manifest-path "$root/hyperion-py/Cargo.toml" --interpreter "$py" --out "$wheels" >&2
wheel="$(ls "$wheels"/hyperion-*.whl)"
"$py" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheel" >&2
echo "$py"
