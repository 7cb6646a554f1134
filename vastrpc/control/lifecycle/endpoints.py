"""Endpoints and their workers: registration of revisions, provisioning, worker state changes and recovery."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from vastrpc._errors import DefinitionError, DeploymentError, NotFoundError
from vastrpc.api.v1 import common_pb2, control_pb2
from vastrpc.control.bundles.base import BlobStore
from vastrpc.control.lifecycle.beats import HeartbeatBatch
from vastrpc.control.lifecycle.leadership import JOINED, on_this_host, process_owner
from vastrpc.control.lifecycle.losses import Losses
from vastrpc.control.lifecycle.rollout import Rollouts
from vastrpc.control.lifecycle.rules import (
    DEFAULT_TAG,
    SCALABLE_STATES,
    WORKER_STATE_NAMES,
    desired_workers,
    hash_token,
    kept_workers,
    read_log_tail,
    validate_spec,
)
from vastrpc.control.lifecycle.sessions import SessionTable
from vastrpc.control.lifecycle.stopping import Stopping
from vastrpc.control.lifecycle.tiers import classify, keep_bundle, same_spec, same_workload
from vastrpc.control.providers.base import Provider, start_options
from vastrpc.control.stores.base import ACTIVE_WORKER_STATES, EndpointRow, RevisionRow, Store, WorkerRow, new_id

__all__ = ["Lifecycle", "Registration"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registration:
    """What RegisterDeployment decided."""

    deployment_id: str
    endpoint_id: str
    revision_id: str
    tier: int
    upload_required: bool


class Lifecycle(Losses, Rollouts, Stopping):
    """The control service's decisions about endpoints and workers, on top of a store, blobs and a provider.

    Everything runs on the service's event loop. Changes to an endpoint or its workers
    wake that endpoint's watchers (``change_event``). Provision and teardown of one
    endpoint are serialised by a per-endpoint lock; worker reports are single store
    updates and need none.
    """

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        provider: Provider,
        *,
        stop_grace: float = 10.0,
        heartbeat_interval: float = 2.0,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.provider = provider
        self.stop_grace = stop_grace
        self.heartbeat_interval = heartbeat_interval
        # Where workers this service starts reach it; set once the server is bound.
        self.control_address = ""
        provider.on_exit = self.worker_exited
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._events: dict[str, asyncio.Event] = {}
        # Changes of each endpoint so far: what tells a watch its shared snapshot is stale.
        self._versions: dict[str, int] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._shutting_down = False
        # Workers of an earlier run of the service still alive at startup: not our children,
        # so they are stopped by pid. Any other exited worker's pid may be recycled already.
        self._foreign: dict[str, int] = {}
        # Recorded on the workers this process starts: on a shared store, whose they are.
        self.owner = process_owner()
        # Sessions clients hold open on workers (OpenSession): reserved, retired last.
        self.sessions = SessionTable()
        # The heartbeats the service takes (``heartbeat`` writes each at once, for callers in-process).
        self.beats = HeartbeatBatch(
            store,
            self.change_version,
            self.adopt_reporting,
            flush_interval=min(1.0, heartbeat_interval),
            max_age=1.0 if store.shared else 30.0,
        )

    @property
    def shutting_down(self) -> bool:
        """Whether the service is stopping."""
        return self._shutting_down

    # -- change notification ----------------------------------------------------------

    def change_event(self, endpoint_id: str) -> asyncio.Event:
        """An event set at the next change of the endpoint; take it before reading the state."""
        event = self._events.get(endpoint_id)
        if event is None:
            event = self._events[endpoint_id] = asyncio.Event()
        return event

    def change_version(self, endpoint_id: str) -> int:
        """How many changes of the endpoint this service has seen: it grows at each ``changed``."""
        return self._versions.get(endpoint_id, 0)

    def changed(self, endpoint_id: str) -> None:
        """Wake the endpoint's watchers."""
        self._versions[endpoint_id] = self._versions.get(endpoint_id, 0) + 1
        event = self._events.pop(endpoint_id, None)
        if event is not None:
            event.set()

    def client_seen(self, endpoint_id: str) -> None:
        """Record that a client of the endpoint was heard from (the TTL reaper's input)."""
        self.store.update_endpoint(endpoint_id, last_client_seen=time.time())

    # -- register ---------------------------------------------------------------------

    def register(self, spec: control_pb2.DeploymentSpec) -> Registration:
        """Record a revision of ``spec`` and classify it against the endpoint's live revision."""
        validate_spec(spec)
        spec = control_pb2.DeploymentSpec.FromString(spec.SerializeToString())
        spec.tag = spec.tag or DEFAULT_TAG
        digests = spec.digests
        with self.store.transaction():
            deployment = self.store.get_or_create_deployment(spec.name)
            endpoint, created = self.store.get_or_create_endpoint(deployment.id, spec.tag)
            live = self.store.get_revision(endpoint.live_revision_id) if endpoint.live_revision_id else None
            # Torn down or failed: whatever the code, the deploy brings fresh workers (tier 4).
            tier = classify(None if created or endpoint.state in ("stopped", "failed") else live, digests)
            if live is not None and tier in (common_pb2.UPDATE_TIER_NONE, common_pb2.UPDATE_TIER_SETTINGS):
                # Same code: the file may differ only in its in-place settings (their values are
                # not in the code digest). The workers keep the bundle they run; nothing is uploaded.
                keep_bundle(spec, live)
            data = spec.SerializeToString(deterministic=True)
            latest = self.store.latest_revision(endpoint.id)
            if tier == common_pb2.UPDATE_TIER_NONE:
                assert live is not None
                revision_id = live.id
            elif latest is not None and (live is None or latest.id != live.id) and same_spec(latest.spec, spec):
                # The same deploy again before it went live (a retry, or two clients at once):
                # one revision, so both Provisions converge on the same workers.
                revision_id = latest.id
            else:
                kinds = ("bundle", "code", "environment", "autoscaling")
                revision_id = self.store.add_revision(
                    endpoint.id, data, {k: getattr(digests, k) for k in kinds}, tier
                ).id
            self.store.update_endpoint(endpoint.id, last_client_seen=time.time())
        log.info(
            "registered %s:%s revision %s (%s)", spec.name, spec.tag, revision_id, common_pb2.UpdateTier.Name(tier)
        )
        return Registration(deployment.id, endpoint.id, revision_id, tier, not self.blobs.has(digests.bundle))

    # -- provision --------------------------------------------------------------------

    def _endpoint_and_revision(self, endpoint_id: str, revision_id: str) -> tuple[EndpointRow, RevisionRow]:
        endpoint = self.store.get_endpoint(endpoint_id)
        if endpoint is None:
            raise NotFoundError(f"no endpoint {endpoint_id!r}")
        revision = self.store.get_revision(revision_id)
        if revision is None or revision.endpoint_id != endpoint_id:
            raise NotFoundError(f"no revision {revision_id!r} of endpoint {endpoint_id!r}")
        return endpoint, revision

    async def provision(self, endpoint_id: str, revision_id: str) -> int:
        """Bring the endpoint to ``revision_id`` with its desired workers; returns the workers started.

        The live revision again: only missing workers are started. A settings-only change
        (tier 1) switches the live revision and adjusts the worker count. New code in the
        same environment (tier 2) is loaded in place by the ready workers; a new environment
        (tier 3) restarts the ready workers in their slots, one at a time. A new or failed
        endpoint gets fresh workers (``_replace_workers``).
        """
        async with self._locks[endpoint_id], self.store.endpoint_lock(endpoint_id):
            endpoint, revision = self._endpoint_and_revision(endpoint_id, revision_id)
            if not self.blobs.has(revision.bundle_digest):
                raise DeploymentError(
                    f"the bundle {revision.bundle_digest[:12]} of revision {revision_id} is not stored: "
                    "upload the bundle first"
                )
            spec = control_pb2.DeploymentSpec.FromString(revision.spec)
            live = self.store.get_revision(endpoint.live_revision_id) if endpoint.live_revision_id else None
            healthy = endpoint.state not in ("failed", "stopped", "new")
            if endpoint.state == "waiting" and (live is None or live.id != revision_id):
                healthy = False  # no worker to update in place: a new revision starts afresh
            self.store.update_endpoint(endpoint_id, last_client_seen=time.time())
            # An update keeps the autoscaler's count (within the new bounds); the same workload
            # keeps it exactly, zero included.
            current = endpoint.desired_workers if healthy else 0
            desired = desired_workers(spec, current)
            if healthy and live is not None and live.id == revision_id:
                started = await self._scale(endpoint_id, revision, kept_workers(spec, current))
            elif healthy and live is not None and same_workload(live, revision):
                started = await self._switch_settings(endpoint_id, revision, kept_workers(spec, current))
            elif healthy and live is not None and live.environment_digest == revision.environment_digest:
                started = await self._update_in_place(endpoint_id, revision, desired)
            elif healthy and live is not None:
                started = await self._restart_in_place(endpoint_id, revision, desired)
            else:
                started = await self._replace_workers(endpoint_id, revision, desired)
        log.info("provisioned endpoint %s revision %s: %d worker(s) started", endpoint_id, revision_id, started)
        return started

    async def provision_warnings(self, revision_id: str) -> list[str]:
        """What the deploy of a revision should say about where its workers run.

        What the provider runs despite the revision's requirements, then what it does instead
        of its image's absolute copies, Python and published ports
        (``Provider.requirement_warnings``, ``Provider.image_warnings``).
        """
        revision = self.store.get_revision(revision_id)
        if revision is None:
            return []
        requirements = start_options(revision.spec).get("requirements")
        notes = await self.provider.requirement_warnings(requirements) if requirements else []
        notes += await self.provider.image_warnings(control_pb2.DeploymentSpec.FromString(revision.spec).image)
        return notes

    async def _scale(self, endpoint_id: str, revision: RevisionRow, desired: int) -> int:
        """Start or stop workers of the live revision until ``desired`` are active.

        A ready endpoint stays ready while it scales (it serves with the workers it has, or
        is cold at zero); a deploying one becomes ready once ``desired`` workers are.
        """
        active = self.store.list_workers(endpoint_id=endpoint_id, revision_id=revision.id, states=ACTIVE_WORKER_STATES)
        active = [w for w in active if w.owner != JOINED]  # not this service's to count, start or stop
        ready = sum(1 for w in active if w.state == "ready")
        endpoint = self.store.get_endpoint(endpoint_id)
        serving = endpoint is not None and endpoint.state == "ready"
        if serving or ready >= desired:
            state = "ready"
        elif endpoint is not None and endpoint.state == "waiting":
            state = "ready" if ready else "waiting"  # serves again as soon as one worker does
        else:
            state = "deploying"
        self.store.update_endpoint(endpoint_id, desired_workers=desired, state=state)
        self.changed(endpoint_id)
        if len(active) > desired:
            # Keep those holding open sessions, then the ready ones; of the rest, the newest go first.
            held = self.sessions.per_worker(endpoint_id)
            extra = sorted(active, key=lambda w: (w.id in held, w.state == "ready", -w.created_at))
            extra = extra[: len(active) - desired]
            self._retire(extra, wait=False)
            return 0
        return await self._start_workers(endpoint_id, revision, desired - len(active))

    async def scale(self, endpoint_id: str, desired: int, *, revision_id: str = "", wake: bool = False) -> int:
        """The autoscaler's hook: run ``desired`` workers of the live revision; returns the workers started.

        Ready workers are kept and the newest others retired first. Left alone: an endpoint
        that is not ready or deploying (stopped or failed meanwhile); one whose live revision
        is no longer ``revision_id`` (an update came in since the decision); with ``wake``,
        one that has a worker ready or starting (waking is for an endpoint at zero).
        """
        async with self._locks[endpoint_id], self.store.endpoint_lock(endpoint_id):
            endpoint = self.store.get_endpoint(endpoint_id)
            if endpoint is None or endpoint.state not in SCALABLE_STATES or self._shutting_down:
                return 0
            revision = self.store.get_revision(endpoint.live_revision_id or "")
            if revision is None or revision_id not in ("", revision.id):
                return 0
            if wake and self.store.list_workers(endpoint_id=endpoint_id, states=ACTIVE_WORKER_STATES):
                return 0
            return await self._scale(endpoint_id, revision, desired)

    async def _replace_workers(self, endpoint_id: str, revision: RevisionRow, desired: int) -> int:
        """Tier 4 and a retry of a failed endpoint: stop the old workers, start ``desired`` new ones."""
        self._go_live(endpoint_id, revision, desired, keep=[])
        return await self._start_workers(endpoint_id, revision, desired)

    async def _start_workers(self, endpoint_id: str, revision: RevisionRow, count: int) -> int:
        started = 0
        for _ in range(count):
            endpoint = self.store.get_endpoint(endpoint_id)
            # A worker that failed meanwhile failed the endpoint: starting more is pointless.
            if endpoint is None or endpoint.state in ("failed", "stopped") or self._shutting_down:
                break
            worker_id = new_id("w")
            token = secrets.token_urlsafe(32)
            self.store.add_worker(
                WorkerRow(
                    id=worker_id,
                    endpoint_id=endpoint_id,
                    revision_id=revision.id,
                    state="starting",
                    token_hash=hash_token(token),
                    log_path=str(self.provider.log_path(worker_id)),
                    owner=self.owner,
                )
            )
            self.changed(endpoint_id)
            try:
                pid = await self.provider.start_worker(
                    worker_id, token, self.control_address, **start_options(revision.spec)
                )
            except OSError as exc:
                log.error("cannot start worker %s: %s", worker_id, exc)
                self._fail_worker(
                    self.store.update_worker(worker_id, state="failed"), "starting", f"cannot start the worker: {exc}"
                )
                break
            except DeploymentError as exc:
                # The provider cannot place it, e.g. no node of its cluster meets the search filters,
                # or the GPUs it needs are held by other workers. A serving endpoint serves on with
                # the workers it has (the autoscaler tries again at its next look); one waiting for
                # capacity waits on, saying for what; a deploying one fails.
                log.error("cannot start worker %s: %s", worker_id, exc)
                if endpoint.state == "waiting":
                    self.store.update_worker(worker_id, state="stopped")  # never ran: no failed row per retry
                    self._wait_for_capacity(endpoint_id, exc.step or "placement", exc.reason)
                    break
                self._fail_worker(
                    self.store.update_worker(worker_id, state="failed"),
                    exc.step or "starting",
                    exc.reason,
                    fail_endpoint=endpoint.state != "ready",
                )
                break
            gpus = ",".join(map(str, self.provider.worker_gpus(worker_id)))
            if (worker := self.store.get_worker(worker_id)) is not None and not worker.pid:
                self.store.update_worker(worker_id, pid=pid, gpus=gpus)
            elif worker is not None:
                self.store.update_worker(worker_id, gpus=gpus)
            started += 1
        return started

    # -- workers joined by hand ---------------------------------------------------------

    def join(self, name: str, tag: str = "") -> tuple[WorkerRow, str]:
        """Admit a worker started by hand (``vastrpc worker --join``): returns its row and token.

        It serves the endpoint's live revision beside the workers the control service runs,
        and takes tier 1 and 2 updates in place like them. The control service never starts,
        counts or signals it (it may run on another host): the autoscaler sizes the endpoint
        without it, a teardown or a tier 3 update stops it through its WatchWorker stream, and
        heartbeats tell whether it lives.

        Raises:
            NotFoundError: No such deployment or tag.
            DeploymentError: The endpoint is not running.
        """
        tag = tag or DEFAULT_TAG
        deployment = self.store.get_deployment_by_name(name)
        endpoint = (
            next((e for e in self.store.list_endpoints(deployment.id) if e.tag == tag), None) if deployment else None
        )
        if endpoint is None:
            raise NotFoundError(f"no deployment {name}:{tag}: deploy it first (vastrpc deploy FILE)")
        revision = self.store.get_revision(endpoint.live_revision_id) if endpoint.live_revision_id else None
        if revision is None or endpoint.state not in ("ready", "deploying"):
            raise DeploymentError(
                f"{name}:{tag} is {endpoint.state}: deploy it again before a worker joins", step="join"
            )
        token = secrets.token_urlsafe(32)
        worker = self.store.add_worker(
            WorkerRow(
                id=new_id("w"),
                endpoint_id=endpoint.id,
                revision_id=revision.id,
                state="starting",
                token_hash=hash_token(token),
                owner=JOINED,
            )
        )
        log.info("worker %s joined %s:%s by hand", worker.id, name, tag)
        self.changed(endpoint.id)
        return worker, token

    # -- worker reports ---------------------------------------------------------------

    def authorize_worker_token(self, token: str) -> WorkerRow | None:
        """The worker a token belongs to, if any."""
        return self.store.get_worker_by_token_hash(hash_token(token)) if token else None

    def register_worker(self, worker_id: str, pid: int) -> tuple[WorkerRow, EndpointRow, bytes]:
        """A worker agent's first contact: returns its row, its endpoint and its revision's spec."""
        worker = self.worker(worker_id)
        if worker.state in ("stopped", "failed"):
            raise DeploymentError(f"worker {worker_id} was {worker.state}; it must exit")
        worker = self.store.update_worker(worker_id, pid=pid or worker.pid, last_heartbeat=time.time())
        endpoint = self.store.get_endpoint(worker.endpoint_id)
        revision = self.store.get_revision(worker.revision_id)
        assert endpoint is not None and revision is not None
        self.changed(endpoint.id)
        return worker, endpoint, revision.spec

    def update_worker(
        self,
        worker_id: str,
        state: int,
        *,
        revision_id: str = "",
        address: str = "",
        score: float = 0.0,
        capacity: int = 0,
        failure: common_pb2.Failure | None = None,
        published_ports: str = "",
    ) -> None:
        """Record a state change a worker reports, and what it means for its endpoint.

        ``published_ports`` is the JSON of the worker's published ports (``WorkerRow.published_ports``).

        A report about another revision than the one the worker serves is an update in
        place (tier 2): its progress leaves the worker ready on the old revision; ``ready``
        switches it to the new one; ``failed`` fails the new revision.
        """
        worker = self.worker(worker_id)
        name = WORKER_STATE_NAMES.get(state)
        if name is None:
            raise DefinitionError(f"invalid worker state {state}")
        if worker.state in ("stopped", "failed"):
            # A worker that was stopped or failed does not come back; it is told to stop.
            return
        switching = bool(revision_id and revision_id != worker.revision_id)
        if switching:
            if self.store.get_revision(revision_id) is None:
                raise NotFoundError(f"no revision {revision_id!r}")
            if name not in ("ready", "failed"):
                log.info("worker %s: %s revision %s in place", worker_id, name, revision_id)
                return
            if name == "failed" and worker.state == "ready":
                # The new revision failed to come up beside the old one: the deployment of it
                # fails (ensure_ready says why), and the old revision keeps serving meanwhile.
                f = failure or common_pb2.Failure()
                log_tail = f.log_tail or read_log_tail(worker.log_path)
                message = f.message or "the new revision failed to load"
                self._fail_endpoint(worker.endpoint_id, revision_id, f.step or "loading", message, log_tail)
                return
            worker = self.store.update_worker(worker_id, revision_id=revision_id)
        if name == "failed":
            f = failure or common_pb2.Failure()
            message = f.message or "the worker reported a failure"
            if worker.state == "ready" and not switching:
                # A serving worker died (its serving process crashed): the endpoint lives on
                # with its other workers, and the lost one is replaced.
                self._fail_worker(worker, f.step or "serving", message, log_tail=f.log_tail, fail_endpoint=False)
                self._worker_lost(worker, message)
            else:
                self._fail_worker(worker, f.step or worker.state, message, log_tail=f.log_tail)
            # It reported its failure; give it the grace to exit by itself, then stop it.
            self._spawn(self._stop_later(worker, self.stop_grace))
            return
        values: dict[str, object] = {"state": name, "last_heartbeat": time.time()}
        if address:
            values["address"] = address
        if score:
            values["score"] = score
        if capacity:
            values["capacity"] = capacity
        if published_ports:
            values["published_ports"] = published_ports
        worker = self.store.update_worker(worker_id, **values)
        if name == "ready":
            self._check_ready(worker.endpoint_id)
        self.changed(worker.endpoint_id)

    def heartbeat(self, worker_id: str, calls_in_flight: int, calls_queued: int = 0, calls_started: int = 0) -> bool:
        """Record a heartbeat and the worker's load (the autoscaler's input); True when the worker should stop."""
        try:
            # One write that also reads the row back: at a thousand heartbeats a second, every
            # statement more on this path costs the service a few percent of a core.
            worker = self.store.update_worker(
                worker_id,
                last_heartbeat=time.time(),
                calls_in_flight=calls_in_flight,
                calls_queued=calls_queued,
                calls_started=calls_started,
            )
        except KeyError:
            raise NotFoundError(f"no worker {worker_id!r}") from None
        endpoint = self.store.get_endpoint(worker.endpoint_id)
        self.adopt_reporting(worker)  # when another service placed it
        return worker.state in ("stopped", "failed") or endpoint is None or endpoint.state == "stopped"

    def _check_ready(self, endpoint_id: str) -> None:
        endpoint = self.store.get_endpoint(endpoint_id)
        if endpoint is None or endpoint.state not in ("deploying", "waiting") or not endpoint.live_revision_id:
            return
        ready = self.store.list_workers(
            endpoint_id=endpoint_id, revision_id=endpoint.live_revision_id, states=("ready",)
        )
        if endpoint.state == "waiting" and ready:
            # Capacity is back: it serves again with what it has; the autoscaler tops it up.
            self.store.update_endpoint(
                endpoint_id, state="ready", failure_step="", failure_message="", failure_log_tail=""
            )
            log.info("endpoint %s serves again with %d worker(s)", endpoint_id, len(ready))
        elif len(ready) >= endpoint.desired_workers:
            self.store.update_endpoint(endpoint_id, state="ready")
            log.info("endpoint %s is ready with %d worker(s)", endpoint_id, len(ready))

    def worker(self, worker_id: str) -> WorkerRow:
        """A worker's row; NotFoundError when there is none."""
        worker = self.store.get_worker(worker_id)
        if worker is None:
            raise NotFoundError(f"no worker {worker_id!r}")
        return worker

    # -- stopping ---------------------------------------------------------------------

    def _retire(self, workers: Iterable[WorkerRow], *, wait: bool) -> list[asyncio.Task[None]]:
        """Mark workers stopped (at once, so their heartbeats say stop) and stop their processes."""
        tasks = []
        with self.store.transaction():
            for worker in workers:
                if worker.state != "stopped":
                    self.store.update_worker(worker.id, state="stopped")
                    self.changed(worker.endpoint_id)
                tasks.append(self._spawn(self._stop_process(worker)))
        return tasks if wait else []

    async def _stop_process(self, worker: WorkerRow) -> None:
        pid = self._foreign.pop(worker.id, 0)
        if not pid and self.store.shared and on_this_host(worker.owner):
            pid = worker.pid  # another service's worker on this host: stopped by pid (its process group)
        await self.provider.stop_worker(worker.id, self.stop_grace, pid=pid)

    async def _stop_later(self, worker: WorkerRow, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.provider.is_running(worker.id):
            await self.provider.stop_worker(worker.id, self.stop_grace)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task
