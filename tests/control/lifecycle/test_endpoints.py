"""Lifecycle logic that needs no process: startup recovery, desired worker counts."""

from __future__ import annotations

import os

import pytest

from vastrpc.control.bundles.local import LocalBlobStore
from vastrpc.control.lifecycle.endpoints import Lifecycle
from vastrpc.control.lifecycle.rules import desired_workers
from vastrpc.control.providers.local import LocalProcessProvider
from vastrpc.control.stores.base import WorkerRow
from vastrpc.control.stores.sqlite import SqliteStore

from ..helpers import make_spec

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("min_workers", "max_workers", "cold", "desired"), [(0, 4, 0, 1), (2, 4, 0, 2), (1, 4, 3, 3), (1, 2, 5, 2)]
)
def test_desired_workers(min_workers, max_workers, cold, desired) -> None:
    spec = make_spec(min_workers=min_workers, max_workers=max_workers)
    spec.autoscaling.cold_workers = cold
    assert desired_workers(spec) == desired


async def test_recovery_stops_workers_whose_process_is_gone(tmp_path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    d = store.get_or_create_deployment("hello")
    e, _ = store.get_or_create_endpoint(d.id, "default")
    r = store.add_revision(
        e.id, make_spec().SerializeToString(), {"bundle": "b", "code": "c", "environment": "e", "autoscaling": "a"}
    )
    store.update_endpoint(e.id, state="ready", live_revision_id=r.id, desired_workers=2)
    dead_pid = 2**22 + 12345  # above the default pid_max of most hosts: no such process
    for worker_id, pid in (("w-gone", dead_pid), ("w-alive", os.getpid())):
        store.add_worker(
            WorkerRow(id=worker_id, endpoint_id=e.id, revision_id=r.id, state="ready", token_hash=worker_id, pid=pid)
        )
    lifecycle = Lifecycle(store, LocalBlobStore(tmp_path / "bundles"), LocalProcessProvider(tmp_path))
    lifecycle.recover()
    assert store.get_worker("w-gone").state == "stopped"
    assert store.get_worker("w-alive").state == "ready"
    # One ready worker of the two desired: the next Provision starts the missing one.
    assert store.get_endpoint(e.id).state == "deploying"
    store.close()
