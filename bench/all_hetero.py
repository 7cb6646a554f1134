"""bench/all.py hetero: a fast and a slow worker, the default balancer against round-robin and their capacity."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import shutil
import tempfile
import textwrap
import time
from pathlib import Path

from all_harness import Bench

from vastrpc.client.balancer import RoundRobin

# Two workers: whichever claims the file "fast" first sleeps FAST s a call, the other SLOW s.
HETERO = textwrap.dedent(
    """
    import asyncio, os
    from vastrpc import Deployment, get_context

    app = Deployment(name="{name}")
    app.image("python:3.11-slim").env(CLAIM_DIR={claims!r})
    app.configure_autoscaling(min_workers=2, max_workers=2)

    @app.context
    class Speed:
        async def __aenter__(self):
            try:
                os.close(os.open(os.path.join(os.environ["CLAIM_DIR"], "fast"), os.O_CREAT | os.O_EXCL))
                self.name, self.delay = "fast", {fast}
            except FileExistsError:
                self.name, self.delay = "slow", {slow}
            return self
        async def __aexit__(self, *exc):
            pass

    @app.remote(benchmark_dataset=[{{}}], max_concurrency={concurrency})
    async def work() -> str:
        speed = get_context(Speed)
        await asyncio.sleep(speed.delay)
        return speed.name
    """
)
HETERO_FAST, HETERO_SLOW, HETERO_CONCURRENCY = 0.01, 0.03, 4


async def hetero(b: Bench) -> None:
    # Outside the bench's private folder, open to all: the workers may run as another user.
    claims = Path(tempfile.mkdtemp(prefix="vastrpc-bench-claims-"))
    claims.chmod(0o1777)
    mod = b.module(
        "hetero", HETERO, claims=str(claims), fast=HETERO_FAST, slow=HETERO_SLOW, concurrency=HETERO_CONCURRENCY
    )
    config = mod.app._config
    capacity = HETERO_CONCURRENCY / HETERO_FAST + HETERO_CONCURRENCY / HETERO_SLOW
    b.results["hetero_capacity"] = capacity
    b.results["hetero_setup"] = (
        f"2 workers, max_concurrency {HETERO_CONCURRENCY}, asyncio.sleep {HETERO_FAST * 1e3:g} ms / "
        f"{HETERO_SLOW * 1e3:g} ms, {b.opts.hetero_in_flight} calls in flight"
    )

    async def run(balancer: str) -> None:
        mod.app._config = dataclasses.replace(config, balancer=balancer)
        result = await mod.app.ensure_ready()
        assert result.ready_workers == 2 or result.tier != 4, result
        semaphore = asyncio.Semaphore(b.opts.hetero_in_flight)

        async def one() -> str:
            async with semaphore:
                return await mod.work()  # type: ignore[no-any-return]

        await asyncio.gather(*(one() for _ in range(200)))  # warm-up: the balancer learns the latencies
        t = time.perf_counter()
        shares = collections.Counter(await asyncio.gather(*(one() for _ in range(b.opts.hetero_calls))))
        rate = b.opts.hetero_calls / (time.perf_counter() - t)
        b.results[f"hetero_{balancer}_throughput"] = rate
        b.results[f"hetero_{balancer}_fast_share"] = shares["fast"] / b.opts.hetero_calls
        await mod.app.close()
        b.log(f"hetero {balancer}: {rate:.0f} calls/s, {dict(shares)}")

    await run("least_expected_time")
    await run("round_robin")
    mod.app._config = config

    # Each worker's real capacity: all calls pinned to it alone, same client, same load.
    await mod.app.ensure_ready()
    router = mod.app._handle.session.router
    default_balancer = router.balancer
    router.balancer = RoundRobin()  # to meet both workers
    ids: dict[str, str] = {}
    while len(ids) < 2:
        info = await mod.work.call_with_info()
        ids[info.value] = info.worker_id
    measured = 0.0
    for name in ("fast", "slow"):
        router.balancer = _Pinned(ids[name])
        limit = asyncio.Semaphore(b.opts.hetero_in_flight)

        async def pinned(limit: asyncio.Semaphore = limit) -> None:
            async with limit:
                await mod.work()

        calls = b.opts.hetero_calls // (2 if name == "fast" else 6)
        await asyncio.gather(*(pinned() for _ in range(50)))
        t = time.perf_counter()
        await asyncio.gather(*(pinned() for _ in range(calls)))
        rate = calls / (time.perf_counter() - t)
        b.results[f"hetero_{name}_alone"] = rate
        measured += rate
        b.log(f"hetero {name} worker alone: {rate:.0f} calls/s")
    router.balancer = default_balancer
    b.results["hetero_measured_capacity"] = measured
    await mod.app.close()
    await b.teardown(mod.app)
    shutil.rmtree(claims, ignore_errors=True)


class _Pinned:
    """A balancer that sends every call to one worker: to measure that worker's own capacity."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id

    def pick(self, candidates, usable=lambda c: True):  # type: ignore[no-untyped-def]
        return next((c for c in candidates if c.worker_id == self.worker_id and usable(c)), None)
