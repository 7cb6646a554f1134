"""What the ``vastrpc`` command draws and prints (vastrpc.cli.console), without a control service."""

from __future__ import annotations

import io
import json

import pytest

from vastrpc import DeploymentError, NotFoundError
from vastrpc.api.v1 import common_pb2, control_pb2
from vastrpc.cli.console import (
    console,
    deploy_document,
    deploy_summary,
    duration,
    ls_document,
    print_error,
    render_ls,
    write_log,
)
from vastrpc.deploy.flow import DeployResult

NOW = 1_700_000_000.0


def _listing() -> control_pb2.ListDeploymentsResponse:
    response = control_pb2.ListDeploymentsResponse()
    deployment = response.deployments.add(deployment_id="d-1", name="hello", created_at=NOW - 100)
    endpoint = deployment.endpoints.add(
        endpoint_id="e-1",
        tag="default",
        state=common_pb2.ENDPOINT_STATE_READY,
        revision_id="r-2",
        live_revision_tier=common_pb2.UPDATE_TIER_CODE,
        ttl=600,
        desired_workers=2,
        last_client_seen=NOW - 30,
    )
    endpoint.workers.add(
        worker_id="w-a", revision_id="r-2", state=common_pb2.WORKER_STATE_READY, address="10.0.0.1:5000", score=41.5
    )
    endpoint.workers.add(
        worker_id="w-b",
        revision_id="r-2",
        state=common_pb2.WORKER_STATE_FAILED,
        failure=common_pb2.Failure(step="install", message="no such package"),
    )
    endpoint.worker_activity["w-a"].CopyFrom(
        control_pb2.WorkerActivity(calls_in_flight=3, calls_queued=1, calls_started=9, started_at=NOW - 3725)
    )
    response.deployments.add(deployment_id="d-2", name="empty", created_at=NOW)
    return response


def test_ls_document_has_the_documented_shape() -> None:
    (hello, empty) = ls_document(_listing(), now=NOW)
    assert empty == {"name": "empty", "deployment_id": "d-2", "created_at": NOW, "endpoints": []}
    (endpoint,) = hello["endpoints"]
    assert endpoint["state"] == "ENDPOINT_STATE_READY"
    assert (endpoint["update_tier"], endpoint["update"]) == (2, "code changed — workers load the new bundle")
    # The failed worker serves nothing: not counted in the total, counted on its own.
    assert (endpoint["workers_ready"], endpoint["workers_total"], endpoint["workers_desired"]) == (1, 1, 2)
    assert endpoint["workers_failed"] == 1
    assert (endpoint["ttl_seconds"], endpoint["idle_seconds"]) == (600, 30)
    ready, failed = endpoint["workers"]
    assert ready["state"] == "WORKER_STATE_READY" and ready["score"] == 41.5
    assert (ready["calls_in_flight"], ready["calls_queued"], ready["calls_started"]) == (3, 1, 9)
    assert ready["uptime_seconds"] == 3725 and ready["failure"] is None
    assert failed["failure"] == {"step": "install", "message": "no such package", "log_tail": ""}
    assert failed["uptime_seconds"] is None  # failed: no uptime (and never a made-up zero)
    json.dumps(hello)  # plain JSON types only


def test_ls_tables_show_every_column_on_one_line_per_row() -> None:
    out = io.StringIO()
    render_ls(console(out, terminal=False), ls_document(_listing(), now=NOW))
    text = out.getvalue()
    assert "\x1b[" not in text  # not a terminal: no escape codes
    rows: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip():
            rows.setdefault(line.split()[0], line)  # the table row, not the failure line below
    assert rows["hello:default"].split()[1:] == [
        "ready",
        "r-2",
        "2",
        "code",
        "changed",
        "1/1",
        "ready",
        "(want",
        "2),",
        "1",
        "failed",
        "10m00s",
        "30s",
        "e-1",
    ]
    assert rows["w-a"].split() == [
        "w-a",
        "hello:default",
        "ready",
        "r-2",
        "10.0.0.1:5000",
        "41.5/s",
        "3",
        "(1",
        "queued)",
        "1h02m",
    ]
    assert rows["w-b"].split()[:3] == ["w-b", "hello:default", "failed"]
    assert "no endpoints" in rows["empty"]
    assert "w-b failed at install: no such package" in text


