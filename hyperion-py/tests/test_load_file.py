"""hyperion.load_file against the reference readers: the same names,
dtypes, shapes and bytes as safetensors' load_file (numpy and torch) and
gguf-py's reader, on published models and reference-written files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import deserialize, safe_open
from safetensors.numpy import load_file as st_numpy_load
from safetensors.torch import load_file as st_torch_load

import hyperion


def assert_same_numpy(got, want):
    assert set(got) == set(want)
    for name, w in want.items():
        g = got[name]
        assert isinstance(g, np.ndarray), name
        assert (g.dtype, g.shape) == (w.dtype, w.shape), name
        assert g.tobytes() == w.tobytes(), name


def assert_same_torch(got, want):
    assert set(got) == set(want)
    for name, w in want.items():
        g = got[name]
        assert isinstance(g, torch.Tensor), name
        assert (g.dtype, tuple(g.shape)) == (w.dtype, tuple(w.shape)), name
        # Bitwise: NaNs and signed zeros included.
        assert torch_bytes(g) == torch_bytes(w), name


def torch_bytes(t):
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("backend", ["auto", "pread", "mmap"])
def test_minilm_numpy_matches_safetensors(minilm, backend):
    got = hyperion.load_file(minilm, backend=backend)
    assert_same_numpy(got, st_numpy_load(minilm))
    assert isinstance(got, dict)
    assert set(got.dtypes.values()) == {"F32", "I64"}


def test_minilm_torch_matches_safetensors(minilm):
    assert_same_torch(hyperion.load_file(minilm, framework="pt"), st_torch_load(minilm))


def test_load_file_arrays_are_writable_like_safetensors(minilm):
    got = hyperion.load_file(minilm)
    name = "encoder.layer.0.attention.self.query.weight"
    got[name][0, 0] = 1234.5
    assert got[name][0, 0] == np.float32(1234.5)
    t = hyperion.load_file(minilm, framework="pt")[name]
    t.add_(1)  # in place, as a model's load_state_dict may


def test_reference_dtypes_file(reference_dir):
    path = reference_dir / "dtypes.safetensors"
    assert_same_numpy(hyperion.load_file(path), st_numpy_load(path))
    assert_same_torch(hyperion.load_file(path, framework="pt"), st_torch_load(path))


def test_reference_bf16_f8_f4_file(reference_dir):
    """BF16, F8 and F4 from the reference serializer. safetensors.numpy
    cannot load BF16 or F8 at all (numpy has no such dtype), so numpy gets
    their raw bits; torch gets the real types, compared with
    safetensors.torch."""
    path = reference_dir / "raw.safetensors"
    with open(path, "rb") as f:
        raw = {name: t for name, t in deserialize(f.read())}
    got = hyperion.load_file(path)
    assert set(got) == set(raw)
    for name, t in raw.items():
        g = got[name]
        assert got.dtypes[name] == t["dtype"], name
        assert g.tobytes() == bytes(t["data"]), name
        if t["dtype"] == "BF16":
            assert (g.dtype, list(g.shape)) == (np.uint16, t["shape"]), name
        elif t["dtype"].startswith("F8"):
            assert (g.dtype, list(g.shape)) == (np.uint8, t["shape"]), name
    with pytest.raises(TypeError):
        st_numpy_load(path)  # what the drop-in improves on

    got_pt = hyperion.load_file(path, framework="pt")
    with safe_open(path, framework="pt") as f:
        for name, t in raw.items():
            if t["dtype"] == "F4":
                # safetensors.torch has no F4 type: raw bytes here too.
                assert got_pt[name].dtype == torch.uint8
                assert got_pt[name].numpy().tobytes() == bytes(t["data"])
                continue
            w = f.get_tensor(name)
            assert_same_torch({name: got_pt[name]}, {name: w})
    assert got_pt["decoder.layers.0.bf16_0"].dtype == torch.bfloat16


@pytest.mark.parametrize("via", ["index", "directory"])
def test_reference_sharded_model(reference_dir, via):
    shard_dir = reference_dir / "sharded"
    index = json.loads((shard_dir / "model.safetensors.index.json").read_text())
    want = {}
    for shard in sorted(set(index["weight_map"].values())):
        want.update(st_numpy_load(shard_dir / shard))
    path = shard_dir / "model.safetensors.index.json" if via == "index" else shard_dir
    assert_same_numpy(hyperion.load_file(path), want)


def test_names_loads_only_those(minilm):
    want = st_numpy_load(minilm)
    names = ["embeddings.word_embeddings.weight", "encoder.layer.3.output.dense.bias"]
    got = hyperion.load_file(minilm, names=names)
    assert_same_numpy(got, {n: want[n] for n in names})
    with pytest.raises(hyperion.TensorNotFoundError, match="no.such.tensor"):
        hyperion.load_file(minilm, names=["no.such.tensor"])
    with pytest.raises(KeyError):  # also a KeyError, as a dict lookup would be
        hyperion.load_file(minilm, names=["no.such.tensor"])


def test_budget_too_small_is_a_budget_error(minilm):
    with pytest.raises(hyperion.BudgetError, match="budget=4096"):
        hyperion.load_file(minilm, budget=4096)
    # Enough for the one tensor asked for.
    got = hyperion.load_file(minilm, names=["pooler.dense.bias"], budget=1 << 20)
    assert list(got) == ["pooler.dense.bias"]


def test_tmai_matches_the_safetensors_it_was_converted_from(minilm, minilm_tmai):
    got = hyperion.load_file(minilm_tmai)
    assert_same_numpy(got, st_numpy_load(minilm))


def test_gguf_matches_gguf_py(smollm_gguf):
    """Every tensor of a published Q4_1 GGUF: plain types typed as gguf-py
    types them, quantized ones as uint8 blocks of its byte shape, same bytes,
    and the GGML type in the side table."""
    from gguf import GGUFReader

    reader = GGUFReader(smollm_gguf)
    got = hyperion.load_file(smollm_gguf)
    assert set(got) == {t.name for t in reader.tensors}
    quantized = 0
    for t in reader.tensors:
        g = got[t.name]
        assert got.dtypes[t.name] == t.tensor_type.name, t.name
        assert (g.dtype, g.shape) == (t.data.dtype, t.data.shape), t.name
        assert g.tobytes() == t.data.tobytes(), t.name
        quantized += g.dtype == np.uint8
    assert quantized > 0
    got_pt = hyperion.load_file(smollm_gguf, framework="pt", names=[reader.tensors[0].name])
    assert got_pt[reader.tensors[0].name].numpy().tobytes() == reader.tensors[0].data.tobytes()


def test_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(hyperion.HyperionIOError, match="missing.safetensors") as e:
        hyperion.load_file(missing)
    assert isinstance(e.value, OSError)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(hyperion.FormatError, match="junk.safetensors"):
        hyperion.load_file(junk)
    with pytest.raises(hyperion.InvalidArgumentError, match="framework"):
        hyperion.load_file(junk, framework="tf")
    with pytest.raises(hyperion.InvalidArgumentError, match="backend"):
        hyperion.load_file(junk, backend="floppy")
