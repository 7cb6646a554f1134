"""bench/all.py cold: cold start of a new deployment (package, register, upload, new worker, benchmark, call).

Without pip packages, and with numpy as the one pip package, already in uv's cache (a warm-up
deployment puts it there; each timed run asks for it under a specifier never asked before, so that
its worker installs a fresh environment from the cache rather than reusing an earlier one). Each run
starts after ``--cold-idle`` seconds with no deployment, as on a service that is running anyway
(the local provider's spare agent is back by then). The deploy progress records when each step
ended and when the watch first showed each worker state.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from all_harness import NOOP, Bench

from vastrpc.deploy import progress

NUMPY = NOOP.replace("{autoscaling}", 'app.image("python:3.11-slim").pip_install("{spec}")\nimport numpy')


@contextmanager
def _timeline(seen: dict[str, float], t0: list[float]) -> Iterator[None]:
    """Record in ``seen`` when each deploy step ended and each worker state first showed (s after ``t0[0]``)."""
    plain = progress.PlainProgress
    step_done, workers = plain.step_done, plain.workers

    def on_step(self: Any, step: str, summary: str) -> None:
        seen.setdefault(step, time.perf_counter() - t0[0])
        step_done(self, step, summary)

    def on_workers(self: Any, ready: int, wanted: int, states: Sequence[tuple[str, str]]) -> None:
        for _, state in states:
            seen.setdefault(state, time.perf_counter() - t0[0])
        workers(self, ready, wanted, states)

    plain.step_done, plain.workers = on_step, on_workers  # type: ignore[method-assign]
    try:
        yield
    finally:
        plain.step_done, plain.workers = step_done, workers  # type: ignore[method-assign]


async def _runs(b: Bench, key: str, make: Any, runs: int) -> None:
    times, timelines = [], []
    for i in range(runs):
        fresh = make(i)
        await asyncio.sleep(b.opts.cold_idle)
        seen: dict[str, float] = {}
        t0 = [time.perf_counter()]
        with _timeline(seen, t0):
            await fresh.noop(1)
        elapsed = time.perf_counter() - t0[0]
        times.append(elapsed)
        timelines.append({**seen, "first result": elapsed})
        b.log(f"{key} {i + 1}: {elapsed:.2f} s {seen}")
        await b.teardown(fresh.app)
    b.results[f"{key}_s"] = statistics.median(times)
    b.results[f"{key}_all_s"] = times
    b.results[f"{key}_timelines"] = timelines


async def cold(b: Bench) -> None:
    await _runs(b, "cold_start", lambda i: b.module("cold", NOOP, autoscaling=""), b.opts.cold_runs)
    if b.opts.no_numpy:
        return
    warm = b.module("coldnp", NUMPY, spec="numpy")  # puts numpy in uv's cache, if it is not there yet
    await warm.noop(1)
    await b.teardown(warm.app)
    # A specifier no earlier run (of this or another benchmark: the worker user's home keeps
    # its environments) asked for, and numpy 2 meets.
    base = random.randrange(10**8)
    fresh = lambda i: b.module("coldnp", NUMPY, spec=f"numpy>=1.{base + i}")  # noqa: E731
    await _runs(b, "cold_start_numpy", fresh, b.opts.cold_runs)
