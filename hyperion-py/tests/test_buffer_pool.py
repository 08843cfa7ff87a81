"""hyperion.BufferPool: a closed model's layer buffers are kept for the
next model or load_file of the process, which takes them over instead of
allocating new memory, with the same bytes as safetensors."""

from __future__ import annotations

import gc

import pytest
from conftest import MIB
from safetensors.numpy import load_file as st_numpy_load

import hyperion


def test_a_pool_carries_buffers_from_one_model_to_the_next(minilm):
    want = st_numpy_load(minilm)
    pool = hyperion.BufferPool(256 * MIB)
    assert (pool.max_bytes, pool.retained_bytes, pool.reuses) == (256 * MIB, 0, 0)
    with hyperion.open(minilm, budget=64 * MIB, buffer_pool=pool) as model:
        for i in range(model.layer_count):
            model.layer(i)
            model.release(i)
        assert model.memory_usage == 0
    kept = pool.retained_bytes
    assert kept > 0, pool
    with hyperion.open(minilm, budget=64 * MIB, buffer_pool=pool) as model:
        seen = set()
        for i in range(model.layer_count):
            for name, array in model.layer(i).items():
                assert array.tobytes() == want[name].tobytes(), name
                seen.add(name)
            model.release(i)
        assert seen == set(want)
        assert model.stats()["pool_reuses"] > 0
    assert pool.reuses > 0 and "reuses=" in repr(pool)
    pool.clear()
    assert pool.retained_bytes == 0


def test_load_file_arrays_give_their_memory_to_the_pool_when_they_go(minilm):
    want = st_numpy_load(minilm)
    pool = hyperion.BufferPool(256 * MIB)
    first = hyperion.load_file(minilm, share_page_cache=False, buffer_pool=pool)
    # The arrays hold the layers: nothing is kept while they live.
    assert pool.retained_bytes == 0
    del first
    gc.collect()
    assert pool.retained_bytes > 0, pool
    second = hyperion.load_file(minilm, share_page_cache=False, buffer_pool=pool)
    assert pool.reuses > 0, pool
    assert set(second) == set(want)
    for name, w in want.items():
        assert second[name].tobytes() == w.tobytes(), name


def test_a_pool_never_keeps_more_than_its_cap(minilm):
    pool = hyperion.BufferPool(1 * MIB)
    with hyperion.open(minilm, budget=64 * MIB, buffer_pool=pool) as model:
        for i in range(model.layer_count):
            model.layer(i)
            model.release(i)
    assert pool.retained_bytes <= 1 * MIB


def test_buffer_pool_must_be_a_pool(minilm):
    with pytest.raises(hyperion.InvalidArgumentError, match="buffer_pool"):
        hyperion.open(minilm, buffer_pool=64 * MIB)
    with pytest.raises(hyperion.InvalidArgumentError, match="buffer_pool"):
        hyperion.load_file(minilm, buffer_pool="pool")
