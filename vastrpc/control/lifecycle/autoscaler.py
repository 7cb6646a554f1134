"""The autoscaler: sizes each endpoint's workers between min_workers and max_workers from the calls they carry."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Protocol

from vastrpc._errors import DeploymentError, NotFoundError
from vastrpc.api.v1 import control_pb2
from vastrpc.control.lifecycle.leadership import JOINED
from vastrpc.control.lifecycle.rules import wake_workers
from vastrpc.control.stores.base import ACTIVE_WORKER_STATES, EndpointRow, Store, WorkerRow

__all__ = ["Autoscaler", "Decision", "Policy", "ScaleState", "ScaleTarget", "decide", "wake", "workers_for"]

log = logging.getLogger(__name__)

# An AutoscalingSpec that leaves target_util unset (0) gets the SDK's default.
DEFAULT_TARGET_UTIL = 0.8


class ScaleTarget(Protocol):
    """What the autoscaler needs from the Lifecycle."""

    @property
    def shutting_down(self) -> bool:
        """Whether the service is stopping (the autoscaler then leaves everything alone)."""

    async def scale(self, endpoint_id: str, desired: int, *, revision_id: str = "", wake: bool = False) -> int:
        """Run ``desired`` workers of the endpoint's live revision (if still ``revision_id``); returns those started."""

    def check_heartbeats(self, now: float) -> list[str]:
        """Declare lost the workers whose heartbeats stopped; returns their ids."""


@dataclass(frozen=True)
class Policy:
    """An endpoint's autoscaling settings, as its live revision's AutoscalingSpec gives them.

    Attributes:
        min_workers: Never fewer workers (0 allows scaling to zero).
        max_workers: Never more workers.
        cold_workers: Workers kept beyond the load while the endpoint is in use.
        target_util: Fraction of the workers' capacity the load should fill.
        inactivity_timeout: Seconds without a call before the endpoint goes down to ``min_workers``.
    """

    min_workers: int = 1
    max_workers: int = 1
    cold_workers: int = 0
    target_util: float = DEFAULT_TARGET_UTIL
    inactivity_timeout: float = 300.0

    @classmethod
    def from_spec(cls, spec: control_pb2.AutoscalingSpec) -> Policy:
        """The policy of an AutoscalingSpec (validated at registration: 1 <= max, min <= max)."""
        return cls(
            min_workers=spec.min_workers,
            max_workers=max(spec.max_workers, spec.min_workers, 1),
            cold_workers=spec.cold_workers,
            target_util=spec.target_util if spec.target_util > 0 else DEFAULT_TARGET_UTIL,
            inactivity_timeout=max(spec.inactivity_timeout, 0.0),
        )


@dataclass(frozen=True)
class ScaleState:
    """What the autoscaler remembers of one endpoint between two looks.

    Attributes:
        last_busy: When a call was last seen in flight, a worker last coming up, or the
            endpoint was woken or first looked at (Unix seconds): inactivity counts from it.
        low_since: Since when fewer workers than the current count would have done; None
            when that is not the case now.
        low_peak: The most workers wanted since ``low_since``: what a scale-down goes to.
    """

    last_busy: float
    low_since: float | None = None
    low_peak: int = 0


@dataclass(frozen=True)
class Decision:
    """What ``decide`` concluded.

    Attributes:
        desired: The workers the endpoint should run.
        state: What to remember for the next look.
        reason: Why, in words, for the log.
    """

    desired: int
    state: ScaleState
    reason: str


def workers_for(policy: Policy, load: int, capacity: float) -> int:
    """``ceil(load / (capacity × target_util)) + cold_workers``, within ``min_workers`` and ``max_workers``.

    Args:
        policy: The endpoint's settings.
        load: Calls in flight (running and queued) over the endpoint's workers.
        capacity: Calls one worker runs at once.
    """
    per_worker = max(capacity, 1.0) * policy.target_util
    # The epsilon keeps an exact fit (12 calls on 6 × 2 slots) from rounding up to one more.
    busy = math.ceil(load / per_worker - 1e-9) if load > 0 else 0
    return min(max(busy + policy.cold_workers, policy.min_workers), policy.max_workers)


