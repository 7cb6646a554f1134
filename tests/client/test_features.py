"""End to end: streaming results, fan-out, per-call timeouts, large payloads and bounded queues."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from vastrpc import CallTimeoutError, OverloadedError

pytestmark = pytest.mark.e2e

SOURCE = """
import asyncio
from vastrpc import Deployment

app = Deployment(name="{name}")
STATE = {{"closed": 0, "running": 0, "peak": 0}}

@app.remote(benchmark_dataset=[{{"n": 2, "pause": 0}}])
async def count(n: int, pause: float = 0.3):
    try:
        for i in range(n):
            yield i
            await asyncio.sleep(pause)
    finally:
        STATE["closed"] += 1

@app.remote
async def double(x):
    STATE["running"] += 1
    STATE["peak"] = max(STATE["peak"], STATE["running"])
    try:
        await asyncio.sleep(0.05)
        if x == "boom":
            raise ValueError("boom")
        return x * 2
    finally:
        STATE["running"] -= 1

@app.remote
async def echo(value):
    return value

@app.remote
async def nap(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds

@app.remote(max_concurrency=1, max_queue=1, max_queue_time=0.3)
async def narrow(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds

@app.remote
async def state() -> dict:
    return dict(STATE)
"""


@pytest.fixture
async def mod(project):
    module = project(SOURCE)
    await module.app.ensure_ready()
    return module


async def test_stream_items_arrive_as_produced(mod) -> None:
    started = time.monotonic()
    seen = []
    async for value in mod.count(4, 0.3):
        seen.append((value, time.monotonic() - started))
    assert [v for v, _ in seen] == [0, 1, 2, 3]
    assert seen[0][1] < 0.3  # the first value came before the generator finished (≥ 0.9 s)
    assert seen[-1][1] >= 0.85


async def test_leaving_a_stream_early_stops_the_generator_on_the_worker(mod) -> None:
    before = (await mod.state())["closed"]
    async for value in mod.count.stream(1000, 0.05):
        if value == 2:
            break
    for _ in range(50):
        if (await mod.state())["closed"] == before + 1:
            break
        await asyncio.sleep(0.05)
    assert (await mod.state())["closed"] == before + 1


async def test_map_keeps_order_bounds_concurrency_and_returns_exceptions(mod) -> None:
    assert await mod.double.map(range(20), concurrency=4) == [2 * i for i in range(20)]
    assert (await mod.state())["peak"] <= 4
    results = await mod.double.map([1, "boom", 3], return_exceptions=True)
    assert results[0] == 2 and results[2] == 6 and isinstance(results[1], ValueError)
    with pytest.raises(ValueError, match="boom"):
        await mod.double.map([1, "boom"])


async def test_per_call_timeout(mod) -> None:
    assert await mod.nap.with_options(timeout=5)(0.1) == 0.1
    started = time.monotonic()
    with pytest.raises(CallTimeoutError):
        await mod.nap.with_options(timeout=0.3)(10)
    assert time.monotonic() - started < 3


async def test_200_mb_array_round_trips(mod) -> None:
    array = np.random.default_rng(0).random(25_000_000)  # 200 MB
    back = await mod.echo(array)
    assert back.shape == array.shape and np.array_equal(back, array)
    assert back.flags.writeable
    back[0] = -1.0  # a writable array, not a view of a read-only message


async def test_calls_wait_for_room_on_a_full_worker_and_a_timeout_ends_the_wait(mod) -> None:
    # One slot and a queue of one: the worker refuses the rest, which wait in the client for room.
    results = await asyncio.gather(*(mod.narrow(0.2) for _ in range(5)))
    assert results == [0.2] * 5
    blockers = [asyncio.create_task(mod.narrow(1.0)) for _ in range(2)]
    await asyncio.sleep(0.2)
    started = time.monotonic()
    with pytest.raises(OverloadedError, match="stayed full for .* until the call's timeout"):
        await mod.narrow.with_options(timeout=0.3)(0.01)
    assert time.monotonic() - started < 1.5
    assert await asyncio.gather(*blockers) == [1.0, 1.0]
    assert await mod.narrow(0.01) == 0.01
