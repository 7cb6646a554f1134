"""Secrets and tokens at rest: none is readable in the state store, the bundles or the logs."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest

from vastrpc.api.v1 import common_pb2

from .helpers import Client, bundle, make_spec, with_fake_worker

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


def _holding(home, needles: dict[str, bytes]) -> dict[str, list[str]]:
    """Which of ``needles`` each file under ``home`` holds, raw bytes (state.db, its -wal and -shm included)."""
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        data = path.read_bytes()
        hits = [name for name, needle in needles.items() if needle in data]
        if hits:
            found[path.name] = hits
    return found


@with_fake_worker
async def test_teardown_leaves_no_copy_of_a_secret_in_the_state_files(control_service) -> None:
    # One secret that fits a page, one that spills into overflow pages.
    values = {"SHORT_SECRET": "short-secret-zq9x7", "LONG_SECRET": "long-secret-" + "k3v8" * 3000}
    spec = make_spec("scrubbed", secrets=values, api_key=control_service.api_key)
    sealed = dict(spec.image.sealed_secrets)
    needles = {f"{name} sealed": value[-48:] for name, value in sealed.items()}
    needles |= {f"{name} plain": value.encode()[-48:] for name, value in values.items()}
    data, digest = bundle()
    spec.digests.bundle = digest
    async with Client(control_service.address, control_service.api_key) as client:
        reg, _ = await client.deploy(spec, data)
        await client.wait_ready(reg.endpoint_id)
        # Deployed: the sealed values are in the store's files (so the scan below can fail).
        before = _holding(control_service.home, needles)
        assert {"SHORT_SECRET sealed", "LONG_SECRET sealed"} <= {h for hits in before.values() for h in hits}, before
        assert not any("plain" in h for hits in before.values() for h in hits), before

        # As a long-running service's automatic checkpoint would: the pages reach state.db itself.
        db = sqlite3.connect(control_service.home / "state.db")
        try:
            assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        finally:
            db.close()
        assert "SHORT_SECRET sealed" in _holding(control_service.home, needles).get("state.db", [])

        await client.teardown("scrubbed")
        after = _holding(control_service.home, needles)
        assert after == {}, f"a copy survived the teardown: {after}"
        # The revision is still there, stripped: a redeploy sends its secrets again.
        listing = await client.list("scrubbed")
        assert listing.deployments[0].endpoints[0].state == common_pb2.ENDPOINT_STATE_STOPPED


def _open_home(tmp_path) -> list[str]:
    """A home made before, open to everyone, holding a state.db an older vastrpc left world-readable."""
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    (home / "state.db").touch(mode=0o644)
    os.chmod(home / "state.db", 0o644)
    return []


@pytest.mark.parametrize("control_service", [{"setup": _open_home}], indirect=True)
async def test_an_open_home_is_warned_about_and_the_state_and_logs_are_private(project, control_service) -> None:
    home = control_service.home
    text = control_service.log_text()
    assert f"the vastrpc home {home} is open to other users (mode 755)" in text and f"chmod 700 {home}" in text
    mod = project("""
from vastrpc import Deployment

app = Deployment(name="{name}")

@app.remote(benchmark_dataset=[{{}}])
async def hello() -> str:
    print("a line in the worker's log")
    return "hi"
""")
    assert await mod.hello() == "hi"
    assert stat.S_IMODE(home.stat().st_mode) == 0o755  # the user's own folder: warned about, not changed
    private = {p: stat.S_IMODE(p.stat().st_mode) for p in home.rglob("*") if p.name.startswith("state.db")}
    private |= {p: stat.S_IMODE(p.stat().st_mode) for p in (home / "logs").rglob("*.log")}
    private |= {p: stat.S_IMODE(p.stat().st_mode) for p in (home / "bundles").iterdir()}
    assert len(private) >= 4 and set(private.values()) == {0o600}, private
    for folder in (home / "logs", home / "logs" / "workers", home / "bundles"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
