"""The state store port: the Store interface and the rows it keeps (SQLite in sqlite.py, PostgreSQL in postgres.py)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, fields
from typing import Any, Protocol

from vastrpc._errors import VastrpcError

__all__ = [
    "ACTIVE_WORKER_STATES",
    "DeploymentRow",
    "EndpointRow",
    "RevisionRow",
    "LeaderLock",
    "Store",
    "StoreError",
    "WorkerRow",
    "new_id",
    "worker_filter",
]

# Worker states as stored (lower-case names of vastrpc.api.v1.WorkerState without the prefix).
# A worker in one of these states counts towards its endpoint's workers: it serves or will.
ACTIVE_WORKER_STATES = ("starting", "downloading", "pulling", "installing", "loading", "benchmarking", "ready")


class StoreError(VastrpcError):
    """The state store cannot be opened or reached (a database that is down, refuses us, or is missing)."""


def new_id(prefix: str) -> str:
    """A random id such as ``w-3f9a0c1b2d4e``: 48 bits, unique enough per control service."""
    return f"{prefix}-{secrets.token_hex(6)}"


@dataclass(frozen=True)
class DeploymentRow:
    """A deployment: a name whose endpoints are its tags."""

    id: str
    name: str
    created_at: float


@dataclass(frozen=True)
class EndpointRow:
    """One (deployment, tag): the unit that is provisioned, watched and torn down.

    ``state`` is one of ``new`` (registered, never provisioned), ``deploying``, ``ready``,
    ``failed``, ``stopped``.
    """

    id: str
    deployment_id: str
    tag: str
    state: str
    live_revision_id: str | None
    token: str
    desired_workers: int
    failure_step: str
    failure_message: str
    failure_log_tail: str
    created_at: float
    last_client_seen: float


@dataclass(frozen=True)
class RevisionRow:
    """A registered revision: the serialized DeploymentSpec and the digests that classify updates."""

    id: str
    endpoint_id: str
    spec: bytes
    bundle_digest: str
    code_digest: str
    environment_digest: str
    autoscaling_digest: str
    created_at: float
    # The UpdateTier it was registered with (0: unknown, a revision stored before version 7).
    tier: int = 0

    @classmethod
    def new(cls, endpoint_id: str, spec: bytes, digests: dict[str, str], tier: int = 0) -> RevisionRow:
        """A new revision; ``digests`` maps bundle/code/environment/autoscaling to hex digests."""
        return cls(
            id=new_id("r"),
            endpoint_id=endpoint_id,
            spec=spec,
            bundle_digest=digests.get("bundle", ""),
            code_digest=digests.get("code", ""),
            environment_digest=digests.get("environment", ""),
            autoscaling_digest=digests.get("autoscaling", ""),
            created_at=time.time(),
            tier=tier,
        )


def worker_filter(
    placeholder: str,
    *,
    endpoint_id: str | None = None,
    revision_id: str | None = None,
    states: Sequence[str] | None = None,
    exclude_states: Sequence[str] | None = None,
) -> tuple[str, list[Any]]:
    """The ``WHERE`` clause (or "") and its parameters for ``Store.list_workers``, in either SQL dialect.

    Args:
        placeholder: The driver's parameter marker: ``"?"`` (sqlite3) or ``"%s"`` (psycopg).
    """
    where: list[str] = []
    params: list[Any] = []
    if endpoint_id is not None:
        where.append(f"endpoint_id = {placeholder}")
        params.append(endpoint_id)
    if revision_id is not None:
        where.append(f"revision_id = {placeholder}")
        params.append(revision_id)
    if states is not None:
        where.append(f"state IN ({', '.join(placeholder for _ in states) or 'NULL'})")
        params.extend(states)
    if exclude_states:
        where.append(f"state NOT IN ({', '.join(placeholder for _ in exclude_states)})")
        params.extend(exclude_states)
    return (f" WHERE {' AND '.join(where)}" if where else ""), params


@dataclass(frozen=True)
class WorkerRow:
    """A worker as the control service tracks it. Only the sha256 of its token is kept.

    ``owner`` names the control service process that started it (``host:pid:start``, see
    ``vastrpc.control.lifecycle.leadership.process_owner``); empty in rows older than the column.
    ``published_ports`` is the JSON list of the ports it publishes, each
    ``{"port": 8080, "protocol": "tcp", "address": "host:41234"}``; empty when none.
    ``gpus`` is the indices of its host's GPUs it holds, comma-separated (``"0,1"``, as in
    its ``CUDA_VISIBLE_DEVICES``); empty when none or not known (``gpu_indices`` parses it).
    """

    id: str
    endpoint_id: str
    revision_id: str
    state: str
    token_hash: str
    address: str = ""
    score: float = 0.0
    capacity: int = 0
    pid: int = 0
    calls_in_flight: int = 0
    calls_queued: int = 0
    calls_started: int = 0
    failure_step: str = ""
    failure_message: str = ""
    failure_log_tail: str = ""
    last_heartbeat: float = 0.0
    log_path: str = ""
    created_at: float = 0.0
    owner: str = ""
    published_ports: str = ""
    gpus: str = ""

    def gpu_indices(self) -> tuple[int, ...]:
        """``gpus`` as indices; empty when none."""
        if not self.gpus:
            return ()
        return tuple(int(i) for i in self.gpus.split(",") if i.strip().isdigit())


class LeaderLock(Protocol):
    """A lock that at most one control service of a store holds at a time: the leader's."""

    async def try_acquire(self) -> bool:
        """Take the lock if it is free; True when this process holds it now."""

    async def still_held(self) -> bool:
        """Whether this process still holds the lock (False once its hold was lost)."""

    async def release(self) -> None:
        """Give the lock up (nothing when it is not held)."""


