"""The control service's Prometheus metrics: calls from worker heartbeats, workers and endpoints, updates, RPCs."""

from __future__ import annotations

import asyncio
import bisect
import inspect
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from vastrpc._metrics import DURATION_BUCKETS
from vastrpc.api.v1 import common_pb2, control_pb2
from vastrpc.control.lifecycle.rules import ENDPOINT_STATE_VALUES, WORKER_STATE_NAMES
from vastrpc.control.stores.base import Store

__all__ = ["ControlMetrics", "RpcMetricsInterceptor"]

# The tiers as docs/tiers.md numbers them (the enum's values are one higher, after UNSPECIFIED).
TIER_LABELS: dict[int, str] = {
    common_pb2.UPDATE_TIER_NONE: "0",
    common_pb2.UPDATE_TIER_SETTINGS: "1",
    common_pb2.UPDATE_TIER_CODE: "2",
    common_pb2.UPDATE_TIER_ENVIRONMENT: "3",
    common_pb2.UPDATE_TIER_NEW_ENDPOINT: "4",
}
# Every worker state but "stopped": stopped workers are history, and the store keeps them all.
_WORKER_STATES = tuple(name for name in WORKER_STATE_NAMES.values() if name != "stopped")
# A worker not heard from for this long is forgotten (its counts stay in the totals).
_FORGET_AFTER = 600.0

Labels = tuple[str, str]  # (deployment, tag)


