"""An endpoint and its workers as the watches see them: read from the store and encoded once per change."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vastrpc.api.v1 import control_pb2
from vastrpc.control.stores.base import EndpointRow, Store, WorkerRow

__all__ = ["Snapshot", "Snapshots"]

# Tells snapshots apart (a delta is kept per snapshot it starts from).
_serials = itertools.count(1)


@dataclass
class Snapshot:
    """An endpoint and its workers that are not stopped (oldest first), at one change of the endpoint."""

    version: int
    taken: float
    endpoint: EndpointRow
    workers: list[WorkerRow]
    serial: int = field(default_factory=lambda: next(_serials))
    _by_id: dict[str, WorkerRow] | None = field(default=None, repr=False)
    _encoded: tuple[control_pb2.WatchEndpointResponse, bytes] | None = field(default=None, repr=False)
    # For delta watches: the update without its workers, each worker's encoding without its
    # heartbeat time, and the deltas from earlier snapshots (by their serial) already built.
    _parts: tuple[bytes, dict[str, bytes]] | None = field(default=None, repr=False)
    _deltas: dict[int, bytes | None] = field(default_factory=dict, repr=False)

    def worker(self, worker_id: str) -> WorkerRow | None:
        """The worker's row; None when it is stopped or of another endpoint."""
        if self._by_id is None:
            self._by_id = {w.id: w for w in self.workers}
        return self._by_id.get(worker_id)


