"""The dashboard's call samples: rates and failures per interval, percentiles from buckets, a bounded window."""

from __future__ import annotations

import pytest

from vastrpc._metrics import DURATION_BUCKETS
from vastrpc.api.v1 import control_pb2
from vastrpc.control.dashboard.stats import CallRates, EndpointTotals, quantile
from vastrpc.control.metrics import CallTotals
from vastrpc.control.stores.base import WorkerRow
from vastrpc.control.stores.sqlite import SqliteStore


def buckets(**calls_at: int) -> list[int]:
    """Calls per bucket, by the bucket's upper bound written as ``b0_01=3`` (0.01 s)."""
    counts = [0] * (len(DURATION_BUCKETS) + 1)
    for name, count in calls_at.items():
        bound = float(name[1:].replace("_", "."))
        counts[DURATION_BUCKETS.index(bound)] += count
    return counts


def test_quantile_interpolates_within_the_bucket_like_prometheus() -> None:
    assert quantile(0.5, [0] * (len(DURATION_BUCKETS) + 1)) is None
    # 10 calls in (0.005, 0.01]: the median sits halfway through that bucket.
    assert quantile(0.5, buckets(b0_01=10)) == pytest.approx(0.0075)
    # 90 fast calls and 10 slow ones: p50 among the fast, p95 and p99 among the slow.
    counts = buckets(b0_001=90, b1_0=10)
    assert quantile(0.5, counts) <= 0.001
    assert 0.5 < quantile(0.95, counts) <= 1.0 and quantile(0.99, counts) > quantile(0.95, counts)
    # Beyond the last bound, the last bound is all that is known.
    assert quantile(0.99, [0] * len(DURATION_BUCKETS) + [5]) == DURATION_BUCKETS[-1]


def test_samples_are_the_growth_since_the_previous_sample_per_second() -> None:
    now = [1000.0]
    totals: EndpointTotals = {}
    rates = CallRates(lambda: dict(totals), interval=2.0, window=10.0, clock=lambda: now[0])
    totals[("app", "default")] = ({"ok": 8, "error": 2}, buckets(b0_01=10))
    now[0] += 2
    rates.sample()
    # An endpoint seen for the first time counts from zero; then only what grew counts.
    totals[("app", "default")] = ({"ok": 12, "error": 2, "timeout": 2}, buckets(b0_01=10, b1_0=4))
    now[0] += 2
    rates.sample()
    now[0] += 2
    rates.sample()  # nothing new: zero calls, no percentiles
    (endpoint,) = rates.to_json()["endpoints"]
    assert (endpoint["deployment"], endpoint["tag"]) == ("app", "default")
    assert endpoint["t"] == [1002.0, 1004.0, 1006.0]
    assert endpoint["calls_per_s"] == [5.0, 3.0, 0.0]
    assert endpoint["errors_per_s"] == [1.0, 1.0, 0.0]
    assert endpoint["p50_ms"][0] == pytest.approx(7.5) and endpoint["p50_ms"][2] is None
    assert 500 < endpoint["p99_ms"][1] <= 1000


def test_the_window_is_bounded_and_an_idle_endpoint_is_forgotten() -> None:
    now = [0.0]
    totals: EndpointTotals = {("app", "default"): ({"ok": 1}, buckets(b0_01=1))}
    rates = CallRates(lambda: totals, interval=1.0, window=5.0, clock=lambda: now[0])
    for _ in range(5):
        now[0] += 1
        rates.sample()
    (endpoint,) = rates.to_json()["endpoints"]
    assert len(endpoint["t"]) == 5 and endpoint["calls_per_s"][0] == 1.0
    now[0] += 1
    rates.sample()  # the window now holds five idle samples
    assert rates.to_json()["endpoints"] == []


def test_call_totals_by_endpoint_add_functions_and_workers_up(tmp_path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    deployment = store.get_or_create_deployment("app")
    endpoint, _ = store.get_or_create_endpoint(deployment.id, "default")
    digests = dict.fromkeys(("bundle", "code", "environment", "autoscaling"), "0")
    revision = store.add_revision(endpoint.id, b"", digests)
    for worker_id in ("w-1", "w-2"):
        store.add_worker(
            WorkerRow(
                id=worker_id, endpoint_id=endpoint.id, revision_id=revision.id, state="ready", token_hash=worker_id
            )
        )
    totals = CallTotals(store)
    bounds = list(DURATION_BUCKETS)

    def stats(function: str, ok: int, slow: int) -> control_pb2.FunctionCallStats:
        cumulative = [ok if bound >= 0.01 else 0 for bound in bounds]
        cumulative = [c + (slow if bound >= 1.0 else 0) for c, bound in zip(cumulative, bounds, strict=True)]
        return control_pb2.FunctionCallStats(
            function=function,
            calls={"ok": ok + slow},
            duration_bounds=bounds,
            duration_buckets=[*cumulative, ok + slow],
            duration_sum=ok * 0.01 + slow,
        )

    totals.record("w-1", [control_pb2.CallStats(source="a", functions=[stats("f", 3, 1), stats("g", 2, 0)])])
    totals.record("w-2", [control_pb2.CallStats(source="b", functions=[stats("f", 4, 0)])])
    outcomes, counts = totals.by_endpoint()[("app", "default")]
    assert outcomes == {"ok": 10}
    assert counts[DURATION_BUCKETS.index(0.01)] == 9 and counts[DURATION_BUCKETS.index(1.0)] == 1
    assert sum(counts) == 10