def test_ls_prints_each_failure_once_in_one_line_and_none_after_teardown() -> None:
    listing = _listing()
    endpoint = listing.deployments[0].endpoints[0]
    trace = 'Traceback (most recent call last):\n  File "app.py", line 3\nOSError: gone'
    failure = common_pb2.Failure(step="contexts", message=f"W.__aenter__ raised OSError: gone\n{trace}")
    endpoint.state = common_pb2.ENDPOINT_STATE_FAILED
    endpoint.failure.CopyFrom(failure)
    endpoint.workers[1].failure.CopyFrom(failure)

    def rendered() -> str:
        out = io.StringIO()
        render_ls(console(out, terminal=False), ls_document(listing, now=NOW))
        return out.getvalue()

    text = rendered()
    assert "hello:default failed at contexts: W.__aenter__ raised OSError: gone" in text
    assert text.count("raised OSError") == 1  # the worker's identical failure is not repeated
    assert "Traceback" not in text  # tracebacks are in `vastrpc logs`

    endpoint.state = common_pb2.ENDPOINT_STATE_WAITING
    endpoint.failure.CopyFrom(common_pb2.Failure(step="placement", message="no node meets gpu_name == 'H200'"))
    assert "hello:default waits for capacity since placement: no node meets gpu_name == 'H200'" in rendered()

    endpoint.state = common_pb2.ENDPOINT_STATE_STOPPED
    endpoint.desired_workers = 1
    del endpoint.workers[:]
    text = rendered()
    assert "failed at" not in text  # a torn-down endpoint's old failure is history
    assert "0/0 ready" in text and "want" not in text


def test_ls_shows_each_workers_published_ports_in_json_and_a_ports_column() -> None:
    listing = _listing()
    worker = listing.deployments[0].endpoints[0].workers[0]
    worker.published_ports.add(port=8080, protocol=common_pb2.PORT_PROTOCOL_TCP, address="10.0.0.1:41234")
    worker.published_ports.add(port=53, protocol=common_pb2.PORT_PROTOCOL_UDP, address="10.0.0.1:41235")
    (hello, _) = ls_document(listing, now=NOW)
    ready, failed = hello["endpoints"][0]["workers"]
    assert ready["published_ports"] == [
        {"port": 8080, "protocol": "tcp", "address": "10.0.0.1:41234"},
        {"port": 53, "protocol": "udp", "address": "10.0.0.1:41235"},
    ]
    assert failed["published_ports"] == []
    out = io.StringIO()
    render_ls(console(out, terminal=False), [hello])
    header = next(line for line in out.getvalue().splitlines() if line.split()[:1] == ["WORKER"])
    assert header.split()[-1] == "PORTS"
    row = next(line for line in out.getvalue().splitlines() if line.split()[:1] == ["w-a"])
    assert row.split()[-4:] == ["8080/tcp", "10.0.0.1:41234,", "53/udp", "10.0.0.1:41235"]
    # No worker publishes a port: no PORTS column (test_ls_tables_show_every_column_on_one_line_per_row).


def test_duration() -> None:
    assert [duration(s) for s in (None, -1, 0, 59.9, 61, 3600 * 5 + 120, 86400 * 2 + 3600 * 4)] == [
        "-",
        "-",
        "0s",
        "59s",
        "1m01s",
        "5h02m",
        "2d04h",
    ]


def test_deploy_summary_and_document() -> None:
    result = DeployResult(
        2, "code changed — workers load the new bundle", "d-1", "e-1", "r-2", "ab" * 32, True, 0, 2, 1.5
    )
    out = io.StringIO()
    deploy_summary(console(out, terminal=False), "hello", "default", result)
    assert out.getvalue().splitlines()[:3] == [
        "hello:default ready — tier 2 (code changed — workers load the new bundle)",
        "  endpoint e-1",
        "  revision r-2",
    ]
    document = deploy_document("hello", "default", result)
    assert document["tier"] == 2 and document["ready_workers"] == 2 and document["name"] == "hello"


def test_errors_are_one_line_and_json_on_request(capsys: pytest.CaptureFixture[str]) -> None:
    print_error(NotFoundError("no worker 'w-1'"), 4, json_output=True)
    captured = capsys.readouterr()
    assert captured.err == "error: no worker 'w-1'\n"
    assert json.loads(captured.out) == {"error": {"code": 4, "type": "NotFoundError", "message": "no worker 'w-1'"}}

    print_error(
        DeploymentError("exited with code 7", step="startup", log_tail="line one\nline two\n"), 1, json_output=False
    )
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "error: startup failed: exited with code 7",
        "worker log (tail):",
        "  line one",
        "  line two",
    ]


def test_write_log(capsys: pytest.CaptureFixture[str]) -> None:
    write_log("w-a", "one\ntwo\n", prefixed=False, as_json=False, color=False)
    write_log("w-a", "three\nno newline", prefixed=True, as_json=False, color=False)
    write_log("w-b", "four\n", prefixed=True, as_json=True, color=False)
    assert capsys.readouterr().out.splitlines() == [
        "one",
        "two",
        "w-a | three",
        "w-a | no newline",
        '{"worker_id": "w-b", "line": "four"}',
    ]
