"""Shared fixtures: ``control_service`` starts a real control service process; ``project`` deploys modules to it."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import textwrap
import time
import types
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vastrpc._tls import TlsFiles, issue_certificate
from vastrpc.api.v1 import common_pb2
from vastrpc.client.control import ControlClient
from vastrpc.config import ClientConfig

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ControlServiceProcess:
    """A control service process started by the ``control_service`` fixture.

    Attributes:
        address: ``127.0.0.1:PORT`` it listens on.
        api_key: Its API key (from ``home/api_key``).
        home: Its home folder (state.db, bundles/, logs/, control.json).
        process: The ``python -m vastrpc control serve`` process.
        log_path: Where its stdout and stderr go.
        tls: What a client needs for it: the CA control.json names, and under mutual TLS a
            client certificate issued by that CA (``--tls auto``); None when plaintext.
    """

    address: str
    api_key: str
    home: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    tls: TlsFiles | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata presenting the API key."""
        return (("authorization", f"Bearer {self.api_key}"),)

    def log_text(self) -> str:
        """What the process has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def control_service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ControlServiceProcess]:
    """A real control service process (``--port 0``) on a fresh home under ``tmp_path``.

    Options through indirect parametrization, e.g.
    ``@pytest.mark.parametrize("control_service", [{"worker_command": [...]}], indirect=True)``:
    ``worker_command`` (argv prefix that starts a worker instead of ``python -m vastrpc worker``),
    ``args`` (more ``control serve`` flags, e.g. ``["--bundle-grace", "0"]``), ``setup`` (called
    with ``tmp_path`` before the start; returns more flags, e.g. for files it wrote there),
    ``env`` (extra environment variables), ``cwd`` (the folder under ``tmp_path`` it starts
    in, made by ``setup``) and ``worker_user`` (True: run workers as the default separate
    user, as a service run as root does unless told otherwise; by default they run as this
    user, ``--no-worker-user``, so that tests may hand them files under ``tmp_path``). It
    starts as vastrpc starts its own processes: ``python -P -m vastrpc``.
    """
    options = getattr(request, "param", None) or {}
    home = tmp_path / "home"
    log_path = tmp_path / "control.log"
    argv = [sys.executable, "-P", "-m", "vastrpc", "control", "serve", "--home", str(home), "--port", "0"]
    if options.get("worker_command"):
        argv += ["--worker-command", shlex.join(options["worker_command"])]
    argv += list(options.get("args", ()))
    if not options.get("worker_user"):
        argv.append("--no-worker-user")
    if options.get("setup"):
        argv += list(options["setup"](tmp_path))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(options.get("env", {}))
    with log_path.open("ab") as log:
        cwd = tmp_path / options["cwd"] if options.get("cwd") else None
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )
    try:
        deadline = time.monotonic() + 20
        info: dict[str, object] = {}
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"control service exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                info = json.loads((home / "control.json").read_text())
            except (OSError, ValueError):
                info = {}
            if info.get("pid") == process.pid:
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"control service did not write control.json within 20s:\n{log_path.read_text()}")
        api_key = (home / "api_key").read_text().strip()
        tls = _client_tls(info, home, tmp_path / "client-tls")
        yield ControlServiceProcess(str(info["address"]), api_key, home, process, log_path, tls)
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            returncode = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"control service did not stop within 30s of SIGTERM:\n{log_path.read_text()}")
    assert returncode == 0, f"control service exited with {returncode}:\n{log_path.read_text()}"


def _client_tls(info: dict[str, Any], home: Path, folder: Path) -> TlsFiles | None:
    if not info.get("tls"):
        return None
    ca = Path(str(info["tls_ca"])) if info.get("tls_ca") else None
    if not info.get("tls_client_cert") or ca is None or not (home / "tls" / "ca.key").exists():
        return TlsFiles(ca_file=ca)
    folder.mkdir(exist_ok=True)
    ca_key, cert, key = home / "tls" / "ca.key", folder / "client.pem", folder / "client.key"
    issue_certificate(ca, ca_key, cert, key, common_name="test client", hosts=[], client=True)
    return TlsFiles(ca_file=ca, cert_file=cert, key_file=key)


class Project:
    """Writes deployment modules into fresh project folders, imports them, and inspects the control service."""

    def __init__(self, control: ControlServiceProcess, root: Path) -> None:
        self.control = control
        self.root = root
        self.modules: list[types.ModuleType] = []

    def __call__(
        self, source: str, *, api_key: str | None = None, name: str | None = None, balancer: str = "least_expected_time"
    ) -> types.ModuleType:
        """Import ``source`` as a deployment module.

        ``{name}`` in the source becomes ``name``, or the module's own unique name.
        """
        module_name = f"dep_{uuid.uuid4().hex[:10]}"
        folder = self.root / module_name
        folder.mkdir(parents=True)
        path = folder / f"{module_name}.py"
        path.write_text(textwrap.dedent(source).format(name=name or module_name))
        name = module_name
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        module.app._config = ClientConfig(
            control_address=self.control.address,
            api_key=api_key or self.control.api_key,
            home=self.control.home,
            ready_timeout=120,
            balancer=balancer,
            tls=self.control.tls,
        )
        self.modules.append(module)
        return module

    def rewrite(self, module: types.ModuleType, source: str, **fields: str) -> None:
        """Change the deployment file on disk (the next ensure_ready bundles it); the module keeps its objects."""
        Path(module.__file__).write_text(textwrap.dedent(source).format(name=module.app.name, **fields))

    async def _client(self) -> ControlClient:
        return ControlClient(self.control.address, self.control.api_key, self.control.tls)

    async def endpoint(self, app: Any) -> dict[str, Any]:
        """The app's endpoint as listed by the control service, workers included."""
        client = await self._client()
        try:
            listing = await client.list_deployments(app.name)
        finally:
            await client.close()
        (deployment,) = listing.deployments
        (endpoint,) = [e for e in deployment.endpoints if e.tag == app.tag]
        return {
            "endpoint_id": endpoint.endpoint_id,
            "state": common_pb2.EndpointState.Name(endpoint.state).removeprefix("ENDPOINT_STATE_"),
            "revision_id": endpoint.revision_id,
            "ttl": endpoint.ttl,
            "version_label": endpoint.version_label,
            "autoscaling": endpoint.autoscaling,
            "workers": [
                {
                    "worker_id": w.worker_id,
                    "state": common_pb2.WorkerState.Name(w.state).removeprefix("WORKER_STATE_"),
                    "pid": w.pid,
                    "address": w.address,
                    "revision_id": w.revision_id,
                }
                for w in endpoint.workers
            ],
        }

    async def workers(self, app: Any) -> list[dict[str, Any]]:
        """The app's workers that are not stopped, sorted by id."""
        workers = (await self.endpoint(app))["workers"]
        return sorted((w for w in workers if w["state"] != "STOPPED"), key=lambda w: w["worker_id"])

    async def logs(self, worker_id: str) -> str:
        client = await self._client()
        try:
            return await client.worker_logs(worker_id)
        finally:
            await client.close()

    async def endpoint_token(self, app: Any) -> str:
        """The token the app's workers require (read from the endpoint watch)."""
        client = await self._client()
        try:
            endpoint_id = (await self.endpoint(app))["endpoint_id"]
            async for update in client.watch(endpoint_id):
                return update.endpoint_token
            return ""
        finally:
            await client.close()


@pytest.fixture
async def project(control_service: ControlServiceProcess, tmp_path: Path) -> AsyncIterator[Project]:
    """Deployment modules deployed to a real control service (see ``Project``); closed afterwards."""
    made = Project(control_service, tmp_path / "projects")
    yield made
    for module in made.modules:
        await module.app.close()
        sys.modules.pop(module.__name__, None)
