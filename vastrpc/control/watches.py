"""Watch streams at scale: a worker's assignment watch is woken only for its own changes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from vastrpc.control.snapshots import Snapshot, Snapshots
from vastrpc.control.stores.base import WorkerRow

__all__ = ["AssignmentWatches", "assignment_inputs"]

log = logging.getLogger(__name__)


def assignment_inputs(snapshot: Snapshot, worker: WorkerRow) -> tuple[str, ...]:
    """What ``Lifecycle.assignment`` of ``worker`` depends on (revisions never change their environment)."""
    endpoint = snapshot.endpoint
    return (worker.state, worker.revision_id, endpoint.state, endpoint.live_revision_id or "")


class AssignmentWatch:
    """One WatchWorker stream: ``inputs`` it last acted on, ``event`` set when they may have changed."""

    def __init__(self, endpoint_id: str, worker_id: str) -> None:
        self.endpoint_id = endpoint_id
        self.worker_id = worker_id
        self.inputs: tuple[str, ...] | None = None
        self.event = asyncio.Event()


class AssignmentWatches:
    """Wakes each worker's assignment watch only when its own assignment's inputs changed.

    Every change of an endpoint (any of its thousand workers reporting a state) used to wake
    all its workers' WatchWorker streams, each to find in the shared snapshot that nothing of
    its own had changed: a thousand task wake-ups per change, ahead of the clients' watches
    on the same event loop. Here one task per watched endpoint wakes at each change, reads the
    shared snapshot, and sets the event of the watches whose worker's inputs
    (``assignment_inputs``) differ from those their stream last acted on; when the service
    stops, every watch's.

    Args:
        snapshots: The shared snapshots of the endpoints.
        change_event: An event set at the endpoint's next change (``Lifecycle.change_event``).
        stopping: Whether the service is stopping.
    """

    def __init__(
        self,
        snapshots: Snapshots,
        change_event: Callable[[str], asyncio.Event],
        stopping: Callable[[], bool],
    ) -> None:
        self._snapshots = snapshots
        self._change_event = change_event
        self._stopping = stopping
        self._watches: dict[str, dict[int, AssignmentWatch]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def open(self, endpoint_id: str, worker_id: str) -> AssignmentWatch:
        """A watch of the worker's assignment begins; ``close`` it when it ends."""
        watch = AssignmentWatch(endpoint_id, worker_id)
        self._watches.setdefault(endpoint_id, {})[id(watch)] = watch
        if endpoint_id not in self._tasks:
            self._tasks[endpoint_id] = asyncio.get_running_loop().create_task(self._follow(endpoint_id))
        return watch

    def close(self, watch: AssignmentWatch) -> None:
        """The watch ended: with the endpoint's last one, its task ends."""
        watches = self._watches.get(watch.endpoint_id, {})
        watches.pop(id(watch), None)
        if not watches:
            self._watches.pop(watch.endpoint_id, None)
            task = self._tasks.pop(watch.endpoint_id, None)
            if task is not None:
                task.cancel()

    async def _follow(self, endpoint_id: str) -> None:
        while endpoint_id in self._watches:
            # Taken before reading, so a change made while we read still wakes us.
            changed = self._change_event(endpoint_id)
            try:
                self._wake(endpoint_id, await self._snapshots.current(endpoint_id))
            except Exception:  # noqa: BLE001 - a store hiccup: every watch looks for itself
                log.exception("assignment watches of endpoint %s: reading it failed", endpoint_id)
                self._wake(endpoint_id, None)
            await changed.wait()

    def _wake(self, endpoint_id: str, snapshot: Snapshot | None) -> None:
        everyone = snapshot is None or self._stopping()
        for watch in list(self._watches.get(endpoint_id, {}).values()):
            if everyone:
                watch.event.set()
                continue
            assert snapshot is not None
            row = snapshot.worker(watch.worker_id)
            inputs = assignment_inputs(snapshot, row) if row is not None else None
            if inputs is None or inputs != watch.inputs:
                watch.event.set()
