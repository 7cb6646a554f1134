"""The PostgreSQL state store (psycopg 3): the same rows as SQLite, shared by several control services."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from vastrpc.config import ControlConfig
from vastrpc.control.stores.base import (
    ENDPOINT_COLUMNS,
    WORKER_COLUMNS,
    DeploymentRow,
    EndpointRow,
    RevisionRow,
    StoreError,
    WorkerRow,
    check_columns,
    new_id,
    new_token,
    worker_filter,
)

if TYPE_CHECKING:
    import psycopg

__all__ = ["PgLeaderLock", "PgStore", "advisory_key"]

log = logging.getLogger(__name__)

# The channel the tables' triggers notify with the id of the endpoint that changed.
CHANGES_CHANNEL = "vastrpc_changes"
# Connections notice a dead peer (a server gone, a network cut) within about half a minute.
_CONNECT_OPTIONS: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "application_name": "vastrpc-control",
}


def advisory_key(name: str) -> int:
    """The bigint key of a PostgreSQL advisory lock named ``name`` (the first 8 bytes of its sha256)."""
    return int.from_bytes(hashlib.sha256(f"vastrpc:{name}".encode()).digest()[:8], "big", signed=True)


_MIGRATION_LOCK = advisory_key("migrate")
_WRITE_LOCK = advisory_key("write")
_LEADER_LOCK = advisory_key("leader")

# Schema migrations, applied in order, each in the transaction that records it. The same
# versions and logical schema as sqlitestore._MIGRATIONS (with PostgreSQL's types); append a
# new entry for every change, never edit a released one.
_MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE deployments (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE endpoints (
        id TEXT PRIMARY KEY,
        deployment_id TEXT NOT NULL REFERENCES deployments(id),
        tag TEXT NOT NULL,
        state TEXT NOT NULL,
        live_revision_id TEXT,
        token TEXT NOT NULL,
        desired_workers INTEGER NOT NULL DEFAULT 0,
        failure_step TEXT NOT NULL DEFAULT '',
        failure_message TEXT NOT NULL DEFAULT '',
        failure_log_tail TEXT NOT NULL DEFAULT '',
        created_at DOUBLE PRECISION NOT NULL,
        last_client_seen DOUBLE PRECISION NOT NULL DEFAULT 0,
        UNIQUE (deployment_id, tag)
    );
    CREATE TABLE revisions (
        id TEXT PRIMARY KEY,
        endpoint_id TEXT NOT NULL REFERENCES endpoints(id),
        spec BYTEA NOT NULL,
        bundle_digest TEXT NOT NULL,
        code_digest TEXT NOT NULL,
        environment_digest TEXT NOT NULL,
        autoscaling_digest TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        -- Insertion order, for revisions registered within the same clock tick (SQLite's rowid).
        seq BIGSERIAL NOT NULL
    );
    CREATE TABLE workers (
        id TEXT PRIMARY KEY,
        endpoint_id TEXT NOT NULL REFERENCES endpoints(id),
        revision_id TEXT NOT NULL REFERENCES revisions(id),
        state TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        address TEXT NOT NULL DEFAULT '',
        score DOUBLE PRECISION NOT NULL DEFAULT 0,
        capacity INTEGER NOT NULL DEFAULT 0,
        pid INTEGER NOT NULL DEFAULT 0,
        calls_in_flight BIGINT NOT NULL DEFAULT 0,
        failure_step TEXT NOT NULL DEFAULT '',
        failure_message TEXT NOT NULL DEFAULT '',
        failure_log_tail TEXT NOT NULL DEFAULT '',
        last_heartbeat DOUBLE PRECISION NOT NULL DEFAULT 0,
        log_path TEXT NOT NULL DEFAULT '',
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX workers_endpoint ON workers(endpoint_id, state);
    CREATE INDEX revisions_endpoint ON revisions(endpoint_id);
    -- Watchers connected to any service learn of a change made by another: every change to an
    -- endpoint or its workers notifies its id, except the frequent bookkeeping (heartbeats,
    -- load, clients seen) that no watcher shows.
    CREATE FUNCTION vastrpc_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        quiet TEXT[] := ARRAY['last_heartbeat', 'calls_in_flight', 'calls_queued', 'calls_started',
                              'last_client_seen'];
    BEGIN
        IF TG_OP = 'UPDATE' AND to_jsonb(NEW) - quiet = to_jsonb(OLD) - quiet THEN
            RETURN NULL;
        END IF;
        IF TG_TABLE_NAME = 'endpoints' THEN
            PERFORM pg_notify('{CHANGES_CHANNEL}', NEW.id);
        ELSE
            PERFORM pg_notify('{CHANGES_CHANNEL}', NEW.endpoint_id);
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER endpoints_changed AFTER UPDATE ON endpoints
        FOR EACH ROW EXECUTE FUNCTION vastrpc_notify_change();
    CREATE TRIGGER workers_changed AFTER INSERT OR UPDATE ON workers
        FOR EACH ROW EXECUTE FUNCTION vastrpc_notify_change();
    """,
    # 2: of a worker's calls in flight, those waiting for a slot (HeartbeatRequest.calls_queued).
    "ALTER TABLE workers ADD COLUMN calls_queued BIGINT NOT NULL DEFAULT 0",
    # 3: calls a worker has started (HeartbeatRequest.calls_started): activity between heartbeats.
    "ALTER TABLE workers ADD COLUMN calls_started BIGINT NOT NULL DEFAULT 0",
    # 4: the control service process that started the worker (several services may share a store).
    "ALTER TABLE workers ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
    # 5: the ports a worker publishes (Image.publish_port) and where, as JSON (WorkerRow.published_ports).
    "ALTER TABLE workers ADD COLUMN published_ports TEXT NOT NULL DEFAULT ''",
    # 6: the indices of the host's GPUs the worker holds, comma-separated (WorkerRow.gpus).
    "ALTER TABLE workers ADD COLUMN gpus TEXT NOT NULL DEFAULT ''",
    # 7: the UpdateTier a revision was registered with (RevisionRow.tier; 0 before this version).
    "ALTER TABLE revisions ADD COLUMN tier INTEGER NOT NULL DEFAULT 0",
)


