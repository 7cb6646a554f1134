"""The control service under two hundred simulated workers (bench/control_sim.py): heartbeats, watches, listing."""

from __future__ import annotations

import asyncio
import importlib.util
import shlex
import sys
import time
from pathlib import Path

import pytest

from vastrpc.api.v1 import common_pb2, control_pb2

from .helpers import Client

_PATH = Path(__file__).resolve().parents[2] / "bench" / "control_sim.py"
_SPEC = importlib.util.spec_from_file_location("control_sim", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
sim = importlib.util.module_from_spec(_SPEC)
sys.modules["control_sim"] = sim
_SPEC.loader.exec_module(sim)

WORKERS = 200
WATCHERS = 10


def _setup(tmp_path: Path) -> list[str]:
    handoff = tmp_path / "handoff"
    handoff.mkdir()
    return ["--heartbeat-interval", "1", "--worker-command", shlex.join(sim.handoff_command(handoff))]


async def _first(call, predicate, timeout: float) -> control_pb2.WatchEndpointResponse:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        async for update in call:
            if predicate(update):
                return update
    raise AssertionError("the watch ended")


@pytest.mark.e2e
@pytest.mark.timeout(240)
@pytest.mark.parametrize("control_service", [{"setup": _setup}], indirect=True)
async def test_two_hundred_simulated_workers_heartbeat_are_watched_and_listed(control_service, tmp_path) -> None:
    async with Client(control_service.address, control_service.api_key) as client:
        endpoint_id = await sim.deploy(client.stub, control_service.api_key, "scale")
        deadline = time.monotonic() + 30
        while not (workers := sim.handed_off(tmp_path / "handoff")):
            assert time.monotonic() < deadline, "the provider did not start the first worker"
            await asyncio.sleep(0.05)
        workers += await sim.join(client.stub, control_service.api_key, "scale", WORKERS - 1)
        fleet = sim.Fleet(control_service.address, workers, heartbeat_interval=1.0, channels=4)
        try:
            await fleet.start()
            await client.wait_ready(endpoint_id, workers=WORKERS, timeout=60)

            # A state change reaches every client watching the endpoint.
            calls = [
                client.stub.WatchEndpoint(
                    control_pb2.WatchEndpointRequest(endpoint_id=endpoint_id), metadata=client.metadata
                )
                for _ in range(WATCHERS)
            ]
            try:
                for index in (3, 150):
                    worker_id = workers[index].worker_id
                    await fleet.report(index, common_pb2.WORKER_STATE_DRAINING)

                    def drained(u: control_pb2.WatchEndpointResponse, worker_id: str = worker_id) -> bool:
                        draining = common_pb2.WORKER_STATE_DRAINING
                        return any(w.worker_id == worker_id and w.state == draining for w in u.workers)

                    seen = await asyncio.gather(*(_first(c, drained, 20) for c in calls))
                    assert len(seen) == WATCHERS
            finally:
                for call in calls:
                    call.cancel()

            # Heartbeats keep every worker alive: none is taken for lost, and the listing shows them all.
            beats = fleet.stats.heartbeats
            await asyncio.sleep(3)
            assert fleet.stats.heartbeats - beats >= WORKERS, fleet.stats
            assert fleet.stats.heartbeat_errors == 0, fleet.stats
            started = time.monotonic()
            listing = await client.list("scale")
            assert time.monotonic() - started < 5
            states = [w.state for w in listing.deployments[0].endpoints[0].workers]
            assert len(states) == WORKERS
            assert states.count(common_pb2.WORKER_STATE_READY) == WORKERS - 2
            assert states.count(common_pb2.WORKER_STATE_DRAINING) == 2
        finally:
            await fleet.close()
