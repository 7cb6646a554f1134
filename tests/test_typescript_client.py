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
from vastrpc._tls import ensure_local_ca

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


STREAMS = """
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from vastrpc import Deployment

app = Deployment(name="{name}")
app.configure_autoscaling(min_workers=2, max_workers=2)

@app.remote()
async def ticks(n: int, delay: float, record: str = ""):
    # How it ended goes to the file `record`: the workers share this machine's disk.
    produced, how = 0, "running"
    try:
        for i in range(n):
            if i:
                await asyncio.sleep(delay)
            print(f"tick {{i}}")
            produced += 1
            yield {{"i": i, "at": time.time()}}
        how = "finished"
    except asyncio.CancelledError:
        how = "cancelled"
        raise
    finally:
        if record:  # written whole, then renamed: record_of never reads half a file
            Path(record + ".tmp").write_text(json.dumps({{"produced": produced, "how": how, "at": time.time()}}))
            os.replace(record + ".tmp", record)

@app.remote()
async def record_of(path: str, wait: float):
    deadline = time.monotonic() + wait
    while not os.path.exists(path) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return json.loads(Path(path).read_text()) if os.path.exists(path) else None

@app.remote()
async def raising(n: int):
    for i in range(n):
        yield i
    raise ValueError(f"stopped after {{n}} values")

@app.remote()
async def empty():
    return
    yield

@app.remote(benchmark_dataset=[{{"x": 1}}])
async def plain(x: int) -> int:
    return x + 1

@app.remote()
async def shout(text: str) -> str:
    print(text)
    print("careful", file=sys.stderr)
    return text.upper()

@app.remote(max_concurrency=1, max_queue=0)
async def exclusive(n: int, delay: float):
    # One call at a time per worker, none queued: a second is refused (OVERLOADED) before it runs.
    for _ in range(n):
        yield os.getppid()  # the worker agent's pid, as the control service lists it
        await asyncio.sleep(delay)
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


async def _two_ready_workers(project: Any, app: Any) -> list[dict[str, Any]]:
    """Both workers of ``app``, ready: ensure_ready returns once the endpoint is, so wait for the second."""
    for _ in range(100):
        workers = await project.workers(app)
        if len(workers) == 2 and all(w["state"] == "READY" for w in workers):
            break
        await asyncio.sleep(0.1)
    assert len(workers) == 2 and all(w["state"] == "READY" for w in workers), workers
    return workers


async def _stream(node: str, env: dict[str, str], *args: str) -> tuple[int, list[dict[str, Any]]]:
    """The exit status of ``stream.js`` and its JSON lines."""
    code, out, err = await _node(node, "stream.js", list(args), env)
    assert err == "", err
    return code, [json.loads(line) for line in out.splitlines()]


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
    worker_ids = {w["worker_id"] for w in await _two_ready_workers(project, mod.app)}
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
    assert "endpoint.stream()" in errors[13]["message"]  # says what to use instead
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

    # Several control addresses: a dead first one is passed over; none answering says what to do.
    dead_first = {**env, "VASTRPC_CONTROL_ADDRESS": f"127.0.0.1:1,{control_service.address}"}
    code, _, err = await _node(node, "example.js", ["no-such-deployment", "f"], dead_first)
    assert code == 1 and "no deployment named no-such-deployment" in err, err
    code, _, err = await _node(node, "example.js", ["anything", "f"], {**env, "VASTRPC_CONTROL_ADDRESS": "127.0.0.1:1"})
    assert code == 1 and "ControlUnavailableError" in err and "127.0.0.1:1,OTHER_HOST:PORT" in err, err

    wrong_key = {**env, "VASTRPC_API_KEY": "not-the-key"}
    code, _, err = await _node(node, "example.js", ["anything", "f"], wrong_key)
    assert code == 1 and "AuthenticationError" in err

    # A worker stuck in its startup script: the endpoint exists, no worker is ready.
    mod = project(SQUARE + '\napp.image("python:3.11-slim", startup_timeout=8).run_script("sleep 600")\n')
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
        # A call's timeout bounds its wait for a ready worker too.
        started = time.monotonic()
        results, _ = await _run_calls(node, env, mod.app.name, [{"function": "square", "args": [3], "timeout": 1}])
        (result,) = results
        assert not result["ok"] and result["error"]["name"] == "NoReadyWorkerError", result
        assert time.monotonic() - started < 20
        assert "after 1s" in result["error"]["message"]
    finally:
        with pytest.raises(DeploymentError, match="timed out"):
            await deploying


@pytest.mark.timeout(180)
@pytest.mark.parametrize("control_service", [MUTUAL_AUTO], indirect=True)
async def test_mutual_tls_to_control_service_and_worker(node, project, control_service, tmp_path) -> None:
    assert control_service.tls is not None and control_service.tls.cert_file is not None
    mod = project(SQUARE)
    await mod.app.ensure_ready()
    code, out, err = await _node(node, "example.js", [mod.app.name, "square", "[12]"], _env(control_service))
    assert (code, out) == (0, "144\n"), err
    # TLS to an IP address without Node's DEP0123 warning on every run (no IP as the server name)...
    assert "DeprecationWarning" not in err and "DEP0123" not in err, err
    # ...and the certificate is still verified: a CA that did not sign it is refused.
    other_ca, _ = ensure_local_ca(tmp_path / "other-ca")
    code, out, err = await _node(
        node, "example.js", [mod.app.name, "square", "[12]"], {**_env(control_service), "VASTRPC_TLS_CA": str(other_ca)}
    )
    assert code == 1 and out == "" and "ControlUnavailableError" in err, err
    # Plaintext to a TLS service: refused with a clear error, not a hang.
    code, out, err = await _node(node, "example.js", [mod.app.name, "square", "[12]"], _env(control_service, tls=False))
    assert code == 1 and out == "" and "ControlUnavailableError" in err, err


@pytest.mark.timeout(300)
async def test_streaming_async_generators(node, project, control_service, tmp_path) -> None:
    mod = project(STREAMS)
    await mod.app.ensure_ready()
    workers = await _two_ready_workers(project, mod.app)
    env = _env(control_service)
    name = mod.app.name

    # Values in order, each one as the generator yields it (0.5 s apart), its output before it.
    code, lines = await _stream(node, env, name, "ticks", "[4, 0.5]", "--logs")
    assert code == 0, lines
    values = [line for line in lines if "value" in line]
    assert [v["value"]["i"] for v in values] == [0, 1, 2, 3]
    produced = [v["value"]["at"] for v in values]
    received = [v["received_at"] for v in values]
    assert received[0] < produced[3] and received[1] < produced[3], (received, produced)  # not all at the end
    assert received[3] - received[0] >= 1.2
    assert lines[-2:-1] == [{"end": "done", "values": 4}] and "workers" in lines[-1]
    logged = ""
    for line in lines:
        if "log" in line:
            assert line["log"] == "stdout"
            logged += line["text"]
        elif "value" in line:
            assert logged.endswith(f"tick {line['value']['i']}\n"), logged
    assert logged == "tick 0\ntick 1\ntick 2\ntick 3\n"

    # Leaving the loop early cancels the generator on the worker (its finally runs), over the stream
    # that stays open: --then calls record_of on the same connections before the client closes.
    record = str(tmp_path / "ticks.json")
    code, lines = await _stream(
        node,
        env,
        name,
        "ticks",
        json.dumps([40, 0.5, record]),
        "--take",
        "2",
        "--then",
        "record_of",
        f'["{record}", 15]',
    )
    assert code == 0, lines
    assert [line["value"]["i"] for line in lines if "value" in line] == [0, 1]
    (stopped,) = [line for line in lines if "end" in line]
    (then,) = [line["then"] for line in lines if "then" in line]
    assert stopped["end"] == "stopped" and stopped["values"] == 2
    assert then is not None, "the generator was not stopped: it would have run for 20 s"
    assert then["how"] == "cancelled" and then["produced"] <= 3, then
    assert then["at"] - stopped["at"] < 5, (then, stopped)

    # A generator that raises: its values, then RemoteError from the iterator.
    code, lines = await _stream(node, env, name, "raising", "[3]")
    assert code == 1
    assert [line["value"] for line in lines if "value" in line] == [0, 1, 2]
    (failed,) = [line for line in lines if "error" in line]
    error = failed["error"]
    assert failed["values"] == 3 and error["name"] == "RemoteError" and error["type"] == "ValueError"
    assert error["remote_message"] == "stopped after 3 values"
    assert 'raise ValueError(f"stopped after {n} values")' in error["traceback"]

    # An empty generator ends at once; a plain function is refused, pointing to call().
    code, lines = await _stream(node, env, name, "empty")
    assert code == 0 and lines[0] == {"end": "done", "values": 0}
    code, lines = await _stream(node, env, name, "plain", "[1]")
    assert code == 1 and lines[0]["error"]["name"] == "CallError"
    assert "not an async generator" in lines[0]["error"]["message"] and "call()" in lines[0]["error"]["message"]

    # A plain call's output reaches onLog too, and only when asked for.
    results, _ = await _run_calls(
        node, env, name, [{"function": "shout", "args": ["hi"], "logs": True}, {"function": "shout", "args": ["x"]}]
    )
    assert results[0]["value"] == "HI" and results[0]["logs"] == [["stdout", "hi\n"], ["stderr", "careful\n"]]
    assert results[1]["value"] == "X" and "logs" not in results[1]

    # The timeout bounds the whole call, values included.
    started = time.monotonic()
    code, lines = await _stream(node, env, name, "ticks", "[40, 0.5]", "--timeout", "1.2")
    assert code == 1 and lines[-1]["error"]["name"] == "CallTimeoutError", lines
    assert 1 <= lines[-1]["values"] <= 4
    assert time.monotonic() - started < 15

    # A call refused before its first value goes to the other worker. The Python client holds the only
    # slot of the worker this client tries first (the lowest id), so that worker refuses it (OVERLOADED).
    first, second = workers
    held = []
    try:
        for _ in range(2):
            values_iter = mod.exclusive.stream(1000, 0.2)
            held.append(values_iter)
            if await anext(values_iter) == first["pid"]:
                break
        else:
            pytest.fail(f"neither Python stream ran on {first['worker_id']}")
        if len(held) == 2:  # the first ran on the second worker: free that worker again
            await held[0].aclose()
            await asyncio.sleep(1)  # its CallCancel reaches the worker, which releases the slot
        code, lines = await _stream(node, env, name, "exclusive", "[3, 0.05]")
    finally:
        for values_iter in held:
            await values_iter.aclose()
    assert code == 0, lines
    assert [line["value"] for line in lines if "value" in line] == [second["pid"]] * 3
    assert {w["worker_id"]: w["calls"] for w in lines[-1]["workers"]} == {
        first["worker_id"]: 1,
        second["worker_id"]: 1,
    }
