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
    answered = _listings(store, endpoints, revisions)
    by_id = [store.get_worker(worker_id) for worker_id in ids]
    by_token = [store.get_worker_by_token_hash(f"h{i}") for i in range(len(ids))]
    store.close()  # writes the beats still in memory
    fresh = SqliteStore(path)  # loads from the file
    try:
        assert answered == _listings(fresh, endpoints, revisions)
        assert by_id == [fresh.get_worker(worker_id) for worker_id in ids]
        assert by_token == [fresh.get_worker_by_token_hash(f"h{i}") for i in range(len(ids))]
    finally:
        fresh.close()


def test_beats_are_read_back_at_once_and_reach_the_file_within_the_interval(tmp_path, monkeypatch) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    endpoints, revisions = _setup(store)
    store.add_worker(WorkerRow("w-1", endpoints[0], revisions[0], "ready", token_hash="h1"))
    beat = {"last_heartbeat": 7.0, "calls_in_flight": 2, "calls_queued": 1, "calls_started": 4}
    store.record_heartbeats({"w-1": beat})
    assert (store.get_worker("w-1") or WorkerRow("", "", "", "", "")).calls_started == 4
    reader = SqliteStore(path, sole=False)
    assert (reader.get_worker("w-1") or WorkerRow("", "", "", "", "")).last_heartbeat == 0.0  # not yet in the file
    monkeypatch.setattr("vastrpc.control.stores.sqlite.BEAT_WRITE_INTERVAL", 0.0)
    # A beat with an older time, arriving late: its load counts, the newer time stays (as in the file).
    store.record_heartbeats({"w-1": {**beat, "last_heartbeat": 6.0, "calls_started": 5}})
    reader.close()
    reader = SqliteStore(path, sole=False)
    row = reader.get_worker("w-1")
    assert row is not None and (row.last_heartbeat, row.calls_started) == (7.0, 5)
    assert row == store.get_worker("w-1")
    reader.close()
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
    # The writes are undone; the beat, taken outside any transaction's meaning, stays.
    worker = store.get_worker("w-1")
    assert worker is not None and (worker.state, worker.address, worker.last_heartbeat) == ("ready", "", 5.0)
    assert store.get_worker("w-2") is None and store.get_worker_by_token_hash("h2") is None
    assert [w.id for w in store.list_workers(exclude_states=("stopped",))] == ["w-1"]
    store.close()


def test_which_listings_memory_answers() -> None:
    live, reader = LiveWorkers(list), LiveWorkers(list, enabled=False)
    assert live.answers(("ready",), None) and live.answers(None, ("stopped",))
    assert not live.answers(None, None) and not live.answers(("ready", "stopped"), None)
    assert not live.answers(None, ("failed",)) and not reader.answers(("ready",), None)


def test_a_second_store_on_the_same_file_is_refused_until_the_first_closes(tmp_path) -> None:
    from vastrpc import ControlServiceError

    path = tmp_path / "state.db"
    first = SqliteStore(path)
    with pytest.raises(ControlServiceError, match=r"another control service uses .*state\.db.*--home.*--store"):
        SqliteStore(path)
    reader = SqliteStore(path, sole=False)  # a reader beside it is fine, and keeps nothing in memory
    endpoints, revisions = _setup(first)
    first.add_worker(WorkerRow("w-1", endpoints[0], revisions[0], "ready", token_hash="h1"))
    assert [w.id for w in reader.list_workers(states=("ready",))] == ["w-1"]
    first.update_worker("w-1", state="draining")
    assert [w.state for w in reader.list_workers(states=("ready", "draining"))] == ["draining"]
    reader.close()
    first.close()
    SqliteStore(path).close()  # the lock went with the first


async def test_a_second_control_service_on_the_same_home_says_why_it_cannot_start(tmp_path) -> None:
    import subprocess
    import sys

    from tests.ports import free_port

    home = tmp_path / "home"
    SqliteStore((home.mkdir(mode=0o700), home / "state.db")[1])  # held, as a running service holds it
    run = subprocess.run(
        [sys.executable, "-m", "vastrpc", "control", "serve", "--home", str(home), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "another control service uses" in run.stderr and "Traceback" not in run.stderr, run.stderr
