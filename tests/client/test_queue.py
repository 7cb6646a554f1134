"""The client's queue for calls that find every worker full (Vast's global queue), on in-process workers."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator

import pytest

from vastrpc import Deployment, OverloadedError
from vastrpc.client.connection import WorkerConnection
from vastrpc.client.router import Router
from vastrpc.serve.invoke import WorkerIdentity
from vastrpc.serve.process import start_worker_service

pytestmark = pytest.mark.timeout(60)

app = Deployment(name="queue-test")


@app.remote(benchmark_dataset=[{"x": 0}], max_concurrency=4, max_queue=8, max_queue_time=30)
async def work(x: int) -> int:
    await asyncio.sleep(0.002)
    return x


@app.remote(max_concurrency=1, max_queue=1, max_queue_time=30)
async def slow(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@contextlib.asynccontextmanager
async def workers(count: int, **router: float) -> AsyncIterator[Router]:
    """``count`` workers serving the app in this process, and a router over them (no control service)."""
    definition = app.describe()
    servers, conns = [], []
    try:
        for i in range(count):
            token = secrets.token_urlsafe(16)
            identity = WorkerIdentity(f"w-{i}", "local", "local")
            servicer, server, port, _ = await start_worker_service(definition, identity, 1000.0, token)
            servers.append(server)
            conns.append(WorkerConnection(f"w-{i}", f"127.0.0.1:{port}", token, 1000.0, servicer.capacity))
        routing = Router(None, "local", workers=conns, **router)
        try:
            yield routing
        finally:
            await routing.close()
    finally:
        await asyncio.gather(*(s.stop(None) for s in servers))


async def test_thousands_of_calls_on_full_workers_wait_for_room_and_none_fails() -> None:
    # Two workers of 4 + 5 slots (work, slow) with queues of 8 and 1: 5,000 calls at once would
    # have been refused by the hundreds; they wait in the client and all run.
    calls = 5000
    async with workers(2) as router:
        started = time.monotonic()
        results = await asyncio.gather(
            *(router.call("work", (i,), {}, timeout=60) for i in range(calls)), return_exceptions=True
        )
        wall = time.monotonic() - started
        failures = [r for r in results if isinstance(r, BaseException)]
        assert failures == [], (len(failures), failures[:3])
        assert sorted(r.value for r in results) == list(range(calls))  # type: ignore[union-attr]
        assert {r.worker_id for r in results} == {"w-0", "w-1"}  # type: ignore[union-attr]
        assert router.waiting == 0
    print(f"{calls} calls, 0 failed, {wall:.1f} s")


async def test_waiting_calls_go_first_come_first_served() -> None:
    async with workers(1) as router:
        # slow: one slot and a queue of one; the rest wait in the client, in order.
        tasks = []
        for i in range(6):
            tasks.append(asyncio.create_task(router.call("slow", (0.05 + i * 0.001,), {}, timeout=30)))
            await asyncio.sleep(0.01)
        results = await asyncio.gather(*tasks)
        assert [r.value for r in results] == [0.05 + i * 0.001 for i in range(6)]


async def test_a_call_that_cannot_get_room_within_its_timeout_fails_with_what_to_change() -> None:
    async with workers(1) as router:
        blockers = [asyncio.create_task(router.call("slow", (1.5,), {}, timeout=30)) for _ in range(2)]
        await asyncio.sleep(0.2)  # one runs, one waits in the worker's queue: the worker is full
        started = time.monotonic()
        with pytest.raises(OverloadedError) as refused:
            await router.call("slow", (0.01,), {}, timeout=0.5)
        waited = time.monotonic() - started
        assert 0.45 <= waited < 1.0, waited
        message = str(refused.value)
        assert "stayed full for 0.5s, until the call's timeout (0.5s) passed" in message
        assert "raise the call's timeout, max_workers in configure_autoscaling" in message
        assert [b.value for b in await asyncio.gather(*blockers)] == [1.5, 1.5]


async def test_a_worker_whose_expected_queue_is_above_max_queue_time_counts_as_full() -> None:
    fast = WorkerConnection("fast", "127.0.0.1:1", "t", score=10.0, capacity=2)  # 0.2 s a call
    slow = WorkerConnection("slow", "127.0.0.1:1", "t", score=1.0, capacity=2)  # 2 s a call
    router = Router(None, "local", workers=[fast, slow], max_queue_time=1.0)
    try:
        fast.in_flight, slow.in_flight = 14, 3  # 12 queued / 10 per s; 1 queued / 1 per s
        assert fast.expected_queue_time() == pytest.approx(1.2)
        assert slow.expected_queue_time() == pytest.approx(1.0)
        assert router._roomy([fast, slow]) is slow
        slow.in_flight = 4
        assert router._roomy([fast, slow]) is None  # both full: calls wait in the client
        # A worker that refused a call is full until a call of ours there ends.
        fast.in_flight = 0
        fast.full_until = time.monotonic() + 10
        assert router._roomy([fast, slow]) is None
        fast._ended(refused=False)
        assert router._roomy([fast, slow]) is fast
    finally:
        await router.close()
