"""The SQLite state store: one file in WAL mode, for a single control service (the embedded default)."""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import fields
from pathlib import Path
from typing import IO, Any, TypeVar

from vastrpc._errors import ControlServiceError
from vastrpc._files import private_file
from vastrpc.config import ControlConfig
from vastrpc.control.stores.base import (
    ENDPOINT_COLUMNS,
    WORKER_COLUMNS,
    DeploymentRow,
    EndpointRow,
    RevisionRow,
    WorkerRow,
    check_columns,
    new_id,
    new_token,
    worker_filter,
)
from vastrpc.control.stores.live import LiveWorkers

__all__ = ["SoleLeaderLock", "SqliteStore"]

T = TypeVar("T")

log = logging.getLogger(__name__)

# Seconds heartbeats wait in memory before they are written to the file (``LiveWorkers``).
BEAT_WRITE_INTERVAL = 3.0


class SoleLeaderLock:
    """The leader lock of a store only one process uses: always held by that process."""

    async def try_acquire(self) -> bool:
        """Always True: no other service can use the store."""
        return True

    async def still_held(self) -> bool:
        """Always True."""
        return True

    async def release(self) -> None:
        """Nothing to release."""


# Schema migrations, applied in order; the schema_version table records how far a database
# got. Append a new entry for every change; never edit a released one.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE deployments (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL
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
        created_at REAL NOT NULL,
        last_client_seen REAL NOT NULL DEFAULT 0,
        UNIQUE (deployment_id, tag)
    );
    CREATE TABLE revisions (
        id TEXT PRIMARY KEY,
        endpoint_id TEXT NOT NULL REFERENCES endpoints(id),
        spec BLOB NOT NULL,
        bundle_digest TEXT NOT NULL,
        code_digest TEXT NOT NULL,
        environment_digest TEXT NOT NULL,
        autoscaling_digest TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE workers (
        id TEXT PRIMARY KEY,
        endpoint_id TEXT NOT NULL REFERENCES endpoints(id),
        revision_id TEXT NOT NULL REFERENCES revisions(id),
        state TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        address TEXT NOT NULL DEFAULT '',
        score REAL NOT NULL DEFAULT 0,
        capacity INTEGER NOT NULL DEFAULT 0,
        pid INTEGER NOT NULL DEFAULT 0,
        calls_in_flight INTEGER NOT NULL DEFAULT 0,
        failure_step TEXT NOT NULL DEFAULT '',
        failure_message TEXT NOT NULL DEFAULT '',
        failure_log_tail TEXT NOT NULL DEFAULT '',
        last_heartbeat REAL NOT NULL DEFAULT 0,
        log_path TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    );
    CREATE INDEX workers_endpoint ON workers(endpoint_id, state);
    CREATE INDEX revisions_endpoint ON revisions(endpoint_id);
    """,
    # 2: of a worker's calls in flight, those waiting for a slot (HeartbeatRequest.calls_queued).
    "ALTER TABLE workers ADD COLUMN calls_queued INTEGER NOT NULL DEFAULT 0",
    # 3: calls a worker has started (HeartbeatRequest.calls_started): activity between heartbeats.
    "ALTER TABLE workers ADD COLUMN calls_started INTEGER NOT NULL DEFAULT 0",
    # 4: the control service process that started the worker (several services may share a store).
    "ALTER TABLE workers ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
    # 5: the ports a worker publishes (Image.publish_port) and where, as JSON (WorkerRow.published_ports).
    "ALTER TABLE workers ADD COLUMN published_ports TEXT NOT NULL DEFAULT ''",
    # 6: the indices of the host's GPUs the worker holds, comma-separated (WorkerRow.gpus).
    "ALTER TABLE workers ADD COLUMN gpus TEXT NOT NULL DEFAULT ''",
    # 7: the UpdateTier a revision was registered with (RevisionRow.tier; 0 before this version).
    "ALTER TABLE revisions ADD COLUMN tier INTEGER NOT NULL DEFAULT 0",
)


class SqliteStore:
    """The Store on one SQLite file in WAL mode.

    One connection is shared by the service (all calls come from its event loop);
    a lock keeps it safe if a thread ever calls in. One control service uses the file
    (``shared`` is False): it is always the leader, and its own locks are enough. Because
    every write is its own, the workers not stopped are also kept in memory (``LiveWorkers``)
    and the reads that can only return those are answered from there.
    """

    shared = False

    @classmethod
    def from_config(cls, config: ControlConfig) -> SqliteStore:
        """The store in ``state.db`` under the service's home."""
        return cls(Path(config.home) / "state.db")

    def __init__(self, path: Path | str, *, sole: bool = True) -> None:
        """Open (creating and migrating when needed) the database at ``path``.

        Args:
            path: The database file (``:memory:`` for one in memory).
            sole: Whether this store is the file's only user, as a control service's is: it
                holds ``PATH.lock`` while open (``ControlServiceError`` when another holds it)
                and keeps the workers not stopped in memory. False for a reader beside a
                running service (a test, an operator's script), which reads the file each time.
        """
        self._sole_lock = _hold_sole(Path(f"{path}.lock")) if sole and str(path) != ":memory:" else None
        if str(path) != ":memory:":
            # SQLite gives its -wal and -shm files the database's mode: all three private to this user.
            private_file(Path(path))
            for log_file in (Path(f"{path}-wal"), Path(f"{path}-shm")):
                if log_file.exists():
                    private_file(log_file)
        # isolation_level=None: the module never opens transactions behind our back;
        # transaction() issues BEGIN IMMEDIATE / COMMIT itself.
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._depth = 0
        self._live = LiveWorkers(lambda: self._read_workers(" WHERE state != 'stopped'", ()), enabled=sole)
        self._beats_written = time.monotonic()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        # Freed content (a stripped secret, a deleted row) is overwritten with zeros, not left in free space.
        self._db.execute("PRAGMA secure_delete=ON")
        self._migrate()

    # -- plumbing -----------------------------------------------------------------

    def leader_lock(self) -> SoleLeaderLock:
        """The sole service of the file always leads."""
        return SoleLeaderLock()

    @asynccontextmanager
    async def endpoint_lock(self, endpoint_id: str) -> AsyncIterator[None]:
        """Nothing to take: the service's own per-endpoint lock already excludes everyone."""
        yield

    async def follow_changes(self, changed: Callable[[str], None]) -> None:
        """Returns at once: every change is made by this process, which wakes its watchers itself."""

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Commit the calls inside together; nested uses join the outer transaction."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                self._live.invalidate()  # it holds what was just rolled back
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._depth = 0

    def _migrate(self) -> None:
        with self.transaction():
            self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self._db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = row[0] or 0
            for version, script in enumerate(_MIGRATIONS[current:], start=current + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    @property
    def schema_version(self) -> int:
        """The migration the database is at."""
        row = self._one("SELECT MAX(version) AS v FROM schema_version")
        return int(row["v"] or 0) if row else 0

    def close(self) -> None:
        """Write the heartbeats still in memory and close the connection."""
        with self._lock:
            self._write_beats(self._live.unwritten)
            self._live.unwritten.clear()
            self._db.close()
            if self._sole_lock is not None:
                self._sole_lock.close()  # and with it the lock

    def scrub(self) -> None:
        """Fold the write-ahead log into the database and truncate it: its older page images go.

        With ``secure_delete`` on, the pages written back no longer hold what was freed, so
        neither ``state.db`` nor ``state.db-wal`` keeps it (``-shm`` holds only the log's index).
        """
        with self._lock:
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            # Another connection reads the file (a person's sqlite3 shell): the log stays until it is done.
            log.warning("state store: the write-ahead log could not be truncated now (a reader holds it)")

    def _one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchone()

    def _all(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    def _exec(self, sql: str, params: Iterable[Any] = ()) -> None:
        with self._lock:
            self._db.execute(sql, tuple(params))

    def _update(
        self, table: str, allowed: frozenset[str], row_id: str, values: dict[str, Any], get: Callable[[str], T | None]
    ) -> T:
        """Set columns of one row and return the new row (KeyError when there is none)."""
        check_columns(table, allowed, values)
        with self.transaction():
            if values:
                # Column names come from the dataclass fields checked above, never from callers' data.
                assignments = ", ".join(f"{name} = ?" for name in values)
                self._exec(f"UPDATE {table} SET {assignments} WHERE id = ?", [*values.values(), row_id])
            row = get(row_id)
        if row is None:
            raise KeyError(row_id)
        return row

    # -- deployments --------------------------------------------------------------

    def get_or_create_deployment(self, name: str) -> DeploymentRow:
        """The deployment called ``name``, created when missing."""
        with self.transaction():
            existing = self.get_deployment_by_name(name)
            if existing is not None:
                return existing
            row = DeploymentRow(id=new_id("d"), name=name, created_at=time.time())
            self._exec(
                "INSERT INTO deployments (id, name, created_at) VALUES (?, ?, ?)", (row.id, row.name, row.created_at)
            )
            return row

    def get_deployment_by_name(self, name: str) -> DeploymentRow | None:
        """The deployment called ``name``, if any."""
        row = self._one("SELECT * FROM deployments WHERE name = ?", (name,))
        return DeploymentRow(**dict(row)) if row else None

    def get_deployment(self, deployment_id: str) -> DeploymentRow | None:
        """The deployment with that id, if any."""
        row = self._one("SELECT * FROM deployments WHERE id = ?", (deployment_id,))
        return DeploymentRow(**dict(row)) if row else None

    def list_deployments(self) -> list[DeploymentRow]:
        """Every deployment, oldest first."""
        return [DeploymentRow(**dict(r)) for r in self._all("SELECT * FROM deployments ORDER BY created_at, name")]

    # -- endpoints ----------------------------------------------------------------

    def get_or_create_endpoint(self, deployment_id: str, tag: str) -> tuple[EndpointRow, bool]:
        """The endpoint of ``(deployment, tag)`` and whether it was created now."""
        with self.transaction():
            row = self._one("SELECT * FROM endpoints WHERE deployment_id = ? AND tag = ?", (deployment_id, tag))
            if row:
                return EndpointRow(**dict(row)), False
            endpoint_id = new_id("e")
            self._exec(
                "INSERT INTO endpoints (id, deployment_id, tag, state, token, created_at)"
                " VALUES (?, ?, ?, 'new', ?, ?)",
                (endpoint_id, deployment_id, tag, new_token(), time.time()),
            )
            endpoint = self.get_endpoint(endpoint_id)
            assert endpoint is not None
            return endpoint, True

    def get_endpoint(self, endpoint_id: str) -> EndpointRow | None:
        """The endpoint with that id, if any."""
        row = self._one("SELECT * FROM endpoints WHERE id = ?", (endpoint_id,))
        return EndpointRow(**dict(row)) if row else None

    def list_endpoints(self, deployment_id: str | None = None) -> list[EndpointRow]:
        """Endpoints of one deployment (or all), oldest first."""
        if deployment_id is None:
            rows = self._all("SELECT * FROM endpoints ORDER BY created_at, tag")
        else:
            rows = self._all(
                "SELECT * FROM endpoints WHERE deployment_id = ? ORDER BY created_at, tag", (deployment_id,)
            )
        return [EndpointRow(**dict(r)) for r in rows]

    def update_endpoint(self, endpoint_id: str, **values: Any) -> EndpointRow:
        """Set columns of an endpoint and return the new row."""
        return self._update("endpoints", ENDPOINT_COLUMNS, endpoint_id, values, self.get_endpoint)

    # -- revisions ----------------------------------------------------------------

    def add_revision(self, endpoint_id: str, spec: bytes, digests: dict[str, str], tier: int = 0) -> RevisionRow:
        """Record a revision registered as ``tier``; ``digests`` maps bundle/code/environment/autoscaling to hex."""
        row = RevisionRow.new(endpoint_id, spec, digests, tier)
        self._exec(
            "INSERT INTO revisions (id, endpoint_id, spec, bundle_digest, code_digest, environment_digest,"
            " autoscaling_digest, created_at, tier) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.id,
                row.endpoint_id,
                row.spec,
                row.bundle_digest,
                row.code_digest,
                row.environment_digest,
                row.autoscaling_digest,
                row.created_at,
                row.tier,
            ),
        )
        return row

    def get_revision(self, revision_id: str) -> RevisionRow | None:
        """The revision with that id, if any."""
        return _revision(self._one("SELECT * FROM revisions WHERE id = ?", (revision_id,)))

    def list_revisions(self, endpoint_id: str) -> list[RevisionRow]:
        """Every revision of the endpoint, oldest first."""
        rows = self._all("SELECT * FROM revisions WHERE endpoint_id = ? ORDER BY created_at, rowid", (endpoint_id,))
        return [r for r in map(_revision, rows) if r is not None]

    def set_revision_spec(self, revision_id: str, spec: bytes) -> None:
        """Replace a revision's stored spec (teardown strips its secrets)."""
        self._exec("UPDATE revisions SET spec = ? WHERE id = ?", (spec, revision_id))

    def latest_revision(self, endpoint_id: str) -> RevisionRow | None:
        """The endpoint's most recently registered revision, if any."""
        return _revision(
            self._one(
                "SELECT * FROM revisions WHERE endpoint_id = ? ORDER BY created_at DESC, rowid DESC LIMIT 1",
                (endpoint_id,),
            )
        )

    def referenced_bundles(self, *, registered_since: float | None = None) -> set[str]:
        """Bundle digests of revisions of endpoints that are not stopped, or registered since a time."""
        # +inf matches no revision: only the endpoints' states decide then.
        since = float("inf") if registered_since is None else registered_since
        rows = self._all(
            "SELECT DISTINCT r.bundle_digest FROM revisions r JOIN endpoints e ON e.id = r.endpoint_id"
            " WHERE e.state != 'stopped' OR r.created_at >= ?",
            (since,),
        )
        return {row[0] for row in rows if row[0]}

    # -- workers ------------------------------------------------------------------

    def add_worker(self, worker: WorkerRow) -> WorkerRow:
        """Insert a worker row (``created_at`` is set here) and return it."""
        values = {f.name: getattr(worker, f.name) for f in fields(WorkerRow)}
        values["created_at"] = time.time()
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._lock:
            self._exec(f"INSERT INTO workers ({columns}) VALUES ({marks})", values.values())
            row = WorkerRow(**values)
            self._live.put(row)
        return row

    def get_worker(self, worker_id: str) -> WorkerRow | None:
        """The worker with that id, if any."""
        with self._lock:
            return self._live.get(worker_id) or self._read_worker(worker_id)

    def _read_worker(self, worker_id: str) -> WorkerRow | None:
        row = self._one("SELECT * FROM workers WHERE id = ?", (worker_id,))
        return _worker(row) if row else None

    def get_worker_by_token_hash(self, token_hash: str) -> WorkerRow | None:
        """The worker whose token hashes to ``token_hash``, if any."""
        with self._lock:
            if (live := self._live.by_token(token_hash)) is not None:
                return live
            row = self._one("SELECT * FROM workers WHERE token_hash = ?", (token_hash,))
        return _worker(row) if row else None

    def list_workers(
        self,
        *,
        endpoint_id: str | None = None,
        revision_id: str | None = None,
        states: Sequence[str] | None = None,
        exclude_states: Sequence[str] | None = None,
    ) -> list[WorkerRow]:
        """Workers matching every given filter, oldest first."""
        with self._lock:
            if self._live.answers(states, exclude_states):
                return self._live.select(
                    endpoint_id=endpoint_id, revision_id=revision_id, states=states, exclude_states=exclude_states
                )
        clause, params = worker_filter(
            "?", endpoint_id=endpoint_id, revision_id=revision_id, states=states, exclude_states=exclude_states
        )
        with self._lock:
            # The rows of workers kept in memory are newer (their latest beats): those are returned.
            return [self._live.get(w.id) or w for w in self._read_workers(clause, params)]

    def _read_workers(self, clause: str, params: Iterable[Any]) -> list[WorkerRow]:
        return [_worker(r) for r in self._all(f"SELECT * FROM workers{clause} ORDER BY created_at, id", params)]

    def update_worker(self, worker_id: str, **values: Any) -> WorkerRow:
        """Set columns of a worker and return the new row."""
        with self._lock:
            # The worker's latest beat goes with it, so that the row read back is as new as
            # the one in memory (a rollback loses that beat, a second's worth, from the file).
            values = {**self._live.unwritten.pop(worker_id, {}), **values}
            row = self._update("workers", WORKER_COLUMNS, worker_id, values, self._read_worker)
            self._live.put(row)
        return row

    def record_heartbeats(self, beats: dict[str, dict[str, Any]]) -> None:
        """Take many workers' heartbeats (``HeartbeatBatch``): read back at once, in the file within a few seconds."""
        with self._lock:
            if others := self._live.beat(beats):
                self._write_beats(others)  # of workers stopped (or unknown): at once, as they are rare
            if time.monotonic() - self._beats_written >= BEAT_WRITE_INTERVAL:
                self._write_beats(self._live.unwritten)
                self._live.unwritten.clear()
                self._beats_written = time.monotonic()

    def _write_beats(self, beats: dict[str, dict[str, Any]]) -> None:
        """Write heartbeats in one statement batch; unknown workers are skipped."""
        rows = [
            (b["last_heartbeat"], b["calls_in_flight"], b["calls_queued"], b["calls_started"], worker_id)
            for worker_id, b in beats.items()
        ]
        if rows:
            with self.transaction():
                self._db.executemany(
                    "UPDATE workers SET last_heartbeat = MAX(last_heartbeat, ?), calls_in_flight = ?,"
                    " calls_queued = ?, calls_started = ? WHERE id = ?",
                    rows,
                )


def _hold_sole(path: Path) -> IO[bytes]:
    """Hold an exclusive lock on ``path`` (created private) for as long as the returned file stays open."""
    private_file(path)
    lock = open(path, "ab")  # noqa: SIM115 - kept open: the lock lasts as long as the file does
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        database = path.with_suffix("")
        raise ControlServiceError(
            f"another control service uses {database}: a SQLite state store serves one service. Stop the "
            "other one, give this one its own --home, or let several share a PostgreSQL store (--store)"
        ) from None
    return lock


_WORKER_FIELDS = tuple(f.name for f in fields(WorkerRow))
# Column orders of worker rows seen to hold exactly the dataclass's fields.
_WORKER_COLUMN_ORDERS: set[tuple[str, ...]] = set()


def _worker(row: sqlite3.Row) -> WorkerRow:
    """A worker row as the dataclass, built without its ``__init__`` when the columns are its fields.

    A frozen dataclass's ``__init__`` sets each of its two dozen fields through
    ``object.__setattr__``: about 20 µs a row, most of reading a thousand workers (a snapshot
    of a large endpoint, the heartbeat check, a listing). The same values set at once take a
    quarter of that.
    """
    keys = tuple(row.keys())
    if keys not in _WORKER_COLUMN_ORDERS:
        if len(keys) != len(_WORKER_FIELDS) or set(keys) != set(_WORKER_FIELDS):
            return WorkerRow(**dict(row))
        _WORKER_COLUMN_ORDERS.add(keys)
    made = object.__new__(WorkerRow)
    made.__dict__.update(zip(keys, row, strict=True))
    return made


def _revision(row: Any) -> RevisionRow | None:
    if not row:
        return None
    values = dict(row)
    values["spec"] = bytes(values["spec"])
    return RevisionRow(**values)
