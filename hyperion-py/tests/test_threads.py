"""Python threads sharing one model: the GIL is released during reads, and
every byte each thread sees is checked."""

from __future__ import annotations

import random
import threading

import numpy as np
from conftest import MIB, eventually

import hyperion


def test_eight_threads_random_get_and_release(blocks_model):
    path, tensors = blocks_model
    errors = []
    barrier = threading.Barrier(8)
    with hyperion.open(path, budget=12 * MIB) as model:

        def worker(seed):
            rng = random.Random(seed)
            try:
                barrier.wait()
                for _ in range(150):
                    i = rng.randrange(16)
                    layer = model.layer(i)
                    part = rng.choice(["up", "down"])
                    name = f"model.layers.{i}.mlp.{part}_proj.weight"
                    if not np.array_equal(layer[name], tensors[name]):
                        errors.append(f"thread {seed}: wrong bytes in {name}")
                    del layer
                    if rng.random() < 0.3:
                        model.release(rng.randrange(16))
                    if rng.random() < 0.2:
                        model.prefetch(rng.randrange(16))
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(f"thread {seed}: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        stats = model.stats()
        assert stats["hits"] + stats["misses"] == 8 * 150
        assert stats["reads"] >= 16 and stats["peak_memory"] <= 12 * MIB
        model.close()
        # Prefetches still in flight at the close free their memory when
        # they land.
        eventually(lambda: model.memory_usage == 0, "memory_usage returns to 0 after close")


def test_threads_overlap_their_reads(blocks_model):
    """With the GIL released, a thread waiting on a read does not stop
    the others: 8 threads reading the same 16 cold layers coalesce onto
    shared reads (single-flight) rather than queueing one by one."""
    path, tensors = blocks_model
    from conftest import drop_cache

    drop_cache(path)
    with hyperion.open(path, budget=32 * MIB) as model:
        barrier = threading.Barrier(8)

        def worker():
            barrier.wait()
            for i in range(16):
                model.layer(i)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = model.stats()
        assert stats["reads"] == 16
        assert stats["misses"] + stats["hits"] == 128
