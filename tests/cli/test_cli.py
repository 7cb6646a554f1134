"""The ``vastrpc`` command line, run as a real process against a real control service."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import grpc
import pytest

from vastrpc._grpc import bearer
from vastrpc._manifest import FileEntry, encode_manifest
from vastrpc.api.v1 import common_pb2, control_pb2, control_pb2_grpc

pytestmark = pytest.mark.timeout(60)

REPO_ROOT = Path(__file__).resolve().parents[2]
FAKE_WORKER = [sys.executable, str(REPO_ROOT / "tests" / "control" / "fake_worker.py")]


def cli_env(home: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``python -m vastrpc`` process: no VASTRPC_* but ``home`` and ``env``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VASTRPC_")}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    full_env["VASTRPC_HOME"] = str(home)
    full_env.update(env or {})
    return full_env


# ``python -m vastrpc`` with Ctrl-C's default, as at a terminal. A suite started in the background
# (``cmd &`` in a script) has SIGINT ignored, which its children inherit, and Python then installs
# no KeyboardInterrupt handler: the CLI would never see the test's SIGINT. Set in the child by
# the interpreter itself, not a ``preexec_fn``: that runs Python between fork and exec, which
# can deadlock when the test process has threads (gRPC's), and then the CLI never starts.
_INTERRUPTIBLE_CLI = [
    sys.executable,
    "-c",
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('vastrpc', run_name='__main__', alter_sys=True)",
]


def vastrpc(
    *args: str, home: Path, env: dict[str, str] | None = None, timeout: float = 45
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m vastrpc ARGS`` with ``home`` as its VASTRPC_HOME."""
    return subprocess.run(
        [sys.executable, "-m", "vastrpc", *args],
        capture_output=True,
        text=True,
        env=cli_env(home, env),
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def deploy_fake(address: str, api_key: str, name: str = "hello") -> str:
    """Deploy one fake worker the way ensure_ready would; returns the worker id once it is ready."""
    content = b"print('hi')"
    manifest = encode_manifest([FileEntry("deploy.py", 0o644, len(content), hashlib.sha256(content).hexdigest())])
    data, digest = manifest.data, manifest.digest
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
        for method, message, digest_of, payload in (
            (stub.UploadFiles, control_pb2.UploadFilesRequest, manifest.files[0].sha256, content),
            (stub.UploadBundle, control_pb2.UploadBundleRequest, digest, data),
        ):
            header = message.Header(digest=digest_of, size=len(payload))
            method(iter([message(header=header), message(chunk=payload)]), metadata=metadata, timeout=10)
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
    assert status.returncode == 3 and "not running" in status.stdout
    assert json.loads(vastrpc("control", "status", "--json", home=home).stdout) == {"running": False, "home": str(home)}
    for args in (("ls",), ("logs", "w-1"), ("teardown", "hello")):
        result = vastrpc(*args, home=home)
        assert result.returncode == 3, args
        assert result.stderr.strip() == (
            f"error: no control service is running under {home}: start one (`vastrpc control serve --home {home}`), "
            "or name a running one with --control HOST:PORT (or VASTRPC_CONTROL_ADDRESS)"
        )
    assert not (home / "control.json").exists()  # looking never starts one
    stop = vastrpc("control", "stop", home=home)
    assert stop.returncode == 0 and "no control service is running" in stop.stdout


def test_usage_errors_exit_2(tmp_path) -> None:
    for args in (
        (),
        ("teardown",),
        ("bogus",),
        ("logs", "w-1", "--tail", "x"),
        ("logs", "w-1", "--tail", "-1"),
        ("logs",),
        ("deploy",),
        ("ls", "--bogus"),
        ("deploy", "x.py", "--progress", "sometimes"),
        ("ls", "--tls-cert", "c.pem"),  # without its key
    ):
        result = vastrpc(*args, home=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert "error:" in result.stderr and "Traceback" not in result.stderr, args


def test_help_documents_the_exit_codes(tmp_path) -> None:
    result = vastrpc("--help", home=tmp_path)
    assert result.returncode == 0
    for line in ("0    success", "2    usage error", "3    the control service cannot be reached", "4    not found"):
        assert line in result.stdout
    assert "130  interrupted" in result.stdout
    assert '"workers_ready"' in vastrpc("ls", "--help", home=tmp_path).stdout  # the JSON shape is documented


@pytest.mark.parametrize("control_service", [{"worker_command": FAKE_WORKER}], indirect=True)
def test_ls_logs_teardown_against_the_embedded_service(control_service) -> None:
    home = control_service.home
    status = vastrpc("control", "status", home=home)
    assert status.returncode == 0 and control_service.address in status.stdout
    as_json = json.loads(vastrpc("control", "status", "--json", home=home).stdout)
    assert as_json["running"] is True and as_json["address"] == control_service.address

    empty = vastrpc("ls", home=home)
    assert (empty.returncode, empty.stdout.strip()) == (0, "no deployments")
    assert json.loads(vastrpc("ls", "--json", home=home).stdout) == []
    worker_id = deploy_fake(control_service.address, control_service.api_key)

    listing = vastrpc("ls", home=home)
    assert listing.returncode == 0, listing.stderr
    endpoint_row = next(line for line in listing.stdout.splitlines() if line.startswith("hello:default"))
    assert re.search(r"hello:default\s+ready\s+r-[0-9a-f]{12}\s+4 new endpoint\s+1/1 ready\s+never", endpoint_row)
    worker_row = next(line for line in listing.stdout.splitlines() if line.startswith(worker_id))
    # The fake worker reports score 12.5 and address 127.0.0.1:9.
    assert re.search(r"hello:default\s+ready\s+r-[0-9a-f]{12}\s+127\.0\.0\.1:9\s+12\.5/s\s+0\s+\d+s", worker_row)

    (deployment,) = json.loads(vastrpc("ls", "--json", "hello", home=home).stdout)
    (endpoint,) = deployment["endpoints"]
    assert deployment["name"] == "hello" and endpoint["state"] == "ENDPOINT_STATE_READY"
    assert (endpoint["workers_ready"], endpoint["workers_total"], endpoint["update_tier"]) == (1, 1, 4)
    (worker,) = endpoint["workers"]
    assert worker["worker_id"] == worker_id and worker["state"] == "WORKER_STATE_READY"
    assert worker["revision_id"] == endpoint["revision_id"] and worker["score"] == 12.5
    assert worker["calls_in_flight"] == 0 and 0 <= worker["uptime_seconds"] < 60

    missing = vastrpc("ls", "other", home=home)
    assert missing.returncode == 4 and missing.stderr.strip() == "error: no deployment named 'other'"
    missing_json = vastrpc("ls", "other", "--json", home=home)
    assert missing_json.returncode == 4
    assert json.loads(missing_json.stdout)["error"] == {
        "code": 4,
        "type": "NotFoundError",
        "message": "no deployment named 'other'",
    }

    logs = vastrpc("logs", worker_id, "--tail", "1", home=home)
    assert (logs.returncode, logs.stdout) == (0, "ready\n")
    assert f"fake worker {worker_id}" in vastrpc("logs", worker_id, home=home).stdout
    by_name = vastrpc("logs", "hello:default", "--tail", "1", home=home)
    assert (by_name.returncode, by_name.stdout) == (0, f"{worker_id} | ready\n")
    lines = [json.loads(line) for line in vastrpc("logs", "hello", "--json", home=home).stdout.splitlines()]
    assert {"worker_id": worker_id, "line": "ready"} in lines
    for target in ("w-000000000000", "nope", "hello:other-tag"):
        unknown = vastrpc("logs", target, home=home)
        assert unknown.returncode == 4, (target, unknown.stderr)
        assert unknown.stderr.startswith("error: ") and len(unknown.stderr.strip().splitlines()) == 1

    down = vastrpc("teardown", "hello", home=home)
    assert down.returncode == 0 and "1 endpoint(s) removed, 1 worker(s) stopped" in down.stdout
    again = vastrpc("teardown", "hello", "--json", home=home)
    assert again.returncode == 0
    assert json.loads(again.stdout) == {"name": "hello", "tag": None, "endpoints_removed": 0, "workers_stopped": 0}
    # A torn-down deployment's logs stay readable: its stopped workers' logs are shown.
    after = vastrpc("logs", "hello", "--tail", "1", home=home)
    assert after.returncode == 0 and after.stdout.startswith(f"{worker_id} | "), after.stdout
    nope = vastrpc("teardown", "nope", home=home)
    assert nope.returncode == 4 and nope.stderr.strip() == "error: no deployment named 'nope'"
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
    assert wrong.returncode == 3 and wrong.stderr.startswith("error:") and len(wrong.stderr.strip().splitlines()) == 1
    assert "refused this client's API key" in wrong.stderr and "VASTRPC_API_KEY" in wrong.stderr
    assert "--api-key" in wrong.stderr and "HOME/api_key" in wrong.stderr
    no_key = vastrpc("ls", "--control", control_service.address, home=elsewhere)
    assert no_key.returncode == 3 and "no API key" in no_key.stderr


def test_unreachable_address_exits_3(tmp_path) -> None:
    for args in (("ls",), ("logs", "w-000000000000"), ("teardown", "x")):
        result = vastrpc(*args, "--control", "127.0.0.1:1", "--api-key", "k", home=tmp_path)
        assert result.returncode == 3, (args, result.stderr)
        assert result.stderr.startswith("error: ") and "127.0.0.1:1" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    as_json = vastrpc("ls", "--json", "--control", "127.0.0.1:1", "--api-key", "k", home=tmp_path)
    error = json.loads(as_json.stdout)["error"]
    assert as_json.returncode == 3 and error["code"] == 3 and error["type"] == "ControlUnavailableError"


def test_several_addresses_use_the_first_that_answers_and_none_answering_says_what_to_do(
    control_service, tmp_path
) -> None:
    key = ("--api-key", control_service.api_key)
    dead = "127.0.0.1:1"
    ok = vastrpc("ls", "--control", f"{dead},{control_service.address}", *key, home=tmp_path)
    assert ok.returncode == 0 and "no deployments" in ok.stdout, ok.stderr
    by_env = vastrpc(
        "ls",
        home=tmp_path,
        env={
            "VASTRPC_CONTROL_ADDRESS": f"{dead}, {control_service.address}",
            "VASTRPC_API_KEY": control_service.api_key,
        },
    )
    assert by_env.returncode == 0, by_env.stderr
    one = vastrpc("ls", "--control", dead, *key, home=tmp_path)
    assert one.returncode == 3 and f"--control {dead},OTHER_HOST:PORT" in one.stderr, one.stderr
    both = vastrpc("ls", "--control", f"{dead},127.0.0.1:2", *key, home=tmp_path)
    assert both.returncode == 3 and "cannot reach any of the control services 127.0.0.1:1, 127.0.0.1:2" in both.stderr
    bad = vastrpc("ls", "--control", "nowhere", *key, home=tmp_path)
    assert bad.returncode != 0 and "'nowhere' is not host:port" in bad.stderr and "Traceback" not in bad.stderr


def test_control_stop(control_service) -> None:
    stop = vastrpc("control", "stop", home=control_service.home)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert control_service.process.wait(timeout=10) == 0
    deadline = time.monotonic() + 5
    while (control_service.home / "control.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (control_service.home / "control.json").exists()
    assert vastrpc("control", "status", home=control_service.home).returncode == 3


# -- end to end: real workers ---------------------------------------------------------------------

PRINTER = """
import logging
from vastrpc import Deployment

app = Deployment(name="{name}")

@app.remote(benchmark_dataset=[{{"text": "bench"}}])
async def shout(text: str) -> str:
    print(f"shout: {{text}}")
    logging.getLogger("printer").warning("logged: %s", text)
    return text.upper()
"""


def _write(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source).format(name=name))
    return path


def _target(control_service) -> dict[str, str]:
    return {"VASTRPC_CONTROL_ADDRESS": control_service.address, "VASTRPC_API_KEY": control_service.api_key}


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_deploy_shows_steps_summary_and_progress_then_ls_lists_real_workers(control_service, tmp_path) -> None:
    path = _write(tmp_path / "proj", "cliapp", PRINTER)
    env = _target(control_service)
    first = vastrpc("deploy", str(path), home=tmp_path / "home", env=env, timeout=150)
    assert first.returncode == 0, first.stderr
    # Not a terminal: one plain line per step on stderr, in order, and no escape codes.
    steps = [line.split(":")[0] for line in first.stderr.splitlines()]
    for step in ("deploy", "package", "hash", "register", "upload", "provision", "workers", "ready"):
        assert step in steps, first.stderr
    assert steps.index("package") < steps.index("upload") < steps.index("provision") < steps.index("ready")
    assert "workers: 1/1 ready" in first.stderr and "\x1b[" not in first.stderr
    assert re.search(r"^upload: \d+ changed files \(\d+ bytes\) streamed", first.stderr, re.MULTILINE), first.stderr
    # The summary on stdout: tier in words, endpoint, revision, workers.
    assert "cliapp:default ready — tier 4 (new endpoint — fresh workers)" in first.stdout
    endpoint_id = re.search(r"endpoint (e-[0-9a-f]{12})", first.stdout).group(1)  # type: ignore[union-attr]
    revision_id = re.search(r"revision (r-[0-9a-f]{12})", first.stdout).group(1)  # type: ignore[union-attr]
    assert "workers  1 ready, 1 started by this deploy" in first.stdout

    listing = vastrpc("ls", "cliapp", home=tmp_path / "home", env=env)
    assert listing.returncode == 0, listing.stderr
    assert re.search(rf"cliapp:default\s+ready\s+{revision_id}\s+4 new endpoint\s+1/1 ready", listing.stdout)
    (deployment,) = json.loads(vastrpc("ls", "cliapp", "--json", home=tmp_path / "home", env=env).stdout)
    (endpoint,) = deployment["endpoints"]
    assert (endpoint["endpoint_id"], endpoint["revision_id"], endpoint["update_tier"]) == (endpoint_id, revision_id, 4)
    (worker,) = endpoint["workers"]
    assert worker["state"] == "WORKER_STATE_READY" and worker["revision_id"] == revision_id
    assert worker["score"] > 0 and worker["address"].startswith("127.0.0.1:")  # a real benchmark, a real server
    assert re.search(rf"{worker['worker_id']}\s+cliapp:default\s+ready\s+{revision_id}\s", listing.stdout)

    # New code: tier 2, drawn as a terminal would see it, and the result as JSON on stdout.
    path.write_text(path.read_text() + "\n# changed\n")
    second = vastrpc("deploy", str(path), "--progress", "always", "--json", home=tmp_path / "home", env=env)
    assert second.returncode == 0, second.stderr
    (result,) = json.loads(second.stdout)
    assert (result["name"], result["tier"], result["endpoint_id"]) == ("cliapp", 2, endpoint_id)
    assert result["revision_id"] != revision_id and result["uploaded"] is True and result["ready_workers"] == 1
    assert "\x1b[" in second.stderr and "✓" in second.stderr and "━" in second.stderr  # styles, spinner, bars
    assert "\nupload: " not in second.stderr  # drawn, not logged
    (deployment,) = json.loads(vastrpc("ls", "cliapp", "--json", home=tmp_path / "home", env=env).stdout)
    assert deployment["endpoints"][0]["update_tier"] == 2
    assert deployment["endpoints"][0]["revision_id"] == result["revision_id"]


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_deploy_whose_install_fails_exits_1_with_the_reason(control_service, tmp_path) -> None:
    path = _write(
        tmp_path / "proj",
        "brokenapp",
        """
        from vastrpc import Deployment

        app = Deployment(name="{name}")
        app.image("python:3.11-slim").run_script("echo the-startup-script-broke; exit 7")

        @app.remote(benchmark_dataset=[{{}}])
        async def f() -> int:
            return 1
        """,
    )
    result = vastrpc("deploy", str(path), home=tmp_path / "home", env=_target(control_service), timeout=100)
    assert result.returncode == 1, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "exited with code 7" in error_lines[0]
    assert "the-startup-script-broke" in result.stderr  # the worker's log tail says why
    assert "Traceback" not in result.stderr and result.stdout == ""
    missing = vastrpc("deploy", str(tmp_path / "missing.py"), home=tmp_path / "home")
    assert missing.returncode == 1 and "no such file" in missing.stderr


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_ctrl_c_during_deploy_says_the_deploy_goes_on(control_service, tmp_path) -> None:
    path = _write(
        tmp_path / "proj",
        "slowapp",
        """
        import asyncio
        from vastrpc import Deployment

        app = Deployment(name="{name}")

        @app.context
        class Slow:
            async def __aenter__(self):
                await asyncio.sleep(60)
            async def __aexit__(self, *exc):
                pass

        @app.remote(benchmark_dataset=[{{}}])
        async def f() -> int:
            return 1
        """,
    )
    env = _target(control_service)
    deploy = subprocess.Popen(
        [*_INTERRUPTIBLE_CLI, "deploy", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(tmp_path / "home", env),
    )
    lines = _Lines(deploy)
    asyncio.run(lines.wait_for("loading", timeout=60))  # the worker is entering the slow context
    deploy.send_signal(signal.SIGINT)
    assert deploy.wait(timeout=20) == 130
    time.sleep(0.5)  # let the reader thread take the last lines
    rest = "".join(lines.seen) + "".join(lines.lines.queue)
    assert "interrupted: the control service goes on deploying slowapp:default" in rest, rest
    assert "vastrpc teardown slowapp" in rest and "Traceback" not in rest
    (deployment,) = json.loads(vastrpc("ls", "slowapp", "--json", home=tmp_path / "home", env=env).stdout)
    assert deployment["endpoints"][0]["workers"], "the deploy went on at the service"
    assert vastrpc("teardown", "slowapp", home=tmp_path / "home", env=env).returncode == 0


class _Lines:
    """The stdout lines of a running process, read by a thread, waited for with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert process.stdout is not None
        stream = process.stdout
        threading.Thread(target=lambda: [self.lines.put(line) for line in stream], daemon=True).start()

    async def wait_for(self, text: str, timeout: float) -> float:
        """Seconds until a line containing ``text`` arrived."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.05)
                continue
            self.seen.append(line)
            if text in line:
                return time.monotonic() - started
        code = self.process.poll()
        state = "still running" if code is None else f"exited with {code}"
        raise AssertionError(f"no line with {text!r} within {timeout}s ({state}); seen: {self.seen}")


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_logs_show_prints_and_logging_and_follow_streams_new_lines(project, control_service, tmp_path) -> None:
    mod = project(PRINTER)
    assert await mod.shout("first-line") == "FIRST-LINE"
    name = mod.app.name
    (worker,) = await project.workers(mod.app)
    worker_id = worker["worker_id"]
    home = tmp_path / "cli-home"
    env = _target(control_service)

    logs = vastrpc("logs", worker_id, home=home, env=env)
    assert logs.returncode == 0, logs.stderr
    assert "shout: first-line\n" in logs.stdout  # a print
    assert "logged: first-line" in logs.stdout  # a logging call
    by_name = vastrpc("logs", name, home=home, env=env)
    assert f"{worker_id} | shout: first-line\n" in by_name.stdout
    last = vastrpc("logs", name, "--tail", "1", "--json", home=home, env=env)
    (line,) = [json.loads(text) for text in last.stdout.splitlines()]
    assert line["worker_id"] == worker_id and "logged: first-line" in line["line"]

    follow = subprocess.Popen(
        [*_INTERRUPTIBLE_CLI, "logs", name, "-f", "--tail", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=cli_env(home, env),
    )
    try:
        lines = _Lines(follow)
        await lines.wait_for("logged: first-line", timeout=20)  # the tail: the stream is open
        assert await mod.shout("second-line") == "SECOND-LINE"
        took = await lines.wait_for(f"{worker_id} | shout: second-line", timeout=10)
        assert took < 5, took
        follow.send_signal(signal.SIGINT)
        assert follow.wait(timeout=10) == 130
        assert follow.stderr is not None
        stderr = follow.stderr.read()
        assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()

    # Following a deployment ends by itself once it is torn down.
    until_stopped = subprocess.Popen(
        [sys.executable, "-m", "vastrpc", "logs", name, "-f", "--tail", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=cli_env(home, env),
    )
    try:
        await asyncio.sleep(1.0)
        down = await asyncio.to_thread(vastrpc, "teardown", name, home=home, env=env, timeout=60)
        assert down.returncode == 0, down.stderr
        stdout, stderr = await asyncio.to_thread(until_stopped.communicate, timeout=20)
        assert until_stopped.returncode == 0, stderr
    finally:
        if until_stopped.poll() is None:
            until_stopped.kill()
            until_stopped.wait()
