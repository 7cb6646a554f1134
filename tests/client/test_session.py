"""End to end: sessions pin calls to one worker, live on with each call, and fail clearly when it goes."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from vastrpc import SessionLostError, WorkerUnavailableError
from vastrpc.client.control import ControlClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SOURCE = """
import asyncio, os
from vastrpc import Deployment

app = Deployment(name="{name}")
app.configure_autoscaling(min_workers=2, max_workers=2)

# A representative benchmark (the calls below take 0.1 s): both workers score alike, so the
# balancer spreads a burst. With a zero-length one, whichever serving process ran it faster
# (a pre-started one) scored far higher, and a first burst all went to it.
@app.remote(benchmark_dataset=[{{"seconds": 0.1}}], max_concurrency=2)
async def where(seconds: float = 0.0) -> int:
    await asyncio.sleep(seconds)
    return os.getpid()
"""


@pytest.fixture
async def mod(project):
    module = project(SOURCE)
    await module.app.ensure_ready()
    return module


async def test_a_sessions_calls_all_land_on_one_worker_while_unpinned_calls_spread(mod) -> None:
    unpinned = set(await asyncio.gather(*(mod.where(0.1) for _ in range(12))))
    assert len(unpinned) == 2  # two workers, two serving processes

    async with mod.app.session(ttl=60) as s:
        first = await s.call_with_info(mod.where)
        pinned = {first.value}
        for _ in range(5):
            pinned.add(await s.call(mod.where))
        # Concurrent calls too: more than one worker's slots, still one worker (the rest wait for room).
        pinned |= set(await asyncio.gather(*(s.call(mod.where, 0.1) for _ in range(6))))
        assert pinned == {first.value}
        assert s.worker_id == first.worker_id
    assert s.closed
    with pytest.raises(SessionLostError, match="was closed"):
        await s.call(mod.where)


async def test_a_session_lives_on_with_each_call_and_ends_after_ttl_idle(mod) -> None:
    s = mod.app.session(ttl=1.0)
    pid = await s.call(mod.where)
    for _ in range(3):  # 1.8 s in all, each call within the ttl of the one before
        await asyncio.sleep(0.6)
        assert await s.call(mod.where) == pid
    await asyncio.sleep(1.3)
    with pytest.raises(SessionLostError, match="expired after 1s without a call") as raised:
        await s.call(mod.where)
    assert raised.value.worker_id == s.worker_id
    await s.close()


async def test_calls_fail_promptly_with_the_worker_when_the_pinned_worker_dies(mod) -> None:
    async with mod.app.session(ttl=60) as s:
        pid = await s.call(mod.where)
        os.kill(pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(SessionLostError) as raised:
            await s.call(mod.where)
        assert time.monotonic() - started < 5
        assert isinstance(raised.value, WorkerUnavailableError)
        assert raised.value.worker_id == s.worker_id
        assert s.worker_id in str(raised.value) and "not sent to another worker" in str(raised.value)
        # Never moved: the session stays lost, while unpinned calls go on on the other worker.
        with pytest.raises(SessionLostError):
            await s.call(mod.where)
    assert await mod.where() != pid


async def test_the_control_service_holds_a_session_only_on_an_active_worker(project, mod) -> None:
    endpoint = await project.endpoint(mod.app)
    worker_id = endpoint["workers"][0]["worker_id"]
    client: ControlClient = await project._client()
    try:
        assert await client.hold_session(endpoint["endpoint_id"], "s-test", worker_id, 30.0)
        assert not await client.hold_session(endpoint["endpoint_id"], "s-test", "w-nonesuch", 30.0)
        assert await client.hold_session(endpoint["endpoint_id"], "s-test", worker_id, 0.0)  # released
    finally:
        await client.close()