class _Durations:
    """One series of the control service's duration histogram: calls per bucket (not cumulative), and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.total = 0.0


class _WorkerCalls:
    """What one worker reported last, per serving process (source) and function."""

    __slots__ = ("labels", "seen", "sources")

    def __init__(self, labels: Labels) -> None:
        self.labels = labels
        self.sources: dict[str, dict[str, control_pb2.FunctionCallStats]] = {}
        self.seen = 0.0


def _continues(old: control_pb2.FunctionCallStats, new: control_pb2.FunctionCallStats) -> bool:
    """Whether ``new`` counts on from ``old`` (no counter went back, the same buckets)."""
    if list(old.duration_bounds) != list(new.duration_bounds):
        return False
    if len(old.duration_buckets) != len(new.duration_buckets) or new.duration_sum < old.duration_sum:
        return False
    if any(n < o for o, n in zip(old.duration_buckets, new.duration_buckets, strict=True)):
        return False
    return all(new.calls.get(outcome, 0) >= count for outcome, count in old.calls.items())


class CallTotals:
    """Calls and their durations per deployment, tag and function, added up from the workers' heartbeats.

    Heartbeats carry cumulative counts per serving process (a ``source``); what grew since
    the previous heartbeat is added. A source seen for the first time, or whose counts went
    back (it restarted under the same name), counts from zero. Everything runs on the
    control service's event loop, scrapes included, so nothing here needs a lock.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._calls: dict[tuple[str, str, str, str], int] = {}
        self._durations: dict[tuple[str, str, str], _Durations] = {}
        self._workers: dict[str, _WorkerCalls] = {}
        self._pruned_at = time.monotonic()

    def record(self, worker_id: str, call_stats: Iterable[control_pb2.CallStats]) -> None:
        """Add what a worker's heartbeat reports; sources it no longer reports have ended."""
        now = time.monotonic()
        worker = self._workers.get(worker_id)
        if worker is None:
            labels = self._labels(worker_id)
            if labels is None:
                return
            worker = self._workers[worker_id] = _WorkerCalls(labels)
        sources: dict[str, dict[str, control_pb2.FunctionCallStats]] = {}
        for stats in call_stats:
            previous = worker.sources.get(stats.source, {})
            current = sources[stats.source] = {}
            for function in stats.functions:
                self._add(worker.labels, function, previous.get(function.function))
                current[function.function] = function
        worker.sources = sources
        worker.seen = now
        if now - self._pruned_at > 60:
            self._pruned_at = now
            for gone in [w for w, calls in self._workers.items() if now - calls.seen > _FORGET_AFTER]:
                del self._workers[gone]

    def _labels(self, worker_id: str) -> Labels | None:
        worker = self._store.get_worker(worker_id)
        endpoint = self._store.get_endpoint(worker.endpoint_id) if worker is not None else None
        deployment = self._store.get_deployment(endpoint.deployment_id) if endpoint is not None else None
        if endpoint is None or deployment is None:
            return None
        return deployment.name, endpoint.tag

    def _add(
        self, labels: Labels, new: control_pb2.FunctionCallStats, old: control_pb2.FunctionCallStats | None
    ) -> None:
        if old is not None and not _continues(old, new):
            old = None
        for outcome, count in new.calls.items():
            key = (*labels, new.function, outcome)
            grown = count - (old.calls.get(outcome, 0) if old is not None else 0)
            self._calls[key] = self._calls.get(key, 0) + max(grown, 0)
        bounds, buckets = list(new.duration_bounds), list(new.duration_buckets)
        if len(buckets) != len(bounds) + 1:
            return  # not a histogram this service can read
        series = self._durations.get((*labels, new.function))
        if series is None:
            series = self._durations[(*labels, new.function)] = _Durations()
        before = list(old.duration_buckets) if old is not None else [0] * len(buckets)
        below = 0
        for i, (after, then) in enumerate(zip(buckets, before, strict=True)):
            grown = after - then  # cumulative: calls at most bounds[i] seconds long
            # The same bounds map one to one; others go to the first bucket that holds them.
            target = bisect.bisect_left(DURATION_BUCKETS, bounds[i]) if i < len(bounds) else len(DURATION_BUCKETS)
            series.counts[target] += max(grown - below, 0)
            below = max(grown, below)
        series.total += max(new.duration_sum - (old.duration_sum if old is not None else 0.0), 0.0)

    def by_endpoint(self) -> dict[Labels, tuple[dict[str, int], list[int]]]:
        """Per (deployment, tag), functions added up: calls so far by outcome, and per duration bucket.

        The bucket counts are not cumulative; the last is the calls above ``DURATION_BUCKETS[-1]``.
        """
        out: dict[Labels, tuple[dict[str, int], list[int]]] = {}
        for (deployment, tag, _, outcome), count in self._calls.items():
            outcomes, _ = out.setdefault((deployment, tag), ({}, [0] * (len(DURATION_BUCKETS) + 1)))
            outcomes[outcome] = outcomes.get(outcome, 0) + count
        for (deployment, tag, _), series in self._durations.items():
            _, counts = out.setdefault((deployment, tag), ({}, [0] * (len(DURATION_BUCKETS) + 1)))
            for i, count in enumerate(series.counts):
                counts[i] += count
        return out

    def collect(self) -> Iterator[Metric]:
        """The ``vastrpc_calls_total`` and ``vastrpc_call_duration_seconds`` families."""
        calls = CounterMetricFamily(
            "vastrpc_calls",
            "Calls that finished on the workers, by deployment, tag, function and outcome "
            "(ok, error, cancelled, timeout, overloaded), as their heartbeats report them",
            labels=["deployment", "tag", "function", "outcome"],
        )
        for call_key, count in sorted(self._calls.items()):
            calls.add_metric(list(call_key), count)
        durations = HistogramMetricFamily(
            "vastrpc_call_duration_seconds",
            "Seconds calls took on the workers, from the request for a slot to the last answer, "
            "as their heartbeats report them",
            labels=["deployment", "tag", "function"],
        )
        for key, series in sorted(self._durations.items()):
            cumulative = list(itertools.accumulate(series.counts))
            bucket_pairs = [(floatToGoString(b), float(c)) for b, c in zip(DURATION_BUCKETS, cumulative, strict=False)]
            bucket_pairs.append(("+Inf", float(cumulative[-1])))
            durations.add_metric(list(key), bucket_pairs, series.total)
        yield calls
        yield durations

    def describe(self) -> list[Metric]:
        """The families' names and types, without reading anything."""
        return [
            CounterMetricFamily("vastrpc_calls", "", labels=["deployment", "tag", "function", "outcome"]),
            HistogramMetricFamily("vastrpc_call_duration_seconds", "", labels=["deployment", "tag", "function"]),
        ]