class Store(Protocol):
    """What the control service needs from its state store: SQLite (one service) or PostgreSQL (several).

    Calls are synchronous: they take well under a millisecond on the embedded store and
    about one round trip on a database server. Every method that changes several rows
    runs in one transaction; ``transaction()`` groups several calls into one, and on a
    shared store also keeps other services' transactions out until it commits.
    """

    @property
    def shared(self) -> bool:
        """Whether other control service processes may use this store at the same time."""

    def leader_lock(self) -> LeaderLock:
        """A new handle on the store's leader lock (held by one service at a time)."""

    def endpoint_lock(self, endpoint_id: str) -> AbstractAsyncContextManager[None]:
        """Held while one service provisions, scales or tears down the endpoint; others wait."""

    async def follow_changes(self, changed: Callable[[str], None]) -> None:
        """Until cancelled, call ``changed(endpoint_id)`` when another process changes the endpoint or its workers.

        A store no other process uses returns at once: every change is made in this process.
        """

    def transaction(self) -> Any:
        """A context manager: the calls inside commit together or not at all."""

    def close(self) -> None:
        """Release the store."""

    def get_or_create_deployment(self, name: str) -> DeploymentRow:
        """The deployment called ``name``, created when missing."""

    def get_deployment_by_name(self, name: str) -> DeploymentRow | None:
        """The deployment called ``name``, if any."""

    def get_deployment(self, deployment_id: str) -> DeploymentRow | None:
        """The deployment with that id, if any."""

    def list_deployments(self) -> list[DeploymentRow]:
        """Every deployment, oldest first."""

    def get_or_create_endpoint(self, deployment_id: str, tag: str) -> tuple[EndpointRow, bool]:
        """The endpoint of ``(deployment, tag)`` and whether it was created now."""

    def get_endpoint(self, endpoint_id: str) -> EndpointRow | None:
        """The endpoint with that id, if any."""

    def list_endpoints(self, deployment_id: str | None = None) -> list[EndpointRow]:
        """Endpoints of one deployment (or all), oldest first."""

    def update_endpoint(self, endpoint_id: str, **values: Any) -> EndpointRow:
        """Set columns of an endpoint and return the new row."""

    def add_revision(self, endpoint_id: str, spec: bytes, digests: dict[str, str], tier: int = 0) -> RevisionRow:
        """Record a revision registered as ``tier``; ``digests`` maps bundle/code/environment/autoscaling to hex."""

    def get_revision(self, revision_id: str) -> RevisionRow | None:
        """The revision with that id, if any."""

    def latest_revision(self, endpoint_id: str) -> RevisionRow | None:
        """The endpoint's most recently registered revision, if any."""

    def list_revisions(self, endpoint_id: str) -> list[RevisionRow]:
        """Every revision of the endpoint, oldest first."""

    def set_revision_spec(self, revision_id: str, spec: bytes) -> None:
        """Replace a revision's stored spec (teardown strips its secrets)."""

    def scrub(self) -> None:
        """Leave no recoverable copy of overwritten or deleted values in the store's files, where it can.

        Teardown calls it once it has stripped the sealed secrets: SQLite overwrites freed
        content as it goes and here folds its write-ahead log into the database and
        truncates it; PostgreSQL can only vacuum (docs/security.md says what its server keeps).
        """

    def referenced_bundles(self, *, registered_since: float | None = None) -> set[str]:
        """Bundle digests that must be kept: those of any revision of an endpoint that is not stopped.

        With ``registered_since``, also those of revisions registered at or after that time,
        whatever their endpoint's state (a redeploy of a stopped endpoint registers first and
        provisions later).
        """

    def add_worker(self, worker: WorkerRow) -> WorkerRow:
        """Insert a worker row (``created_at`` is set here) and return it."""

    def get_worker(self, worker_id: str) -> WorkerRow | None:
        """The worker with that id, if any."""

    def get_worker_by_token_hash(self, token_hash: str) -> WorkerRow | None:
        """The worker whose token hashes to ``token_hash``, if any."""

    def list_workers(
        self,
        *,
        endpoint_id: str | None = None,
        revision_id: str | None = None,
        states: Sequence[str] | None = None,
        exclude_states: Sequence[str] | None = None,
    ) -> list[WorkerRow]:
        """Workers matching every given filter, oldest first."""

    def update_worker(self, worker_id: str, **values: Any) -> WorkerRow:
        """Set columns of a worker and return the new row."""


# Columns an update may set (the dataclass fields checked against what callers pass; never callers' data).
ENDPOINT_COLUMNS = frozenset(f.name for f in fields(EndpointRow)) - {"id", "deployment_id", "created_at"}
WORKER_COLUMNS = frozenset(f.name for f in fields(WorkerRow)) - {"id", "created_at"}


def check_columns(table: str, allowed: frozenset[str], values: dict[str, Any]) -> None:
    """Refuse to set columns that are not in ``allowed`` (ValueError)."""
    unknown = set(values) - allowed
    if unknown:
        raise ValueError(f"cannot set {sorted(unknown)} on {table}")


def new_token() -> str:
    """A new endpoint token nonce."""
    return secrets.token_urlsafe(32)
