"""hyperion.open: the Model API, zero-copy layers, and the lifetime rule
(an array keeps its layer's memory alive through release, eviction and
close)."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from conftest import MIB, drop_cache, eventually, write_blocks
from safetensors.numpy import load_file as st_numpy_load

import hyperion


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_model_describes_the_file(minilm):
    want = st_numpy_load(minilm)
    with hyperion.open(minilm, budget=256 * MIB) as model:
        assert model.format == "safetensors"
        assert model.backend in ("io_uring", "pread")
        assert model.budget == 256 * MIB
        assert set(model.tensor_names()) == set(want)
        assert model.layer_count > 6  # embeddings, 6 blocks, pooler
        d = model.descriptor(1)
        assert set(d) == {"offset", "size", "layer_index", "precision", "cached", "is_active",
                          "priority", "last_accessed", "access_count"}
        assert (d["layer_index"], d["cached"], d["access_count"]) == (1, False, 0)
        seen = {}
        for i in range(model.layer_count):
            layer = model.layer(i)
            assert layer.index == i and len(layer) == len(list(layer.keys()))
            assert model.descriptor(i)["size"] == layer.nbytes
            for name, array in layer.items():
                seen[name] = array
        assert set(seen) == set(want)
        for name, w in want.items():
            assert seen[name].dtype == w.dtype and seen[name].shape == w.shape, name
            assert seen[name].tobytes() == w.tobytes(), name
        d = model.descriptor(1)
        assert d["cached"] and d["is_active"] and d["access_count"] == 1
        stats = model.stats()
        assert stats["reads"] == model.layer_count and stats["misses"] == model.layer_count
        assert stats["peak_memory"] <= 256 * MIB


def test_layer_is_a_read_only_mapping(minilm):
    from collections.abc import Mapping

    with hyperion.open(minilm, budget=64 * MIB) as model:
        i = model.layer_of_tensor("encoder.layer.2.output.dense.weight")
        layer = model.layer(i)
        assert isinstance(layer, Mapping)
        assert "encoder.layer.2.output.dense.weight" in layer and "nope" not in layer
        assert layer.get("nope") is None
        with pytest.raises(hyperion.TensorNotFoundError):
            layer["nope"]
        array = layer["encoder.layer.2.output.dense.weight"]
        assert not array.flags.writeable
        with pytest.raises(ValueError):
            array[0, 0] = 1.0
        assert dict(layer.dtypes)["encoder.layer.2.output.dense.weight"] == "F32"
        t = model.tensor("encoder.layer.2.output.dense.weight")
        assert np.array_equal(t, array)


def test_torch_layers(minilm):
    want = st_numpy_load(minilm)
    with hyperion.open(minilm, budget=128 * MIB, framework="pt") as model:
        for i, layer in model.stream():
            for name, t in layer.items():
                assert isinstance(t, torch.Tensor)
                assert t.numpy().tobytes() == want[name].tobytes()


def test_arrays_are_views_of_the_layer_buffer(blocks_model):
    """Zero-copy: every array's data lies inside its layer's buffer, and the
    array's base keeps that buffer (a TensorBuffer) alive."""
    path, tensors = blocks_model
    with hyperion.open(path, budget=8 * MIB) as model:
        layer = model.layer(3)
        for name in layer:
            array = layer[name]
            start = array.__array_interface__["data"][0]
            assert layer.address <= start and start + array.nbytes <= layer.address + layer.nbytes
            assert isinstance(array.base, hyperion.TensorBuffer)
            assert np.array_equal(array, tensors[name])
        with hyperion.open(path, budget=8 * MIB, framework="pt") as torch_model:
            layer = torch_model.layer(3)
            t = layer["model.layers.3.mlp.up_proj.weight"]
            assert layer.address <= t.data_ptr() < layer.address + layer.nbytes


def test_memory_does_not_double(tmp_path):
    """Arrays over a 64 MiB layer add no copy: neither Hyperion's memory
    accounting nor the process's RSS grows by the layer again."""
    path = tmp_path / "big.safetensors"
    write_blocks(path, 1, 64 * MIB)
    drop_cache(path)
    with hyperion.open(path, budget=128 * MIB) as model:
        layer = model.layer(0)
        charged = model.memory_usage
        assert 64 * MIB <= charged < 65 * MIB
        before = rss()
        arrays = [layer[n] for n in layer] * 4  # each tensor, four times over
        total = sum(float(a.sum(dtype=np.float64)) for a in arrays)  # touch every byte
        grown = rss() - before
        assert np.isfinite(total)
        assert model.memory_usage == charged
        assert grown < 8 * MIB, f"RSS grew by {grown} bytes for views of a 64 MiB layer"


