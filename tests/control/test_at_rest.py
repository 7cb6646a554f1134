"""Secrets and tokens at rest: none is readable in the state store, the bundles or the logs."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


async def test_no_secret_or_token_in_the_clear_anywhere_on_disk(project, control_service, monkeypatch) -> None:
    # As the README says: secrets come from the deployer's environment, never from the file.
    monkeypatch.setenv("DB_PASSWORD", "pa55-word-that-must-not-leak")
    mod = project("""
import os
from vastrpc import Deployment

app = Deployment(name="{name}")
app.image("python:3.11-slim").secrets(DB_PASSWORD=os.environ["DB_PASSWORD"])

@app.remote(benchmark_dataset=[{{}}])
async def password() -> str:
    return os.environ["DB_PASSWORD"]
""")
    assert await mod.password() == "pa55-word-that-must-not-leak"
    endpoint_token = await project.endpoint_token(mod.app)
    (worker,) = await project.workers(mod.app)
    worker_log = await project.logs(worker["worker_id"])
    files = [p for p in control_service.home.rglob("*") if p.is_file() and p.name != "api_key"]
    assert any(p.name == "state.db" for p in files)
    for needle in ("pa55-word-that-must-not-leak", endpoint_token, control_service.api_key):
        for path in files:
            assert needle.encode() not in path.read_bytes(), (needle[:6], path)
        assert needle not in worker_log and needle not in control_service.log_text()


async def test_teardown_forgets_the_sealed_secrets(project, control_service, monkeypatch) -> None:
    import sqlite3

    from vastrpc.api.v1 import control_pb2
    from vastrpc.client.control import ControlClient

    monkeypatch.setenv("API_TOKEN", "token-value-to-forget")
    mod = project("""
import os
from vastrpc import Deployment

app = Deployment(name="{name}")
app.image("python:3.11-slim").secrets(API_TOKEN=os.environ["API_TOKEN"])

@app.remote(benchmark_dataset=[{{}}])
async def token() -> str:
    return os.environ["API_TOKEN"]
""")
    assert await mod.token() == "token-value-to-forget"

    def sealed() -> list[int]:
        with sqlite3.connect(control_service.home / "state.db") as db:
            specs = [control_pb2.DeploymentSpec.FromString(row[0]) for row in db.execute("SELECT spec FROM revisions")]
        return [len(s.image.sealed_secrets) for s in specs]

    assert sealed() == [1]
    client = ControlClient(control_service.address, control_service.api_key)
    try:
        await client.teardown(mod.app.name)
    finally:
        await client.close()
    assert sealed() == [0]
    await mod.app.close()
    assert await mod.token() == "token-value-to-forget"  # deployed again, with its secret sent again
