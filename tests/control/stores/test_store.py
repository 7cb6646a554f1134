"""The state stores, SQLite and PostgreSQL alike: rows, filters, transactions; SQLite's schema and migrations."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from vastrpc.control.stores.base import Store, WorkerRow
from vastrpc.control.stores.sqlite import _MIGRATIONS, SqliteStore

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """Each test runs on both stores: SQLite in tmp_path, and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "state.db")
    else:
        from vastrpc.control.stores.postgres import PgStore

        s = PgStore(request.getfixturevalue("pg_url"))
    yield s
    s.close()


def _worker(store: Store, worker_id: str, state: str = "starting") -> WorkerRow:
    deployment = store.get_or_create_deployment("hello")
    endpoint, _ = store.get_or_create_endpoint(deployment.id, "default")
    revision = store.add_revision(
        endpoint.id, b"spec", {"bundle": "b", "code": "c", "environment": "e", "autoscaling": "a"}
    )
    return store.add_worker(
        WorkerRow(
            id=worker_id, endpoint_id=endpoint.id, revision_id=revision.id, state=state, token_hash=f"h-{worker_id}"
        )
    )


def test_schema_is_versioned_wal_and_reopens(tmp_path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    assert store.schema_version == 7 and not store.shared
    deployment = store.get_or_create_deployment("hello")
    store.close()
    again = SqliteStore(path)  # migrations already applied: nothing re-runs
    assert again.schema_version == 7 and again.get_deployment_by_name("hello") == deployment
    again.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 7


def test_a_version_1_database_gains_calls_queued(tmp_path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in _MIGRATIONS[0].split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("INSERT INTO schema_version (version) VALUES (1)")
        db.execute("INSERT INTO deployments VALUES ('d-1', 'hello', 0)")
        db.execute(
            "INSERT INTO endpoints (id, deployment_id, tag, state, token, created_at)"
            " VALUES ('e-1', 'd-1', 'default', 'ready', 't', 0)"
        )
        db.execute("INSERT INTO revisions VALUES ('r-1', 'e-1', x'', 'b', 'c', 'e', 'a', 0)")
        db.execute(
            "INSERT INTO workers (id, endpoint_id, revision_id, state, token_hash, calls_in_flight, created_at)"
            " VALUES ('w-1', 'e-1', 'r-1', 'ready', 'h', 3, 0)"
        )
    store = SqliteStore(path)
    assert store.schema_version == 7
    worker = store.get_worker("w-1")
    assert (worker.calls_in_flight, worker.calls_queued, worker.owner, worker.published_ports) == (3, 0, "", "")
    assert worker.gpus == "" and worker.gpu_indices() == ()  # migration 6: no GPUs recorded
    assert store.update_worker("w-1", gpus="2,3").gpu_indices() == (2, 3)
    assert store.update_worker("w-1", calls_queued=2).calls_queued == 2
    assert store.get_revision("r-1").tier == 0  # migration 7: registered before tiers were stored
    assert store.update_worker("w-1", calls_started=5).calls_started == 5
    store.close()


def test_deployments_and_endpoints_are_unique_by_name_and_tag(store) -> None:
    d1 = store.get_or_create_deployment("hello")
    assert store.get_or_create_deployment("hello") == d1
    e1, created = store.get_or_create_endpoint(d1.id, "default")
    assert created and e1.state == "new" and e1.token and e1.live_revision_id is None
    e2, created = store.get_or_create_endpoint(d1.id, "default")
    assert not created and e2 == e1
    canary, _ = store.get_or_create_endpoint(d1.id, "canary")
    assert canary.token != e1.token
    assert [e.tag for e in store.list_endpoints(d1.id)] == ["default", "canary"]
    assert store.update_endpoint(e1.id, state="ready", desired_workers=2).state == "ready"
    with pytest.raises(ValueError):
        store.update_endpoint(e1.id, id="other")
    assert [d.name for d in store.list_deployments()] == ["hello"]


def test_revisions_keep_spec_bytes_and_digests(store) -> None:
    d = store.get_or_create_deployment("hello")
    e, _ = store.get_or_create_endpoint(d.id, "default")
    r = store.add_revision(e.id, b"\x00\x01spec", {"bundle": "b", "code": "c", "environment": "e", "autoscaling": "a"})
    got = store.get_revision(r.id)
    assert got == r and got.spec == b"\x00\x01spec" and got.environment_digest == "e"
    assert store.get_revision("r-missing") is None


def test_workers_filters_and_token_lookup(store) -> None:
    a = _worker(store, "w-a")
    _worker(store, "w-b", state="ready")
    _worker(store, "w-c", state="stopped")
    assert store.get_worker_by_token_hash("h-w-b").id == "w-b"
    assert [w.id for w in store.list_workers(states=("ready", "starting"))] == ["w-a", "w-b"]
    assert [w.id for w in store.list_workers(exclude_states=("stopped",))] == ["w-a", "w-b"]
    assert [w.id for w in store.list_workers(endpoint_id=a.endpoint_id, revision_id=a.revision_id)] == ["w-a"]
    updated = store.update_worker("w-a", state="ready", address="127.0.0.1:1", score=2.5, capacity=3, pid=42)
    assert (updated.state, updated.address, updated.score, updated.capacity, updated.pid) == (
        "ready",
        "127.0.0.1:1",
        2.5,
        3,
        42,
    )
    with pytest.raises(KeyError):
        store.update_worker("w-missing", state="ready")


def test_transaction_rolls_back_every_change(store) -> None:
    _worker(store, "w-a")
    with pytest.raises(RuntimeError), store.transaction():
        store.update_worker("w-a", state="ready")
        with store.transaction():  # nested: joins the outer one
            store.get_or_create_deployment("second")
        raise RuntimeError("boom")
    assert store.get_worker("w-a").state == "starting"
    assert store.get_deployment_by_name("second") is None


def test_referenced_bundles_are_those_of_live_endpoints_or_recent_revisions(store) -> None:
    deployment = store.get_or_create_deployment("hello")
    live, _ = store.get_or_create_endpoint(deployment.id, "live")
    stopped, _ = store.get_or_create_endpoint(deployment.id, "old")
    digests = {"code": "c", "environment": "e", "autoscaling": "a"}
    store.add_revision(live.id, b"spec", {**digests, "bundle": "b-live-1"})
    store.add_revision(live.id, b"spec", {**digests, "bundle": "b-live-2"})  # older revisions count too
    store.add_revision(stopped.id, b"spec", {**digests, "bundle": "b-stopped"})
    store.update_endpoint(stopped.id, state="stopped")
    assert store.referenced_bundles() == {"b-live-1", "b-live-2"}
    # A revision registered since then keeps its bundle even though its endpoint is stopped.
    assert store.referenced_bundles(registered_since=0.0) == {"b-live-1", "b-live-2", "b-stopped"}
    assert store.referenced_bundles(registered_since=time.time() + 60) == {"b-live-1", "b-live-2"}


def test_worker_rows_keep_their_owner_and_every_column(store) -> None:
    worker = _worker(store, "w-a")
    assert worker.published_ports == ""
    ports = '[{"port":8080,"protocol":"tcp","address":"127.0.0.1:41234"}]'  # migration 5
    full = store.update_worker(
        "w-a",
        owner="host:1:2",
        calls_in_flight=3,
        calls_queued=1,
        calls_started=2**40,  # a long-lived worker's count outgrows 32 bits
        last_heartbeat=1234.5,
        failure_log_tail="tail\n",
        published_ports=ports,
    )
    assert store.get_worker("w-a") == full
    assert (full.owner, full.calls_started, full.last_heartbeat) == ("host:1:2", 2**40, 1234.5)
    assert full.published_ports == ports
    assert full.created_at == pytest.approx(worker.created_at) and full.created_at > 0
    assert store.update_worker("w-a") == full  # nothing to set: the row as it is


def test_latest_revision_is_the_last_registered(store) -> None:
    d = store.get_or_create_deployment("hello")
    e, _ = store.get_or_create_endpoint(d.id, "default")
    digests = {"bundle": "b", "code": "c", "environment": "e", "autoscaling": "a"}
    revisions = [store.add_revision(e.id, f"spec-{i}".encode(), digests) for i in range(5)]
    assert store.latest_revision(e.id) == revisions[-1]
    assert store.list_revisions(e.id) == revisions
    store.set_revision_spec(revisions[0].id, b"stripped")
    assert store.get_revision(revisions[0].id).spec == b"stripped"
    assert store.latest_revision("e-missing") is None


def _store_files(store: Store, request: pytest.FixtureRequest, tmp_path) -> list[Path]:
    """The files a store keeps revisions in: SQLite's database and log; PostgreSQL's table and its TOAST table."""
    if isinstance(store, SqliteStore):
        return [p for p in tmp_path.iterdir() if p.name.startswith("state.db")]
    import psycopg

    server = request.getfixturevalue("postgres_server")
    with psycopg.connect(server.admin_url, autocommit=True) as admin:
        admin.execute("CHECKPOINT")  # what the server holds in its buffers reaches its files
    row = store._one(
        "SELECT current_setting('data_directory') AS dir, pg_relation_filepath('revisions') AS heap,"
        " (SELECT pg_relation_filepath(reltoastrelid) FROM pg_class WHERE relname = 'revisions') AS toast"
    )
    files = [Path(row["dir"]) / row["heap"], Path(row["dir"]) / row["toast"]]
    if not all(os.access(f, os.R_OK) for f in files):
        pytest.skip("the PostgreSQL server's files are not readable from here")
    return files


def test_scrub_leaves_no_copy_of_a_rewritten_value_in_the_files(store, request, tmp_path) -> None:
    d = store.get_or_create_deployment("hello")
    e, _ = store.get_or_create_endpoint(d.id, "default")
    digests = {"bundle": "b", "code": "c", "environment": "e", "autoscaling": "a"}
    # One value that fits a page and one that does not (SQLite overflow pages, PostgreSQL TOAST).
    small, large = b"sealed-" + os.urandom(24), b"sealed-" + os.urandom(12_000)
    revisions = [store.add_revision(e.id, b"spec:" + value, digests) for value in (small, large)]
    if isinstance(store, SqliteStore):
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as an automatic checkpoint would, in time

    def holding() -> list[str]:
        found = []
        for path in _store_files(store, request, tmp_path):
            data = path.read_bytes()
            found += [f"{path.name}: {len(v)} bytes" for v in (small, large) if v[-32:] in data]
        return found

    assert len(holding()) >= 2  # the scan finds them before
    for revision in revisions:
        store.set_revision_spec(revision.id, b"spec:")
    store.scrub()
    assert holding() == []
