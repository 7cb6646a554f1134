"""Autoscaling: the decision function, the Autoscaler on a real store and Lifecycle, and end to end."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from vastrpc._errors import DeploymentError, NotFoundError
from vastrpc.api.v1 import common_pb2, control_pb2
from vastrpc.control.bundles.local import LocalBlobStore
from vastrpc.control.lifecycle.autoscaler import (
    Autoscaler,
    Observed,
    Policy,
    ScaleState,
    decide,
    measure,
    workers_for,
)
from vastrpc.control.lifecycle.endpoints import Lifecycle
from vastrpc.control.stores.base import WorkerRow
from vastrpc.control.stores.sqlite import SqliteStore

from ..helpers import Client, make_spec

pytestmark = pytest.mark.timeout(30)

T0 = 1_000_000.0


def policy(**values: float) -> Policy:
    settings: dict[str, float] = {"min_workers": 1, "max_workers": 3, "target_util": 1.0, "inactivity_timeout": 60}
    settings.update(values)
    return Policy(**settings)  # type: ignore[arg-type]


def look(
    p: Policy,
    state: ScaleState,
    *,
    load: float,
    current: int,
    now: float,
    perf: float = 2,
    delay: float = 10,
    queue_time: float = 0.0,
    used: bool = False,
    starting: int = 0,
):
    observed = Observed(load=load, perf=perf, queue_time=queue_time, workers=current, used=used, starting=starting)
    return decide(p, state, observed, current=current, now=now, scale_down_delay=delay)


# -- the decision -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "load", "perf", "wanted"),
    [
        ({}, 12, 2, 3),  # 6 workers' worth, clamped to max_workers
        ({"max_workers": 10}, 12, 2, 6),  # an exact fit does not round up
        ({"max_workers": 10}, 13, 2, 7),
        ({"max_workers": 10, "target_util": 0.8}, 4, 4, 2),  # 4 calls/s over 3.2 calls/s of capacity
        ({"max_workers": 10, "cold_workers": 1}, 4, 4, 2),  # one worker of load, one cold
        ({"min_workers": 2}, 0, 2, 2),
        ({"min_workers": 0}, 0, 2, 0),
        ({"min_workers": 0, "cold_workers": 5}, 0, 2, 3),  # cold workers stay within max_workers
        ({"min_workers": 0}, 3, 0, 3),  # perf unknown: the load is in workers' worth
    ],
)
def test_workers_for_the_load(settings, load, perf, wanted) -> None:
    assert workers_for(policy(**settings), load, perf) == wanted


@pytest.mark.parametrize(
    ("settings", "load", "wanted"),
    [
        # min_load: the least active capacity, in calls/s (perf 2/s per worker).
        ({"min_workers": 0, "min_load": 5}, 0, 3),
        ({"min_workers": 0, "min_load": 5}, 8, 4),  # the load above it decides
        ({"min_workers": 0, "min_load": 0}, 0, 0),
        # target_util: headroom over the load.
        ({"target_util": 0.5}, 4, 4),
        ({"target_util": 0.9}, 4, 3),
        # cold_mult: total capacity = load × cold_mult, the rest kept inactive.
        ({"cold_mult": 3}, 4, 6),
        ({"cold_mult": 1}, 4, 2),
        # min_cold_load: total capacity, whatever the load.
        ({"min_cold_load": 8}, 2, 4),
        ({"min_cold_load": 8}, 10, 5),  # the load is above it: no inactive capacity left
        # The largest inactive capacity of cold_mult, min_cold_load and cold_workers.
        ({"cold_mult": 2, "min_cold_load": 6, "cold_workers": 1}, 4, 4),  # cold_mult: 2 inactive
        ({"cold_mult": 2, "min_cold_load": 16, "cold_workers": 1}, 4, 8),  # min_cold_load: 6 inactive
        ({"cold_mult": 2, "min_cold_load": 6, "cold_workers": 5}, 4, 7),  # cold_workers: 5 inactive
        # max_workers bounds active and inactive together.
        ({"cold_mult": 3, "max_workers": 5}, 4, 5),
    ],
)
def test_each_vast_parameter_sizes_the_workers(settings, load, wanted) -> None:
    assert workers_for(policy(**{"max_workers": 10, **settings}), load, 2) == wanted


def test_scales_up_at_once() -> None:
    decision = look(policy(), ScaleState(last_busy=T0), load=12, current=1, now=T0 + 1)
    assert decision.desired == 3
    assert decision.reason == "load 12/s, perf 2/s per worker, target_util 1"
    assert decision.state == ScaleState(last_busy=T0 + 1)


def test_a_queue_above_target_queue_time_adds_workers() -> None:
    p = policy(max_workers=10, target_queue_time=1.0)
    state = ScaleState(last_busy=T0)
    # The load wants 2 workers; 3 s of queue against a 1 s target wants three times the 2 serving.
    decision = look(p, state, load=4, current=2, now=T0, queue_time=3.0)
    assert decision.desired == 6
    assert "queue 3 s over target_queue_time 1 s" in decision.reason
    # Just above the target: one more at least.
    assert look(p, state, load=4, current=2, now=T0, queue_time=1.01).desired == 3
    # At or under the target, or with the rule off (0), the load alone decides.
    assert look(p, state, load=4, current=2, now=T0, queue_time=1.0).desired == 2
    assert look(policy(max_workers=10), state, load=4, current=2, now=T0, queue_time=30).desired == 2
    # Never above max_workers.
    assert look(policy(max_workers=4, target_queue_time=1), state, load=4, current=2, now=T0, queue_time=9).desired == 4


def test_scales_down_only_after_the_delay_to_the_most_the_quiet_period_wanted() -> None:
    p, state = policy(), ScaleState(last_busy=T0)
    steps = [(T0, 2, 3), (T0 + 4, 4, 3), (T0 + 9.9, 0, 3), (T0 + 10, 0, 2)]  # (now, load, desired)
    for now, load, desired in steps:
        decision = look(p, state, load=load, current=3, now=now)
        assert decision.desired == desired, (now, load)
        state = decision.state
    assert "2 sufficed for 10 s" in decision.reason
    assert state.low_since is None
    # From 2 workers, the next step down waits a whole delay again.
    assert look(p, state, load=0, current=2, now=T0 + 11).desired == 2
    assert look(p, look(p, state, load=0, current=2, now=T0 + 11).state, load=0, current=2, now=T0 + 21).desired == 1


def test_a_burst_during_the_delay_restarts_it() -> None:
    p = policy()
    state = look(p, ScaleState(last_busy=T0), load=1, current=3, now=T0).state
    assert state.low_since == T0
    burst = look(p, state, load=12, current=3, now=T0 + 5)
    assert burst.desired == 3 and burst.state.low_since is None
    quiet = look(p, burst.state, load=1, current=3, now=T0 + 12)
    assert quiet.desired == 3 and quiet.state.low_since == T0 + 12


def test_never_below_min_workers_and_never_above_max_workers() -> None:
    p = policy(min_workers=2, max_workers=4)
    state = ScaleState(last_busy=T0)
    assert look(p, state, load=1000, current=2, now=T0).desired == 4
    assert look(p, state, load=0, current=3, now=T0 + 20, delay=0).desired == 2
    # Bounds an update lowered apply at once; going further down still waits.
    assert look(p, state, load=0, current=6, now=T0 + 1).desired == 4


def test_cold_workers_are_kept_beyond_the_load_while_in_use() -> None:
    p = policy(min_workers=0, max_workers=5, cold_workers=2)
    state = ScaleState(last_busy=T0)
    assert look(p, state, load=0, current=0, now=T0 + 1).desired == 2
    assert look(p, state, load=4, current=2, now=T0 + 1).desired == 4


def test_scales_to_zero_only_after_the_inactivity_timeout() -> None:
    p = policy(min_workers=0, inactivity_timeout=30)
    state = look(p, ScaleState(last_busy=T0), load=3, current=1, now=T0).state
    # Idle, but within the timeout: one worker stays whatever the scale-down delay.
    held = look(p, state, load=0, current=1, now=T0 + 29.9, delay=0)
    assert held.desired == 1
    zero = look(p, held.state, load=0, current=1, now=T0 + 30)
    assert zero.desired == 0
    assert zero.reason == "no call for 30 s, inactivity_timeout 30 s"
    # A call at zero (a woken worker took it) restarts the clock.
    assert look(p, zero.state, load=1, current=1, now=T0 + 31).state.last_busy == T0 + 31


def test_from_several_workers_the_delay_goes_to_one_and_the_timeout_to_zero() -> None:
    p = policy(min_workers=0, inactivity_timeout=30)
    state = look(p, ScaleState(last_busy=T0), load=6, current=3, now=T0).state
    state = look(p, state, load=0, current=3, now=T0 + 1).state
    to_one = look(p, state, load=0, current=3, now=T0 + 11)
    assert to_one.desired == 1
    assert look(p, to_one.state, load=0, current=1, now=T0 + 30).desired == 0


def test_after_the_inactivity_timeout_cold_workers_and_min_load_still_hold() -> None:
    # As Vast: cold_workers is a floor of total workers and min_load one of active capacity,
    # whatever the inactivity; only what the load wanted goes.
    p = policy(min_workers=0, max_workers=5, cold_workers=2, inactivity_timeout=30)
    assert look(p, ScaleState(last_busy=T0), load=0, current=4, now=T0 + 30).desired == 2
    p = policy(min_workers=0, max_workers=5, min_load=3, inactivity_timeout=30)
    assert look(p, ScaleState(last_busy=T0), load=0, current=4, now=T0 + 30).desired == 2
    p = policy(min_workers=1, max_workers=5, inactivity_timeout=30)
    assert look(p, ScaleState(last_busy=T0), load=0, current=4, now=T0 + 30).desired == 1


def test_a_worker_coming_up_counts_as_activity() -> None:
    p = policy(min_workers=0, inactivity_timeout=5)
    decision = look(p, ScaleState(last_busy=T0), load=0, current=1, now=T0 + 100, delay=0, starting=1)
    assert decision.desired == 1 and decision.state.last_busy == T0 + 100


def test_calls_started_between_looks_count_as_activity() -> None:
    p = policy(min_workers=0, inactivity_timeout=5)
    decision = look(p, ScaleState(last_busy=T0), load=0, current=1, now=T0 + 100, delay=0, used=True)
    assert decision.desired == 1 and decision.state.last_busy == T0 + 100


def test_a_zero_inactivity_timeout_turns_the_gate_off() -> None:
    # Vast's 0: no inactivity gating, the load alone decides (after the scale-down delay).
    p = policy(min_workers=0, inactivity_timeout=0)
    assert look(p, ScaleState(last_busy=T0), load=1, current=1, now=T0 + 5).desired == 1
    assert look(p, ScaleState(last_busy=T0), load=0, current=1, now=T0 + 5, delay=10).desired == 1
    assert look(p, ScaleState(last_busy=T0), load=0, current=1, now=T0 + 5, delay=0).desired == 0


def test_a_negative_inactivity_timeout_never_goes_to_zero() -> None:
    # Vast's negative value: never to zero, even with min_workers, min_load and cold_workers at 0.
    p = policy(min_workers=0, inactivity_timeout=-1)
    state = ScaleState(last_busy=T0)
    assert look(p, state, load=0, current=1, now=T0 + 1e6, delay=0).desired == 1
    assert look(p, state, load=0, current=3, now=T0 + 1e6, delay=0).desired == 1
    assert look(p, state, load=0, current=0, now=T0 + 1e6).desired == 1


def test_policy_from_spec_defaults_an_unset_target_util() -> None:
    spec = control_pb2.AutoscalingSpec(min_workers=0, max_workers=2, cold_workers=1, inactivity_timeout=9)
    assert Policy.from_spec(spec) == Policy(0, 2, 1, 0.8, 9)
    full = control_pb2.AutoscalingSpec(
        max_workers=4, inactivity_timeout=-1, min_load=2, min_cold_load=3, cold_mult=2.5, target_queue_time=4
    )
    assert Policy.from_spec(full) == Policy(0, 4, 0, 0.8, -1, 2, 3, 2.5, 4)


def worker(worker_id: str, **values: object) -> WorkerRow:
    return WorkerRow(id=worker_id, endpoint_id="e", revision_id="r", state="ready", token_hash="", **values)  # type: ignore[arg-type]


def test_measure_weighs_each_workers_calls_by_its_score() -> None:
    fast = worker("fast", score=100.0, capacity=10, calls_in_flight=10, calls_queued=0)
    slow = worker("slow", score=20.0, capacity=4, calls_in_flight=6, calls_queued=2)
    observed = measure([fast, slow], spec_capacity=8)
    # 10/10 × 100 + 6/4 × 20 calls/s; perf the mean score; 2 queued over 120 calls/s.
    assert observed.load == pytest.approx(130.0)
    assert observed.perf == pytest.approx(60.0)
    assert observed.queue_time == pytest.approx(2 / 120)
    assert observed.workers == 2


def test_measure_without_scores_counts_in_workers_worth() -> None:
    unscored = worker("w", capacity=0, calls_in_flight=4, calls_queued=2)
    assert measure([unscored], spec_capacity=2) == Observed(load=2.0, perf=1.0, queue_time=2.0, workers=1)
    assert measure([unscored], spec_capacity=2, known_perf=5).load == pytest.approx(10.0)
    assert measure([], spec_capacity=2, known_perf=5) == Observed(load=0.0, perf=5.0, queue_time=0.0, workers=0)


# -- the autoscaler on a real store and Lifecycle -------------------------------------------------


class FakeProvider:
    """Starts nothing: every worker is a row the test moves through its states."""

    remote_workers = False

    def __init__(self, root: Path) -> None:
        self.on_exit = None
        self.root = root
        self.started: list[str] = []
        self.stopped: list[str] = []

    async def start_worker(self, worker_id: str, token: str, control_address: str) -> int:
        self.started.append(worker_id)
        return 100_000 + len(self.started)

    def worker_gpus(self, worker_id: str) -> tuple[int, ...]:
        return ()

    def adopt_worker(self, worker_id: str, pid: int, gpus: object) -> None:
        pass

    async def stop_worker(self, worker_id: str, grace: float, *, pid: int = 0) -> bool:
        self.stopped.append(worker_id)
        return True

    async def stop_all(self, grace: float) -> None:
        pass

    def is_running(self, worker_id: str) -> bool:
        return False

    def log_path(self, worker_id: str) -> Path:
        return self.root / f"{worker_id}.log"


class Setup:
    """A real store, blob store and Lifecycle on a fake provider, and an Autoscaler over them."""

    def __init__(self, tmp_path: Path, *, scale_down_delay: float = 10.0) -> None:
        self.store = SqliteStore(tmp_path / "state.db")
        self.blobs = LocalBlobStore(tmp_path / "bundles")
        self.provider = FakeProvider(tmp_path)
        self.lifecycle = Lifecycle(self.store, self.blobs, self.provider, stop_grace=1)  # type: ignore[arg-type]
        self.autoscaler = Autoscaler(self.store, self.lifecycle, scale_down_delay=scale_down_delay)

    def endpoint(self, *, workers: int = 1, capacity: int = 2, state: str = "ready", **autoscaling: float) -> str:
        """An endpoint with ``workers`` ready workers of its live revision, their heartbeats fresh."""
        data = b"bundle"
        digest = hashlib.sha256(data).hexdigest()
        with self.blobs.open_writer(digest, len(data)) as writer:
            writer.write(data)
            writer.commit()
        spec = make_spec(digest=digest)
        spec.autoscaling.CopyFrom(
            control_pb2.AutoscalingSpec(
                **{"min_workers": 1, "max_workers": 3, "target_util": 1.0, "inactivity_timeout": 60, **autoscaling}
            )
        )
        deployment = self.store.get_or_create_deployment("hello")
        endpoint, _ = self.store.get_or_create_endpoint(deployment.id, "default")
        revision = self.store.add_revision(
            endpoint.id,
            spec.SerializeToString(),
            {"bundle": digest, "code": "c", "environment": "e", "autoscaling": "a"},
        )
        self.store.update_endpoint(endpoint.id, state=state, live_revision_id=revision.id, desired_workers=workers)
        for i in range(workers):
            self.add_worker(endpoint.id, revision.id, f"w-{i}", capacity=capacity)
        return endpoint.id

    def add_worker(self, endpoint_id: str, revision_id: str, worker_id: str, **values: object) -> None:
        row = WorkerRow(
            id=worker_id, endpoint_id=endpoint_id, revision_id=revision_id, state="ready", token_hash=worker_id
        )
        self.store.add_worker(row)
        self.store.update_worker(worker_id, last_heartbeat=time.time(), **values)

    def active(self, endpoint_id: str) -> list[WorkerRow]:
        return self.store.list_workers(endpoint_id=endpoint_id, exclude_states=("stopped", "failed"))

    def endpoint_row(self, endpoint_id: str):
        return self.store.get_endpoint(endpoint_id)


@pytest.fixture
def setup(tmp_path):
    made = Setup(tmp_path)
    yield made
    made.store.close()


async def test_load_scales_up_and_the_endpoint_stays_ready(setup, caplog) -> None:
    caplog.set_level(logging.INFO, logger="vastrpc.control.lifecycle.autoscaler")
    endpoint_id = setup.endpoint()
    setup.lifecycle.heartbeat("w-0", calls_in_flight=12, calls_queued=10)
    assert setup.store.get_worker("w-0").calls_queued == 10
    assert await setup.autoscaler.tick() == {endpoint_id: 3}
    assert setup.endpoint_row(endpoint_id).state == "ready"
    assert setup.endpoint_row(endpoint_id).desired_workers == 3
    assert [w.state for w in setup.active(endpoint_id)] == ["ready", "starting", "starting"]
    assert len(setup.provider.started) == 2
    assert "autoscale: hello:default 1 → 3 workers (load 6/s, perf 1/s per worker, target_util 1)" in caplog.text
    # The same load again changes nothing.
    assert await setup.autoscaler.tick() == {}
    assert len(setup.provider.started) == 2


async def test_scale_down_retires_the_newest_after_the_delay(setup) -> None:
    endpoint_id = setup.endpoint(workers=3)
    now = time.time()
    assert await setup.autoscaler.tick(now) == {}
    assert await setup.autoscaler.tick(now + 9) == {}
    assert await setup.autoscaler.tick(now + 10) == {endpoint_id: 1}
    assert [w.id for w in setup.active(endpoint_id)] == ["w-0"]
    assert setup.endpoint_row(endpoint_id).state == "ready"


async def test_scale_down_retires_workers_without_open_sessions_first(setup, caplog) -> None:
    caplog.set_level(logging.INFO, logger="vastrpc.control.lifecycle.autoscaler")
    endpoint_id = setup.endpoint(workers=3, capacity=4)
    # The oldest worker would be kept by default: sessions on the two newer ones keep those instead.
    setup.lifecycle.sessions.hold("s-1", endpoint_id, "w-1", 60)
    setup.lifecycle.sessions.hold("s-2", endpoint_id, "w-2", 60)
    now = time.time()
    assert await setup.autoscaler.tick(now) == {}
    assert await setup.autoscaler.tick(now + 10) == {endpoint_id: 2}
    assert "2 worker(s) hold open sessions" in caplog.text
    assert sorted(w.id for w in setup.active(endpoint_id)) == ["w-1", "w-2"]
    # Once the sessions are closed, the idle endpoint goes down to one of them.
    setup.lifecycle.sessions.release("s-1")
    setup.lifecycle.sessions.hold("s-2", endpoint_id, "w-2", 0)
    assert await setup.autoscaler.tick(now + 11) == {}
    assert await setup.autoscaler.tick(now + 21) == {endpoint_id: 1}
    assert len(setup.active(endpoint_id)) == 1


async def test_an_open_session_keeps_an_idle_endpoint_from_scaling_to_zero(setup) -> None:
    endpoint_id = setup.endpoint(min_workers=0, inactivity_timeout=5)
    setup.lifecycle.sessions.hold("s-1", endpoint_id, "w-0", 60)
    now = time.time()
    assert await setup.autoscaler.tick(now + 100) == {}
    assert [w.id for w in setup.active(endpoint_id)] == ["w-0"]
    # An expired session reserves nothing.
    setup.lifecycle.sessions.hold("s-1", endpoint_id, "w-0", 60, now=now - 61)
    assert await setup.autoscaler.tick(now + 200) == {endpoint_id: 0}


def test_measure_counts_an_open_session_as_a_call_in_flight_on_its_worker() -> None:
    a = WorkerRow(id="a", endpoint_id="e", revision_id="r", state="ready", token_hash="", score=4, capacity=2)
    b = replace(a, id="b", calls_in_flight=2)
    assert measure([a, b], 2).load == 4
    assert measure([a, b], 2, sessions={"a": 1, "b": 1}).load == 6  # b's session is one of its calls


async def test_stale_heartbeats_carry_no_load(setup) -> None:
    endpoint_id = setup.endpoint()
    setup.store.update_worker("w-0", calls_in_flight=50, last_heartbeat=time.time() - 60)
    assert await setup.autoscaler.tick() == {}
    assert setup.endpoint_row(endpoint_id).desired_workers == 1


async def test_a_lost_worker_is_replaced(setup) -> None:
    endpoint_id = setup.endpoint(workers=2, min_workers=2)
    setup.store.update_worker("w-1", state="failed")
    assert await setup.autoscaler.tick() == {}
    assert [w.state for w in setup.active(endpoint_id)] == ["ready", "starting"]


async def test_a_worker_whose_heartbeats_stopped_is_lost_and_replaced(setup) -> None:
    endpoint_id = setup.endpoint(workers=2, min_workers=2)
    frozen_since = time.time() - setup.lifecycle.heartbeat_timeout - 1
    setup.store.update_worker("w-1", last_heartbeat=frozen_since)
    await setup.autoscaler.tick()
    lost = setup.store.get_worker("w-1")
    assert lost.state == "failed" and lost.failure_step == "heartbeat" and "no heartbeat" in lost.failure_message
    assert setup.endpoint_row(endpoint_id).state == "ready"  # the other worker serves on
    assert [w.state for w in setup.active(endpoint_id)] == ["ready", "starting"]  # and a replacement comes


async def test_an_update_in_progress_is_left_alone(setup) -> None:
    endpoint_id = setup.endpoint()
    live = setup.endpoint_row(endpoint_id).live_revision_id
    setup.store.update_worker("w-0", calls_in_flight=12)
    setup.store.update_endpoint(endpoint_id, state="deploying")
    setup.add_worker(endpoint_id, live, "w-new", state="installing")
    assert await setup.autoscaler.tick() == {}
    # A worker still on an older revision (a tier 2 switch): left alone even when ready.
    other = setup.store.add_revision(endpoint_id, b"", {"bundle": "b", "code": "c", "environment": "e"})
    setup.store.update_worker("w-new", state="ready", revision_id=other.id)
    setup.store.update_endpoint(endpoint_id, state="ready")
    assert await setup.autoscaler.tick() == {}
    assert setup.provider.started == []
    # A decision made for a revision that is no longer live is dropped.
    setup.store.update_endpoint(endpoint_id, live_revision_id=other.id)
    assert await setup.lifecycle.scale(endpoint_id, 3, revision_id=live) == 0
    assert setup.provider.started == [] and setup.endpoint_row(endpoint_id).desired_workers == 1


async def test_cold_workers_outlast_the_inactivity_timeout(tmp_path) -> None:
    made = Setup(tmp_path, scale_down_delay=0)
    endpoint_id = made.endpoint(min_workers=0, cold_workers=2, inactivity_timeout=5)
    now = time.time()
    assert await made.autoscaler.tick(now) == {endpoint_id: 2}  # the cold worker joins
    made.store.update_worker(made.active(endpoint_id)[1].id, state="ready")
    assert await made.autoscaler.tick(now + 10) == {}  # Vast's cold_workers: a floor, inactive or not
    assert len(made.active(endpoint_id)) == 2
    made.store.close()


async def test_scale_to_zero_stays_ready_and_a_wake_starts_cold_workers(tmp_path) -> None:
    made = Setup(tmp_path, scale_down_delay=0)
    endpoint_id = made.endpoint(min_workers=0, inactivity_timeout=5)
    now = time.time()
    assert await made.autoscaler.tick(now) == {}  # in use within the timeout: one worker stays
    assert await made.autoscaler.tick(now + 4) == {}
    assert await made.autoscaler.tick(now + 10) == {endpoint_id: 0}
    assert made.active(endpoint_id) == []
    # A wake starts cold_workers (at least one): from a revision that asks for two.
    revision = made.store.get_revision(made.endpoint_row(endpoint_id).live_revision_id)
    spec = control_pb2.DeploymentSpec.FromString(revision.spec)
    spec.autoscaling.cold_workers = 2
    made.store.set_revision_spec(revision.id, spec.SerializeToString())
    made.autoscaler._specs.clear()  # the autoscaler reads a revision's spec once: as if it were new
    endpoint = made.endpoint_row(endpoint_id)
    assert (endpoint.state, endpoint.desired_workers) == ("ready", 0)
    # Provisioning the live revision again (tier 0) wakes nothing.
    assert await made.lifecycle.provision(endpoint_id, endpoint.live_revision_id) == 0
    assert made.endpoint_row(endpoint_id).state == "ready"

    assert await made.autoscaler.wake(endpoint_id) == 2
    assert [w.state for w in made.active(endpoint_id)] == ["starting", "starting"]
    assert made.endpoint_row(endpoint_id).desired_workers == 2
    assert await made.autoscaler.wake(endpoint_id) == 0  # already waking
    # The wake counts as a call: the next look keeps the workers coming up.
    assert await made.autoscaler.tick() == {}
    assert len(made.active(endpoint_id)) == 2

    with pytest.raises(NotFoundError):
        await made.autoscaler.wake("e-nosuch")
    await made.lifecycle.teardown("hello")
    with pytest.raises(DeploymentError, match="stopped: deploy it again"):
        await made.autoscaler.wake(endpoint_id)
    made.store.close()


async def test_short_calls_between_heartbeats_count_as_use(tmp_path) -> None:
    made = Setup(tmp_path, scale_down_delay=0)
    endpoint_id = made.endpoint(min_workers=0, inactivity_timeout=5)
    now = time.time()
    assert await made.autoscaler.tick(now) == {}
    # No call is ever in flight at a heartbeat, but the count of started calls grows.
    for step, started in ((4, 10), (8, 25), (12, 40)):
        made.lifecycle.heartbeat("w-0", calls_in_flight=0, calls_started=started)
        assert await made.autoscaler.tick(now + step) == {}, step
    assert await made.autoscaler.tick(now + 18) == {endpoint_id: 0}  # then quiet past the timeout
    made.store.close()


async def test_a_new_revision_starts_a_worker_even_at_zero(tmp_path) -> None:
    made = Setup(tmp_path)
    endpoint_id = made.endpoint(workers=0, min_workers=0)
    live = made.store.get_revision(made.endpoint_row(endpoint_id).live_revision_id)
    spec = control_pb2.DeploymentSpec.FromString(live.spec)
    code = made.store.add_revision(
        endpoint_id, live.spec, {"bundle": spec.digests.bundle, "code": "c2", "environment": "e", "autoscaling": "a"}
    )
    assert await made.lifecycle.provision(endpoint_id, code.id) == 1  # tier 2 proves the new code
    assert made.endpoint_row(endpoint_id).state == "deploying"
    made.store.close()


# -- end to end ------------------------------------------------------------------------------------

SOURCE = """
import asyncio
from vastrpc import Deployment

