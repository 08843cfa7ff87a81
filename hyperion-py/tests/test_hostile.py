"""Hostile files through the Python API: the fuzz corpus the Rust tests
replay (fuzz/corpus: crafted and mutated .tmai, safetensors and GGUF
files), a file truncated under an open model, and a corrupted .tmai layer.
Every failure is a HyperionError; nothing crashes the interpreter, and
nothing returned is wrong."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from conftest import MIB, ROOT
from safetensors.numpy import load_file as st_numpy_load

import hyperion

CORPUS = sorted((ROOT / "fuzz" / "corpus").glob("*/*"))


def test_the_corpus_is_there():
    kinds = {p.parent.name for p in CORPUS}
    assert kinds == {"tmai", "gguf", "safetensors"} and len(CORPUS) >= 60


@pytest.mark.parametrize("path", CORPUS, ids=[f"{p.parent.name}/{p.name}" for p in CORPUS])
def test_corpus_file_raises_hyperion_errors_only(path, tmp_path):
    # A copy, under the file's own name (the format is also told by the name).
    file = tmp_path / path.name
    shutil.copyfile(path, file)
    outcomes = []
    for framework in ("np", "pt"):
        try:
            tensors = hyperion.load_file(file, framework=framework)
            outcomes.append(f"loaded {len(tensors)}")
        except hyperion.HyperionError as e:
            assert str(e), "an error with no message"
            outcomes.append(type(e).__name__)
    try:
        with hyperion.open(file, budget=64 * MIB, memory_wait=0.05) as model:
            for i in range(model.layer_count):
                try:
                    layer = model.layer(i)
                    for name in layer:
                        np.asarray(layer[name]).tobytes()
                except hyperion.HyperionError:
                    pass
            async_check(model)
    except hyperion.HyperionError:
        pass
    # The same verdict from both frameworks.
    assert outcomes[0] == outcomes[1], outcomes
    if path.name.startswith(("bad-", "truncated-", "big-endian")):
        assert not outcomes[0].startswith("loaded"), f"{path.name}: {outcomes}"


def async_check(model):
    import asyncio

    async def main():
        for i in range(model.layer_count):
            try:
                await model.layer_async(i)
            except hyperion.HyperionError:
                pass

    asyncio.run(main())


def test_a_file_truncated_under_the_model_is_truncated_error(blocks_model, tmp_path):
    path, tensors = blocks_model
    copy = tmp_path / "shrinking.safetensors"
    shutil.copyfile(path, copy)
    with hyperion.open(copy, budget=32 * MIB) as model:
        first = model.layer(0)
        with open(copy, "r+b") as f:
            f.truncate(os.path.getsize(copy) // 2)
        with pytest.raises(hyperion.TruncatedError, match="ended"):
            model.layer(15)
        # Opened after the truncation, the file is refused at its header.
        with pytest.raises(hyperion.FormatError, match="truncated"):
            hyperion.load_file(copy)
        name = "model.layers.0.mlp.up_proj.weight"
        assert np.array_equal(first[name], tensors[name])


def test_a_corrupted_tmai_layer_is_checksum_error(minilm, minilm_tmai, tmp_path):
    bad = tmp_path / "corrupt.tmai"
    shutil.copyfile(minilm_tmai, bad)
    with hyperion.open(bad) as model:
        victim = model.layer_count // 2
        d = model.descriptor(victim)
    with open(bad, "r+b") as f:
        f.seek(d["offset"] + d["size"] // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    with hyperion.open(bad) as model:
        with pytest.raises(hyperion.ChecksumError, match=f"layer {victim}"):
            model.layer(victim)
        model.layer(0)
    with pytest.raises(hyperion.ChecksumError):
        hyperion.load_file(bad)
    # With verify=False the bytes are served as the file has them.
    with hyperion.open(bad, verify=False) as model:
        model.layer(victim)
    assert st_numpy_load(minilm)  # the original is untouched
