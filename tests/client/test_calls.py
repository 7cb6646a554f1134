"""End to end: calls from the client — concurrency over one stream, cancellation, timeouts, two apps at once."""

from __future__ import annotations

import asyncio

import pytest

from vastrpc import CallTimeoutError

pytestmark = pytest.mark.e2e

SOURCE = """
import asyncio
from vastrpc import Deployment

app = Deployment(name="{name}")
STATE = {{"cancelled": 0, "running": 0, "peak": 0}}

@app.remote(benchmark_dataset=[{{"x": 1}}])
async def inc(x: int) -> int:
    return x + 1

@app.remote(max_concurrency=4)
async def sleepy(seconds: float) -> float:
    STATE["running"] += 1
    STATE["peak"] = max(STATE["peak"], STATE["running"])
    try:
        await asyncio.sleep(seconds)
        return seconds
    except asyncio.CancelledError:
        STATE["cancelled"] += 1
        raise
    finally:
        STATE["running"] -= 1

@app.remote
async def state() -> dict:
    return dict(STATE)
"""


async def test_many_concurrent_calls_multiplexed(project) -> None:
    mod = project(SOURCE)
    results = await asyncio.gather(*(mod.inc(i) for i in range(500)))
    assert results == [i + 1 for i in range(500)]


async def test_max_concurrency_caps_calls_on_a_worker(project) -> None:
    mod = project(SOURCE)
    await asyncio.gather(*(mod.sleepy(0.2) for _ in range(12)))
    assert (await mod.state())["peak"] == 4


async def test_cancelling_the_caller_cancels_the_call_on_the_worker(project) -> None:
    mod = project(SOURCE)
    await mod.app.ensure_ready()
    task = asyncio.create_task(mod.sleepy(30))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):
        if (await mod.state())["cancelled"] == 1:
            break
        await asyncio.sleep(0.05)
    assert (await mod.state())["cancelled"] == 1


async def test_timeout_raises_and_cancels_remotely(project) -> None:
    mod = project(SOURCE)
    await mod.app.ensure_ready()
    with pytest.raises(CallTimeoutError):
        await mod.sleepy.with_options(timeout=0.3)(30)
    for _ in range(50):
        if (await mod.state())["cancelled"] == 1:
            break
        await asyncio.sleep(0.05)
    assert (await mod.state())["cancelled"] == 1
