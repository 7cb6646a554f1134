"""Delta endpoint watches over the real protocol: the first update whole, then only what changed."""

from __future__ import annotations

import asyncio

import pytest

from vastrpc._grpc import bearer
from vastrpc.api.v1 import common_pb2, control_pb2
from vastrpc.client.control import merge_update

from .helpers import Client, two_joined, with_fake_worker

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

DRAINING, STOPPED = common_pb2.WORKER_STATE_DRAINING, common_pb2.WORKER_STATE_STOPPED


class _Watch:
    """A raw WatchEndpoint stream, its updates (keepalives left out) queued as they come."""

    def __init__(self, client: Client, endpoint_id: str, deltas: bool) -> None:
        request = control_pb2.WatchEndpointRequest(endpoint_id=endpoint_id, deltas=deltas)
        self.call = client.stub.WatchEndpoint(request, metadata=client.metadata)
        self.updates: asyncio.Queue[control_pb2.WatchEndpointResponse] = asyncio.Queue()
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for update in self.call:
            if not update.keepalive:
                self.updates.put_nowait(update)

    async def next(self) -> control_pb2.WatchEndpointResponse:
        return await asyncio.wait_for(self.updates.get(), 10)

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def _without_beats(update: control_pb2.WatchEndpointResponse) -> list[bytes]:
    workers = []
    for worker in update.workers:
        worker.ClearField("last_heartbeat")
        workers.append(worker.SerializeToString(deterministic=True))
    return workers


async def _report(client: Client, joined: control_pb2.JoinEndpointResponse, state: int) -> None:
    await client.stub.UpdateWorker(
        control_pb2.UpdateWorkerRequest(worker_id=joined.worker_id, state=state),  # type: ignore[arg-type]
        metadata=bearer(joined.worker_token),
        timeout=10,
    )


@with_fake_worker
async def test_a_delta_watch_sends_what_changed_and_merges_to_the_whole_endpoint(control_service) -> None:
    async with Client(control_service.address, control_service.api_key) as client:
        reg, a, b = await two_joined(client)
        whole, delta = _Watch(client, reg.endpoint_id, False), _Watch(client, reg.endpoint_id, True)
        try:
            first = await delta.next()
            assert not first.delta and len(first.workers) == 3  # the first update is whole
            merged: dict[str, common_pb2.Worker] = {}
            view = merge_update(merged, first)
            order = [w.worker_id for w in view.workers]

            # A worker drains: the delta holds that worker alone, no heartbeat time, endpoint fields whole.
            await _report(client, a, DRAINING)
            update = await delta.next()
            assert update.delta and [(w.worker_id, w.state) for w in update.workers] == [(a.worker_id, DRAINING)]
            assert update.workers[0].last_heartbeat == 0 and not update.removed_worker_ids
            assert update.endpoint_token and update.revision_id == reg.revision_id and update.desired_workers
            view = merge_update(merged, update)
            assert [w.worker_id for w in view.workers] == order and not view.delta

            # One stops: named gone. The merged view equals what a whole watch shows.
            await _report(client, b, STOPPED)
            update = await delta.next()
            assert update.delta and list(update.removed_worker_ids) == [b.worker_id] and not update.workers
            view = merge_update(merged, update)
            latest = await whole.next()
            while b.worker_id in {w.worker_id for w in latest.workers}:
                latest = await whole.next()
            assert _without_beats(view) == _without_beats(latest)
            view.ClearField("workers")
            latest.ClearField("workers")
            assert view == latest

            # Heartbeats alone change nothing a delta carries: a whole watch still gets them.
            await asyncio.sleep(2.5)
            assert delta.updates.empty()
        finally:
            await whole.close()
            await delta.close()


def test_merging_keeps_the_order_and_replaces_adds_and_drops() -> None:
    def worker(worker_id: str, state: int = common_pb2.WORKER_STATE_READY) -> common_pb2.Worker:
        return common_pb2.Worker(worker_id=worker_id, state=state, last_heartbeat=1.0)  # type: ignore[arg-type]

    merged: dict[str, common_pb2.Worker] = {}
    merge_update(merged, control_pb2.WatchEndpointResponse(workers=[worker("w1"), worker("w2"), worker("w3")]))
    delta = control_pb2.WatchEndpointResponse(
        delta=True, workers=[worker("w2", DRAINING), worker("w4")], removed_worker_ids=["w1"], desired_workers=3
    )
    view = merge_update(merged, delta)
    assert [(w.worker_id, w.state) for w in view.workers] == [
        ("w2", DRAINING),
        ("w3", common_pb2.WORKER_STATE_READY),
        ("w4", common_pb2.WORKER_STATE_READY),
    ]
    assert view.desired_workers == 3 and not view.delta and not view.removed_worker_ids
    # A whole update starts over.
    view = merge_update(merged, control_pb2.WatchEndpointResponse(workers=[worker("w9")]))
    assert [w.worker_id for w in view.workers] == ["w9"] and list(merged) == ["w9"]
