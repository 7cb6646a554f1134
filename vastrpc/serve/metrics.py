"""A serving process's Prometheus metrics (calls, durations, load), and the agent's reading of them for heartbeats."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from vastrpc._metrics import DURATION_BUCKETS, MetricsServer, start_metrics_server
from vastrpc.api.v1 import control_pb2
from vastrpc.serve.invoke import Overloaded, ServedFunction, WorkerServicer

__all__ = ["OUTCOMES", "CallStatsReader", "WorkerMetrics", "read_call_stats", "serve_worker_metrics"]

# How a call that got as far as asking for a slot ended.
OUTCOMES = ("ok", "error", "cancelled", "timeout", "overloaded")

_CALLS = "vastrpc_worker_calls_total"
_DURATION = "vastrpc_worker_call_duration_seconds"


class _FunctionTracker:
    """One function's labelled children, looked up once: a call costs two clock reads, a counter and a histogram."""

    __slots__ = ("_counts", "_duration", "active", "served")

    def __init__(self, function: str, served: ServedFunction, calls: Counter, durations: Histogram) -> None:
        self._counts = {outcome: calls.labels(function, outcome) for outcome in OUTCOMES}
        self._duration = durations.labels(function)
        self.served = served
        # Calls running or waiting for a slot; only the event loop changes it.
        self.active = 0

    def track(self) -> _TrackedCall:
        return _TrackedCall(self)

    def finished(self, started: float, exc_type: type[BaseException] | None) -> None:
        self.active -= 1
        if exc_type is None:
            outcome = "ok"
        elif issubclass(exc_type, Overloaded):
            self._counts["overloaded"].inc()
            return  # refused before it ran: no duration
        elif issubclass(exc_type, TimeoutError):
            outcome = "timeout"
        elif issubclass(exc_type, asyncio.CancelledError):
            outcome = "cancelled"
        else:
            outcome = "error"
        self._duration.observe(time.perf_counter() - started)
        self._counts[outcome].inc()


class _TrackedCall:
    """Wraps one call from its request for a slot to its last answer; sees how it ended, never changes it."""

    __slots__ = ("_started", "_tracker")

    def __init__(self, tracker: _FunctionTracker) -> None:
        self._tracker = tracker
        self._started = 0.0

    async def __aenter__(self) -> None:
        self._tracker.active += 1
        self._started = time.perf_counter()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._tracker.finished(self._started, exc_type)


class _LoadCollector:
    """Calls in flight and queued per function, read at scrape time (nothing to update per call)."""

    def __init__(self, trackers: dict[str, _FunctionTracker]) -> None:
        self._trackers = trackers

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        return self._families()

    def _families(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "vastrpc_worker_calls_in_flight",
            "Calls of the function running or waiting for a slot on this serving process",
            labels=["function"],
        )
        queued = GaugeMetricFamily(
            "vastrpc_worker_calls_queued", "Calls of the function waiting for a slot", labels=["function"]
        )
        for name, tracker in self._trackers.items():
            in_flight.add_metric([name], tracker.active)
            queued.add_metric([name], tracker.served.queued)
        yield in_flight
        yield queued