def decide(
    policy: Policy,
    state: ScaleState,
    *,
    load: int,
    capacity: float,
    current: int,
    now: float,
    scale_down_delay: float,
    starting: int = 0,
) -> Decision:
    """How many workers an endpoint should run now: a pure function of its load, settings and history.

    Up is prompt: as soon as the load wants more workers than ``current``, that many
    (``workers_for``). Down waits: only once fewer workers would have done for
    ``scale_down_delay`` seconds in a row, and then to the most that period wanted
    (hysteresis, so a lull between bursts does not stop workers the next burst needs).
    While the endpoint was busy within ``inactivity_timeout`` it keeps at least one worker;
    after ``inactivity_timeout`` seconds without any call it goes down to ``min_workers``
    at once (zero when ``min_workers`` is 0). Bounds changed by an update apply at once.

    Args:
        policy: The endpoint's settings.
        state: What the previous look remembered.
        load: Calls in flight (running and queued) over the endpoint's workers.
        capacity: Calls one worker runs at once.
        current: The workers the endpoint runs now (its desired count).
        now: The time of this look (Unix seconds).
        scale_down_delay: Seconds fewer workers must have sufficed before a scale-down.
        starting: Workers still coming up; a worker starting (after a wake, say) counts as
            activity, so the endpoint is not scaled away under a caller waiting for it.

    Returns:
        The desired count, the state for the next look, and the reason.
    """
    busy = load > 0 or starting > 0
    if busy:
        state = replace(state, last_busy=now)
    idle = now - state.last_busy
    settled = replace(state, low_since=None, low_peak=0)
    if not busy and idle >= policy.inactivity_timeout:
        reason = f"no call for {idle:.0f} s, inactivity_timeout {policy.inactivity_timeout:g} s"
        return Decision(policy.min_workers, settled, reason)
    basis = f"load {load} calls, capacity {capacity:g}/worker, target {policy.target_util:g}"
    # In use within the inactivity timeout: one worker at least, whatever min_workers allows.
    wanted = max(workers_for(policy, load, capacity), 1)
    bounded = min(max(current, policy.min_workers), policy.max_workers)
    if wanted >= bounded:
        return Decision(wanted, settled, basis)
    low_since = now if state.low_since is None else state.low_since
    low_peak = wanted if state.low_since is None else max(state.low_peak, wanted)
    if now - low_since >= scale_down_delay:
        return Decision(low_peak, settled, f"{basis}; {low_peak} sufficed for {now - low_since:.0f} s")
    return Decision(bounded, replace(state, low_since=low_since, low_peak=low_peak), "")


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
    if endpoint.state not in ("ready", "deploying") or revision is None:
        raise DeploymentError(f"endpoint {endpoint_id} is {endpoint.state}: deploy it again", step="provision")
    count = wake_workers(control_pb2.DeploymentSpec.FromString(revision.spec))
    started = await lifecycle.scale(endpoint_id, count, wake=True)
    if started:
        log.info("autoscale: %s 0 → %d workers (woken by a client: cold start)", _name(store, endpoint), started)
    return started


class Autoscaler:
    """Sizes every ready endpoint's workers from its load, every ``interval`` seconds.

    The load of an endpoint is the calls in flight (running and queued) its workers
    reported in their last heartbeats; a worker runs ``capacity`` calls at once (reported
    at READY; the spec's sum of ``max_concurrency`` until one is ready). ``decide`` turns
    load, settings and history into a worker count, which ``Lifecycle.scale`` applies. A
    worker lost while the endpoint serves is replaced the same way (fewer active workers
    than desired).

    An update in progress is left alone: the endpoint is skipped while any of its active
    workers serves another revision than the live one (a tier 2 switch, a tier 3 roll), and
    while it is deploying with workers still coming up. Its load is still recorded, so an
    update under load does not count as inactivity.

    The history is in memory: after a restart of the service, every endpoint has its whole
    ``inactivity_timeout`` again before it scales to zero.

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
        # Revision specs never change: parse each one's settings once.
        self._specs: dict[str, tuple[Policy, int]] = {}
        # One look or wake at a time: a wake's activity is seen by the next look's decision,
        # never overtaken by a scale-down decided just before it.
        self._lock = asyncio.Lock()

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
                if endpoint.state not in ("ready", "deploying") or not endpoint.live_revision_id:
                    continue
                looked.add(endpoint.id)
                live.add(endpoint.live_revision_id)
                plan = self._plan(endpoint, now)
                if plan is None:
                    continue
                desired, active = plan
                if desired == endpoint.desired_workers and active == desired:
                    continue
                # Applied only if no update made another revision live meanwhile.
                await self.lifecycle.scale(endpoint.id, desired, revision_id=endpoint.live_revision_id)
                if desired != endpoint.desired_workers:
                    changed[endpoint.id] = desired
                if self.lifecycle.shutting_down:
                    break
            # Forget endpoints torn down or failed: a new deploy starts with a fresh history.
            for endpoint_id in set(self._states) - looked:
                del self._states[endpoint_id]
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
        load = sum(w.calls_in_flight for w in workers if now - w.last_heartbeat <= self.heartbeat_timeout)
        # Calls shorter than a heartbeat interval may never be seen in flight; a worker whose
        # count of started calls grew since the last look was in use all the same.
        started = {w.id: w.calls_started for w in workers}
        if any(count > self._started.get(worker_id, count) for worker_id, count in started.items()):
            load = max(load, 1)
        self._started.update(started)
        state = self._states.get(endpoint.id) or ScaleState(last_busy=now)
        updating = any(w.revision_id != live for w in workers)
        starting = sum(1 for w in workers if w.state != "ready")
        if updating or (endpoint.state == "deploying" and starting):
            # Provision owns the endpoint until its update settles; the load still counts as use.
            self._states[endpoint.id] = replace(state, last_busy=now) if load or starting else state
            return None
        policy, spec_capacity = self._policy(live)
        capacity = _mean_capacity(workers) or spec_capacity
        decision = decide(
            policy,
            state,
            load=load,
            capacity=capacity,
            current=endpoint.desired_workers,
            now=now,
            scale_down_delay=self.scale_down_delay,
            starting=starting,
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


def _mean_capacity(workers: list[WorkerRow]) -> float:
    """The mean capacity the ready workers reported (0 when none did)."""
    reported = [w.capacity for w in workers if w.state == "ready" and w.capacity > 0]
    return sum(reported) / len(reported) if reported else 0.0
