"""The dashboard over HTTP, no browser: the API key required, what the JSON says, a worker's log followed live."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from vastrpc._http import HttpServer, start_http_server
from vastrpc._tls import ensure_local_tls
from vastrpc.api.v1 import common_pb2
from vastrpc.control.dashboard import CallRates, Dashboard, start_dashboard
from vastrpc.control.dashboard.web import server_context
from vastrpc.control.stores.base import Store, WorkerRow
from vastrpc.control.stores.sqlite import SqliteStore

from ..helpers import eventually

pytestmark = pytest.mark.timeout(60)

KEY = "vk_dashboard-test-key"
DIGESTS = dict.fromkeys(("bundle", "code", "environment", "autoscaling"), "a" * 64)


def get(address: str, path: str, key: str | None = KEY, **headers: str) -> tuple[int, dict[str, str], Any]:
    """Status, headers and body (JSON decoded when it is JSON) of one GET."""
    connection = http.client.HTTPConnection(address, timeout=10)
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body: Any = response.read()
        if response.getheader("Content-Type", "").startswith("application/json"):
            body = json.loads(body)
        return response.status, dict(response.getheaders()), body
    finally:
        connection.close()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return SqliteStore(tmp_path / "state.db")


@pytest.fixture
async def dashboard(store: Store, tmp_path: Path) -> AsyncIterator[HttpServer]:
    rates = CallRates(lambda: {}, interval=1.0)
    pages = Dashboard(store, KEY, rates, lambda worker_id: tmp_path / f"{worker_id}.log")
    server, url = await start_dashboard(pages, "127.0.0.1", 0, None)
    assert url == f"http://{server.address}/"
    yield server
    await server.close()


async def test_the_api_requires_the_key_and_the_page_holds_no_data(dashboard: HttpServer) -> None:
    address = dashboard.address

    def requests() -> dict[str, Any]:
        out: dict[str, Any] = {"page": get(address, "/", key=None)}
        out["chart library"] = get(address, "/static/vendor/uPlot.iife.min.js", key=None)
        for path in ("/api/deployments", "/api/stats", "/api/logs?worker=w-1"):
            out[f"{path} without"] = get(address, path, key=None)
            out[f"{path} wrong"] = get(address, path, key=KEY + "x")
            out[f"{path} basic"] = get(address, path, key=None, Authorization=f"Basic {KEY}")
            out[f"{path} in url"] = get(address, f"{path}{'&' if '?' in path else '?'}key={KEY}", key=None)
        out["deployments"] = get(address, "/api/deployments")
        out["stats"] = get(address, "/api/stats")
        out["unknown api"] = get(address, "/api/secrets")
        out["unknown"] = get(address, "/../../etc/passwd", key=None)
        connection = http.client.HTTPConnection(address, timeout=10)
        connection.request("POST", "/api/deployments", body=b"{}", headers={"Authorization": f"Bearer {KEY}"})
        out["post"] = connection.getresponse().status
        connection.close()
        return out

    got = await asyncio.to_thread(requests)
    status, headers, body = got["page"]
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"/static/vendor/uPlot.iife.min.js" in body and b"//cdn" not in body and b"https://" not in body
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"] and headers["X-Frame-Options"] == "DENY"
    assert got["chart library"][0] == 200 and got["chart library"][2].startswith(
        b"/*! https://github.com/leeoniya/uPlot"
    )
    for name, answer in got.items():
        if name.endswith(("without", "wrong", "basic", "in url")):
            status, headers, body = answer
            assert status == 401, name
            assert headers["WWW-Authenticate"].startswith("Bearer") and "API key" in body["error"], name
    assert got["deployments"][0] == 200 and got["deployments"][2]["deployments"] == []
    assert got["stats"][0] == 200 and got["stats"][2] == {"interval": 1.0, "endpoints": []}
    assert got["deployments"][1]["Cache-Control"] == "no-store"
    assert got["unknown api"][0] == 404 and got["unknown"][0] == 404
    assert got["post"] == 405


async def test_deployments_show_endpoints_revisions_with_their_tiers_and_workers(
    dashboard: HttpServer, store: Store
) -> None:
    deployment = store.get_or_create_deployment("shop")
    endpoint, _ = store.get_or_create_endpoint(deployment.id, "blue")
    first = store.add_revision(endpoint.id, b"", DIGESTS, tier=common_pb2.UPDATE_TIER_NEW_ENDPOINT)
    second = store.add_revision(endpoint.id, b"", {**DIGESTS, "code": "b" * 64}, tier=common_pb2.UPDATE_TIER_CODE)
    store.update_endpoint(endpoint.id, state="ready", live_revision_id=second.id, desired_workers=1)
    worker = WorkerRow(id="w-1", endpoint_id=endpoint.id, revision_id=second.id, state="ready", token_hash="t1")
    store.add_worker(worker)
    store.update_worker("w-1", address="10.1.2.3:5001", score=42.5, capacity=4, gpus="0,1", pid=77)
    stopped = WorkerRow(id="w-0", endpoint_id=endpoint.id, revision_id=first.id, state="stopped", token_hash="t0")
    store.add_worker(stopped)

    status, _, body = await asyncio.to_thread(get, dashboard.address, "/api/deployments")
    assert status == 200
    (shown,) = body["deployments"]
    (blue,) = shown["endpoints"]
    assert (shown["name"], blue["tag"], blue["state"], blue["live_revision_id"]) == ("shop", "blue", "ready", second.id)
    # Newest first, numbered as docs/tiers.md numbers them.
    assert [(r["id"], r["tier"], r["tier_name"], r["live"]) for r in blue["revisions"]] == [
        (second.id, 2, "code", True),
        (first.id, 4, "new endpoint", False),
    ]
    (w,) = blue["workers"]  # a stopped worker is history, not shown
    assert (w["id"], w["state"], w["score"], w["capacity"], w["host"], w["gpus"], w["pid"]) == (
        "w-1",
        "ready",
        42.5,
        4,
        "10.1.2.3",
        [0, 1],
        77,
    )


async def test_a_worker_log_is_followed_live_and_the_stream_ends_with_the_client(
    dashboard: HttpServer, store: Store, tmp_path: Path
) -> None:
    deployment = store.get_or_create_deployment("shop")
    endpoint, _ = store.get_or_create_endpoint(deployment.id, "default")
    revision = store.add_revision(endpoint.id, b"", DIGESTS)
    log = tmp_path / "w-1.log"
    log.write_text("one\ntwo\nthree\n")
    worker = WorkerRow(
        id="w-1", endpoint_id=endpoint.id, revision_id=revision.id, state="ready", token_hash="t", log_path=str(log)
    )
    store.add_worker(worker)

    connection = http.client.HTTPConnection(dashboard.address, timeout=10)

    def open_stream() -> http.client.HTTPResponse:
        connection.request("GET", "/api/logs?worker=w-1&tail=2", headers={"Authorization": f"Bearer {KEY}"})
        return connection.getresponse()

    def read_until(response: http.client.HTTPResponse, text: str) -> str:
        seen = ""
        while text not in seen:
            line = response.readline()  # http.client undoes the chunking
            assert line, f"the stream ended before {text!r}; got {seen!r}"
            seen += json.loads(line).get("text", "")
        return seen

    response = await asyncio.to_thread(open_stream)
    assert response.status == 200 and response.getheader("Transfer-Encoding") == "chunked"
    assert await asyncio.to_thread(read_until, response, "three\n") == "two\nthree\n"
    with log.open("a") as f:
        f.write("four, written while the page follows\n")
    assert "four, written" in await asyncio.to_thread(read_until, response, "four")
    assert dashboard.open_connections == 1
    response.close()
    connection.close()
    # The worker writes nothing more; the server still notices the client went away.
    await eventually(lambda: dashboard.open_connections == 0, 5, "the followed stream ended")

    for path, status in (
        ("/api/logs", 400),
        ("/api/logs?worker=w-1&tail=-1", 400),
        ("/api/logs?worker=w-1&tail=lots", 400),
        ("/api/logs?worker=w-nope", 404),
    ):
        got, _, body = await asyncio.to_thread(get, dashboard.address, path)
        assert (got, bool(body["error"])) == (status, True), path


@pytest.mark.e2e
@pytest.mark.parametrize("control_service", [{"args": ["--dashboard-port", "0"]}], indirect=True)
def test_the_control_service_serves_it_when_asked_and_status_shows_where(control_service) -> None:
    info = json.loads((control_service.home / "control.json").read_text())
    url = info["dashboard_url"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/")
    address = url.removeprefix("http://").rstrip("/")
    assert get(address, "/api/deployments", key=None)[0] == 401
    assert get(address, "/api/deployments", key="vk_wrong")[0] == 401
    assert get(address, "/api/deployments", key=control_service.api_key)[0] == 200
    status = subprocess.run(
        [sys.executable, "-m", "vastrpc", "control", "status", "--home", str(control_service.home)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0 and f"dashboard {url}" in status.stdout


def test_a_bad_dashboard_port_is_refused_clearly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vastrpc", "control", "serve", "--home", str(tmp_path), "--dashboard-port", "web"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--dashboard-port: 'web' is not a port" in result.stderr and "Traceback" not in result.stderr


async def test_off_loopback_it_serves_https_with_the_services_certificate(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tls = ensure_local_tls(tmp_path / "tls")
    assert all(server_context(host, tls) is None for host in ("127.0.0.1", "::1", "[::1]", "localhost"))
    with caplog.at_level(logging.WARNING):
        assert server_context("0.0.0.0", None) is None
    assert "plain HTTP: the API key crosses the network unencrypted" in caplog.text
    context = server_context("10.0.0.5", tls)
    assert isinstance(context, ssl.SSLContext)
    # The same context, on loopback here: a client that trusts the service's CA gets the page over TLS.
    pages = Dashboard(store, KEY, CallRates(lambda: {}, interval=1.0), lambda worker_id: tmp_path / "w.log")
    server = await start_http_server(pages.handle, "127.0.0.1", 0, ssl_context=context)

    def fetch() -> int:
        trust = ssl.create_default_context(cafile=str(tls.ca_file))
        connection = http.client.HTTPSConnection(server.address, timeout=10, context=trust)
        try:
            connection.request("GET", "/api/stats", headers={"Authorization": f"Bearer {KEY}"})
            return connection.getresponse().status
        finally:
            connection.close()

    try:
        assert await asyncio.to_thread(fetch) == 200
        with pytest.raises(ConnectionError):
            await asyncio.to_thread(get, server.address, "/")  # plain HTTP to the TLS port: no answer
    finally:
        await server.close()
