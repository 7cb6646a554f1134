"""The SQLite store's workers in memory: every read it answers from there matches the file, rollbacks included."""

from __future__ import annotations

import random

import pytest

from vastrpc.control.stores.base import WorkerRow
from vastrpc.control.stores.live import LiveWorkers
from vastrpc.control.stores.sqlite import SqliteStore

pytestmark = pytest.mark.timeout(30)

_STATES = ("starting", "loading", "ready", "draining", "failed", "stopped")
_FILTERS = [
    {"states": ("ready",)},
    {"states": ("starting", "ready", "draining")},
    {"exclude_states": ("stopped",)},
    {"exclude_states": ("stopped", "failed")},
    {"states": ("stopped",)},
    {},
]


def _setup(store: SqliteStore) -> tuple[list[str], list[str]]:
    deployment = store.get_or_create_deployment("live")
    endpoints, revisions = [], []
    for tag in ("a", "b"):
        endpoint, _ = store.get_or_create_endpoint(deployment.id, tag)
        endpoints.append(endpoint.id)
        for code in ("1", "2"):
            digests = {"bundle": code, "code": code, "environment": "e", "autoscaling": "a"}
            revisions.append(store.add_revision(endpoint.id, b"spec", digests).id)
    return endpoints, revisions


def _listings(store: SqliteStore, endpoints: list[str], revisions: list[str]) -> list[list[WorkerRow]]:
    out = []
    for filters in _FILTERS:
        for endpoint_id in (None, *endpoints):
            for revision_id in (None, *revisions):
                out.append(store.list_workers(endpoint_id=endpoint_id, revision_id=revision_id, **filters))
    return out


def test_reads_from_memory_match_a_fresh_read_of_the_file(tmp_path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    endpoints, revisions = _setup(store)
    rng = random.Random(7)
    ids = []
    for i in range(60):
        revision_id = rng.choice(revisions)
        endpoint_id = endpoints[revisions.index(revision_id) // 2]
        ids.append(f"w-{i:012d}")
        store.add_worker(WorkerRow(ids[-1], endpoint_id, revision_id, "starting", token_hash=f"h{i}"))
    for _ in range(300):
        worker_id = rng.choice(ids)
        if rng.random() < 0.3:
            beat = {"last_heartbeat": rng.uniform(0, 100), "calls_in_flight": rng.randrange(5)}
            store.record_heartbeats({worker_id: {**beat, "calls_queued": 1, "calls_started": rng.randrange(9)}})
        else:
            store.update_worker(worker_id, state=rng.choice(_STATES), score=rng.uniform(0, 9))
    assert any(store.list_workers(states=("stopped",))) and any(store.list_workers(exclude_states=("stopped",)))
    fresh = SqliteStore(path)  # loads from the file
    try:
        assert _listings(store, endpoints, revisions) == _listings(fresh, endpoints, revisions)
        for i, worker_id in enumerate(ids):
            assert store.get_worker(worker_id) == fresh.get_worker(worker_id)
            assert store.get_worker_by_token_hash(f"h{i}") == fresh.get_worker_by_token_hash(f"h{i}")
    finally:
        fresh.close()
        store.close()


def test_a_rolled_back_write_is_not_kept_in_memory(tmp_path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    endpoints, revisions = _setup(store)
    store.add_worker(WorkerRow("w-1", endpoints[0], revisions[0], "ready", token_hash="h1"))
    with pytest.raises(RuntimeError), store.transaction():
        store.update_worker("w-1", state="draining", address="127.0.0.1:9")
        store.add_worker(WorkerRow("w-2", endpoints[0], revisions[0], "starting", token_hash="h2"))
        store.record_heartbeats(
            {"w-1": {"last_heartbeat": 5.0, "calls_in_flight": 3, "calls_queued": 0, "calls_started": 1}}
        )
        assert store.list_workers(states=("draining",))[0].calls_in_flight == 3  # seen inside the transaction
        raise RuntimeError("abandon")
    worker = store.get_worker("w-1")
    assert worker is not None and (worker.state, worker.address, worker.last_heartbeat) == ("ready", "", 0.0)
    assert store.get_worker("w-2") is None and store.get_worker_by_token_hash("h2") is None
    assert [w.id for w in store.list_workers(exclude_states=("stopped",))] == ["w-1"]
    store.close()


def test_which_listings_memory_answers() -> None:
    assert LiveWorkers.answers(("ready",), None) and LiveWorkers.answers(None, ("stopped",))
    assert not LiveWorkers.answers(None, None) and not LiveWorkers.answers(("ready", "stopped"), None)
    assert not LiveWorkers.answers(None, ("failed",))