class Snapshots:
    """The latest snapshot of each watched endpoint, shared by all its watches.

    Every watch of an endpoint wakes at each change of it: without sharing, a hundred
    clients watching an endpoint of a thousand workers read and encode the thousand rows a
    hundred times per change, and the thousand workers' own watches read theirs a thousand
    times. A snapshot is read again once the endpoint changed (``version``: the lifecycle's
    count of its changes) or once it is ``max_age`` seconds old, which bounds how long a
    write that woke nobody (another service's, on a shared store) stays unseen. While
    changes come faster than one per ``min_interval`` (a thousand workers starting at once),
    the watches of an endpoint of ``throttle_from`` workers or more wait out the rest of it and
    share one read for all of them (``current``). A smaller endpoint is read at each change (a
    few rows, well under a millisecond), so that no update waits: a new worker going through
    its states in a tenth of a second shows ready when it is, not at the next interval.

    Args:
        store: Where the rows are read.
        version: The endpoint's change count now (``Lifecycle.change_version``).
        encode: The watch update of a snapshot (``WatchEndpointResponse``), built at most once per snapshot.
        max_age: Seconds a snapshot is reused for while the endpoint does not change.
        min_interval: Seconds between two reads of an endpoint that keeps changing.
        throttle_from: How many workers an endpoint has before ``min_interval`` applies to it.
    """

    def __init__(
        self,
        store: Store,
        version: Callable[[str], int],
        encode: Callable[[Snapshot], control_pb2.WatchEndpointResponse],
        max_age: float = 1.0,
        min_interval: float = 0.1,
        throttle_from: int = 8,
    ) -> None:
        self._store = store
        self._version = version
        self._encode = encode
        self.max_age = max_age
        self.min_interval = min_interval
        self.throttle_from = throttle_from
        self._latest: dict[str, Snapshot] = {}
        # Open watches by endpoint: an endpoint's snapshot is kept while it has any.
        self._watches: dict[str, int] = {}

    async def current(self, endpoint_id: str) -> Snapshot | None:
        """The endpoint as it is now (a large one read at most once per ``min_interval``); None when it is gone."""
        latest = self._latest.get(endpoint_id)
        throttled = latest is not None and len(latest.workers) >= self.throttle_from
        if throttled and latest is not None and latest.version != self._version(endpoint_id):
            wait = latest.taken + self.min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        return self.get(endpoint_id)

    def get(self, endpoint_id: str) -> Snapshot | None:
        """The endpoint as it is now; None when it does not exist."""
        version = self._version(endpoint_id)
        now = time.monotonic()
        snapshot = self._latest.get(endpoint_id)
        if snapshot is not None and snapshot.version == version and now - snapshot.taken < self.max_age:
            return snapshot
        endpoint = self._store.get_endpoint(endpoint_id)
        if endpoint is None:
            self._latest.pop(endpoint_id, None)
            return None
        workers = self._store.list_workers(endpoint_id=endpoint_id, exclude_states=("stopped",))
        snapshot = Snapshot(version, now, endpoint, workers)
        if endpoint_id in self._watches:
            self._latest[endpoint_id] = snapshot
        return snapshot

    def peek(self, endpoint_id: str) -> Snapshot | None:
        """The kept snapshot of a watched endpoint if current (no change since, under ``max_age``); never reads."""
        snapshot = self._latest.get(endpoint_id)
        if snapshot is None or snapshot.version != self._version(endpoint_id):
            return None
        return snapshot if time.monotonic() - snapshot.taken < self.max_age else None

    def update(self, snapshot: Snapshot) -> tuple[control_pb2.WatchEndpointResponse, bytes]:
        """The snapshot's watch update and its deterministic encoding (what a watch compares with what it sent)."""
        if snapshot._encoded is None:
            message = self._encode(snapshot)
            snapshot._encoded = (message, message.SerializeToString(deterministic=True))
        return snapshot._encoded

    def delta(self, snapshot: Snapshot, base: Snapshot) -> bytes | None:
        """The encoded update taking a delta watch from ``base`` to ``snapshot``; None when nothing it carries changed.

        Built once per pair, for every watch that last got ``base``: the endpoint's fields
        whole, the workers new or changed (heartbeat times left out), the ids of those gone.
        """
        if base.serial in snapshot._deltas:
            return snapshot._deltas[base.serial]
        message, _ = self.update(snapshot)
        header, workers = self._parts(snapshot)
        base_header, base_workers = self._parts(base)
        changed = [w for w in message.workers if workers[w.worker_id] != base_workers.get(w.worker_id)]
        removed = [worker_id for worker_id in base_workers if worker_id not in workers]
        data = None
        if changed or removed or header != base_header:
            update = control_pb2.WatchEndpointResponse.FromString(header)
            update.delta = True
            update.removed_worker_ids.extend(removed)
            update.workers.extend(changed)
            for worker in update.workers:
                worker.ClearField("last_heartbeat")
            data = update.SerializeToString(deterministic=True)
        if len(snapshot._deltas) >= 64:  # watches far behind get their own; the cache stays small
            snapshot._deltas.clear()
        snapshot._deltas[base.serial] = data
        return data

    def _parts(self, snapshot: Snapshot) -> tuple[bytes, dict[str, bytes]]:
        if snapshot._parts is None:
            message, _ = self.update(snapshot)
            header = control_pb2.WatchEndpointResponse()
            header.CopyFrom(message)
            header.ClearField("workers")
            workers = {}
            for worker in message.workers:
                beat = worker.last_heartbeat
                worker.ClearField("last_heartbeat")  # put back below: the message is shared
                workers[worker.worker_id] = worker.SerializeToString(deterministic=True)
                worker.last_heartbeat = beat
            snapshot._parts = (header.SerializeToString(deterministic=True), workers)
        return snapshot._parts

    def watch_opened(self, endpoint_id: str) -> None:
        """A watch of the endpoint began: keep its snapshots."""
        self._watches[endpoint_id] = self._watches.get(endpoint_id, 0) + 1

    def watch_closed(self, endpoint_id: str) -> None:
        """A watch of the endpoint ended: with the last one, its snapshot goes."""
        left = self._watches.get(endpoint_id, 0) - 1
        if left > 0:
            self._watches[endpoint_id] = left
        else:
            self._watches.pop(endpoint_id, None)
            self._latest.pop(endpoint_id, None)
