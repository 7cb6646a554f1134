"""End to end: Vast's copy to an absolute path, venv and publish_port on the local provider (workers on this host)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vastrpc.api.v1 import common_pb2
from vastrpc.client.control import ControlClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

# Vast's own deployment file for these settings, with functions that show where they went.
VAST_STYLE = """
import asyncio, os
from vastrpc import Deployment

app = Deployment(name="{name}")
image = app.image("vastai/base-image:@vastai-automatic-tag")
image.copy("./cfg.json", "/app/config.json")
image.venv("/venv/main")
image.publish_port(8080, "tcp")
image.run_script('cat "$VASTRPC_COPY_ROOT/app/config.json" > seen_by_script.txt')
image.run_script('echo "$VASTRPC_PORT_8080" >> seen_by_script.txt')

_servers = []

@app.remote(benchmark_dataset=[{{}}])
async def read_config() -> str:
    with open(os.environ.get("VASTRPC_COPY_ROOT", "") + "/app/config.json") as f:
        return f.read()

@app.remote
async def serve_port() -> dict:
    port = int(os.environ["VASTRPC_PORT_8080"])

    async def answer(reader, writer):
        line = await reader.readline()
        writer.write(b"pong " + line)
        await writer.drain()
        writer.close()

    if not _servers:
        _servers.append(await asyncio.start_server(answer, os.environ["VASTRPC_PORTS_HOST"], port))
    return {{k: os.environ.get(k) for k in ("VASTRPC_PORT_8080", "VAST_TCP_PORT_8080", "VASTRPC_PORTS_HOST")}}

@app.remote
async def seen_by_script() -> str:
    with open("seen_by_script.txt") as f:
        return f.read()
"""


async def _listed_ports(control_service, name: str) -> list[common_pb2.PublishedPort]:
    client = ControlClient(control_service.address, control_service.api_key, control_service.tls)
    try:
        listing = await client.list_deployments(name)
    finally:
        await client.close()
    (deployment,) = listing.deployments
    (endpoint,) = deployment.endpoints
    (worker,) = [w for w in endpoint.workers if w.state == common_pb2.WORKER_STATE_READY]
    return list(worker.published_ports)


async def test_vasts_copy_venv_and_publish_port_work_on_the_local_provider_and_say_where(
    project, control_service
) -> None:
    mod = project(VAST_STYLE)
    folder = Path(mod.__file__).parent
    (folder / "cfg.json").write_text('{"model": "tiny"}')
    assert not Path("/venv/main/bin/python").exists(), "this test needs a host without /venv/main"

    result = await mod.app.ensure_ready()
    assert result.ready_workers == 1

    # The deploy says where the copy went and why, and that the venv is not there.
    (copy_note,) = [w for w in result.warnings if w.startswith("copy to /app/config.json")]
    assert "overwrite any file" in copy_note and "$VASTRPC_COPY_ROOT/app/config.json" in copy_note
    (venv_note,) = [w for w in result.warnings if w.startswith("venv /venv/main")]
    assert "no virtual environment at /venv/main" in venv_note and sys.executable in venv_note
    (port_note,) = [w for w in result.warnings if w.startswith("publish_port 8080/tcp")]
    assert "VASTRPC_PORT_8080" in port_note
    assert not Path("/app/config.json").exists() or Path("/app/config.json").read_text() != '{"model": "tiny"}'

    # The function reads the copied file through the documented mapping.
    assert await mod.read_config() == '{"model": "tiny"}'

    # It serves on the published port from its environment; the listing shows where.
    env = await mod.serve_port()
    assert env["VASTRPC_PORT_8080"] == env["VAST_TCP_PORT_8080"] and env["VASTRPC_PORTS_HOST"] == "127.0.0.1"
    (port,) = await _listed_ports(control_service, mod.app.name)
    assert (port.port, port.protocol) == (8080, common_pb2.PORT_PROTOCOL_TCP)
    assert port.address == f"127.0.0.1:{env['VASTRPC_PORT_8080']}"
    # The startup commands see the same mapping and ports.
    assert await mod.seen_by_script() == f'{{"model": "tiny"}}{env["VASTRPC_PORT_8080"]}\n'
    host, _, number = port.address.rpartition(":")
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(number)), 10)
    writer.write(b"ping\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.readline(), 10) == b"pong ping\n"
    writer.close()

    # `vastrpc ls --json` shows the same address.
    env_vars = dict(os.environ, VASTRPC_CONTROL_ADDRESS=control_service.address)
    env_vars["VASTRPC_API_KEY"] = control_service.api_key
    env_vars["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).parents[2]), env_vars.get("PYTHONPATH")) if p
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "vastrpc", "ls", mod.app.name, "--json"],
        capture_output=True,
        text=True,
        env=env_vars,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    (deployment,) = json.loads(done.stdout)
    (worker,) = deployment["endpoints"][0]["workers"]
    assert worker["published_ports"] == [{"port": 8080, "protocol": "tcp", "address": port.address}]

    # The same file again: nothing to do, the same warnings.
    again = await mod.app.ensure_ready()
    assert again.tier == 0 and again.warnings == result.warnings
