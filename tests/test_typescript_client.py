"""The TypeScript client (client/) built with npm and run with node against a real control service and workers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from vastrpc import DeploymentError

pytestmark = pytest.mark.e2e

CLIENT = Path(__file__).resolve().parent.parent / "client"
MUTUAL_AUTO = {"args": ["--tls", "auto", "--tls-require-client-cert"]}

FUNCTIONS = """
import asyncio
from vastrpc import Deployment

app = Deployment(name="{name}")
app.configure_autoscaling(min_workers=2, max_workers=2)

@app.remote(benchmark_dataset=[{{"a": 1, "b": 2}}])
async def add(a, b):
    return a + b

@app.remote()
async def describe(d: dict) -> dict:
    return {{"keys": sorted(d), "count": len(d), "echo": d}}

@app.remote()
async def greet(name: str, *, greeting: str = "hello") -> str:
    return f"{{greeting}}, {{name}}!"

@app.remote()
async def nothing() -> None:
    return None

@app.remote()
async def length(text: str) -> int:
    return len(text)

@app.remote()
async def fail(message: str) -> None:
    raise ValueError(message)

@app.remote()
async def slow(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds

@app.remote()
async def count(n: int):
    for i in range(n):
        yield i
"""

SQUARE = """
from vastrpc import Deployment

app = Deployment(name="{name}")

@app.remote(benchmark_dataset=[{{"x": 2}}])
async def square(x: int) -> int:
    return x * x
"""


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=CLIENT, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, with client/ installed (npm ci, unless CI did) and built (npm run build)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed (CI installs the TypeScript client with them)")
    if not (CLIENT / "node_modules").is_dir():
        installed = _run([npm, "ci", "--no-audit", "--no-fund"], timeout=600)
        assert installed.returncode == 0, installed.stdout + installed.stderr
    built = _run([npm, "run", "build"], timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    return node


def _env(control_service: Any, *, tls: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VASTRPC_")}
    env["VASTRPC_CONTROL_ADDRESS"] = control_service.address
    env["VASTRPC_API_KEY"] = control_service.api_key
    files = control_service.tls
    if tls and files is not None:
        env["VASTRPC_TLS_CA"] = str(files.ca_file)
        if files.cert_file is not None and files.key_file is not None:
            env["VASTRPC_TLS_CERT"], env["VASTRPC_TLS_KEY"] = str(files.cert_file), str(files.key_file)
    return env


async def _node(node: str, script: str, args: list[str], env: dict[str, str], stdin: str = "") -> tuple[int, str, str]:
    """Run ``client/dist/<script>`` without blocking the event loop (the fixtures share it)."""
    process = await asyncio.create_subprocess_exec(
        node,
        str(CLIENT / "dist" / script),
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _run_calls(
    node: str, env: dict[str, str], deployment: str, calls: list[dict[str, Any]], *flags: str
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Results of ``run-calls.js`` in call order, and the calls its router sent to each worker."""
    code, out, err = await _node(node, "run-calls.js", [deployment, *flags], env, json.dumps(calls))
    assert code == 0, err
    *results, workers = [json.loads(line) for line in out.splitlines()]
    assert [r["index"] for r in results] == list(range(len(calls)))
    return results, {w["worker_id"]: w["calls"] for w in workers["workers"]}


@pytest.mark.timeout(300)
async def test_json_calls_errors_and_both_workers(node, project, control_service) -> None:
    mod = project(FUNCTIONS)
    await mod.app.ensure_ready()
    for _ in range(100):  # ensure_ready returns once the endpoint is ready: wait for the second worker too
        workers = await project.workers(mod.app)
        if len(workers) == 2 and all(w["state"] == "READY" for w in workers):
            break
        await asyncio.sleep(0.1)
    worker_ids = {w["worker_id"] for w in workers}
    assert len(worker_ids) == 2
    env = _env(control_service)
    nested = {"list": [1, 2.5, "three", None, True, {"deep": ["x"]}], "unicode": "héllo ✓", "empty": {}}
    big = "x" * (3 << 20)  # three 1 MiB chunks and a bit: CallStart plus CallData messages
    calls = [
        {"function": "add", "args": [2, 3]},
        {"function": "add", "args": [0.5, 0.25]},
        {"function": "add", "args": ["ab", "cd"]},
        {"function": "add", "args": [[1, 2], [3]]},
        {"function": "describe", "args": [nested]},
        {"function": "greet", "args": ["Ada"]},
        {"function": "greet", "args": ["Ada"], "kwargs": {"greeting": "bonjour"}},
        {"function": "nothing"},
        {"function": "length", "args": [big + "é"]},
        {"function": "fail", "args": ["bad input 42"]},
        {"function": "no_such_function"},
        {"function": "add", "args": [1]},
        {"function": "slow", "args": [30], "timeout": 0.5},
        {"function": "count", "args": [3]},
        {"function": "add", "args": [40, 2]},
    ]
    started = time.monotonic()
    results, routed = await _run_calls(node, env, mod.app.name, calls)
    ok = [r for r in results if r["ok"]]
    assert [r["value"] for r in ok] == [
        5,
        0.75,
        "abcd",
        [1, 2, 3],
        {"keys": ["empty", "list", "unicode"], "count": 3, "echo": nested},
        "hello, Ada!",
        "bonjour, Ada!",
        None,
        len(big) + 1,
        42,
    ]
    # Results say which real worker and revision served them; one call at a time alternates between the two.
    assert {r["worker_id"] for r in ok} == worker_ids
    assert {r["revision_id"] for r in ok} == {(await project.endpoint(mod.app))["revision_id"]}
    assert [r["worker_id"] for r in results[:2]] == sorted(worker_ids)
    assert set(routed) == worker_ids and sum(routed.values()) == len(calls)

    errors = {r["index"]: r["error"] for r in results if not r["ok"]}
    assert sorted(errors) == [9, 10, 11, 12, 13]
    raised = errors[9]  # fail("bad input 42")
    assert raised["name"] == "RemoteError" and raised["type"] == "ValueError"
    assert raised["remote_message"] == "bad input 42" and raised["message"] == "ValueError: bad input 42"
    assert "Traceback (most recent call last)" in raised["traceback"]
    assert "raise ValueError(message)" in raised["traceback"]
    assert errors[10]["name"] == "FunctionNotFoundError" and "no_such_function" in errors[10]["message"]
    assert errors[11]["name"] == "RemoteError" and errors[11]["type"] == "TypeError"  # add(1): a missing argument
    assert errors[12]["name"] == "CallTimeoutError"
    assert errors[13]["name"] == "CallError" and "async generator" in errors[13]["message"]
    assert time.monotonic() - started < 30  # the timed-out call did not wait its 30 s

    # Sixteen calls with eight in flight: fewest-in-flight routing spreads them over both workers.
    spread = [{"function": "slow", "args": [0.3]} for _ in range(16)]
    results, routed = await _run_calls(node, env, mod.app.name, spread, "--concurrency", "8")
    assert all(r["ok"] and r["value"] == 0.3 for r in results)
    served = [r["worker_id"] for r in results]
    assert {w: served.count(w) for w in worker_ids} == routed
    assert all(n >= 5 for n in routed.values()), routed

    # The example script: one call, its result on stdout; a remote exception on stderr, exit 1.
    code, out, err = await _node(node, "example.js", [mod.app.name, "add", "[20, 22]"], env)
    assert (code, out) == (0, "42\n"), err
    code, out, err = await _node(node, "example.js", [mod.app.name, "fail", '["oops"]'], env)
    assert code == 1 and out == ""
    assert "fail raised ValueError: oops" in err and "Traceback (most recent call last)" in err


async def test_unknown_deployment_and_no_ready_worker_are_clear_errors(node, project, control_service) -> None:
    env = _env(control_service)
    code, _, err = await _node(node, "example.js", ["no-such-deployment", "f"], env)
    assert code == 1 and "NotFoundError" in err and "no deployment named no-such-deployment" in err

    wrong_key = {**env, "VASTRPC_API_KEY": "not-the-key"}
    code, _, err = await _node(node, "example.js", ["anything", "f"], wrong_key)
    assert code == 1 and "AuthenticationError" in err

    # A worker stuck in its startup script: the endpoint exists, no worker is ready.
    mod = project(SQUARE + '\napp.image(startup_timeout=8).run_script("sleep 600")\n')
    deploying = asyncio.create_task(mod.app.ensure_ready())
    try:
        for _ in range(200):
            try:
                await project.endpoint(mod.app)
                break
            except ValueError:  # not registered yet
                await asyncio.sleep(0.05)
        started = time.monotonic()
        results, routed = await _run_calls(
            node, env, mod.app.name, [{"function": "square", "args": [3]}], "--ready-timeout", "1.5"
        )
        waited = time.monotonic() - started
        (result,) = results
        assert not result["ok"] and result["error"]["name"] == "NoReadyWorkerError"
        assert f"no ready worker on {mod.app.name}/default" in result["error"]["message"]
        assert "after 1.5s" in result["error"]["message"]
        assert routed == {}
        assert 1.5 <= waited < 20
    finally:
        with pytest.raises(DeploymentError, match="timed out"):
            await deploying


@pytest.mark.timeout(180)
@pytest.mark.parametrize("control_service", [MUTUAL_AUTO], indirect=True)
async def test_mutual_tls_to_control_service_and_worker(node, project, control_service) -> None:
    assert control_service.tls is not None and control_service.tls.cert_file is not None
    mod = project(SQUARE)
    await mod.app.ensure_ready()
    code, out, err = await _node(node, "example.js", [mod.app.name, "square", "[12]"], _env(control_service))
    assert (code, out) == (0, "144\n"), err
    # Plaintext to a TLS service: refused with a clear error, not a hang.
    code, out, err = await _node(node, "example.js", [mod.app.name, "square", "[12]"], _env(control_service, tls=False))
    assert code == 1 and out == "" and "ControlUnavailableError" in err, err