class WorkerMetrics:
    """The metrics of one serving process, in a registry of its own.

    Args:
        labels: What ``vastrpc_worker_info`` says about the process (worker_id, revision_id, ...).
    """

    def __init__(self, labels: dict[str, str]) -> None:
        self.registry = CollectorRegistry()
        self._calls = Counter(
            "vastrpc_worker_calls",
            "Calls that finished on this serving process, by function and outcome "
            "(ok, error, cancelled, timeout, overloaded: refused for a full queue)",
            ["function", "outcome"],
            registry=self.registry,
        )
        self._durations = Histogram(
            _DURATION,
            "Seconds from a call's request for a slot to its last answer (refused calls excluded)",
            ["function"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        Info("vastrpc_worker", "Which worker and revision this serving process serves", registry=self.registry).info(
            labels
        )
        self._trackers: dict[str, _FunctionTracker] = {}
        self.registry.register(_LoadCollector(self._trackers))

    def instrument(self, function: str, served: ServedFunction) -> None:
        """Count and time every call of ``served`` from now on."""
        tracker = _FunctionTracker(function, served, self._calls, self._durations)
        self._trackers[function] = tracker
        served.track = tracker.track


async def serve_worker_metrics(servicer: WorkerServicer, config: dict[str, Any]) -> MetricsServer:
    """Instrument the servicer's functions and serve their metrics on the serving process's host (any free port).

    Args:
        servicer: The serving process's WorkerService.
        config: The serving process's configuration from the agent (``bind_host``,
            ``advertise_host``, ``name``, ``tag``).
    """
    identity = servicer.identity
    metrics = WorkerMetrics(
        {
            "worker_id": identity.worker_id,
            "revision_id": identity.revision_id,
            "endpoint_id": identity.endpoint_id,
            "deployment": str(config.get("name", "")),
            "tag": str(config.get("tag", "")),
        }
    )
    for name, served in servicer.functions.items():
        metrics.instrument(name, served)
    return await start_metrics_server(
        metrics.registry,
        config.get("bind_host", "127.0.0.1"),
        0,
        advertise_host=config.get("advertise_host") or None,
    )


def parse_call_stats(text: str) -> list[control_pb2.FunctionCallStats]:
    """The per-function call statistics in a serving process's metrics (Prometheus text format)."""
    functions: dict[str, control_pb2.FunctionCallStats] = {}
    buckets: dict[str, list[tuple[float, int]]] = {}

    def entry(name: str) -> control_pb2.FunctionCallStats:
        stats = functions.get(name)
        if stats is None:
            stats = functions[name] = control_pb2.FunctionCallStats(function=name)
        return stats

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            function = sample.labels.get("function")
            if function is None:
                continue
            if sample.name == _CALLS:
                entry(function).calls[sample.labels["outcome"]] = int(sample.value)
            elif sample.name == _DURATION + "_bucket":
                buckets.setdefault(function, []).append((float(sample.labels["le"]), int(sample.value)))
            elif sample.name == _DURATION + "_sum":
                entry(function).duration_sum = sample.value
    for function, pairs in buckets.items():
        pairs.sort()
        stats = entry(function)
        stats.duration_bounds.extend(bound for bound, _ in pairs if bound != float("inf"))
        stats.duration_buckets.extend(count for _, count in pairs)
    return [functions[name] for name in sorted(functions)]


# Straight to the serving process: a proxy from the environment has no business with a local port.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _fetch(address: str, timeout: float) -> str:
    with _OPENER.open(f"http://{address}/metrics", timeout=timeout) as response:
        return str(response.read().decode())


async def read_call_stats(address: str, *, timeout: float = 2.0) -> list[control_pb2.FunctionCallStats]:
    """Scrape a serving process's metrics at ``address`` (``host:port``) and return its call statistics.

    Raises:
        OSError: The process did not answer within ``timeout`` seconds.
    """
    text = await asyncio.to_thread(_fetch, address, timeout)
    return parse_call_stats(text)


class CallStatsReader:
    """What an agent's heartbeats say about its serving processes' calls (HeartbeatRequest.call_stats)."""

    def __init__(self) -> None:
        self._last: dict[str, control_pb2.CallStats] = {}

    async def read(self, sources: Iterable[tuple[str, str]], *, timeout: float = 2.0) -> list[control_pb2.CallStats]:
        """The call statistics of each ``(source, metrics address)``, read now.

        A process that does not answer this time is reported with what it said last: left
        out, the control service would take it for ended, and count it from zero when it
        answers again.
        """
        pairs = list(sources)
        results = await asyncio.gather(
            *(read_call_stats(address, timeout=timeout) for _, address in pairs), return_exceptions=True
        )
        last, self._last = self._last, {}
        for (source, _), result in zip(pairs, results, strict=True):
            if isinstance(result, BaseException):
                if source in last:
                    self._last[source] = last[source]
            else:
                self._last[source] = control_pb2.CallStats(source=source, functions=result)
        return list(self._last.values())
