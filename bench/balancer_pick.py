"""The client's choice of a worker among n ready ones, µs per call — `python bench/balancer_pick.py`.

Times what the router does for each call: the workers that take calls (not draining, not
refusing, under ``max_queue_time``), then the balancer's pick among them
(``Router._roomy`` with ``LeastExpectedTime``) — over n = 10, 100, 1,000 and 10,000 ready
workers with uneven speeds and loads. Baseline in the same run: the linear scan the router
did before (every worker checked, then ``min`` by expected time).
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine  # noqa: E402

from vastrpc.client.balancer import LeastExpectedTime  # noqa: E402
from vastrpc.client.connection import WorkerConnection  # noqa: E402
from vastrpc.client.router import Router  # noqa: E402

SIZES = (10, 100, 1_000, 10_000)


def _linear(router: Router) -> WorkerConnection | None:
    """The baseline: the router's pick before issue 18, a full scan per call."""
    now = time.monotonic()
    limit = router.max_queue_time
    candidates = [c for c in router.workers.values() if not c.draining]
    roomy = [c for c in candidates if c.full_until <= now and (limit <= 0 or c.expected_queue_time() <= limit)]
    return min(roomy, key=WorkerConnection.expected_wait) if roomy else None


def _time(pick: Callable[[], object], seconds: float = 0.3) -> float:
    """µs per call of ``pick``, the best of three rounds of about ``seconds`` each."""
    best = float("inf")
    for _ in range(3):
        n, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            for _ in range(100):
                pick()
            n += 100
        best = min(best, elapsed / n * 1e6)
    return best


def _pick(router: Router) -> Callable[[], object]:
    """What the router does to choose a worker for a call (``Router._pick`` without the waiting)."""
    return lambda: router._roomy(router._candidates())


async def _router(n: int) -> Router:
    rng = random.Random(n)
    workers = []
    for i in range(n):
        conn = WorkerConnection(f"w-{i:05d}", "127.0.0.1:9", "t", score=rng.uniform(50, 500), capacity=4)
        conn.in_flight = rng.randrange(0, 6)  # some busy, a few beyond their slots
        workers.append(conn)
    return Router(None, "e-bench", workers=workers, max_queue_time=1.0)


async def _curve() -> list[dict[str, float]]:
    rows = []
    for n in SIZES:
        router = await _router(n)
        assert isinstance(router.balancer, LeastExpectedTime)
        row = {"workers": n, "vastrpc_us": _time(_pick(router)), "linear_us": _time(functools.partial(_linear, router))}
        rows.append(row)
        print(
            f"  {n:>6} ready workers: {row['vastrpc_us']:8.2f} µs per pick "
            f"(linear scan {row['linear_us']:8.2f} µs, {row['linear_us'] / row['vastrpc_us']:.1f}×)",
            flush=True,
        )
        await asyncio.gather(*(c.close() for c in router.workers.values()))
    return rows


def curve() -> list[dict[str, float]]:
    """The pick's cost over ``SIZES`` ready workers, printed and returned."""
    print(f"the client's choice of a worker — load {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    return asyncio.run(_curve())


if __name__ == "__main__":
    print(machine())
    curve()