def test_an_array_outlives_release_eviction_and_close(blocks_model):
    """The lifetime rule: an array taken from a layer stays valid after the
    layer is released and evicted and the model closed; its memory stays
    charged while it lives and returns when it goes."""
    path, tensors = blocks_model
    name = "model.layers.0.mlp.up_proj.weight"
    model = hyperion.open(path, budget=4 * MIB, prefetch_threads=0)
    array = model.layer(0)[name]
    footprint = model.memory_usage
    model.release(0)
    for i in range(1, 16):  # more than the budget holds: evictions
        model.layer(i)
    assert model.stats()["evictions"] > 0
    assert np.array_equal(array, tensors[name])
    assert model.descriptor(0)["is_active"] and not model.descriptor(0)["cached"]
    for i in range(16):
        model.release(i)
    assert model.memory_usage == footprint  # only the array's layer is left
    model.close()
    assert np.array_equal(array, tensors[name])
    assert float(array.sum(dtype=np.float64)) == float(tensors[name].sum(dtype=np.float64))
    with pytest.raises(hyperion.ClosedError, match="closed"):
        model.layer(1)
    del array
    gc.collect()
    assert model.memory_usage == 0


def test_prefetch_priorities_and_release(blocks_model):
    path, tensors = blocks_model
    with hyperion.open(path, budget=8 * MIB) as model:
        assert model.prefetch(5) in ("queued", "present")
        layer = model.layer(5)
        assert model.prefetch(5) == "present"
        assert model.descriptor(5)["cached"]
        del layer
        model.set_priority(2, 10.0)
        assert model.descriptor(2)["priority"] == 10.0
        model.reset_priorities()
        assert model.descriptor(2)["priority"] == 0.0
        with pytest.raises(hyperion.InvalidArgumentError):
            model.set_priority(2, float("nan"))
        model.release(5)
        assert not model.descriptor(5)["cached"]
        # A read still in flight (the prefetch's) is detached by the
        # release: its memory returns when it lands.
        eventually(lambda: model.memory_usage == 0, "the prefetch's memory returns")
    with hyperion.open(path, budget=8 * MIB, prefetch_threads=0) as model:
        with pytest.raises(hyperion.PrefetchDisabledError):
            model.prefetch(1)


def test_streams_in_order_and_sync_iteration(blocks_model):
    path, tensors = blocks_model
    with hyperion.open(path, budget=4 * MIB) as model:
        order = [5, 1, 9, 1]
        got = [(i, layer["model.layers.%d.mlp.down_proj.weight" % i].copy()) for i, layer in model.stream(order, lookahead=2)]
        assert [i for i, _ in got] == order
        for i, array in got:
            assert np.array_equal(array, tensors["model.layers.%d.mlp.down_proj.weight" % i])
        assert [i for i, _ in model] == list(range(16))
        assert model.stats()["peak_memory"] <= 4 * MIB


def test_index_errors_and_budget_errors(blocks_model):
    path, _ = blocks_model
    with hyperion.open(path, budget=4 * MIB) as model:
        for bad in (16, -1, 1 << 40):
            with pytest.raises(hyperion.LayerIndexError, match="out of range"):
                model.layer(bad)
            with pytest.raises(IndexError):
                model.descriptor(bad)
        with pytest.raises(hyperion.TensorNotFoundError):
            model.tensor("no.such.tensor")
        stream = model.stream([0, 99, 1])
        assert next(stream)[0] == 0
        with pytest.raises(hyperion.LayerIndexError):
            next(stream)
        assert next(stream)[0] == 1  # an error item does not end the stream
    with hyperion.open(path, budget=512 * 1024) as model:
        with pytest.raises(hyperion.BudgetError, match="budget"):
            model.layer(0)
    with hyperion.open(path, budget=3 * MIB, memory_wait=0.05) as model:
        held = [model.layer(0), model.layer(1)]
        with pytest.raises(hyperion.BudgetError, match="held"):
            model.layer(2)
        del held


def test_help_reads_well():
    assert "budget" in hyperion.open.__doc__
    assert "drop-in" in hyperion.load_file.__doc__
    assert hyperion.Model.layer_async.__doc__
    assert issubclass(hyperion.TruncatedError, hyperion.HyperionIOError)
    assert issubclass(hyperion.ChecksumError, hyperion.HyperionError)
