"""What a control service does with workers on other machines (Ray) it did not place, and with its own at its stop.

On a real store and Lifecycle, with a provider that places nothing; the same on a real Ray
cluster and two real services is in tests/control/providers/test_ray_failover.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vastrpc.control.lifecycle.leadership import JOINED

from .test_autoscaler import FakeProvider, Setup


class RemoteProvider(FakeProvider):
    """Workers on other machines: adopted ones are watched (running) from then on."""

    remote_workers = True

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.adopted: list[str] = []
        self.stopped_all = False

    def adopt_worker(self, worker_id: str, pid: int, gpus: object) -> None:
        self.adopted.append(worker_id)

    def is_running(self, worker_id: str) -> bool:
        return worker_id in self.adopted

    async def stop_all(self, grace: float) -> None:
        self.stopped_all = True


@pytest.fixture
def remote(tmp_path: Path):
    made = Setup(tmp_path)
    made.provider = made.lifecycle.provider = RemoteProvider(tmp_path)  # type: ignore[assignment]
    yield made
    made.store.close()


async def test_a_worker_of_another_service_that_reports_here_is_adopted_once(remote) -> None:
    endpoint_id = remote.endpoint(workers=2)
    remote.store.update_worker("w-0", owner="elsewhere:1:1")
    remote.store.update_worker("w-1", owner=JOINED)
    for _ in range(3):
        remote.lifecycle.heartbeat("w-0", calls_in_flight=0)
        remote.lifecycle.heartbeat("w-1", calls_in_flight=0)
    assert remote.provider.adopted == ["w-0"]  # once; never a worker joined by hand
    assert remote.store.get_worker("w-0").owner == remote.lifecycle.owner
    assert remote.store.get_worker("w-1").owner == JOINED
    # A worker already stopped is not taken over: its heartbeat tells it to stop.
    remote.store.update_worker("w-1", owner="elsewhere:1:1", state="stopped")
    assert remote.lifecycle.heartbeat("w-1", calls_in_flight=0) is True
    assert remote.provider.adopted == ["w-0"]
    assert remote.endpoint_row(endpoint_id).state == "ready"


async def test_workers_that_are_processes_of_this_host_are_not_adopted_by_heartbeat(tmp_path: Path) -> None:
    local = Setup(tmp_path)
    try:
        local.endpoint(workers=1)
        local.store.update_worker("w-0", owner="elsewhere:1:1")
        local.lifecycle.heartbeat("w-0", calls_in_flight=0)
        assert local.store.get_worker("w-0").owner == "elsewhere:1:1"
    finally:
        local.store.close()


async def test_with_peers_a_stopping_service_leaves_its_remote_workers_to_them(remote) -> None:
    remote.endpoint(workers=2)
    for worker_id in ("w-0", "w-1"):
        remote.lifecycle.heartbeat(worker_id, calls_in_flight=0)
    remote.lifecycle.control_address = "127.0.0.1:5001,127.0.0.1:5002"
    await remote.lifecycle.shutdown()
    assert not remote.provider.stopped_all and remote.provider.stopped == []
    assert [w.state for w in remote.active(remote.store.list_endpoints()[0].id)] == ["ready", "ready"]


async def test_without_peers_a_stopping_service_stops_its_remote_workers(remote) -> None:
    endpoint_id = remote.endpoint(workers=2)
    for worker_id in ("w-0", "w-1"):
        remote.lifecycle.heartbeat(worker_id, calls_in_flight=0)
    remote.lifecycle.control_address = "127.0.0.1:5001"
    await remote.lifecycle.shutdown()
    assert remote.provider.stopped_all
    assert remote.active(endpoint_id) == []


def test_recovery_leaves_registered_remote_workers_to_their_heartbeats(remote) -> None:
    endpoint_id = remote.endpoint(workers=1)
    remote.store.update_worker("w-0", owner="", pid=999_999_999)  # a pid of its node, not of this host
    remote.lifecycle.recover()
    assert [w.id for w in remote.active(endpoint_id)] == ["w-0"]
