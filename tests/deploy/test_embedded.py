"""The embedded control service: ensure_control starts one process per home and reuses it; stop_control stops it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import stat
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vastrpc._errors import ControlUnavailableError
from vastrpc._process import pid_alive
from vastrpc._tls import TlsFiles
from vastrpc.deploy.embedded import control_status, ensure_control, read_control_info, stop_control

pytestmark = pytest.mark.timeout(60)


def _gone(pid: int) -> bool:
    return not pid_alive(pid)  # also reaps it: the service started here is our child


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    yield home
    # Never leave a control service behind, whatever the test did.
    info = read_control_info(home)
    if info and not _gone(info["pid"]):
        stop_control(home)


def test_ensure_control_starts_once_reuses_and_stops(home) -> None:
    local = ensure_control(home)
    assert local.api_key == (home / "api_key").read_text().strip()
    assert (home / "api_key").stat().st_mode & 0o777 == 0o600
    pid = read_control_info(home)["pid"]
    status = control_status(home)
    assert status["address"] == local.address and status["pid"] == pid and status["home"] == str(home)

    assert ensure_control(home) == local
    assert read_control_info(home)["pid"] == pid

    assert stop_control(home) is True
    assert _gone(pid)
    assert not (home / "control.json").exists()
    assert control_status(home) is None
    assert stop_control(home) is False
    assert "control service stopped" in (home / "control.log").read_text()


def test_the_embedded_service_serves_tls_with_its_own_ca(home) -> None:
    local = ensure_control(home)
    assert local.tls == TlsFiles(ca_file=home / "tls" / "ca.pem")
    info = read_control_info(home)
    assert info["tls"] is True and info["tls_ca"] == str(home / "tls" / "ca.pem")
    for key in ("ca.key", "local.key"):
        assert (home / "tls" / key).stat().st_mode & 0o777 == 0o600

    def check(channel: grpc.Channel) -> None:
        with channel:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)

    check(grpc.secure_channel(local.address, local.tls.channel_credentials()))
    with pytest.raises(grpc.RpcError):
        check(grpc.insecure_channel(local.address))  # the default is encrypted: plaintext is refused
    assert stop_control(home)


def test_concurrent_callers_share_one_service(home) -> None:
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: ensure_control(home), range(3)))
    assert len(set(results)) == 1
    assert stop_control(home)


def test_a_dead_service_is_replaced(home) -> None:
    ensure_control(home)
    old = read_control_info(home)
    os.kill(old["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not _gone(old["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert control_status(home) is None  # control.json is stale: its pid is gone
    address = ensure_control(home).address
    new = read_control_info(home)
    assert new["pid"] != old["pid"] and new["address"] == address
    # The api key survives restarts: clients configured with it keep working.
    assert stop_control(home)


def test_a_service_that_cannot_start_reports_its_log(home) -> None:
    home.mkdir(mode=0o700)  # private, as vastrpc makes it: no warning about an open home here
    (home / "api_key").mkdir()  # the service cannot read its key and exits
    with pytest.raises(ControlUnavailableError) as info:
        ensure_control(home, timeout=10)
    assert "exited with code" in str(info.value) and "api_key" in str(info.value)


def test_stale_control_json_is_not_trusted(home) -> None:
    home.mkdir()
    (home / "control.json").write_text(json.dumps({"address": "127.0.0.1:1", "pid": os.getpid(), "started_at": 0}))
    assert control_status(home) is None  # our own pid is alive, but nothing answers there
    assert stop_control(home) is False  # and it is not a control service: never signalled


def test_the_embedded_service_serves_its_dashboard_on_loopback_unless_turned_off(home, monkeypatch) -> None:
    monkeypatch.delenv("VASTRPC_DASHBOARD_PORT", raising=False)
    local = ensure_control(home)
    url = read_control_info(home)["dashboard_url"]
    assert url.startswith("http://127.0.0.1:") and control_status(home)["dashboard_url"] == url
    for key, status in ((None, 401), (local.api_key, 200)):
        connection = http.client.HTTPConnection(url.removeprefix("http://").rstrip("/"), timeout=10)
        connection.request("GET", "/api/deployments", headers={"Authorization": f"Bearer {key}"} if key else {})
        assert connection.getresponse().status == status
        connection.close()
    assert stop_control(home)

    monkeypatch.setenv("VASTRPC_DASHBOARD_PORT", "off")
    ensure_control(home)
    assert "dashboard_url" not in read_control_info(home)
    assert stop_control(home)


def test_what_vastrpc_makes_in_an_open_home_is_private(home) -> None:
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)  # made by someone else before, world-readable
    ensure_control(home)
    assert stat.S_IMODE(home.stat().st_mode) == 0o755  # the user's folder: warned about (by the client), not changed
    for made in ("control.log", "state.db", "api_key"):
        assert stat.S_IMODE((home / made).stat().st_mode) == 0o600, made
    assert stat.S_IMODE((home / "bundles").stat().st_mode) == 0o700
    assert stop_control(home) is True