class _StateCollector:
    """Workers and endpoints by state, read from the store at every scrape: always what the store says."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def describe(self) -> list[Metric]:
        return [
            GaugeMetricFamily("vastrpc_workers", "", labels=["deployment", "tag", "state"]),
            GaugeMetricFamily("vastrpc_endpoints", "", labels=["state"]),
        ]

    def collect(self) -> Iterator[Metric]:
        names = {d.id: d.name for d in self._store.list_deployments()}
        endpoints = self._store.list_endpoints()
        where = {e.id: (names.get(e.deployment_id, ""), e.tag) for e in endpoints}
        counts: dict[tuple[str, str, str], int] = {}
        for endpoint in endpoints:
            if endpoint.state != "stopped":  # every state shows, at 0 too, for the endpoints in use
                for state in _WORKER_STATES:
                    counts[(*where[endpoint.id], state)] = 0
        for worker in self._store.list_workers(exclude_states=("stopped",)):
            key = (*where.get(worker.endpoint_id, ("", "")), worker.state)
            counts[key] = counts.get(key, 0) + 1
        workers = GaugeMetricFamily(
            "vastrpc_workers",
            "Workers by deployment, tag and state (starting ... ready, draining, failed; stopped ones are left out)",
            labels=["deployment", "tag", "state"],
        )
        for key, count in sorted(counts.items()):
            workers.add_metric(list(key), count)
        by_state = dict.fromkeys(ENDPOINT_STATE_VALUES, 0)
        for endpoint in endpoints:
            by_state[endpoint.state] = by_state.get(endpoint.state, 0) + 1
        gauge = GaugeMetricFamily(
            "vastrpc_endpoints",
            "Endpoints (a deployment's tag) by state: new, deploying, ready, failed, stopped",
            labels=["state"],
        )
        for state, count in sorted(by_state.items()):
            gauge.add_metric([state], count)
        yield workers
        yield gauge


class ControlMetrics:
    """Every metric of one control service, in a registry of its own (never the process-wide default).

    Args:
        store: The control service's state store, read at scrape time.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self.registry = CollectorRegistry()
        self.calls = CallTotals(store)
        self.registry.register(self.calls)
        self.registry.register(_StateCollector(store))
        self._updates = Counter(
            "vastrpc_updates",
            "Deployments registered, by the update tier they were classified as (0 nothing "
            "changed, 1 settings, 2 code, 3 environment, 4 new endpoint)",
            ["tier"],
            registry=self.registry,
        )
        for tier in TIER_LABELS.values():
            self._updates.labels(tier)
        self._rpcs = Counter(
            "vastrpc_control_rpcs",
            "RPCs the control service answered, by method and gRPC status code",
            ["method", "code"],
            registry=self.registry,
        )
        self._worker_metrics: dict[str, str] = {}

    def update_registered(self, tier: int) -> None:
        """Count a registration of the given UpdateTier."""
        self._updates.labels(TIER_LABELS.get(tier, "unknown")).inc()

    def rpc_finished(self, method: str, code: grpc.StatusCode) -> None:
        """Count an RPC that ended with ``code``."""
        self._rpcs.labels(method, code.name).inc()

    def heartbeat(self, request: control_pb2.HeartbeatRequest) -> None:
        """Take in a heartbeat's call statistics and metrics address."""
        if request.metrics_address:
            self._worker_metrics[request.worker_id] = request.metrics_address
        self.calls.record(request.worker_id, request.call_stats)

    def worker_metrics_address(self, worker_id: str, address: str) -> None:
        """Remember where a worker's serving process serves its metrics (it reported READY with it)."""
        if address:
            self._worker_metrics[worker_id] = address

    def targets(self) -> tuple[str, bytes]:
        """The workers' metrics endpoints, in Prometheus' HTTP service discovery format (``/targets``)."""
        groups = []
        for worker in self._store.list_workers(states=("ready", "draining")):
            address = self._worker_metrics.get(worker.id)
            endpoint = self._store.get_endpoint(worker.endpoint_id)
            deployment = self._store.get_deployment(endpoint.deployment_id) if endpoint is not None else None
            if not address or endpoint is None or deployment is None:
                continue
            labels = {"deployment": deployment.name, "tag": endpoint.tag, "worker_id": worker.id}
            groups.append({"targets": [address], "labels": labels})
        # Workers that are gone take their addresses with them.
        live = {worker.id for worker in self._store.list_workers(exclude_states=("stopped", "failed"))}
        for worker_id in [w for w in self._worker_metrics if w not in live]:
            del self._worker_metrics[worker_id]
        return "application/json", json.dumps(groups).encode()

    def interceptor(self) -> RpcMetricsInterceptor:
        """A server interceptor that counts every RPC by method and status code."""
        return RpcMetricsInterceptor(self.rpc_finished)


Behavior = Callable[..., Any]


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Calls ``finished(method, code)`` when an RPC ends: OK, the code it aborted with, CANCELLED or UNKNOWN.

    Put it before the auth interceptor, so that refused calls (UNAUTHENTICATED) count too.
    """

    def __init__(self, finished: Callable[[str, grpc.StatusCode], None]) -> None:
        self._finished = finished

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # an unknown method: gRPC answers UNIMPLEMENTED, and the name could be anything
        method = handler_call_details.method.lstrip("/")
        return _counted(handler, lambda code: self._finished(method, code))


def _counted(handler: Any, done: Callable[[grpc.StatusCode], None]) -> Any:
    kind = f"{'stream' if handler.request_streaming else 'unary'}_{'stream' if handler.response_streaming else 'unary'}"
    behavior: Behavior = getattr(handler, kind)
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                done(_code(context, exc))
                raise
            done(_code(context, None))

        return handler._replace(**{kind: stream})
    if inspect.iscoroutinefunction(behavior):

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                response = await behavior(request, context)
            except BaseException as exc:
                done(_code(context, exc))
                raise
            done(_code(context, None))
            return response

        return handler._replace(**{kind: unary})
    return handler  # a synchronous handler runs in a thread pool; none of ours is one


def _code(context: grpc.aio.ServicerContext, exc: BaseException | None) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if exc is None:
        return grpc.StatusCode.OK
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN
