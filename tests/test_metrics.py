"""Prometheus metrics: the control service's and the workers' endpoints scraped over HTTP, and their counting rules."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vastrpc._grpc import bearer, channel
from vastrpc._metrics import DURATION_BUCKETS, start_metrics_server
from vastrpc.api.v1 import control_pb2, control_pb2_grpc
from vastrpc.control.metrics import CallTotals, ControlMetrics
from vastrpc.control.stores.base import WorkerRow
from vastrpc.control.stores.sqlite import SqliteStore
from vastrpc.serve.invoke import Overloaded, ServedFunction
from vastrpc.serve.metrics import WorkerMetrics, parse_call_stats

SOURCE = """
import os
from vastrpc import Deployment

app = Deployment(name="{name}")
app.configure_autoscaling(min_workers=2, max_workers=2)

@app.remote(benchmark_dataset=[{{"x": 1}}])
async def work(x: int) -> int:
    if x < 0:
        raise ValueError("negative")
    return VERSION * x

@app.remote
async def pid() -> int:
    return os.getpid()
"""
FAST = ["--heartbeat-interval", "0.3"]
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def source(version: int) -> str:
    return SOURCE.replace("VERSION", str(version))


def fetch(address: str, path: str = "/metrics", headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(f"http://{address}{path}", headers=headers or {})
    try:
        with OPENER.open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def scrape(address: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name: ``{name: [(labels, value), ...]}``."""
    status, _, body = fetch(address)
    assert status == 200
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(v for got, v in samples.get(name, []) if all(got.get(k) == w for k, w in labels.items()))


def listening_ports(pid: int) -> set[int]:
    """The TCP ports a process listens on (Linux: its socket inodes in /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


async def wait_until(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(condition)
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        await asyncio.sleep(0.2)


# -- end to end --------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(180)
@pytest.mark.parametrize("control_service", [{"args": ["--metrics-port", "0", *FAST]}], indirect=True)
async def test_control_and_worker_metrics_count_every_call(project, control_service) -> None:
    info = json.loads((control_service.home / "control.json").read_text())
    metrics = info["metrics_address"]
    # `vastrpc control status` says where the metrics are, and that this (sole) service leads.
    status = subprocess.run(
        [sys.executable, "-m", "vastrpc", "control", "status", "--json", "--home", str(control_service.home)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert status.returncode == 0, status.stderr
    assert (json.loads(status.stdout)["metrics_address"], json.loads(status.stdout)["leader"]) == (metrics, True)
    assert listening_ports(control_service.process.pid) == {port(info["address"]), port(metrics)}

    mod = project(source(1))
    first = await mod.app.ensure_ready()
    assert first.tier == 4
    name = mod.app.name
    ok, failing = 20, 10
    results = await asyncio.gather(*(mod.work(i) for i in range(ok)))
    assert results == list(range(ok))
    for i in range(failing):
        with pytest.raises(ValueError, match="negative"):
            await mod.work(-1 - i)

    # The workers' endpoints, as the control service lists them for Prometheus (HTTP SD).
    workers = await project.workers(mod.app)
    assert len(workers) == 2
    status, headers, body = fetch(metrics, "/targets")
    assert status == 200 and headers["Content-Type"] == "application/json"
    targets = json.loads(body)
    assert sorted(t["labels"]["worker_id"] for t in targets) == [w["worker_id"] for w in workers]
    assert all(t["labels"]["deployment"] == name and t["labels"]["tag"] == "default" for t in targets)

    def worker_samples() -> list[dict[str, list]] | None:
        # A call is counted as it ends on the worker, which may be just after its caller got the answer.
        scraped = [scrape(t["targets"][0]) for t in targets]
        counts = sum(total(s, "vastrpc_worker_call_duration_seconds_count", function="work") for s in scraped)
        return scraped if counts == ok + failing else None

    scraped = await wait_until(worker_samples, 5, "the workers did not count every call")
    for samples, target in zip(scraped, targets, strict=True):
        (labels, value), *_ = samples["vastrpc_worker_info"]
        assert (labels["worker_id"], labels["revision_id"], value) == (
            target["labels"]["worker_id"],
            first.revision_id,
            1.0,
        )
        assert total(samples, "vastrpc_worker_calls_in_flight") == 0
        assert total(samples, "vastrpc_worker_calls_queued") == 0

    def worker_total(metric: str, **labels: str) -> float:
        return sum(total(s, metric, function="work", **labels) for s in scraped)

    assert worker_total("vastrpc_worker_calls_total", outcome="ok") == ok
    assert worker_total("vastrpc_worker_calls_total", outcome="error") == failing
    assert worker_total("vastrpc_worker_calls_total") == ok + failing
    assert worker_total("vastrpc_worker_call_duration_seconds_count") == ok + failing
    assert worker_total("vastrpc_worker_call_duration_seconds_bucket", le="+Inf") == ok + failing
    assert 0 < worker_total("vastrpc_worker_call_duration_seconds_sum") < 10

    # The control service adds up what the workers' heartbeats report.
    labels = {"deployment": name, "tag": "default", "function": "work"}

    def control_counts(expected_ok: int) -> dict[str, list] | None:
        samples = scrape(metrics)
        done = total(samples, "vastrpc_calls_total", outcome="ok", **labels) == expected_ok
        return samples if done and total(samples, "vastrpc_calls_total", outcome="error", **labels) == failing else None

    samples = await wait_until(lambda: control_counts(ok), 10, "the control service did not count every call")
    assert total(samples, "vastrpc_calls_total", **labels) == ok + failing
    assert total(samples, "vastrpc_call_duration_seconds_count", **labels) == ok + failing
    assert total(samples, "vastrpc_call_duration_seconds_bucket", le="+Inf", **labels) == ok + failing
    # The same buckets as the workers': each of the control service's counts equals theirs.
    for bound in DURATION_BUCKETS[:5]:
        le = str(bound)
        assert total(samples, "vastrpc_call_duration_seconds_bucket", le=le, **labels) == worker_total(
            "vastrpc_worker_call_duration_seconds_bucket", le=le
        )
    assert total(samples, "vastrpc_workers", deployment=name, state="ready") == 2
    assert total(samples, "vastrpc_workers", deployment=name, state="starting") == 0
    assert total(samples, "vastrpc_endpoints", state="ready") == 1
    assert total(samples, "vastrpc_updates_total", tier="4") == 1
    assert total(samples, "vastrpc_updates_total", tier="2") == 0
    # Each worker registered once (their heartbeats go on a stream that has not ended: not counted yet).
    registered = "vastrpc.api.v1.ControlService/RegisterWorker"
    assert total(samples, "vastrpc_control_rpcs_total", method=registered, code="OK") == 2

    # A refused RPC counts under its code.
    async with channel(control_service.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await control_pb2_grpc.ControlServiceStub(ch).ListDeployments(
                control_pb2.ListDeploymentsRequest(), metadata=bearer("wrong key"), timeout=10
            )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    listing = "vastrpc.api.v1.ControlService/ListDeployments"

    def refusals() -> float:
        return total(scrape(metrics), "vastrpc_control_rpcs_total", method=listing, code="UNAUTHENTICATED")

    # Counted as the RPC ends on the service's side, which may be just after the client saw it end.
    assert await wait_until(refusals, 5, "the refused RPC was not counted") == 1

    # A tier 2 update: counted, and the new serving processes count from zero without the
    # old ones' calls counted twice.
    project.rewrite(mod, source(2))
    second = await mod.app.ensure_ready()
    assert second.tier == 2
    more = 6
    assert await asyncio.gather(*(mod.work(i) for i in range(more))) == [2 * i for i in range(more)]
    samples = await wait_until(lambda: control_counts(ok + more), 10, "calls after the update were not counted")
    assert total(samples, "vastrpc_updates_total", tier="2") == 1
    assert total(samples, "vastrpc_call_duration_seconds_count", **labels) == ok + failing + more
    await asyncio.sleep(1.0)  # a few more heartbeats change nothing
    assert total(scrape(metrics), "vastrpc_calls_total", **labels) == ok + failing + more


@pytest.mark.e2e
@pytest.mark.timeout(120)
@pytest.mark.parametrize("control_service", [{"args": FAST}], indirect=True)
async def test_without_metrics_port_nothing_serves_metrics(project, control_service) -> None:
    mod = project(source(1))
    await mod.app.ensure_ready()
    assert await mod.work(3) == 3
    info = json.loads((control_service.home / "control.json").read_text())
    assert "metrics_address" not in info
    assert listening_ports(control_service.process.pid) == {port(info["address"])}
    # Each serving process listens for its calls only.
    addresses = {port(w["address"]) for w in await project.workers(mod.app)}
    for _ in range(10):
        serving = await mod.pid()
        assert len(listening_ports(serving)) == 1 and listening_ports(serving) <= addresses


# -- the worker's counting ---------------------------------------------------------------------


async def test_worker_metrics_count_each_outcome_and_read_back_as_call_stats() -> None:
    metrics = WorkerMetrics({"worker_id": "w-1", "revision_id": "r-1"})
    served = ServedFunction(lambda: None, 1, max_queue=0)
    metrics.instrument("f", served)

    async def call(exc: BaseException | None = None) -> None:
        with pytest.raises(type(exc)) if exc is not None else contextlib.nullcontext():
            async with served.track(), served.slot():
                if exc is not None:
                    raise exc

    for exc in (None, None, ValueError("x"), TimeoutError(), asyncio.CancelledError()):
        await call(exc)
    async with served.track(), served.slot():  # holds the only slot, with no queue: the next is refused
        with pytest.raises(Overloaded):
            async with served.track(), served.slot():
                pass
        (stats,) = parse_call_stats(generate_latest(metrics.registry).decode())
        text = generate_latest(metrics.registry).decode()
        assert 'vastrpc_worker_calls_in_flight{function="f"} 1.0' in text
    assert dict(stats.calls) == {"ok": 2, "error": 1, "timeout": 1, "cancelled": 1, "overloaded": 1}
    assert list(stats.duration_bounds) == list(DURATION_BUCKETS)
    # Refused calls have no duration; the one holding the slot had not finished yet.
    assert stats.duration_buckets[-1] == 5 and 0 <= stats.duration_sum < 1
    assert 'vastrpc_worker_calls_in_flight{function="f"} 0.0' in generate_latest(metrics.registry).decode()


# -- the control service's adding up -----------------------------------------------------------


def fn_stats(ok: int, error: int = 0, *, fast: int | None = None, bounds: Iterable[float] = (0.01, 1.0)) -> Any:
    """Cumulative stats of function "f": ``fast`` of the calls under the first bound, the rest under the second."""
    count = ok + error
    fast = count if fast is None else fast
    bounds = list(bounds)
    buckets = [fast] + [count] * len(bounds)
    return control_pb2.FunctionCallStats(
        function="f",
        calls={"ok": ok, "error": error},
        duration_bounds=bounds,
        duration_buckets=buckets,
        duration_sum=0.5 * count,
    )


@pytest.fixture
def totals(tmp_path: Path) -> CallTotals:
    store = SqliteStore(tmp_path / "state.db")
    deployment = store.get_or_create_deployment("app")
    endpoint, _ = store.get_or_create_endpoint(deployment.id, "blue")
    revision = store.add_revision(endpoint.id, b"", {k: "0" for k in ("bundle", "code", "environment", "autoscaling")})
    for worker_id in ("w-1", "w-2"):
        store.add_worker(
            WorkerRow(
                id=worker_id, endpoint_id=endpoint.id, revision_id=revision.id, state="ready", token_hash=worker_id
            )
        )
    return CallTotals(store)


def counted(totals: CallTotals) -> dict[str, float]:
    """Samples of the totals by name and outcome/le."""
    out = {}
    for family in totals.collect():
        for s in family.samples:
            assert (s.labels["deployment"], s.labels["tag"], s.labels["function"]) == ("app", "blue", "f")
            key = s.name + "".join(f"{{{k}={s.labels[k]}}}" for k in ("outcome", "le") if k in s.labels)
            out[key] = s.value
    return out


def test_call_totals_add_growth_and_start_over_after_a_restart(totals: CallTotals) -> None:
    def beat(worker: str, *stats: tuple[str, Any]) -> None:
        totals.record(worker, [control_pb2.CallStats(source=src, functions=[f]) for src, f in stats])

    beat("w-1", ("a", fn_stats(3, 1)))
    beat("w-1", ("a", fn_stats(5, 1)))  # grew by 2 ok
    beat("w-2", ("c", fn_stats(4)))  # another worker
    got = counted(totals)
    assert (got["vastrpc_calls_total{outcome=ok}"], got["vastrpc_calls_total{outcome=error}"]) == (9, 1)
    assert got["vastrpc_call_duration_seconds_count"] == 10
    assert got["vastrpc_call_duration_seconds_sum"] == pytest.approx(5.0)
    # The same source counting from lower values restarted: its new counts are all new.
    beat("w-1", ("a", fn_stats(2)))
    assert counted(totals)["vastrpc_calls_total{outcome=ok}"] == 11
    # A second serving process (tier 2) beside the first, then the first one gone.
    beat("w-1", ("a", fn_stats(3)), ("b", fn_stats(1)))
    beat("w-1", ("b", fn_stats(4)))
    got = counted(totals)
    assert got["vastrpc_calls_total{outcome=ok}"] == 11 + 1 + 4
    assert got["vastrpc_call_duration_seconds_count"] == 10 + 2 + 1 + 1 + 3
    # A heartbeat repeated changes nothing; an unknown worker is ignored.
    beat("w-1", ("b", fn_stats(4)))
    beat("w-9", ("z", fn_stats(100)))
    assert counted(totals) == got


def test_call_totals_put_worker_buckets_into_their_own(totals: CallTotals) -> None:
    # The worker's bounds are the service's own: bucket for bucket.
    same = fn_stats(4, fast=3, bounds=DURATION_BUCKETS[:1])
    totals.record("w-1", [control_pb2.CallStats(source="a", functions=[same])])
    got = counted(totals)
    assert got[f"vastrpc_call_duration_seconds_bucket{{le={DURATION_BUCKETS[0]}}}"] == 3
    assert got["vastrpc_call_duration_seconds_bucket{le=+Inf}"] == 4
    # Other bounds: each bucket goes to the first of the service's that holds it.
    other = fn_stats(2, fast=1, bounds=(0.003, 1000.0))
    totals.record("w-2", [control_pb2.CallStats(source="c", functions=[other])])
    got = counted(totals)
    assert got["vastrpc_call_duration_seconds_bucket{le=0.0025}"] == 3
    assert got["vastrpc_call_duration_seconds_bucket{le=0.005}"] == 4
    assert got["vastrpc_call_duration_seconds_bucket{le=300.0}"] == 4
    assert got["vastrpc_call_duration_seconds_bucket{le=+Inf}"] == 6


# -- the HTTP server ---------------------------------------------------------------------------


async def test_metrics_server_answers_get_head_gzip_and_refuses_the_rest(tmp_path: Path) -> None:
    metrics = ControlMetrics(SqliteStore(tmp_path / "state.db"))
    metrics.update_registered(3)  # UPDATE_TIER_CODE: tier 2 in docs/tiers.md
    server = await start_metrics_server(metrics.registry, "127.0.0.1", 0, routes={"/targets": metrics.targets})
    try:
        address = server.address

        def requests() -> list[tuple[int, dict, bytes]]:
            results = [fetch(address), fetch(address, headers={"Accept-Encoding": "gzip"})]
            results.append(fetch(address, "/nowhere"))
            with OPENER.open(urllib.request.Request(f"http://{address}/metrics", method="HEAD"), timeout=10) as r:
                results.append((r.status, dict(r.headers), r.read()))
            results.append(fetch(address, "/targets"))
            try:
                OPENER.open(urllib.request.Request(f"http://{address}/metrics", data=b"x", method="POST"), timeout=10)
            except urllib.error.HTTPError as exc:
                results.append((exc.code, dict(exc.headers), b""))
            return results

        plain, zipped, missing, head, targets, post = await asyncio.to_thread(requests)
        assert plain[0] == 200 and plain[1]["Content-Type"].startswith("text/plain")
        assert 'vastrpc_updates_total{tier="2"} 1.0' in plain[2].decode()
        assert zipped[1]["Content-Encoding"] == "gzip" and gzip.decompress(zipped[2]).startswith(b"# HELP")
        assert missing[0] == 404
        assert head[0] == 200 and head[2] == b"" and int(head[1]["Content-Length"]) > 0
        assert targets[0] == 200 and json.loads(targets[2]) == []
        assert post[0] == 405
    finally:
        await server.close()
    with pytest.raises(OSError):
        await asyncio.to_thread(fetch, address)


def test_the_embedded_default_serves_metrics_when_asked(tmp_path: Path) -> None:
    """VASTRPC_METRICS_PORT turns metrics on for the control service the CLI or SDK starts itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VASTRPC_")}
    env.update(VASTRPC_HOME=str(tmp_path / "home"), VASTRPC_METRICS_PORT="0")
    project = tmp_path / "project"
    project.mkdir()
    (project / "app.py").write_text(
        source(1).replace("{name}", "embedded-metrics").replace("{{", "{").replace("}}", "}")
    )

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vastrpc", *argv], cwd=project, env=env, capture_output=True, text=True, timeout=120
        )

    try:
        deployed = run("deploy", "app.py")
        assert deployed.returncode == 0, deployed.stderr
        status = json.loads(run("control", "status", "--json").stdout)
        code, _, body = fetch(status["metrics_address"])
        assert code == 200 and b"vastrpc_" in body
    finally:
        run("control", "stop")
