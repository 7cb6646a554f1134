"""End to end: a worker started by hand (`vastrpc worker --join`) serves an endpoint beside the provider's."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ENTRYPOINT = Path(__file__).resolve().parents[2] / "worker" / "entrypoint.sh"

SOURCE = """
import asyncio, os
from vastrpc import Deployment

app = Deployment(name="{name}")
app.configure_autoscaling(min_workers=1, max_workers=1)

@app.context
class Host:
    async def __aenter__(self):
        if "broken-host" in os.getcwd():  # the joined worker's home (a host's own variables do not reach it)
            raise RuntimeError("this host is broken")
        return self

    async def __aexit__(self, *exc):
        pass

@app.remote(max_concurrency=2, benchmark_dataset=[{{}}])
async def where() -> str:
    await asyncio.sleep(0.05)
    return os.getcwd()  # the bundle's folder, under the agent's home: HOME/work/WORKER/REVISION
"""


def _home(bundle_dir: str) -> Path:
    """The home of the agent that serves from ``bundle_dir``."""
    return Path(bundle_dir).parents[2]


def _join(control_service, target: str, home, **extra: str) -> subprocess.Popen[str]:
    """``vastrpc worker --join`` started through worker/entrypoint.sh, as the worker image does."""
    env = {
        **os.environ,
        "VASTRPC_HOME": str(home),
        "VASTRPC_API_KEY": control_service.api_key,
        "VASTRPC_CONTROL_ADDRESS": control_service.address,
        "VASTRPC_JOIN": target,
        "PYTHON": sys.executable,
        **extra,
    }
    argv = ["sh", str(ENTRYPOINT)]
    return subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


async def _ready_workers(project, app, count: int, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        workers = [w for w in (await project.endpoint(app))["workers"] if w["state"] == "READY"]
        if len(workers) >= count or time.monotonic() > deadline:
            return workers
        await asyncio.sleep(0.2)


async def test_a_joined_worker_serves_calls_and_stops_at_teardown(project, control_service, tmp_path) -> None:
    mod = project(SOURCE)
    await mod.app.ensure_ready()
    elsewhere = tmp_path / "other-host-home"
    joined = _join(control_service, mod.app.name, elsewhere)
    try:
        workers = await _ready_workers(project, mod.app, 2)
        assert len(workers) == 2, joined.stderr.read() if joined.poll() is not None else workers
        # The autoscaler leaves it alone (it sizes the endpoint without joined workers)...
        await asyncio.sleep(2.5)
        assert len(await _ready_workers(project, mod.app, 2)) == 2
        # ... and calls reach both: the joined one runs with its own home.
        homes = {_home(info.value) for info in await asyncio.gather(*(mod.where.call_with_info() for _ in range(40)))}
        assert homes == {control_service.home, elsewhere}

        down = subprocess.run(
            [sys.executable, "-m", "vastrpc", "teardown", mod.app.name, "--control", control_service.address],
            env={**os.environ, "VASTRPC_API_KEY": control_service.api_key},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert down.returncode == 0, down.stderr
        # Told to stop over its watch: the joined agent and its serving process exit by themselves.
        assert joined.wait(timeout=30) == 0
        # A torn-down endpoint takes no new worker.
        refused = _join(control_service, mod.app.name, tmp_path / "late")
        assert refused.wait(timeout=30) == 1
        assert "stopped: deploy it again" in refused.stderr.read()
    finally:
        if joined.poll() is None:
            joined.kill()
            joined.wait()


async def test_joining_what_does_not_exist_says_so(control_service, tmp_path) -> None:
    missing = _join(control_service, "no-such-deployment", tmp_path / "h")
    assert missing.wait(timeout=30) == 4  # not found
    assert "no-such-deployment" in missing.stderr.read()
    unauthorised = _join(control_service, "x", tmp_path / "h", VASTRPC_API_KEY="vk_wrong")
    assert unauthorised.wait(timeout=30) == 3
    unset = _join(control_service, "x", tmp_path / "h", VASTRPC_JOIN="")
    assert unset.wait(timeout=30) == 2 and "set VASTRPC_JOIN" in unset.stderr.read()


@pytest.mark.parametrize("control_service", [{"args": ["--tls", "auto"]}], indirect=True)
async def test_a_joined_worker_under_tls_serves_with_a_certificate_the_ca_signed(project, control_service, tmp_path):
    mod = project(SOURCE)
    await mod.app.ensure_ready()
    ca = control_service.home / "tls" / "ca.pem"
    # With only the CA it could reach the control service but not serve TLS itself: refused before joining.
    bare = _join(control_service, mod.app.name, tmp_path / "h", VASTRPC_TLS_CA=str(ca))
    assert bare.wait(timeout=30) == 1
    assert "vastrpc control issue-cert" in bare.stderr.read()
    assert len((await project.endpoint(mod.app))["workers"]) == 1

    issued = subprocess.run(
        [sys.executable, "-m", "vastrpc", "control", "issue-cert", "--home", str(control_service.home)]
        + ["--host", "127.0.0.1", "--out", str(tmp_path / "worker-tls")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert issued.returncode == 0, issued.stderr
    env = dict(item.split("=", 1) for item in issued.stdout.split()[1:])  # "export A=... B=... C=..."
    assert set(env) == {"VASTRPC_TLS_CA", "VASTRPC_TLS_CERT", "VASTRPC_TLS_KEY"}
    elsewhere = tmp_path / "other-host-home"
    joined = _join(control_service, mod.app.name, elsewhere, **env)
    try:
        assert len(await _ready_workers(project, mod.app, 2)) == 2
        homes = {_home(info.value) for info in await asyncio.gather(*(mod.where.call_with_info() for _ in range(40)))}
        assert elsewhere in homes  # the client reached it over TLS, trusting the same CA
    finally:
        joined.terminate()
        assert joined.wait(timeout=30) == 0  # SIGTERM: drains and leaves


async def test_a_joined_worker_that_fails_fails_alone(project, control_service, tmp_path) -> None:
    mod = project(SOURCE)
    await mod.app.ensure_ready()
    broken = _join(control_service, mod.app.name, tmp_path / "broken-host")
    assert broken.wait(timeout=60) != 0
    assert "this host is broken" in broken.stderr.read()
    endpoint = await project.endpoint(mod.app)
    # The endpoint and the worker the service runs are untouched; only the joined one failed.
    assert endpoint["state"] == "READY"
    assert sorted(w["state"] for w in endpoint["workers"]) == ["FAILED", "READY"]
    assert _home(await mod.where()) == control_service.home
