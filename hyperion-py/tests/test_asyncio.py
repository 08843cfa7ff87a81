"""asyncio: layer_async and `async for` read on Hyperion's runtime while
the event loop runs other coroutines; cancelling leaks nothing."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from conftest import MIB, drop_cache, write_blocks

import hyperion


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    """4 layers of 32 MiB: reads long enough for a 1 ms ticker to see."""
    path = tmp_path_factory.mktemp("big") / "big.safetensors"
    return path, write_blocks(path, 4, 32 * MIB, seed=11)


async def ticks_during(load):
    """Runs `load()` while a ticker coroutine counts every millisecond;
    returns (result, ticks that happened while `load` was running)."""
    ticks = []
    done = asyncio.Event()

    async def ticker():
        while not done.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.005)
    start = time.perf_counter()
    result = await load()
    end = time.perf_counter()
    done.set()
    await task
    return result, sum(start < t < end for t in ticks), end - start


def test_the_event_loop_runs_while_a_layer_loads(big_model):
    """A cold 32 MiB layer through layer_async: the ticker keeps ticking.
    The control, the blocking model.layer called from a coroutine, stalls
    the loop for the whole read: no tick at all."""
    path, tensors = big_model
    name = "model.layers.0.mlp.up_proj.weight"

    async def main():
        with hyperion.open(path, budget=256 * MIB) as model:
            drop_cache(path)

            async def load_async():
                return await model.layer_async(0)

            layer, ticked, seconds = await ticks_during(load_async)
            assert np.array_equal(layer[name], tensors[name])
        with hyperion.open(path, budget=256 * MIB) as model:
            drop_cache(path)

            async def load_blocking():
                return model.layer(0)

            _, blocked_ticks, _ = await ticks_during(load_blocking)
        return ticked, seconds, blocked_ticks

    ticked, seconds, blocked_ticks = asyncio.run(main())
    assert blocked_ticks == 0
    assert ticked >= 2, f"the loop ticked {ticked} times during a {seconds * 1e3:.1f} ms read"


def test_async_for_streams_every_layer(big_model):
    path, tensors = big_model

    async def main():
        seen = []
        with hyperion.open(path, budget=100 * MIB) as model:
            gathered = await asyncio.gather(*(model.layer_async(i) for i in (3, 2, 3)))
            assert [layer.index for layer in gathered] == [3, 2, 3]
            del gathered
            async for i, layer in model.stream(order=[0, 1, 2, 3], lookahead=1):
                name = f"model.layers.{i}.mlp.down_proj.weight"
                seen.append(i)
                assert np.array_equal(layer[name], tensors[name])
            assert model.stats()["peak_memory"] <= 100 * MIB
        return seen

    assert asyncio.run(main()) == [0, 1, 2, 3]


def test_async_errors_are_exceptions(big_model):
    path, _ = big_model

    async def main():
        with hyperion.open(path, budget=100 * MIB) as model:
            with pytest.raises(hyperion.LayerIndexError):
                await model.layer_async(4)
            stream = model.stream(order=[9])
            with pytest.raises(hyperion.LayerIndexError):
                await stream.__anext__()
            with pytest.raises(StopAsyncIteration):
                await stream.__anext__()
        with pytest.raises(hyperion.ClosedError):
            await model.layer_async(0)

    asyncio.run(main())


async def wait_for_zero(model, seconds=30.0):
    deadline = time.monotonic() + seconds
    while model.memory_usage != 0:
        assert time.monotonic() < deadline, f"memory_usage stuck at {model.memory_usage}"
        await asyncio.sleep(0.01)


def test_cancelled_layer_async_leaks_nothing(big_model):
    """Cancel layer_async calls while their reads are in flight (cold
    32 MiB layers), then close: every byte returns (memory_usage 0), and
    until then the model still serves."""
    path, tensors = big_model

    async def main():
        model = hyperion.open(path, budget=256 * MIB)
        drop_cache(path)
        pending = [asyncio.ensure_future(model.layer_async(i)) for i in range(4)]
        await asyncio.sleep(0)
        for p in pending:
            p.cancel()
        cancelled = 0
        for p in pending:
            try:
                await p
            except asyncio.CancelledError:
                cancelled += 1
        assert cancelled > 0
        layer = await model.layer_async(2)
        name = "model.layers.2.mlp.up_proj.weight"
        assert np.array_equal(layer[name], tensors[name])
        del layer
        # A stream abandoned half-way, and a fetch cancelled by a timeout.
        async for i, layer in model.stream():
            if i == 1:
                break
        del layer
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(model.layer_async(3), timeout=0)
        model.close()
        await wait_for_zero(model)

    asyncio.run(main())
