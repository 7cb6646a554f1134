"""The autoscaler: measures each endpoint's load from its workers' heartbeats and applies ``decide``'s worker count."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Protocol

from vastrpc._errors import DeploymentError, NotFoundError
from vastrpc.api.v1 import control_pb2
from vastrpc.control.lifecycle.leadership import JOINED
from vastrpc.control.lifecycle.rules import SCALABLE_STATES, wake_workers
from vastrpc.control.lifecycle.scaling import Decision, Observed, Policy, ScaleState, decide, workers_for
from vastrpc.control.lifecycle.sessions import SessionTable
from vastrpc.control.stores.base import ACTIVE_WORKER_STATES, EndpointRow, Store, WorkerRow

__all__ = [
    "Autoscaler",
    "Decision",
    "Observed",
    "Policy",
    "ScaleState",
    "ScaleTarget",
    "decide",
    "measure",
    "wake",
    "workers_for",
]

log = logging.getLogger(__name__)
# The longest an endpoint waiting for capacity waits between two placement tries.
MAX_RETRY_DELAY = 30.0


class ScaleTarget(Protocol):
    """What the autoscaler needs from the Lifecycle."""

    @property
    def shutting_down(self) -> bool:
        """Whether the service is stopping (the autoscaler then leaves everything alone)."""

    async def scale(self, endpoint_id: str, desired: int, *, revision_id: str = "", wake: bool = False) -> int:
        """Run ``desired`` workers of the endpoint's live revision (if still ``revision_id``); returns those started."""

    def check_heartbeats(self, now: float) -> list[str]:
        """Declare lost the workers whose heartbeats stopped; returns their ids."""

    @property
    def sessions(self) -> SessionTable:
        """The sessions clients hold open on workers."""


def _spec_capacity(spec: control_pb2.DeploymentSpec) -> int:
    """Calls a worker of ``spec`` runs at once (what it reports at READY): the sum over its functions."""
    return sum(max(f.max_concurrency, 1) for f in spec.functions) or 1


async def wake(store: Store, lifecycle: ScaleTarget, endpoint_id: str) -> int:
    """WakeEndpoint: start workers for an endpoint with none ready or starting; returns those started.

    Starts ``cold_workers`` of the live revision (at least one, at most ``max_workers``),
    and nothing when a worker is already ready or starting.

    Raises:
        NotFoundError: No such endpoint.
        DeploymentError: The endpoint is stopped, failed or was never provisioned: deploy it again.
    """
    endpoint = store.get_endpoint(endpoint_id)
    if endpoint is None:
        raise NotFoundError(f"no endpoint {endpoint_id!r}")
    revision = store.get_revision(endpoint.live_revision_id or "")
    if endpoint.state not in SCALABLE_STATES or revision is None:
        raise DeploymentError(f"endpoint {endpoint_id} is {endpoint.state}: deploy it again", step="provision")
    count = wake_workers(control_pb2.DeploymentSpec.FromString(revision.spec))
    started = await lifecycle.scale(endpoint_id, count, wake=True)
    if started:
        log.info("autoscale: %s 0 → %d workers (woken by a client: cold start)", _name(store, endpoint), started)
    return started


