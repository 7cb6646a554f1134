"""The autoscaling decision: Vast's endpoint parameters and an endpoint's measured load turned into a worker count."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from vastrpc.api.v1 import control_pb2

__all__ = ["DEFAULT_TARGET_UTIL", "Decision", "Observed", "Policy", "ScaleState", "decide", "workers_for"]

# An AutoscalingSpec that leaves target_util unset (0) gets the SDK's default.
DEFAULT_TARGET_UTIL = 0.8


@dataclass(frozen=True)
class Policy:
    """An endpoint's autoscaling settings, as its live revision's AutoscalingSpec gives them.

    Capacities and loads are in calls per second; a worker's *perf* is its benchmark score.

    Attributes:
        min_workers: Never fewer workers (0 allows scaling to zero).
        max_workers: Never more workers, active and inactive together.
        cold_workers: Inactive workers kept beyond what the load needs, whatever the activity.
        target_util: Fraction of the active capacity the load should fill.
        inactivity_timeout: Seconds without a call before the endpoint may go to zero active
            workers; 0: no such gate; negative: never below one worker.
        min_load: Least active capacity.
        min_cold_load: Least total capacity (active and inactive).
        cold_mult: Total capacity as a multiple of the load (1 keeps nothing inactive for it).
        target_queue_time: Seconds of queue across the endpoint above which workers are
            added; 0: off.
    """

    min_workers: int = 1
    max_workers: int = 1
    cold_workers: int = 0
    target_util: float = DEFAULT_TARGET_UTIL
    inactivity_timeout: float = 300.0
    min_load: float = 0.0
    min_cold_load: float = 0.0
    cold_mult: float = 1.0
    target_queue_time: float = 0.0

    @classmethod
    def from_spec(cls, spec: control_pb2.AutoscalingSpec) -> Policy:
        """The policy of an AutoscalingSpec (validated at registration: 1 <= max, min <= max)."""
        return cls(
            min_workers=spec.min_workers,
            max_workers=max(spec.max_workers, spec.min_workers, 1),
            cold_workers=spec.cold_workers,
            target_util=spec.target_util if spec.target_util > 0 else DEFAULT_TARGET_UTIL,
            inactivity_timeout=spec.inactivity_timeout,
            min_load=max(spec.min_load, 0.0),
            min_cold_load=max(spec.min_cold_load, 0.0),
            cold_mult=max(spec.cold_mult, 1.0),
            target_queue_time=max(spec.target_queue_time, 0.0),
        )


@dataclass(frozen=True)
class Observed:
    """What an endpoint's workers reported at one look (see ``Autoscaler`` for how it is measured).

    Attributes:
        load: Calls per second the endpoint carries: each worker's calls in flight (running
            and queued) / its slots × its perf, summed.
        perf: Calls per second one worker handles (the mean benchmark score of the ready
            workers; 1 when none is known, the load then being in workers' worth).
        queue_time: Seconds the endpoint's queued calls would take its workers: queued
            calls / the workers' summed perf.
        workers: Ready workers the load was measured on.
        used: A call started since the last look, though none may be in flight now.
        starting: Workers still coming up: activity too (a caller may be waiting for one).
        reserved: Workers holding an open session: never fewer workers than these, and
            activity too (a conversation may go on).
    """

    load: float = 0.0
    perf: float = 1.0
    queue_time: float = 0.0
    workers: int = 0
    used: bool = False
    starting: int = 0
    reserved: int = 0


@dataclass(frozen=True)
class ScaleState:
    """What the autoscaler remembers of one endpoint between two looks.

    Attributes:
        last_busy: When a call was last seen, a worker last coming up, or the endpoint was
            woken or first looked at (Unix seconds): inactivity counts from it.
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


def _workers(capacity: float, perf: float) -> int:
    """Workers of ``perf`` calls/s each that give ``capacity`` calls/s (an exact fit does not round up)."""
    return math.ceil(capacity / perf - 1e-9) if capacity > 0 else 0


def workers_for(policy: Policy, load: float, perf: float) -> int:
    """Workers for a load, within ``min_workers`` and ``max_workers`` (activity and queues aside).

    ``active = workers(max(load / target_util, min_load))``;
    ``inactive = max(workers(max(load × cold_mult, min_cold_load)) − active, cold_workers)``;
    the sum, bounded. ``workers(c) = ceil(c / perf)``.

    Args:
        policy: The endpoint's settings.
        load: Calls per second the endpoint carries.
        perf: Calls per second one worker handles (1 when unknown).
    """
    perf = perf if perf > 0 else 1.0
    active_capacity = max(load / policy.target_util, policy.min_load)
    active = _workers(active_capacity, perf)
    total = _workers(max(active_capacity, load * policy.cold_mult, policy.min_cold_load), perf)
    inactive = max(total - active, policy.cold_workers)
    return min(max(active + inactive, policy.min_workers), policy.max_workers)


def _queue_workers(policy: Policy, observed: Observed, current: int) -> int:
    """Workers that bring the queue time to ``target_queue_time``: at least one more, 0 when under it."""
    if policy.target_queue_time <= 0 or observed.queue_time <= policy.target_queue_time:
        return 0
    serving = max(observed.workers, current, 1)
    return max(serving + 1, math.ceil(serving * observed.queue_time / policy.target_queue_time - 1e-9))


def decide(
    policy: Policy, state: ScaleState, observed: Observed, *, current: int, now: float, scale_down_delay: float
) -> Decision:
    """How many workers an endpoint should run now: a pure function of its load, settings and history.

    Up is prompt: as soon as ``workers_for`` the load, or the queue rule (while the queue
    time is above ``target_queue_time``, ``max(n + 1, ceil(n × queue_time /
    target_queue_time))`` for ``n`` workers), wants more than ``current``, that many. Down
    waits: only once fewer workers would have done for ``scale_down_delay`` seconds in a row,
    and then to the most that period wanted (hysteresis). ``inactivity_timeout`` gates zero:
    positive, the endpoint keeps at least one worker until that many seconds passed without
    any call, and then goes at once to what ``workers_for`` a zero load gives (``min_load``,
    ``min_cold_load``, ``cold_workers`` and ``min_workers`` still hold); 0, no gate; negative,
    never below one worker. Workers holding an open session (``observed.reserved``) are a
    floor, within ``max_workers``, and count as activity. Bounds changed by an update apply at once.

    Args:
        policy: The endpoint's settings.
        state: What the previous look remembered.
        observed: The endpoint's load, perf and queue time now.
        current: The workers the endpoint runs now (its desired count).
        now: The time of this look (Unix seconds).
        scale_down_delay: Seconds fewer workers must have sufficed before a scale-down.

    Returns:
        The desired count, the state for the next look, and the reason.
    """
    busy = observed.load > 0 or observed.used or observed.starting > 0 or observed.reserved > 0
    if busy:
        state = replace(state, last_busy=now)
    idle = now - state.last_busy
    settled = replace(state, low_since=None, low_peak=0)
    timeout = policy.inactivity_timeout
    if timeout > 0 and not busy and idle >= timeout:
        floor = workers_for(policy, 0.0, observed.perf)
        return Decision(floor, settled, f"no call for {idle:.0f} s, inactivity_timeout {timeout:g} s")
    basis = f"load {observed.load:.3g}/s, perf {observed.perf:.3g}/s per worker, target_util {policy.target_util:g}"
    wanted = workers_for(policy, observed.load, observed.perf)
    queued = min(_queue_workers(policy, observed, current), policy.max_workers)
    if queued > wanted:
        wanted = queued
        basis += f"; queue {observed.queue_time:.3g} s over target_queue_time {policy.target_queue_time:g} s"
    if observed.reserved > wanted:
        wanted = min(observed.reserved, policy.max_workers)
        basis += f"; {observed.reserved} worker(s) hold open sessions"
    if timeout != 0:
        # Gated: in use within the timeout (or never allowed to zero), one worker at least.
        wanted = max(wanted, 1)
    bounded = min(max(current, policy.min_workers), policy.max_workers)
    if wanted >= bounded:
        return Decision(wanted, settled, basis)
    low_since = now if state.low_since is None else state.low_since
    low_peak = wanted if state.low_since is None else max(state.low_peak, wanted)
    if now - low_since >= scale_down_delay:
        return Decision(low_peak, settled, f"{basis}; {low_peak} sufficed for {now - low_since:.0f} s")
    return Decision(bounded, replace(state, low_since=low_since, low_peak=low_peak), "")
