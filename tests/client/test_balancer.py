"""The balancer: unit checks of each policy, and two real workers where one is 3× slower."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from pathlib import Path

import pytest

from vastrpc.client.balancer import LeastExpectedTime, RoundRobin
from vastrpc.client.connection import WorkerConnection


async def test_policies_pick_as_documented() -> None:
    fast = WorkerConnection("w-a", "127.0.0.1:1", "t", score=300, capacity=4)
    slow = WorkerConnection("w-b", "127.0.0.1:2", "t", score=100, capacity=4)
    try:
        assert LeastExpectedTime().pick([fast, slow]) is fast
        fast.in_flight = 12  # busy enough that the slow one finishes sooner
        assert LeastExpectedTime().pick([fast, slow]) is slow
        fast.in_flight, fast.failures = 0, 3  # failing
        assert LeastExpectedTime().pick([fast, slow]) is slow
        rr = RoundRobin()
        assert [rr.pick([slow, fast]).worker_id for _ in range(4)] == ["w-a", "w-b", "w-a", "w-b"]
    finally:
        await fast.close()
        await slow.close()


SOURCE = """
import asyncio, os
from vastrpc import Deployment, get_context

app = Deployment(name="{name}")
app.image("python:3.11-slim").env(CLAIM_DIR={claims!r})
app.configure_autoscaling(min_workers=2, max_workers=2)

@app.context
class Speed:
    async def __aenter__(self):
        # The first worker to claim "fast" is fast; the other is 3x slower.
        try:
            os.close(os.open(os.path.join(os.environ["CLAIM_DIR"], "fast"), os.O_CREAT | os.O_EXCL))
            self.name, self.delay = "fast", 0.01
        except FileExistsError:
            self.name, self.delay = "slow", 0.03
        return self
    async def __aexit__(self, *exc):
        pass

@app.remote(benchmark_dataset=[{{}}], max_concurrency=4)
async def work() -> str:
    speed = get_context(Speed)
    # A test turns a worker slow by creating a file named after it.
    slowdown = 9 if os.path.exists(os.path.join(os.environ["CLAIM_DIR"], "slow-" + speed.name)) else 1
    await asyncio.sleep(speed.delay * slowdown)
    return speed.name
"""


async def _shares(mod, calls: int, in_flight: int = 16) -> collections.Counter[str]:
    semaphore = asyncio.Semaphore(in_flight)

    async def one() -> str:
        async with semaphore:
            return await mod.work()

    return collections.Counter(await asyncio.gather(*(one() for _ in range(calls))))


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_faster_worker_gets_more_calls_than_round_robin_and_adapts(project, tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    claims.mkdir()
    smart = project(SOURCE.replace("{claims!r}", repr(str(claims))))
    await smart.app.ensure_ready()
    await _shares(smart, 100)  # warm up the latency estimates
    shares = await _shares(smart, 600)
    assert shares["fast"] >= 2 * shares["slow"], shares

    # The same client and workers, balanced round-robin: an even split whatever the speed.
    smart_config = smart.app._config
    await smart.app.close()
    smart.app._config = dataclasses.replace(smart_config, balancer="round_robin")
    assert (await smart.app.ensure_ready()).tier == 0
    rr_shares = await _shares(smart, 600)
    assert abs(rr_shares["fast"] - rr_shares["slow"]) <= 2, rr_shares
    await smart.app.close()
    smart.app._config = smart_config

    # The fast worker turns 9x slower (now 3x slower than the other): it gets fewer calls within seconds.
    (claims / "slow-fast").touch()
    await _shares(smart, 100)
    after = await _shares(smart, 400)
    assert after["slow"] >= 2 * after["fast"], after