def _columns(row_type: type) -> str:
    return ", ".join(f.name for f in fields(row_type))


_DEPLOYMENT = _columns(DeploymentRow)
_ENDPOINT = _columns(EndpointRow)
_REVISION = _columns(RevisionRow)
_WORKER = _columns(WorkerRow)


def _psycopg() -> Any:
    """psycopg, imported only where PostgreSQL is used (an optional dependency)."""
    try:
        import psycopg  # noqa: PLC0415
    except ImportError:
        raise StoreError("a postgresql:// state store needs psycopg 3: pip install 'vastrpc[postgres]'") from None
    return psycopg


def describe(url: str) -> str:
    """``user@host:port/dbname`` of a connection URL, without its password, for messages."""
    psycopg = _psycopg()
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(an invalid PostgreSQL URL)"
    host = info.get("host") or "localhost"
    return f"{info.get('user') or ''}@{host}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


def connect(url: str, **options: Any) -> psycopg.Connection[Any]:
    """A new autocommit connection to ``url``, rows as dicts.

    Raises:
        StoreError: The server cannot be reached or refuses the connection.
    """
    psycopg = _psycopg()
    from psycopg.rows import dict_row  # noqa: PLC0415

    try:
        return psycopg.connect(url, autocommit=True, row_factory=dict_row, **{**_CONNECT_OPTIONS, **options})
    except psycopg.Error as exc:
        raise StoreError(
            f"cannot connect to the PostgreSQL state store {describe(url)}: {str(exc).strip()}; "
            "check the --store URL and that the server is running"
        ) from None