class Autoscaler:
    """Sizes every ready endpoint's workers from its load, every ``interval`` seconds.

    ``measure`` turns the workers' last heartbeats into the endpoint's load, perf and queue
    time (Vast's units: calls per second, each worker's benchmark score its perf);
    ``decide`` turns them, the settings and the history into a worker count, which
    ``Lifecycle.scale`` applies. A
    worker lost while the endpoint serves is replaced the same way (fewer active workers
    than desired).

    An update in progress is left alone: the endpoint is skipped while any of its active
    workers serves another revision than the live one (a tier 2 switch, a tier 3 roll), and
    while it is deploying with workers still coming up. Its load is still recorded, so an
    update under load does not count as inactivity.

    The history is in memory: after a restart of the service, every endpoint has its whole
    ``inactivity_timeout`` again before it scales to zero.

    An endpoint waiting for capacity (it lost every worker) gets new workers placed with
    backoff: after a look that could place none, the next try waits twice as long, from
    ``interval`` up to ``MAX_RETRY_DELAY`` seconds, until a worker starts.

    Args:
        store: The state store.
        lifecycle: Applies a worker count (``Lifecycle.scale``).
        interval: Seconds between two looks.
        scale_down_delay: Seconds fewer workers must have sufficed before a scale-down.
        heartbeat_timeout: A worker's reported calls count only while its last heartbeat
            is at most this old.
    """

    def __init__(
        self,
        store: Store,
        lifecycle: ScaleTarget,
        *,
        interval: float = 1.0,
        scale_down_delay: float = 10.0,
        heartbeat_timeout: float = 30.0,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"autoscale interval must be positive, got {interval!r}")
        if scale_down_delay < 0:
            raise ValueError(f"scale-down delay must not be negative, got {scale_down_delay!r}")
        self.store = store
        self.lifecycle = lifecycle
        self.interval = interval
        self.scale_down_delay = scale_down_delay
        self.heartbeat_timeout = heartbeat_timeout
        self._states: dict[str, ScaleState] = {}
        self._started: dict[str, int] = {}
        # The last perf measured per endpoint: what min_load is counted in while no worker is ready.
        self._perf: dict[str, float] = {}
        # Revision specs never change: parse each one's settings once.
        self._specs: dict[str, tuple[Policy, int]] = {}
        # One look or wake at a time: a wake's activity is seen by the next look's decision,
        # never overtaken by a scale-down decided just before it.
        self._lock = asyncio.Lock()
        # Endpoints waiting for capacity: (time of the next placement try, the delay before it).
        self._retry: dict[str, tuple[float, float]] = {}

    async def run(self) -> None:
        """Look every ``interval`` seconds until cancelled; a failed look is logged and the next one runs."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except Exception:
                log.exception("autoscale: pass failed")

    async def wake(self, endpoint_id: str) -> int:
        """WakeEndpoint (see ``wake``); it also counts as a call, so inactivity counts from now."""
        async with self._lock:
            now = time.time()
            state = self._states.get(endpoint_id)
            self._states[endpoint_id] = ScaleState(last_busy=now) if state is None else replace(state, last_busy=now)
            return await wake(self.store, self.lifecycle, endpoint_id)

    async def tick(self, now: float | None = None) -> dict[str, int]:
        """One look at every endpoint.

        Args:
            now: The time to judge by (Unix seconds); the current time by default.

        Returns:
            The endpoints whose worker count was changed, with the new count.
        """
        async with self._lock:
            if self.lifecycle.shutting_down:
                return {}
            now = time.time() if now is None else now
            # A hung or frozen worker is lost first, so this look replaces it (by the clock:
            # ``now`` may be a simulated time).
            self.lifecycle.check_heartbeats(time.time())
            changed: dict[str, int] = {}
            looked: set[str] = set()
            live: set[str] = set()
            for endpoint in self.store.list_endpoints():
                if endpoint.state not in SCALABLE_STATES or not endpoint.live_revision_id:
                    continue
                looked.add(endpoint.id)
                live.add(endpoint.live_revision_id)
                if endpoint.state != "waiting":
                    self._retry.pop(endpoint.id, None)
                elif now < self._retry.get(endpoint.id, (0.0, 0.0))[0]:
                    continue  # backing off: capacity was not there at the last try
                plan = self._plan(endpoint, now)
                if plan is None:
                    continue
                desired, active = plan
                if desired == endpoint.desired_workers and active == desired:
                    continue
                # Applied only if no update made another revision live meanwhile.
                started = await self.lifecycle.scale(endpoint.id, desired, revision_id=endpoint.live_revision_id)
                if endpoint.state == "waiting" and not started:
                    delay = min(2 * self._retry.get(endpoint.id, (0.0, self.interval / 2))[1], MAX_RETRY_DELAY)
                    self._retry[endpoint.id] = (now + delay, delay)
                    name = _name(self.store, endpoint)
                    log.info("autoscale: %s still waits for capacity; next try in %.0fs", name, delay)
                if desired != endpoint.desired_workers:
                    changed[endpoint.id] = desired
                if self.lifecycle.shutting_down:
                    break
            # Forget endpoints torn down or failed: a new deploy starts with a fresh history.
            for endpoint_id in set(self._states) - looked:
                del self._states[endpoint_id]
                self._perf.pop(endpoint_id, None)
            for endpoint_id in set(self._retry) - looked:
                del self._retry[endpoint_id]
            for revision_id in set(self._specs) - live:
                del self._specs[revision_id]
            return changed

    def _plan(self, endpoint: EndpointRow, now: float) -> tuple[int, int] | None:
        """(desired, active workers) for the endpoint, or None to leave it alone this time."""
        live = endpoint.live_revision_id or ""
        # Workers joined by hand are outside autoscaling: their calls are load they take off the rest.
        workers = [
            w
            for w in self.store.list_workers(endpoint_id=endpoint.id, states=ACTIVE_WORKER_STATES)
            if w.owner != JOINED
        ]
        # Calls shorter than a heartbeat interval may never be seen in flight; a worker whose
        # count of started calls grew since the last look was in use all the same.
        started = {w.id: w.calls_started for w in workers}
        used = any(count > self._started.get(worker_id, count) for worker_id, count in started.items())
        self._started.update(started)
        state = self._states.get(endpoint.id) or ScaleState(last_busy=now)
        updating = any(w.revision_id != live for w in workers)
        starting = sum(1 for w in workers if w.state != "ready")
        policy, spec_capacity = self._policy(live)
        fresh = [w for w in workers if now - w.last_heartbeat <= self.heartbeat_timeout]
        # Sessions expire by the clock, as their clients renew them (``now`` may be simulated).
        held = self.lifecycle.sessions.per_worker(endpoint.id)
        observed = measure(fresh, spec_capacity, self._perf.get(endpoint.id, 0.0), held)
        reserved = sum(1 for w in workers if held.get(w.id))
        observed = replace(observed, used=used, starting=starting, reserved=reserved)
        if observed.workers:
            self._perf[endpoint.id] = observed.perf
        if updating or (endpoint.state in ("deploying", "waiting") and starting):
            # Provision owns the endpoint until its update settles; the load still counts as use.
            in_use = observed.load > 0 or used or starting
            self._states[endpoint.id] = replace(state, last_busy=now) if in_use else state
            return None
        decision = decide(
            policy, state, observed, current=endpoint.desired_workers, now=now, scale_down_delay=self.scale_down_delay
        )
        self._states[endpoint.id] = decision.state
        if decision.desired != endpoint.desired_workers:
            log.info(
                "autoscale: %s %d → %d workers (%s)",
                _name(self.store, endpoint),
                endpoint.desired_workers,
                decision.desired,
                decision.reason,
            )
        elif len(workers) < decision.desired:
            log.info(
                "autoscale: %s runs %d of %d workers: starting %d",
                _name(self.store, endpoint),
                len(workers),
                decision.desired,
                decision.desired - len(workers),
            )
        return decision.desired, len(workers)

    def _policy(self, revision_id: str) -> tuple[Policy, int]:
        cached = self._specs.get(revision_id)
        if cached is None:
            revision = self.store.get_revision(revision_id)
            spec = control_pb2.DeploymentSpec.FromString(revision.spec) if revision else control_pb2.DeploymentSpec()
            cached = self._specs[revision_id] = (Policy.from_spec(spec.autoscaling), _spec_capacity(spec))
        return cached


def _name(store: Store, endpoint: EndpointRow) -> str:
    """``name:tag`` of an endpoint, for the log."""
    deployment = store.get_deployment(endpoint.deployment_id)
    return f"{deployment.name}:{endpoint.tag}" if deployment else endpoint.id


def measure(
    workers: list[WorkerRow], spec_capacity: int, known_perf: float = 0.0, sessions: Mapping[str, int] | None = None
) -> Observed:
    """An endpoint's load, perf and queue time from its workers' last heartbeats (Vast's units).

    A worker's perf is its benchmark score (calls per second with every slot busy) and its
    slots are the calls it runs at once (``capacity``; ``spec_capacity`` until reported).
    ``load = sum(calls_in_flight / slots × perf)`` (calls per second: running and queued
    calls as a share of the slots, weighted by how fast the worker turns them over);
    ``perf`` is the mean over the ready workers; ``queue_time = sum(calls_queued) /
    sum(perf)``. A worker without a score counts as ``known_perf`` (the endpoint's last
    measured perf), or 1 when there is none: the load is then in workers' worth. An open
    session reserves a slot on its worker: a worker counts at least as many calls in flight
    as it holds sessions.

    Args:
        workers: The endpoint's workers whose heartbeats are fresh.
        spec_capacity: Slots of a worker of the live revision, from its spec.
        known_perf: Perf to assume for a worker that reported no score.
        sessions: Open sessions per worker id.
    """
    ready = [w for w in workers if w.state == "ready"]
    scores = [w.score for w in ready if w.score > 0]
    default = sum(scores) / len(scores) if scores else (known_perf if known_perf > 0 else 1.0)

    def perf(w: WorkerRow) -> float:
        return w.score if w.score > 0 else default

    held = sessions or {}
    load = sum(
        max(w.calls_in_flight, held.get(w.id, 0)) / (w.capacity or spec_capacity or 1) * perf(w) for w in workers
    )
    total = sum(perf(w) for w in ready)
    queued = sum(w.calls_queued for w in workers)
    queue_time = queued / total if total > 0 else 0.0
    return Observed(load=load, perf=default, queue_time=queue_time, workers=len(ready))
