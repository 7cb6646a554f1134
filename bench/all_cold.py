"""bench/all.py cold: cold start of a new deployment (package, register, upload, new worker, benchmark, call)."""

from __future__ import annotations

import statistics
import time

from all_harness import NOOP, Bench


async def cold(b: Bench) -> None:
    runs = []
    for _ in range(b.opts.cold_runs):
        fresh = b.module("cold", NOOP, autoscaling="")
        t = time.perf_counter()
        await fresh.noop(1)
        runs.append(time.perf_counter() - t)
        await b.teardown(fresh.app)
    b.results["cold_start_s"] = statistics.median(runs)
    b.results["cold_start_all_s"] = runs
