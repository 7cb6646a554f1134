"""The ``vastrpc`` command line, run as a real process against a real control service."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from vastrpc._grpc import bearer
from vastrpc.api.v1 import common_pb2, control_pb2, control_pb2_grpc

pytestmark = pytest.mark.timeout(60)

REPO_ROOT = Path(__file__).resolve().parent.parent
FAKE_WORKER = [sys.executable, str(REPO_ROOT / "tests" / "control" / "fake_worker.py")]


def vastrpc(*args: str, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m vastrpc ARGS`` with ``home`` as its VASTRPC_HOME."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VASTRPC_")}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    full_env["VASTRPC_HOME"] = str(home)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "vastrpc", *args], capture_output=True, text=True, env=full_env, timeout=45
    )


def deploy_fake(address: str, api_key: str, name: str = "hello") -> str:
    """Deploy one fake worker the way ensure_ready would; returns the worker id once it is ready."""
    data = b"print('hi')"
    digest = hashlib.sha256(data).hexdigest()
    spec = control_pb2.DeploymentSpec(
        name=name,
        tag="default",
        module="deploy",
        autoscaling=control_pb2.AutoscalingSpec(min_workers=1, max_workers=1),
        functions=[control_pb2.FunctionSpec(name="square", has_benchmark=True)],
        digests=control_pb2.RevisionDigests(bundle=digest, code="c", environment="e", autoscaling="a"),
    )
    metadata = bearer(api_key)
    with grpc.insecure_channel(address) as channel:
        stub = control_pb2_grpc.ControlServiceStub(channel)
        reg = stub.RegisterDeployment(control_pb2.RegisterDeploymentRequest(spec=spec), metadata=metadata, timeout=10)
        header = control_pb2.UploadBundleRequest.Header(digest=digest, size=len(data))
        parts = [control_pb2.UploadBundleRequest(header=header), control_pb2.UploadBundleRequest(chunk=data)]
        stub.UploadBundle(iter(parts), metadata=metadata, timeout=10)
        stub.Provision(
            control_pb2.ProvisionRequest(endpoint_id=reg.endpoint_id, revision_id=reg.revision_id),
            metadata=metadata,
            timeout=10,
        )
        watch = stub.WatchEndpoint(
            control_pb2.WatchEndpointRequest(endpoint_id=reg.endpoint_id), metadata=metadata, timeout=20
        )
        for update in watch:
            if update.state == common_pb2.ENDPOINT_STATE_READY:
                watch.cancel()
                return update.workers[0].worker_id
    raise AssertionError("the fake worker never became ready")


def test_status_and_ls_without_a_service(tmp_path) -> None:
    home = tmp_path / "home"
    status = vastrpc("control", "status", home=home)
    assert status.returncode == 1 and "not running" in status.stdout
    for args in (("ls",), ("logs", "w-1"), ("teardown", "hello")):
        result = vastrpc(*args, home=home)
        assert result.returncode == 1, args
        assert result.stderr.strip() == f"error: no control service is running under {home}"
    assert not (home / "control.json").exists()  # looking never starts one
    stop = vastrpc("control", "stop", home=home)
    assert stop.returncode == 0 and "no control service is running" in stop.stdout


def test_usage_errors_exit_2(tmp_path) -> None:
    for args in ((), ("teardown",), ("bogus",), ("logs", "w-1", "--tail", "x")):
        result = vastrpc(*args, home=tmp_path)
        assert result.returncode == 2, args
        assert "usage:" in result.stderr


@pytest.mark.parametrize("control_service", [{"worker_command": FAKE_WORKER}], indirect=True)
def test_ls_logs_teardown_against_the_embedded_service(control_service) -> None:
    home = control_service.home
    status = vastrpc("control", "status", home=home)
    assert status.returncode == 0 and control_service.address in status.stdout

    empty = vastrpc("ls", home=home)
    assert (empty.returncode, empty.stdout.strip()) == (0, "no deployments")
    worker_id = deploy_fake(control_service.address, control_service.api_key)

    listing = vastrpc("ls", home=home)
    assert listing.returncode == 0, listing.stderr
    assert "hello:default  ready" in listing.stdout and f"{worker_id}  ready" in listing.stdout
    as_json = json.loads(vastrpc("ls", "--json", "hello", home=home).stdout)
    assert as_json[0]["name"] == "hello" and as_json[0]["endpoints"][0]["state"] == "ENDPOINT_STATE_READY"
    missing = vastrpc("ls", "other", home=home)
    assert missing.returncode == 1 and "no deployment named 'other'" in missing.stderr

    logs = vastrpc("logs", worker_id, "--tail", "1", home=home)
    assert (logs.returncode, logs.stdout) == (0, "ready\n")
    assert f"fake worker {worker_id}" in vastrpc("logs", worker_id, home=home).stdout
    unknown = vastrpc("logs", "w-000000000000", home=home)
    assert unknown.returncode == 1 and unknown.stderr.startswith("error: no worker")

    down = vastrpc("teardown", "hello", home=home)
    assert down.returncode == 0 and "1 endpoint(s) removed, 1 worker(s) stopped" in down.stdout
    again = vastrpc("teardown", "hello", home=home)
    assert again.returncode == 0 and "0 endpoint(s) removed, 0 worker(s) stopped" in again.stdout
    nope = vastrpc("teardown", "nope", home=home)
    assert nope.returncode == 1 and nope.stderr.strip() == "error: no deployment named 'nope'"
    assert "Traceback" not in nope.stderr


def test_explicit_address_and_key(control_service, tmp_path) -> None:
    elsewhere = tmp_path / "unused-home"
    ok = vastrpc("ls", "--control", control_service.address, "--api-key", control_service.api_key, home=elsewhere)
    assert ok.returncode == 0 and "no deployments" in ok.stdout
    by_env = vastrpc(
        "ls",
        home=elsewhere,
        env={"VASTRPC_CONTROL_ADDRESS": control_service.address, "VASTRPC_API_KEY": control_service.api_key},
    )
    assert by_env.returncode == 0
    wrong = vastrpc("ls", "--control", control_service.address, "--api-key", "wrong", home=elsewhere)
    assert wrong.returncode == 1 and wrong.stderr.startswith("error:") and len(wrong.stderr.strip().splitlines()) == 1
    no_key = vastrpc("ls", "--control", control_service.address, home=elsewhere)
    assert no_key.returncode == 1 and "no API key" in no_key.stderr


def test_control_stop(control_service) -> None:
    stop = vastrpc("control", "stop", home=control_service.home)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert control_service.process.wait(timeout=10) == 0
    deadline = time.monotonic() + 5
    while (control_service.home / "control.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (control_service.home / "control.json").exists()
    assert vastrpc("control", "status", home=control_service.home).returncode == 1