class PgStore:
    """The Store on a PostgreSQL database, which several control service processes may share.

    Each service keeps one connection for its calls (autocommit; a lock keeps it safe if a
    thread calls in). ``transaction()`` also takes a transaction-level advisory lock, so
    the read-then-write sequences of two services run one after the other, as SQLite's
    ``BEGIN IMMEDIATE`` makes them; single statements need no lock. Creation that two
    services may race (a deployment, an endpoint) is ``INSERT ... ON CONFLICT``.

    Args:
        url: ``postgresql://user:password@host:port/dbname`` (any libpq URL or DSN).

    Raises:
        StoreError: The database cannot be reached, or psycopg is not installed.
    """

    shared = True

    @classmethod
    def from_config(cls, config: ControlConfig) -> PgStore:
        """The store at ``config.store_url``."""
        return cls(config.store_url or "")

    def __init__(self, url: str) -> None:
        self.url = url
        self._psycopg = _psycopg()
        self._lock = threading.RLock()
        self._depth = 0
        self._db = connect(url)
        self._migrate()

    # -- plumbing -----------------------------------------------------------------

    def _conn(self) -> psycopg.Connection[Any]:
        """The connection, opened again if the last one broke (outside a transaction only)."""
        if self._db.closed and not self._depth:
            log.warning("reconnecting to the PostgreSQL state store %s", describe(self.url))
            self._db = connect(self.url)
        return self._db

    def _run(self, sql: str, params: Iterable[Any] = ()) -> Any:
        with self._lock:
            try:
                return self._conn().execute(sql, tuple(params))  # type: ignore[arg-type]
            except self._psycopg.OperationalError as exc:
                raise StoreError(f"the PostgreSQL state store {describe(self.url)} failed: {str(exc).strip()}") from exc

    def _one(self, sql: str, params: Iterable[Any] = ()) -> dict[str, Any] | None:
        with self._lock:
            row: dict[str, Any] | None = self._run(sql, params).fetchone()
            return row

    def _all(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            rows: list[dict[str, Any]] = self._run(sql, params).fetchall()
            return rows

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Commit the calls inside together, other services' transactions held off; nested uses join."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            conn = self._conn()
            self._depth = 1
            try:
                with conn.transaction():
                    self._run("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
                    yield
            finally:
                self._depth = 0

    def _migrate(self) -> None:
        # The advisory lock makes a second service that starts at the same moment wait, then
        # find the schema current: migrations run once.
        with self.transaction():
            self._run("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            self._run("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self._one("SELECT MAX(version) AS v FROM schema_version")
            current = int(row["v"] or 0) if row else 0
            for version, script in enumerate(_MIGRATIONS[current:], start=current + 1):
                with self._lock:
                    self._conn().execute(script)  # several statements, no parameters
                self._run("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                log.info("state store %s: schema migrated to version %d", describe(self.url), version)

    @property
    def schema_version(self) -> int:
        """The migration the database is at."""
        row = self._one("SELECT MAX(version) AS v FROM schema_version")
        return int(row["v"] or 0) if row else 0

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def scrub(self) -> None:
        """Vacuum the revisions table: the stripped specs' dead row versions are pruned.

        What the server keeps beyond that (its write-ahead log segments until recycled,
        archives, replicas, backups, freed disk blocks) is out of a client's reach;
        docs/security.md lists it.
        """
        self._run("VACUUM revisions")  # autocommit: VACUUM cannot run inside a transaction

    def leader_lock(self) -> PgLeaderLock:
        """A new handle on the leader's advisory lock, on a connection of its own."""
        return PgLeaderLock(self.url)

    @asynccontextmanager
    async def endpoint_lock(self, endpoint_id: str) -> AsyncIterator[None]:
        """A session advisory lock on the endpoint, polled so that waiting never blocks the event loop."""
        key = advisory_key(f"endpoint:{endpoint_id}")
        while not self._one("SELECT pg_try_advisory_lock(%s) AS ok", (key,))["ok"]:  # type: ignore[index]
            await asyncio.sleep(0.05)
        try:
            yield
        finally:
            with suppress(StoreError):  # the connection is gone, and its locks with it
                self._run("SELECT pg_advisory_unlock(%s)", (key,))

    async def follow_changes(self, changed: Callable[[str], None]) -> None:
        """LISTEN to the tables' change notifications (reconnecting when the connection drops) until cancelled.

        After each (re)connection every endpoint counts as changed: what happened while
        nobody listened is read afresh.
        """
        psycopg = self._psycopg
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, **_CONNECT_OPTIONS)
                async with conn:
                    await conn.execute(f"LISTEN {CHANGES_CHANNEL}")
                    for endpoint in self.list_endpoints():
                        changed(endpoint.id)
                    async for note in conn.notifies():
                        # This service's own changes woke its watchers already.
                        if note.pid != self._backend_pid():
                            changed(note.payload)
            except (psycopg.Error, StoreError) as exc:
                log.warning("listening for state changes failed (%s); again in 1 s", str(exc).strip())
            await asyncio.sleep(1.0)

    def _backend_pid(self) -> int:
        """The server process of this store's connection (0 while it is closed)."""
        try:
            return int(self._db.info.backend_pid)
        except self._psycopg.Error:
            return 0

    def _update(self, table: str, allowed: frozenset[str], columns: str, row_id: str, values: dict[str, Any]) -> Any:
        """Set columns of one row and return the new row as a dict (KeyError when there is none)."""
        check_columns(table, allowed, values)
        if values:
            # Column names come from the dataclass fields checked above, never from callers' data.
            assignments = ", ".join(f"{name} = %s" for name in values)
            sql = f"UPDATE {table} SET {assignments} WHERE id = %s RETURNING {columns}"
            row = self._one(sql, [*values.values(), row_id])
        else:
            row = self._one(f"SELECT {columns} FROM {table} WHERE id = %s", (row_id,))
        if row is None:
            raise KeyError(row_id)
        return row

    # -- deployments --------------------------------------------------------------

    def get_or_create_deployment(self, name: str) -> DeploymentRow:
        """The deployment called ``name``, created when missing."""
        with self.transaction():
            self._run(
                "INSERT INTO deployments (id, name, created_at) VALUES (%s, %s, %s) ON CONFLICT (name) DO NOTHING",
                (new_id("d"), name, time.time()),
            )
            row = self.get_deployment_by_name(name)
        assert row is not None
        return row

    def get_deployment_by_name(self, name: str) -> DeploymentRow | None:
        """The deployment called ``name``, if any."""
        row = self._one(f"SELECT {_DEPLOYMENT} FROM deployments WHERE name = %s", (name,))
        return DeploymentRow(**row) if row else None

    def get_deployment(self, deployment_id: str) -> DeploymentRow | None:
        """The deployment with that id, if any."""
        row = self._one(f"SELECT {_DEPLOYMENT} FROM deployments WHERE id = %s", (deployment_id,))
        return DeploymentRow(**row) if row else None

    def list_deployments(self) -> list[DeploymentRow]:
        """Every deployment, oldest first."""
        return [
            DeploymentRow(**r) for r in self._all(f"SELECT {_DEPLOYMENT} FROM deployments ORDER BY created_at, name")
        ]

    # -- endpoints ----------------------------------------------------------------

    def get_or_create_endpoint(self, deployment_id: str, tag: str) -> tuple[EndpointRow, bool]:
        """The endpoint of ``(deployment, tag)`` and whether it was created now."""
        with self.transaction():
            inserted = self._one(
                "INSERT INTO endpoints (id, deployment_id, tag, state, token, created_at)"
                " VALUES (%s, %s, %s, 'new', %s, %s) ON CONFLICT (deployment_id, tag) DO NOTHING RETURNING id",
                (new_id("e"), deployment_id, tag, new_token(), time.time()),
            )
            row = self._one(
                f"SELECT {_ENDPOINT} FROM endpoints WHERE deployment_id = %s AND tag = %s", (deployment_id, tag)
            )
        assert row is not None
        return EndpointRow(**row), inserted is not None

    def get_endpoint(self, endpoint_id: str) -> EndpointRow | None:
        """The endpoint with that id, if any."""
        row = self._one(f"SELECT {_ENDPOINT} FROM endpoints WHERE id = %s", (endpoint_id,))
        return EndpointRow(**row) if row else None

    def list_endpoints(self, deployment_id: str | None = None) -> list[EndpointRow]:
        """Endpoints of one deployment (or all), oldest first."""
        if deployment_id is None:
            rows = self._all(f"SELECT {_ENDPOINT} FROM endpoints ORDER BY created_at, tag")
        else:
            rows = self._all(
                f"SELECT {_ENDPOINT} FROM endpoints WHERE deployment_id = %s ORDER BY created_at, tag",
                (deployment_id,),
            )
        return [EndpointRow(**r) for r in rows]

    def update_endpoint(self, endpoint_id: str, **values: Any) -> EndpointRow:
        """Set columns of an endpoint and return the new row."""
        return EndpointRow(**self._update("endpoints", ENDPOINT_COLUMNS, _ENDPOINT, endpoint_id, values))

    # -- revisions ----------------------------------------------------------------

    def add_revision(self, endpoint_id: str, spec: bytes, digests: dict[str, str], tier: int = 0) -> RevisionRow:
        """Record a revision registered as ``tier``; ``digests`` maps bundle/code/environment/autoscaling to hex."""
        row = RevisionRow.new(endpoint_id, spec, digests, tier)
        values = [getattr(row, f.name) for f in fields(RevisionRow)]
        self._run(f"INSERT INTO revisions ({_REVISION}) VALUES ({', '.join('%s' for _ in values)})", values)
        return row

    def get_revision(self, revision_id: str) -> RevisionRow | None:
        """The revision with that id, if any."""
        return _revision(self._one(f"SELECT {_REVISION} FROM revisions WHERE id = %s", (revision_id,)))

    def list_revisions(self, endpoint_id: str) -> list[RevisionRow]:
        """Every revision of the endpoint, oldest first."""
        rows = self._all(
            f"SELECT {_REVISION} FROM revisions WHERE endpoint_id = %s ORDER BY created_at, seq", (endpoint_id,)
        )
        return [r for r in map(_revision, rows) if r is not None]

    def set_revision_spec(self, revision_id: str, spec: bytes) -> None:
        """Replace a revision's stored spec (teardown strips its secrets)."""
        self._run("UPDATE revisions SET spec = %s WHERE id = %s", (spec, revision_id))

    def latest_revision(self, endpoint_id: str) -> RevisionRow | None:
        """The endpoint's most recently registered revision, if any."""
        return _revision(
            self._one(
                f"SELECT {_REVISION} FROM revisions WHERE endpoint_id = %s ORDER BY created_at DESC, seq DESC LIMIT 1",
                (endpoint_id,),
            )
        )

    def referenced_bundles(self, *, registered_since: float | None = None) -> set[str]:
        """Bundle digests of revisions of endpoints that are not stopped, or registered since a time."""
        # +inf matches no revision: only the endpoints' states decide then.
        since = float("inf") if registered_since is None else registered_since
        rows = self._all(
            "SELECT DISTINCT r.bundle_digest AS digest FROM revisions r JOIN endpoints e ON e.id = r.endpoint_id"
            " WHERE e.state != 'stopped' OR r.created_at >= %s",
            (since,),
        )
        return {row["digest"] for row in rows if row["digest"]}

    # -- workers ------------------------------------------------------------------

    def add_worker(self, worker: WorkerRow) -> WorkerRow:
        """Insert a worker row (``created_at`` is set here) and return it."""
        values = {f.name: getattr(worker, f.name) for f in fields(WorkerRow)}
        values["created_at"] = time.time()
        self._run(
            f"INSERT INTO workers ({', '.join(values)}) VALUES ({', '.join('%s' for _ in values)})", values.values()
        )
        return WorkerRow(**values)

    def get_worker(self, worker_id: str) -> WorkerRow | None:
        """The worker with that id, if any."""
        row = self._one(f"SELECT {_WORKER} FROM workers WHERE id = %s", (worker_id,))
        return WorkerRow(**row) if row else None

    def get_worker_by_token_hash(self, token_hash: str) -> WorkerRow | None:
        """The worker whose token hashes to ``token_hash``, if any."""
        row = self._one(f"SELECT {_WORKER} FROM workers WHERE token_hash = %s", (token_hash,))
        return WorkerRow(**row) if row else None

    def list_workers(
        self,
        *,
        endpoint_id: str | None = None,
        revision_id: str | None = None,
        states: Sequence[str] | None = None,
        exclude_states: Sequence[str] | None = None,
    ) -> list[WorkerRow]:
        """Workers matching every given filter, oldest first."""
        clause, params = worker_filter(
            "%s", endpoint_id=endpoint_id, revision_id=revision_id, states=states, exclude_states=exclude_states
        )
        rows = self._all(f"SELECT {_WORKER} FROM workers{clause} ORDER BY created_at, id", params)
        return [WorkerRow(**r) for r in rows]

    def update_worker(self, worker_id: str, **values: Any) -> WorkerRow:
        """Set columns of a worker and return the new row."""
        return WorkerRow(**self._update("workers", WORKER_COLUMNS, _WORKER, worker_id, values))


class PgLeaderLock:
    """The leader lock: a session advisory lock held on a connection of its own.

    PostgreSQL releases it when that connection ends, so a leader that dies (or loses the
    database) lets another service take over as soon as it next tries.

    Args:
        url: The state store's URL.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._held = False

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        psycopg = _psycopg()
        if self._conn is None or self._conn.closed:
            self._held = False
            # The server's side of the keepalives too: it frees the lock of a leader cut off by
            # the network within about half a minute, not the system's default two hours.
            given = psycopg.conninfo.conninfo_to_dict(self.url).get("options") or ""
            options = f"{given} -c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"
            try:
                self._conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, **{**_CONNECT_OPTIONS, "options": options.strip()}
                )
            except psycopg.Error as exc:
                raise StoreError(f"cannot connect to {describe(self.url)}: {str(exc).strip()}") from None
        return self._conn

    async def try_acquire(self) -> bool:
        """``pg_try_advisory_lock`` on the leader key: True when this process holds it now."""
        psycopg = _psycopg()
        conn = await self._connection()
        try:
            cursor = await conn.execute("SELECT pg_try_advisory_lock(%s)", (_LEADER_LOCK,))
            row = await cursor.fetchone()
        except psycopg.Error as exc:
            await self._drop()
            raise StoreError(f"the leader lock on {describe(self.url)} failed: {str(exc).strip()}") from None
        self._held = bool(row and row[0])
        return self._held

    async def still_held(self) -> bool:
        """Whether the lock's connection is alive (the server keeps the lock as long as it is)."""
        if not self._held or self._conn is None or self._conn.closed:
            return False
        psycopg = _psycopg()
        try:
            async with asyncio.timeout(5.0):
                await self._conn.execute("SELECT 1")
        except (psycopg.Error, TimeoutError):
            await self._drop()
            return False
        return True

    async def release(self) -> None:
        """Unlock (at once, where a close frees it only once the backend exits), then close."""
        if self._held and self._conn is not None and not self._conn.closed:
            with suppress(_psycopg().Error, TimeoutError):  # the close frees it later
                async with asyncio.timeout(5.0):
                    await self._conn.execute("SELECT pg_advisory_unlock(%s)", (_LEADER_LOCK,))
        await self._drop()

    async def _drop(self) -> None:
        self._held = False
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(Exception):  # a broken connection may fail to close; it is gone either way
                await conn.close()


def _revision(row: dict[str, Any] | None) -> RevisionRow | None:
    if not row:
        return None
    values = dict(row)
    values["spec"] = bytes(values["spec"])
    return RevisionRow(**values)
