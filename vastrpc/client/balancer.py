"""How the client chooses a worker for each call."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Protocol

from vastrpc.client.connection import WorkerConnection

__all__ = ["BALANCERS", "Balancer", "LeastExpectedTime", "RoundRobin"]


class Balancer(Protocol):
    """Picks one of the ready, non-draining workers for the next call."""

    def pick(self, candidates: Sequence[WorkerConnection]) -> WorkerConnection: ...


class LeastExpectedTime:
    """The worker expected to finish a new call soonest (the default).

    Expected time = the worker's smoothed service time per call (seeded by its benchmark
    score, then measured) × max(1, (calls in flight + 1) / its capacity) × a penalty for
    recent failures, so a worker that is slower, busier or failing gets fewer calls, and
    one that speeds up gets more within a few calls.
    """

    def pick(self, candidates: Sequence[WorkerConnection]) -> WorkerConnection:
        return min(candidates, key=WorkerConnection.expected_wait)


class RoundRobin:
    """Each worker in turn, regardless of speed or load: the baseline the benchmarks compare against."""

    def __init__(self) -> None:
        self._turn = itertools.count()

    def pick(self, candidates: Sequence[WorkerConnection]) -> WorkerConnection:
        ordered = sorted(candidates, key=lambda c: c.worker_id)
        return ordered[next(self._turn) % len(ordered)]


BALANCERS: dict[str, type[Balancer]] = {"least_expected_time": LeastExpectedTime, "round_robin": RoundRobin}
