"""The dashboard's charts: calls per second, latency percentiles and errors per endpoint, sampled into ring buffers."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from vastrpc._metrics import DURATION_BUCKETS

__all__ = ["CallRates", "EndpointTotals", "Sample", "quantile"]

# Per (deployment, tag): calls so far by outcome, and per duration bucket (CallTotals.by_endpoint).
EndpointTotals = dict[tuple[str, str], tuple[dict[str, int], list[int]]]
PERCENTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True)
class Sample:
    """One interval of one endpoint: when it ended, calls and failed calls per second, p50/p95/p99 in seconds.

    The percentiles are None for an interval without a finished call.
    """

    at: float
    calls_per_s: float
    errors_per_s: float
    percentiles: tuple[float | None, ...]


def quantile(q: float, counts: list[int], bounds: tuple[float, ...] = DURATION_BUCKETS) -> float | None:
    """The ``q`` quantile of calls counted per bucket (not cumulative), as Prometheus' histogram_quantile.

    Within a bucket the calls are taken as spread evenly between its bounds; in the last
    (above every bound) the highest bound is the answer. None when there are no calls.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    below = 0
    for i, count in enumerate(counts):
        if count and below + count >= rank:
            if i >= len(bounds):
                return bounds[-1]
            low = bounds[i - 1] if i > 0 else 0.0
            return low + (bounds[i] - low) * (rank - below) / count
        below += count
    return bounds[-1]


class CallRates:
    """What the charts show: every ``interval`` seconds, each endpoint's calls since the last sample.

    The totals grow as worker heartbeats arrive (``CallTotals``); a sample is the difference
    to the previous one, so an endpoint seen for the first time counts from zero. Each
    endpoint keeps ``window`` seconds of samples; one idle for that long is forgotten.

    Args:
        totals: Returns the current totals (``CallTotals.by_endpoint``).
        interval: Seconds between samples.
        window: Seconds of samples kept per endpoint.
        clock: The time samples are stamped with (seconds since the epoch).
    """

    def __init__(
        self,
        totals: Callable[[], EndpointTotals],
        *,
        interval: float,
        window: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._totals = totals
        self.interval = interval
        self._clock = clock
        self._size = max(1, int(window / interval))
        self._previous: EndpointTotals = {}
        self._previous_at = clock()
        self._series: dict[tuple[str, str], deque[Sample]] = {}

    def sample(self) -> None:
        """Take one sample of every endpoint from the totals."""
        now = self._clock()
        elapsed = max(now - self._previous_at, 1e-6)
        current = self._totals()
        for key, (outcomes, buckets) in current.items():
            before_outcomes, before_buckets = self._previous.get(key, ({}, [0] * len(buckets)))
            grown = {o: max(c - before_outcomes.get(o, 0), 0) for o, c in outcomes.items()}
            calls = sum(grown.values())
            failed = calls - grown.get("ok", 0)
            counts = [max(a - b, 0) for a, b in zip(buckets, before_buckets, strict=False)]
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = deque(maxlen=self._size)
            series.append(
                Sample(now, calls / elapsed, failed / elapsed, tuple(quantile(q, counts) for q in PERCENTILES))
            )
        # Endpoints whose window holds only idle samples are forgotten (torn down long ago).
        for key in [k for k, s in self._series.items() if len(s) == s.maxlen and not any(x.calls_per_s for x in s)]:
            del self._series[key]
        self._previous, self._previous_at = current, now

    async def run(self) -> None:
        """Sample every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            self.sample()

    def to_json(self) -> dict[str, object]:
        """The samples by endpoint as columns (``t``, ``calls_per_s``, ``errors_per_s``, ``p50_ms`` ...)."""
        endpoints = []
        for (deployment, tag), series in sorted(self._series.items()):
            columns: dict[str, object] = {
                "deployment": deployment,
                "tag": tag,
                "t": [round(s.at, 3) for s in series],
                "calls_per_s": [round(s.calls_per_s, 3) for s in series],
                "errors_per_s": [round(s.errors_per_s, 3) for s in series],
            }
            for i, q in enumerate(PERCENTILES):
                columns[f"p{round(q * 100)}_ms"] = [
                    None if s.percentiles[i] is None else round(s.percentiles[i] * 1000, 3)  # type: ignore[operator]
                    for s in series
                ]
            endpoints.append(columns)
        return {"interval": self.interval, "endpoints": endpoints}
