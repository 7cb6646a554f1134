"""PgStore on a real PostgreSQL server: migrations under concurrent starts, races, locks and change notifications."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import psycopg
import pytest

from vastrpc._errors import DefinitionError
from vastrpc.config import ControlConfig
from vastrpc.control.backends import open_store
from vastrpc.control.stores.base import StoreError, WorkerRow
from vastrpc.control.stores.postgres import _MIGRATIONS, PgLeaderLock, PgStore

pytestmark = pytest.mark.timeout(60)


def _in_threads(count: int, target) -> list[object]:
    """Run ``target(i)`` in ``count`` threads released together; their results (or exceptions)."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except Exception as exc:  # noqa: BLE001 - returned for the test to assert on
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_concurrent_starts_migrate_once(pg_url: str) -> None:
    stores = _in_threads(4, lambda _: PgStore(pg_url))
    assert all(isinstance(s, PgStore) for s in stores), stores
    with psycopg.connect(pg_url) as db:
        versions = [r[0] for r in db.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == [1, 2, 3, 4, 5, 6, 7]
    assert all(s.schema_version == 7 for s in stores)
    for s in stores:
        s.close()


def test_a_version_1_database_is_migrated_and_keeps_its_rows(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute(_MIGRATIONS[0])
        db.execute("INSERT INTO schema_version VALUES (1)")
        db.execute("INSERT INTO deployments VALUES ('d-1', 'hello', 0)")
        db.execute(
            "INSERT INTO endpoints (id, deployment_id, tag, state, token, created_at)"
            " VALUES ('e-1', 'd-1', 'default', 'ready', 't', 0)"
        )
        db.execute("INSERT INTO revisions VALUES ('r-1', 'e-1', '', 'b', 'c', 'e', 'a', 0)")
        db.execute(
            "INSERT INTO workers (id, endpoint_id, revision_id, state, token_hash, calls_in_flight, created_at)"
            " VALUES ('w-1', 'e-1', 'r-1', 'ready', 'h', 3, 0)"
        )
    store = PgStore(pg_url)
    assert store.schema_version == 7
    worker = store.get_worker("w-1")
    assert (worker.calls_in_flight, worker.calls_queued, worker.calls_started, worker.owner) == (3, 0, 0, "")
    assert worker.published_ports == ""  # migration 5: no ports published until the worker reports some
    store.close()


def test_racing_creations_make_one_deployment_and_one_endpoint(pg_url: str) -> None:
    stores = [PgStore(pg_url) for _ in range(4)]
    deployments = _in_threads(4, lambda i: stores[i].get_or_create_deployment("raced"))
    assert len({d.id for d in deployments}) == 1, deployments
    endpoints = _in_threads(4, lambda i: stores[i].get_or_create_endpoint(deployments[0].id, "default"))
    assert len({e.id for e, _ in endpoints}) == 1 and sum(created for _, created in endpoints) == 1, endpoints
    assert len(stores[0].list_endpoints()) == 1
    for s in stores:
        s.close()


def test_transactions_of_two_services_run_one_after_the_other(pg_url: str) -> None:
    a, b = PgStore(pg_url), PgStore(pg_url)
    entered = threading.Event()
    release = threading.Event()
    b_done: list[float] = []

    def hold() -> None:
        with a.transaction():
            a.get_or_create_deployment("first")
            entered.set()
            release.wait(10)

    def second() -> None:
        entered.wait(10)
        with b.transaction():
            # Inside: the first transaction has committed, so its row is visible.
            assert b.get_deployment_by_name("first") is not None
            b.get_or_create_deployment("second")
        b_done.append(time.monotonic())

    threads = [threading.Thread(target=hold), threading.Thread(target=second)]
    for t in threads:
        t.start()
    entered.wait(10)
    time.sleep(0.5)
    assert b_done == []  # b waits for a's transaction
    released = time.monotonic()
    release.set()
    for t in threads:
        t.join(10)
    assert b_done and b_done[0] >= released
    assert [d.name for d in a.list_deployments()] == ["first", "second"]
    a.close()
    b.close()


async def test_endpoint_lock_excludes_another_service(pg_url: str) -> None:
    a, b = PgStore(pg_url), PgStore(pg_url)
    order: list[str] = []

    async def take(store: PgStore, name: str, hold: float) -> None:
        async with store.endpoint_lock("e-1"):
            order.append(f"{name} in")
            await asyncio.sleep(hold)
            order.append(f"{name} out")

    first = asyncio.create_task(take(a, "a", 0.5))
    await asyncio.sleep(0.1)
    await asyncio.gather(first, take(b, "b", 0))
    assert order == ["a in", "a out", "b in", "b out"]
    async with a.endpoint_lock("e-2"), b.endpoint_lock("e-3"):  # other endpoints are not held up
        pass
    a.close()
    b.close()


async def test_changes_by_another_service_are_notified_but_not_heartbeats(pg_url: str) -> None:
    a, b = PgStore(pg_url), PgStore(pg_url)
    d = a.get_or_create_deployment("hello")
    e, _ = a.get_or_create_endpoint(d.id, "default")
    r = a.add_revision(e.id, b"spec", {"bundle": "x"})
    seen: list[str] = []
    follower = asyncio.create_task(b.follow_changes(seen.append))
    try:
        await _until(lambda: e.id in seen)  # everything counts as changed once it listens
        seen.clear()
        a.add_worker(WorkerRow(id="w-1", endpoint_id=e.id, revision_id=r.id, state="starting", token_hash="h"))
        await _until(lambda: seen == [e.id])
        a.update_worker("w-1", last_heartbeat=time.time(), calls_in_flight=2, calls_started=5)
        a.update_endpoint(e.id, last_client_seen=time.time())
        b.update_worker("w-1", state="ready")  # b's own change: its watchers were woken already
        await asyncio.sleep(0.5)
        assert seen == [e.id]
        a.update_worker("w-1", state="failed")
        a.update_endpoint(e.id, state="failed")
        await _until(lambda: seen.count(e.id) == 3)
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        a.close()
        b.close()


async def test_leader_lock_is_held_by_one_and_freed_when_its_connection_dies(pg_url: str) -> None:
    first, second = PgLeaderLock(pg_url), PgLeaderLock(pg_url)
    try:
        assert await first.try_acquire()
        assert not await second.try_acquire()
        assert await first.still_held() and not await second.still_held()
        # The leader's connection dies (as with a killed process): the server frees the lock.
        with psycopg.connect(pg_url, autocommit=True) as db:
            db.execute(
                # With a timeout, it returns once the backend has exited (and so freed its locks).
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND pid <> pg_backend_pid()"
            )
        assert not await first.still_held()
        assert await second.try_acquire()
        assert not await first.try_acquire()  # reconnects, and finds it taken
        await second.release()
        assert await first.try_acquire()
    finally:
        await first.release()
        await second.release()


def test_an_unreachable_server_is_a_store_error_without_the_password() -> None:
    port = _closed_port()
    with pytest.raises(StoreError) as caught:
        PgStore(f"postgresql://vastrpc:s3cret@127.0.0.1:{port}/state")
    message = str(caught.value)
    assert "cannot connect" in message and f"vastrpc@127.0.0.1:{port}/state" in message
    assert "s3cret" not in message


def test_open_store_picks_the_store_from_the_url(pg_url: str, tmp_path: Path) -> None:
    store = open_store(ControlConfig(home=tmp_path, store_url=pg_url))
    assert isinstance(store, PgStore) and store.shared
    store.close()
    with pytest.raises(DefinitionError, match="postgresql://"):
        open_store(ControlConfig(home=tmp_path, store_url="mysql://db/state"))


def _closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _until(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition did not hold in time"
        await asyncio.sleep(0.02)


async def test_dropped_connections_are_opened_again(pg_url: str) -> None:
    a, b = PgStore(pg_url), PgStore(pg_url)
    d = a.get_or_create_deployment("hello")
    e, _ = a.get_or_create_endpoint(d.id, "default")
    seen: list[str] = []
    follower = asyncio.create_task(b.follow_changes(seen.append))
    try:
        await _until(lambda: e.id in seen)
        # The server ends every connection but the test's own (as a restart or a failover would).
        with psycopg.connect(pg_url, autocommit=True) as db:
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(StoreError, match="failed"):
            a.get_endpoint(e.id)  # the call that finds the connection gone says so...
        assert a.get_endpoint(e.id) == e  # ...and the next one reconnects
        seen.clear()
        await asyncio.sleep(1.5)  # the listener reconnects within a second and rereads every endpoint
        await _until(lambda: e.id in seen)
        seen.clear()
        a.update_endpoint(e.id, state="ready")
        await _until(lambda: seen == [e.id])
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        a.close()
        b.close()
