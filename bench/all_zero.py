"""bench/all.py zero: cold start from zero workers, with when the endpoint watch showed each worker state."""

from __future__ import annotations

import asyncio
import statistics
import time

from all_harness import NOOP, Bench

from vastrpc.api.v1 import common_pb2
from vastrpc.client.control import ControlClient

STATE_NAMES = {v: k.removeprefix("WORKER_STATE_").lower() for k, v in common_pb2.WorkerState.items()}


async def _live_workers(client: ControlClient, name: str) -> int:
    listing = await client.list_deployments(name)
    return sum(
        1
        for d in listing.deployments
        for e in d.endpoints
        for w in e.workers
        if w.state != common_pb2.WORKER_STATE_STOPPED
    )


async def zero(b: Bench) -> None:
    autoscaling = "app.configure_autoscaling(min_workers=0, max_workers=1, inactivity_timeout=1)"
    mod = b.module("zero", NOOP, autoscaling=autoscaling)
    deployed = await mod.app.ensure_ready()
    client = await ControlClient.connect(b.control.config)
    runs: list[float] = []
    timelines: list[dict[str, float]] = []
    try:
        for i in range(b.opts.cold_runs):
            await mod.noop(1)  # in use: the next scale to zero counts from here
            deadline = time.monotonic() + b.opts.zero_wait
            while await _live_workers(client, mod.app.name):
                if time.monotonic() > deadline:
                    b.results["zero_skipped"] = (
                        f"the endpoint did not scale to zero within {b.opts.zero_wait:g} s (min_workers=0, "
                        "inactivity_timeout=1): scale-to-zero is not working"
                    )
                    return
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.5)  # let the stopped worker's processes go
            seen: dict[str, float] = {}

            async def watch(t0: float, seen: dict[str, float]) -> None:
                known: set[str] = set()
                async for update in client.watch(deployed.endpoint_id):
                    for w in update.workers:
                        if w.state == common_pb2.WORKER_STATE_STOPPED:
                            known.add(w.worker_id)
                        elif w.worker_id not in known:
                            seen.setdefault(STATE_NAMES[w.state], time.perf_counter() - t0)

            t0 = time.perf_counter()
            watcher = asyncio.get_running_loop().create_task(watch(t0, seen))
            await mod.noop(1)
            elapsed = time.perf_counter() - t0
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            runs.append(elapsed)
            timelines.append({**seen, "first result": elapsed})
            b.log(f"cold start from zero {i + 1}: {elapsed:.2f} s {seen}")
    finally:
        await client.close()
    b.results["zero_cold_start_s"] = statistics.median(runs)
    b.results["zero_cold_start_all_s"] = runs
    b.results["zero_timelines"] = timelines
    await b.teardown(mod.app)
