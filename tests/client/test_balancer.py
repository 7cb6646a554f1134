"""The balancer: unit checks of each policy, and two real workers where one is 3× slower."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
from pathlib import Path

import pytest

from vastrpc.client.balancer import EXACT_UP_TO, LeastExpectedTime, RoundRobin, WorkerPool
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


def _fleet(n: int, fast_every: int = 0) -> list[WorkerConnection]:
    """``n`` idle connections (never dialled); every ``fast_every``-th one 3x faster."""
    fast = [bool(fast_every) and i % fast_every == 0 for i in range(n)]
    scores = [300 if f else 100 for f in fast]
    return [WorkerConnection(f"w-{i:05d}", "127.0.0.1:9", "t", score=scores[i], capacity=4) for i in range(n)]


async def _close(conns: list[WorkerConnection]) -> None:
    await asyncio.gather(*(c.close() for c in conns))


async def test_a_large_endpoint_is_sampled_log_n_workers_per_pick() -> None:
    conns = _fleet(10_000)
    looked: list[WorkerConnection] = []

    def usable(c: WorkerConnection) -> bool:
        looked.append(c)
        return True

    try:
        balancer = LeastExpectedTime()
        for _ in range(50):
            looked.clear()
            assert balancer.pick(conns, usable) in looked
            assert len(looked) <= math.log2(10_000)
        # Small endpoints are looked at whole: the pick is the exact least expected time.
        looked.clear()
        balancer.pick(conns[:EXACT_UP_TO], usable)
        assert len(looked) == EXACT_UP_TO
    finally:
        await _close(conns)


async def test_sampling_keeps_load_even_and_favours_faster_workers() -> None:
    conns = _fleet(1_000, fast_every=2)
    try:
        balancer = LeastExpectedTime()
        for _ in range(4_000):  # calls that never end: 4 per worker on average
            balancer.pick(conns).in_flight += 1  # type: ignore[union-attr]
        loads = [c.in_flight for c in conns]
        fast = sum(c.in_flight for c in conns if c.score == 300)
        assert max(loads) <= 12, max(loads)
        assert fast >= 1.5 * (4_000 - fast), fast  # expected-time picks: the 3x faster half takes more
    finally:
        await _close(conns)


async def test_only_usable_workers_are_picked_even_when_few_are() -> None:
    conns = _fleet(1_000)
    roomy = {conns[7].worker_id, conns[500].worker_id}
    try:
        balancer = LeastExpectedTime()
        for _ in range(20):  # a sample rarely holds one of the two: the pick then looks at every worker
            picked = balancer.pick(conns, lambda c: c.worker_id in roomy)
            assert picked is not None and picked.worker_id in roomy
        assert balancer.pick(conns, lambda c: False) is None
        assert RoundRobin().pick(conns, lambda c: False) is None
    finally:
        await _close(conns)


async def test_worker_pool_keeps_its_tuple_current() -> None:
    a, b = _fleet(2)
    try:
        pool = WorkerPool({a.worker_id: a})
        assert pool.connections() == (a,)
        pool[b.worker_id] = b
        assert pool.connections() == (a, b)
        pool.pop(a.worker_id)
        assert pool.connections() == (b,)
        del pool[b.worker_id]
        assert pool.connections() == ()
    finally:
        await _close([a, b])


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
