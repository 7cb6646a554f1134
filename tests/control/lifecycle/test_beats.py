"""HeartbeatBatch and AssignmentWatches: beats kept in memory, written together; watches woken for their own worker."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from vastrpc._errors import NotFoundError
from vastrpc.control.snapshots import Snapshots
from vastrpc.control.watches import AssignmentWatches, assignment_inputs

from .test_autoscaler import Setup


@pytest.fixture
def made(tmp_path: Path):
    setup = Setup(tmp_path)
    yield setup
    setup.store.close()


async def test_beats_are_written_together_within_the_flush_interval(made) -> None:
    endpoint_id = made.endpoint(workers=3)
    made.store.update_worker("w-0", last_heartbeat=1.0)
    beats = made.lifecycle.beats
    beats.flush_interval = 0.2
    before = time.time()
    assert beats.record("w-0", calls_in_flight=5, calls_queued=2, calls_started=9) is False
    assert beats.record("w-1", calls_in_flight=1) is False
    assert made.store.get_worker("w-0").last_heartbeat == 1.0  # not written yet
    await asyncio.sleep(0.4)
    w0, w1 = made.store.get_worker("w-0"), made.store.get_worker("w-1")
    assert w0.last_heartbeat >= before and (w0.calls_in_flight, w0.calls_queued, w0.calls_started) == (5, 2, 9)
    assert w1.calls_in_flight == 1
    # The heartbeat check writes what is pending before it judges.
    beats.flush_interval = 60
    made.store.update_worker("w-2", last_heartbeat=1.0)
    beats.record("w-2", calls_in_flight=0)
    assert made.lifecycle.check_heartbeats(time.time()) == []
    assert made.store.get_worker("w-2").last_heartbeat >= before
    assert made.endpoint_row(endpoint_id).state == "ready"
    with pytest.raises(NotFoundError):
        beats.record("w-404", calls_in_flight=0)


async def test_the_stop_answer_follows_the_endpoints_changes(made) -> None:
    made.endpoint(workers=2)
    beats = made.lifecycle.beats
    assert beats.record("w-0", calls_in_flight=0) is False
    made.store.update_worker("w-0", state="stopped")
    assert beats.record("w-0", calls_in_flight=0) is False  # kept: nobody announced the change
    made.lifecycle.changed(made.store.get_worker("w-0").endpoint_id)
    assert beats.record("w-0", calls_in_flight=0) is True
    # Kept for max_age at most, even unannounced (another service's write, on a shared store).
    assert beats.record("w-1", calls_in_flight=0) is False
    made.store.update_worker("w-1", state="failed")
    beats.max_age = 0.0
    assert beats.record("w-1", calls_in_flight=0) is True


async def test_an_assignment_watch_wakes_only_for_its_own_worker(made) -> None:
    endpoint_id = made.endpoint(workers=3)
    lifecycle = made.lifecycle
    snapshots = Snapshots(made.store, lifecycle.change_version, lambda s: None, min_interval=0.0)  # type: ignore[arg-type,return-value]
    watches = AssignmentWatches(snapshots, lifecycle.change_event, lambda: lifecycle.shutting_down)
    snapshots.watch_opened(endpoint_id)
    mine, other = watches.open(endpoint_id, "w-0"), watches.open(endpoint_id, "w-1")
    try:
        for watch in (mine, other):  # as WatchWorker does: acts on what it read, then waits
            snapshot = await snapshots.current(endpoint_id)
            watch.inputs = assignment_inputs(snapshot, snapshot.worker(watch.worker_id))
            watch.event.clear()
        await asyncio.sleep(0.05)
        mine.event.clear()
        other.event.clear()
        # Another worker changes: neither wakes; its own worker changes: that one wakes.
        made.store.update_worker("w-2", state="draining")
        lifecycle.changed(endpoint_id)
        await asyncio.sleep(0.05)
        assert not mine.event.is_set() and not other.event.is_set()
        made.store.update_worker("w-0", state="draining")
        lifecycle.changed(endpoint_id)
        await asyncio.wait_for(mine.event.wait(), 2)
        assert not other.event.is_set()
        # The endpoint's own state concerns every worker.
        made.store.update_endpoint(endpoint_id, state="stopped")
        lifecycle.changed(endpoint_id)
        await asyncio.wait_for(other.event.wait(), 2)
    finally:
        watches.close(mine)
        watches.close(other)
    assert not watches._tasks