app = Deployment(name="{name}")
app.configure_autoscaling(min_workers=MIN, max_workers=3, target_util=1.0, inactivity_timeout=INACTIVITY)

@app.remote(benchmark_dataset=[{{"seconds": 0}}], max_concurrency=2)
async def nap(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds
"""

FAST = ["--autoscale-interval", "0.5", "--heartbeat-interval", "0.5", "--scale-down-delay", "3"]
fast_autoscaling = pytest.mark.parametrize("control_service", [{"args": FAST}], indirect=True)


def source(min_workers: int, inactivity: float) -> str:
    return SOURCE.replace("MIN", str(min_workers)).replace("INACTIVITY", str(inactivity))


async def wait_for_workers(project, app, count: int, timeout: float, *, ready: bool = False) -> None:
    """Until the app has ``count`` workers that are not stopped (``ready``: that are READY)."""
    deadline = time.monotonic() + timeout
    while True:
        workers = [w for w in await project.workers(app) if not ready or w["state"] == "READY"]
        if len(workers) == count:
            return
        assert time.monotonic() < deadline, f"not {count} workers within {timeout}s: {workers}"
        await asyncio.sleep(0.2)


@pytest.mark.e2e
@pytest.mark.timeout(90)
@fast_autoscaling
async def test_workers_follow_the_load_up_to_max_and_back_to_min(project, control_service) -> None:
    mod = project(source(min_workers=1, inactivity=60))
    await mod.app.ensure_ready()
    assert len(await project.workers(mod.app)) == 1
    stop = asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            await mod.nap(0.5)

    callers = [asyncio.create_task(caller()) for _ in range(12)]
    try:
        await wait_for_workers(project, mod.app, 3, 30, ready=True)
        await asyncio.sleep(1.5)  # the load still wants 3: nothing more starts
        assert len(await project.workers(mod.app)) == 3
    finally:
        stop.set()
        await asyncio.gather(*callers)
    stopped_load = time.monotonic()
    await wait_for_workers(project, mod.app, 1, 15)
    # Not before the scale-down delay (3 s) had passed with an idle load.
    assert time.monotonic() - stopped_load >= 2.5
    assert f"autoscale: {mod.app.name}:default 1 → 3 workers" in control_service.log_text()
    # Down in one step, or through 2 when the last calls were still seen by a heartbeat.
    assert "→ 1 workers (load 0/s, perf " in control_service.log_text()
    assert (await project.endpoint(mod.app))["state"] == "READY"
    assert await mod.nap(0) == 0


@pytest.mark.e2e
@pytest.mark.timeout(90)
@fast_autoscaling
async def test_scales_to_zero_stays_ready_and_wake_endpoint_brings_a_worker(project, control_service) -> None:
    mod = project(source(min_workers=0, inactivity=2))
    first = await mod.app.ensure_ready()
    assert first.workers_started == 1  # the first deploy proves the revision with one worker
    assert await mod.nap(0.1) == 0.1
    await wait_for_workers(project, mod.app, 0, 15)
    endpoint = await project.endpoint(mod.app)
    assert endpoint["state"] == "READY"
    # Deploying again (tier 0) finds it ready at once and wakes nothing.
    again = await mod.app.ensure_ready()
    assert (again.tier, again.workers_started) == (0, 0)

    async with Client(control_service.address, control_service.api_key) as client:
        wake = control_pb2.WakeEndpointRequest(endpoint_id=endpoint["endpoint_id"])
        woke = await client.stub.WakeEndpoint(wake, metadata=client.metadata, timeout=10)
        assert woke.workers_started == 1
        assert (await client.stub.WakeEndpoint(wake, metadata=client.metadata, timeout=10)).workers_started == 0
        state = await client.wait_ready(endpoint["endpoint_id"], workers=1, timeout=30)
        assert state.desired_workers == 1
        assert await mod.nap(0) == 0

        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await client.stub.WakeEndpoint(
                control_pb2.WakeEndpointRequest(endpoint_id="e-nosuch"), metadata=client.metadata, timeout=10
            )
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        # Back at zero, a plain call wakes the endpoint itself and waits for the worker (a cold start).
        await wait_for_workers(project, mod.app, 0, 15)
        assert await asyncio.wait_for(mod.nap(0.2), 30) == 0.2
        assert len(await project.workers(mod.app)) == 1

        await client.teardown(mod.app.name)
        with pytest.raises(grpc.aio.AioRpcError) as stopped:
            await client.stub.WakeEndpoint(wake, metadata=client.metadata, timeout=10)
        assert stopped.value.code() == grpc.StatusCode.FAILED_PRECONDITION


QUEUE_SOURCE = """
import asyncio
from vastrpc import Deployment

app = Deployment(name="{name}")
app.configure_autoscaling(max_workers=3, target_util=1.0, inactivity_timeout=60, target_queue_time=TARGET)

# A representative benchmark: the score (about 4 calls/s on 2 slots) is the worker's perf.
@app.remote(benchmark_dataset=[{{"seconds": 0.5}}], benchmark_runs=2, max_concurrency=2)
async def nap(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds
"""


async def most_workers_under_load(project, mod, callers: int, seconds: float) -> int:
    """The most workers the app had while ``callers`` callers kept calling ``nap(0.5)`` for ``seconds``."""
    stop = asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            await mod.nap(0.5)

    tasks = [asyncio.create_task(caller()) for _ in range(callers)]
    most = 0
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            most = max(most, len(await project.workers(mod.app)))
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return most


@pytest.mark.e2e
@pytest.mark.timeout(120)
@fast_autoscaling
async def test_a_queue_above_target_queue_time_scales_up_beyond_what_the_load_wants(project, control_service) -> None:
    # 3 callers of nap(0.5) on one worker of 2 slots: the load (3 in flight / 2 slots × 4 calls/s
    # = 6 calls/s) wants 2 workers of 4 calls/s; the queue (1 call / 4 calls/s = 0.25 s) is
    # above a 0.05 s target_queue_time, which wants 5: max_workers (3).
    queued = project(QUEUE_SOURCE.replace("TARGET", "0.05"))
    await queued.app.ensure_ready()
    assert await most_workers_under_load(project, queued, callers=3, seconds=8) == 3
    assert "over target_queue_time 0.05 s" in control_service.log_text()
    assert f"autoscale: {queued.app.name}:default 1 → 3 workers" in control_service.log_text()

    # The same load with the queue rule off: the load alone scales it (2 workers, or 3 when a
    # rate window happens to hold an extra round of completions), never the queue.
    plain = project(QUEUE_SOURCE.replace("TARGET", "0"))
    await plain.app.ensure_ready()
    assert await most_workers_under_load(project, plain, callers=3, seconds=8) >= 2
    decisions = [line for line in control_service.log_text().splitlines() if f"autoscale: {plain.app.name}:" in line]
    assert decisions and not [line for line in decisions if "target_queue_time" in line], decisions


async def test_an_endpoint_that_lost_its_workers_waits_retries_with_backoff_and_serves_when_capacity_returns(
    setup,
) -> None:
    endpoint_id = setup.endpoint(workers=1)
    # Its only worker's node goes away: not a failure of the deployment, a loss of capacity.
    await setup.lifecycle.worker_exited("w-0", 0, -9)
    row = setup.endpoint_row(endpoint_id)
    assert row.state == "waiting" and row.failure_step == "serving"
    assert row.failure_message == "its last worker w-0 was lost: worker process was killed by signal SIGKILL"

    tries: list[float] = []

    async def no_node(worker_id: str, token: str, control_address: str) -> int:
        tries.append(now)
        raise DeploymentError("no node meets gpu_name == 'H200' (lost: node-2)", step="placement")

    setup.provider.start_worker = no_node  # type: ignore[method-assign]
    now = time.time()
    for _ in range(40):  # looks every second for 40 s
        now += 1
        await setup.autoscaler.tick(now)
    row = setup.endpoint_row(endpoint_id)
    assert row.state == "waiting" and row.failure_step == "placement"
    assert row.failure_message == "no node meets gpu_name == 'H200' (lost: node-2)"
    gaps = [round(b - a) for a, b in itertools.pairwise(tries)]
    assert gaps[:4] == [1, 2, 4, 8] and max(gaps) <= 30  # doubling, bounded
    assert not setup.store.list_workers(endpoint_id=endpoint_id, states=("failed",))[1:]  # no failed row per try

    # The node is back: the next try places a worker, and the endpoint serves as soon as it is ready.
    del setup.provider.start_worker
    for _ in range(31):
        now += 1
        await setup.autoscaler.tick(now)
    (worker,) = setup.active(endpoint_id)
    setup.lifecycle.update_worker(worker.id, common_pb2.WORKER_STATE_READY, address="127.0.0.1:9", score=1)
    row = setup.endpoint_row(endpoint_id)
    assert (row.state, row.failure_message) == ("ready", "")
