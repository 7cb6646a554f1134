"""The TTL reaper: tears down endpoints no client used for their ``ttl``, deletes bundles and files none uses."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Protocol

from vastrpc._errors import BundleError, NotFoundError
from vastrpc.api.v1 import control_pb2
from vastrpc.control.bundles.base import BlobStore, manifest_files
from vastrpc.control.stores.base import ACTIVE_WORKER_STATES, EndpointRow, Store

__all__ = ["Reaper", "TeardownTarget"]

log = logging.getLogger(__name__)


class TeardownTarget(Protocol):
    """What the reaper needs from the Lifecycle."""

    @property
    def shutting_down(self) -> bool:
        """Whether the service is stopping (the reaper then leaves everything alone)."""

    async def teardown(self, name: str, tag: str = "") -> tuple[int, int]:
        """Stop a deployment's endpoint (``tag``) and its workers; returns (endpoints, workers)."""


class Reaper:
    """Enforces ``Deployment(ttl=N)``: N seconds after an endpoint's last client went away, it is torn down.

    An endpoint counts as used while a client watches it (an SDK session keeps a
    ``WatchEndpoint`` stream open for as long as it lives) and while any of its workers
    reports calls in flight (a long call keeps it alive even if its caller's watch broke).
    Otherwise it is idle since its ``last_client_seen``, which Register, Provision, the
    watch itself and the last watcher's disconnect all move forward. A torn-down endpoint
    is STOPPED; the next ``ensure_ready`` registers it as a new endpoint (tier 4).

    Each pass also deletes bundles that no revision of a live endpoint references. A bundle
    is kept for ``bundle_grace`` seconds after it was stored, and after any revision that
    names it was registered: a redeploy of a stopped endpoint registers its revision,
    uploads (or reuses) the bundle and only then provisions, and the bundle must survive
    that gap. A Provision that comes later than the grace after its Register finds the
    bundle gone and fails with "upload the bundle first"; the SDK never waits that long.
    A bundle's files (stored beside it, each under its SHA-256) are kept while a kept
    bundle's manifest names them, or for ``bundle_grace`` after they were stored.

    Everything runs on the service's event loop: ``sweep`` reads and decides without
    yielding, so no Register or watch can slip in between the check and the teardown.

    Args:
        store: The state store.
        blobs: The bundle store.
        lifecycle: Tears endpoints down (``Lifecycle.teardown``).
        interval: Seconds between passes of ``run``.
        bundle_grace: Seconds an unreferenced bundle is kept after it was stored or named.
        heartbeat_timeout: A worker's ``calls_in_flight`` counts only while its last
            heartbeat is at most this old (a worker that went silent keeps nothing alive).
    """

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        lifecycle: TeardownTarget,
        *,
        interval: float = 1.0,
        bundle_grace: float = 60.0,
        heartbeat_timeout: float = 30.0,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"reaper interval must be positive, got {interval!r}")
        self.store = store
        self.blobs = blobs
        self.lifecycle = lifecycle
        self.interval = interval
        self.bundle_grace = bundle_grace
        self.heartbeat_timeout = heartbeat_timeout
        self._watchers: Counter[str] = Counter()
        # The file digests each manifest names, by bundle digest (content-addressed: never stale).
        self._manifests: dict[str, frozenset[str]] = {}
        # Revision specs never change: parse each one's ttl once.
        self._ttls: dict[str, float] = {}
        # When run() started: no endpoint is idle for longer than the reaper has watched it,
        # so clients that were connected before a restart of the service have the whole TTL
        # to reconnect.
        self.started_at = 0.0

    # -- clients ------------------------------------------------------------------------

    def client_connected(self, endpoint_id: str) -> None:
        """A client opened a watch of the endpoint: it is in use until the watch ends."""
        self._watchers[endpoint_id] += 1

    def client_disconnected(self, endpoint_id: str, now: float | None = None) -> None:
        """A watch of the endpoint ended; the TTL counts from now (from the last one to end)."""
        self._watchers[endpoint_id] -= 1
        if self._watchers[endpoint_id] <= 0:
            del self._watchers[endpoint_id]
        try:
            self.store.update_endpoint(endpoint_id, last_client_seen=time.time() if now is None else now)
        except KeyError:
            pass  # no such endpoint: nothing to keep alive

    def clients(self, endpoint_id: str) -> int:
        """How many clients watch the endpoint now."""
        return self._watchers.get(endpoint_id, 0)

    # -- passes -------------------------------------------------------------------------

    async def run(self) -> None:
        """Sweep every ``interval`` seconds until cancelled; a failed pass is logged and the next one runs."""
        self.started_at = time.time()
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("ttl: reaper pass failed")

    async def sweep(self, now: float | None = None) -> list[str]:
        """One pass: tear down the idle endpoints, then delete unreferenced bundles.

        Args:
            now: The time to judge by (Unix seconds); the current time by default.

        Returns:
            The ids of the endpoints torn down.
        """
        if self.lifecycle.shutting_down:
            return []
        torn_down = []
        for listed in self.store.list_endpoints():
            if listed.state == "stopped":
                continue
            # Read again: an earlier teardown in this pass awaited, and a client may have come.
            endpoint = self.store.get_endpoint(listed.id)
            idle = None if endpoint is None else self._idle_for(endpoint, time.time() if now is None else now)
            if endpoint is None or idle is None:
                continue
            if await self._teardown(endpoint, idle):
                torn_down.append(endpoint.id)
            if self.lifecycle.shutting_down:
                return torn_down
        # In a thread: a bundle store in S3 lists and deletes over the network (with retries),
        # which must not hold up the event loop (heartbeats, calls to the service).
        await asyncio.to_thread(self.collect_bundles, time.time() if now is None else now)
        return torn_down

    def _idle_for(self, endpoint: EndpointRow, now: float) -> float | None:
        """Seconds the endpoint has been idle, if that is its TTL or more; else None (in use, or no TTL)."""
        if endpoint.state == "stopped" or not endpoint.live_revision_id:
            return None
        ttl = self._ttl(endpoint.live_revision_id)
        if ttl <= 0 or self.clients(endpoint.id):
            return None
        busy = [
            w
            for w in self.store.list_workers(endpoint_id=endpoint.id, states=ACTIVE_WORKER_STATES)
            if w.calls_in_flight > 0 and now - w.last_heartbeat <= self.heartbeat_timeout
        ]
        if busy:
            # A call runs: the endpoint is heard from now, and its TTL restarts once the calls end.
            self.store.update_endpoint(endpoint.id, last_client_seen=now)
            return None
        idle = now - max(endpoint.last_client_seen, self.started_at)
        return idle if idle >= ttl else None

    def _ttl(self, revision_id: str) -> float:
        ttl = self._ttls.get(revision_id)
        if ttl is None:
            revision = self.store.get_revision(revision_id)
            ttl = control_pb2.DeploymentSpec.FromString(revision.spec).ttl if revision is not None else 0.0
            self._ttls[revision_id] = ttl
        return ttl

    async def _teardown(self, endpoint: EndpointRow, idle: float) -> bool:
        deployment = self.store.get_deployment(endpoint.deployment_id)
        if deployment is None or not endpoint.live_revision_id:
            return False
        log.info(
            "ttl: tearing down %s:%s after %.0f s without clients (ttl %g s)",
            deployment.name,
            endpoint.tag,
            idle,
            self._ttl(endpoint.live_revision_id),
        )
        try:
            await self.lifecycle.teardown(deployment.name, endpoint.tag)
        except NotFoundError:
            return False
        return True

    def collect_bundles(self, now: float | None = None) -> list[str]:
        """Delete the bundles that no live endpoint references, and the files no kept bundle names, past their grace.

        Returns:
            The digests deleted (bundles and files).
        """
        now = time.time() if now is None else now
        keep = set(self.store.referenced_bundles(registered_since=now - self.bundle_grace))
        stored = self.blobs.stored()
        named: set[str] = set()
        for digest in keep:
            if digest in stored:
                named |= self._files_of(digest)
        deleted = []
        for digest, stored_at in stored.items():
            if digest in keep or digest in named or now - stored_at < self.bundle_grace:
                continue
            if self.blobs.delete(digest):
                log.info("ttl: deleted bundle blob %s: no endpoint uses it", digest[:12])
                deleted.append(digest)
        self._manifests = {d: files for d, files in self._manifests.items() if d in keep}
        return deleted

    def _files_of(self, digest: str) -> frozenset[str]:
        files = self._manifests.get(digest)
        if files is None:
            try:
                files = manifest_files(self.blobs, digest)
            except NotFoundError:
                return frozenset()
            except BundleError as exc:  # not a manifest: it names no files
                log.warning("ttl: bundle %s is not a manifest (%s); it keeps no files", digest[:12], exc)
                files = frozenset()
            self._manifests[digest] = files
        return files
