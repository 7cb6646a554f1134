"""How the client chooses a worker for each call."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from vastrpc.client.connection import WorkerConnection

__all__ = ["BALANCERS", "EXACT_UP_TO", "Balancer", "LeastExpectedTime", "RoundRobin", "WorkerPool"]

# Up to this many workers every pick looks at each of them; beyond, at a sample (LeastExpectedTime).
EXACT_UP_TO = 16

Usable = Callable[[WorkerConnection], bool]


def _any(_conn: WorkerConnection) -> bool:
    return True


class Balancer(Protocol):
    """Picks one of the workers that ``usable`` admits (all of them without it); None when it admits none."""

    def pick(self, candidates: Sequence[WorkerConnection], usable: Usable = _any) -> WorkerConnection | None: ...


class LeastExpectedTime:
    """The worker expected to finish a new call soonest (the default).

    Expected time = the worker's smoothed service time per call (seeded by its benchmark
    score, then measured) × max(1, (calls in flight + 1) / its capacity) × a penalty for
    recent failures, so a worker that is slower, busier or failing gets fewer calls, and
    one that speeds up gets more within a few calls.

    Among more than ``EXACT_UP_TO`` workers it takes the best of a random sample of
    log2(n) of them (the "power of d choices"): a scan of every worker on every call would
    cost more than the call's routing should at a thousand workers, while the best of a few
    random ones already keeps the load even and lets the fast ones take more. Only when none
    of the sample is usable (most workers full) does it look at them all.
    """

    def __init__(self) -> None:
        self._random = random.Random().random

    def pick(self, candidates: Sequence[WorkerConnection], usable: Usable = _any) -> WorkerConnection | None:
        n = len(candidates)
        if n > EXACT_UP_TO:
            draw = self._random
            sample = (candidates[int(draw() * n)] for _ in range(int(math.log2(n))))
            best = _least(sample, usable)
            if best is not None:
                return best
        return _least(candidates, usable)


def _least(candidates: Iterable[WorkerConnection], usable: Usable) -> WorkerConnection | None:
    best, least = None, math.inf
    for conn in candidates:
        if usable(conn) and (wait := conn.expected_wait()) < least:
            best, least = conn, wait
    return best


class RoundRobin:
    """Each worker in turn, regardless of speed or load: the baseline the benchmarks compare against."""

    def __init__(self) -> None:
        self._turn = itertools.count()

    def pick(self, candidates: Sequence[WorkerConnection], usable: Usable = _any) -> WorkerConnection | None:
        ordered = sorted((c for c in candidates if usable(c)), key=lambda c: c.worker_id)
        return ordered[next(self._turn) % len(ordered)] if ordered else None


class WorkerPool(dict[str, WorkerConnection]):
    """The router's connections by worker id, and a tuple of them kept between changes for the picks."""

    _connections: tuple[WorkerConnection, ...] | None = None

    def __setitem__(self, worker_id: str, conn: WorkerConnection) -> None:
        super().__setitem__(worker_id, conn)
        self._connections = None

    def __delitem__(self, worker_id: str) -> None:
        super().__delitem__(worker_id)
        self._connections = None

    def pop(self, worker_id: str, *default: WorkerConnection) -> WorkerConnection:  # type: ignore[override]
        self._connections = None
        return super().pop(worker_id, *default)

    def clear(self) -> None:
        super().clear()
        self._connections = None

    def popitem(self) -> tuple[str, WorkerConnection]:
        self._connections = None
        return super().popitem()

    def update(self, *args: object, **kwargs: WorkerConnection) -> None:  # type: ignore[override]
        super().update(*args, **kwargs)  # type: ignore[arg-type]
        self._connections = None

    def setdefault(self, worker_id: str, conn: WorkerConnection) -> WorkerConnection:  # type: ignore[override]
        self._connections = None
        return super().setdefault(worker_id, conn)

    def connections(self) -> tuple[WorkerConnection, ...]:
        """Every connection, in a tuple rebuilt only after the workers changed."""
        if self._connections is None:
            self._connections = tuple(self.values())
        return self._connections


BALANCERS: dict[str, type[Balancer]] = {"least_expected_time": LeastExpectedTime, "round_robin": RoundRobin}
