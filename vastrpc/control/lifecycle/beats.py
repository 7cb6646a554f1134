"""Heartbeats kept in memory as they arrive and written to the store together, once per ``flush_interval``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vastrpc._errors import NotFoundError
from vastrpc.control.stores.base import Store, WorkerRow

if TYPE_CHECKING:
    from vastrpc.control.snapshots import Snapshot

__all__ = ["HeartbeatBatch"]


@dataclass
class _Answer:
    """What a worker's heartbeats are answered, as read at its endpoint's change ``version``."""

    endpoint_id: str
    version: int
    taken: float
    stop: bool


class HeartbeatBatch:
    """The control service's heartbeats: answered from memory, written to the store in batches.

    A heartbeat written as it comes is a store transaction per beat (an UPDATE, a commit, the
    row read back, the endpoint read for the answer): at a thousand workers beating once a
    second, the largest share of the service's work once the gRPC call itself is a message on
    a stream. Here a beat is kept in memory (its time and load, the latest per worker) and
    every beat that came within ``flush_interval`` is written in one statement batch. What
    reads heartbeats from the store (the heartbeat check, the autoscaler, the reaper, a
    listing) calls ``flush`` first; another service sharing the store (``--peer``) sees a
    beat at most ``flush_interval`` late, well inside the heartbeat timeout (at least 10 s).

    Whether a worker must stop (it was stopped or failed, its endpoint stopped or gone) is
    read from the store once and kept until its endpoint changes (``version``, the
    lifecycle's count of its changes) or for ``max_age`` seconds, which bounds how late a
    change no ``changed`` announced (another service's, on a shared store) is told. After a
    change, the watches' snapshot of the endpoint (``peek``), once current, answers without a
    read: a flip of one worker does not make the thousand others' next beats read the store.

    Args:
        store: Where heartbeats are written and workers read.
        version: An endpoint's change count now (``Lifecycle.change_version``).
        adopt: Called with a worker's row when it is read (``Lifecycle.adopt_reporting``).
        flush_interval: Seconds a beat waits at most before it is written.
        max_age: Seconds a stop answer is reused for while its endpoint does not change.
    """

    def __init__(
        self,
        store: Store,
        version: Callable[[str], int],
        adopt: Callable[[WorkerRow], None],
        flush_interval: float = 1.0,
        max_age: float = 1.0,
    ) -> None:
        self._store = store
        self._version = version
        self._adopt = adopt
        self.flush_interval = flush_interval
        self.max_age = max_age
        # The shared snapshot of a watched endpoint, when current (``Snapshots.peek``; set by the service).
        self.peek: Callable[[str], Snapshot | None] = lambda endpoint_id: None
        self._pending: dict[str, dict[str, float | int]] = {}
        self._answers: dict[str, _Answer] = {}
        self._timer: asyncio.TimerHandle | None = None

    def record(self, worker_id: str, calls_in_flight: int, calls_queued: int = 0, calls_started: int = 0) -> bool:
        """Take a worker's heartbeat; True when the worker should stop (NotFoundError: no such worker)."""
        answer = self._answer(worker_id)
        self._pending[worker_id] = {
            "last_heartbeat": time.time(),
            "calls_in_flight": calls_in_flight,
            "calls_queued": calls_queued,
            "calls_started": calls_started,
        }
        if self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self.flush_interval, self.flush)
            except RuntimeError:  # no loop runs (a test calling in directly): written now
                self.flush()
        return answer.stop

    def _answer(self, worker_id: str) -> _Answer:
        answer = self._answers.get(worker_id)
        now = time.monotonic()
        if (
            answer is not None
            and answer.version == self._version(answer.endpoint_id)
            and now - answer.taken < self.max_age
        ):
            return answer
        if answer is not None and (snapshot := self.peek(answer.endpoint_id)) is not None:
            # The endpoint changed, and the watches' snapshot of it is current: no read.
            row = snapshot.worker(worker_id)
            if row is not None:
                stop = row.state == "failed" or snapshot.endpoint.state == "stopped"
                answer = self._answers[worker_id] = _Answer(answer.endpoint_id, snapshot.version, now, stop)
                return answer
        worker = self._store.get_worker(worker_id)
        if worker is None:
            self._answers.pop(worker_id, None)
            self._pending.pop(worker_id, None)
            raise NotFoundError(f"no worker {worker_id!r}")
        # Nothing awaits between the reads: no change of this service's falls between them.
        version = self._version(worker.endpoint_id)
        endpoint = self._store.get_endpoint(worker.endpoint_id)
        self._adopt(worker)  # when another service placed it
        stop = worker.state in ("stopped", "failed") or endpoint is None or endpoint.state == "stopped"
        if len(self._answers) >= 100_000:
            self._answers.clear()
        answer = self._answers[worker_id] = _Answer(worker.endpoint_id, version, now, stop)
        return answer

    def flush(self) -> None:
        """Write every heartbeat not written yet, in one transaction."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        batch = getattr(self._store, "record_heartbeats", None)
        if batch is not None:
            batch(pending)  # one statement batch (SQLite)
            return
        # Elsewhere one single-row update each, as before: on PostgreSQL those take no lock.
        for worker_id, values in pending.items():
            try:
                self._store.update_worker(worker_id, **values)
            except KeyError:
                pass  # gone meanwhile
