"""The control service SIGKILLed during a deploy and under load, on SQLite and on PostgreSQL, then restarted.

After each restart on the same home and database: the deployment, endpoint, revision, worker
rows and bundle are all there and none is duplicated; the deploy retried goes READY; calls work.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from vastrpc._manifest import FileEntry, encode_manifest
from vastrpc.api.v1 import control_pb2
from vastrpc.control.bundles.local import LocalBlobStore
from vastrpc.control.stores.base import ACTIVE_WORKER_STATES, Store
from vastrpc.control.stores.sqlite import SqliteStore

from .conftest import configure, wait_listening
from .helpers import Client, make_spec, pid_gone

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SOURCE = """
import os
from vastrpc import Deployment

app = Deployment(name="{name}")
app.configure_autoscaling(min_workers=2, max_workers=2)

@app.remote(benchmark_dataset=[{{}}])
async def whoami() -> int:
    return os.getpid()
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def store_kind(request: pytest.FixtureRequest) -> tuple[str, list[str]]:
    """The store the service runs on, and the ``control serve`` flags that select it."""
    if request.param == "sqlite":
        return "sqlite", []
    return "postgresql", ["--store", request.getfixturevalue("pg_url")]


def _inspect(home: Path, args: list[str]) -> Store:
    """A store of our own on the service's state, to check its rows."""
    if args:
        from vastrpc.control.stores.postgres import PgStore

        return PgStore(args[1])
    return SqliteStore(home / "state.db", sole=False)  # beside the running service: reads the file each time


def _check_rows(store: Store, name: str, *, workers: int | None = None) -> None:
    """One deployment called ``name``, one endpoint, one revision, ``workers`` active workers; no duplicate."""
    deployments = [d for d in store.list_deployments() if d.name == name]
    assert len(deployments) == 1, deployments
    endpoints = store.list_endpoints(deployments[0].id)
    everything = store.list_endpoints()
    assert len(endpoints) == 1 and len(everything) == len({(e.deployment_id, e.tag) for e in everything})
    assert len(store.list_revisions(endpoints[0].id)) == 1
    rows = store.list_workers(endpoint_id=endpoints[0].id)
    assert len({w.id for w in rows}) == len(rows) and len({w.token_hash for w in rows}) == len(rows)
    if workers is not None:
        active = [w for w in rows if w.state in ACTIVE_WORKER_STATES]
        assert Counter(w.state for w in active) == {"ready": workers}, rows


async def test_killed_while_uploading_and_provisioning_then_deployed_again(
    store_kind: tuple[str, list[str]], tmp_path: Path, control_processes, load_app
) -> None:
    kind, args = store_kind
    home = tmp_path / "home"
    control = control_processes(home, "control", *args)

    # Killed in the middle of an upload: the partial bundle is not kept; the registration is.
    content = os.urandom(3 << 20)
    file_digest = hashlib.sha256(content).hexdigest()
    manifest = encode_manifest([FileEntry("weights.bin", 0o644, len(content), file_digest)])
    data, digest = manifest.data, manifest.digest
    spec = make_spec("uploading", digest=digest, api_key=control.api_key)
    async with Client(control.address, control.api_key) as client:
        reg = await client.register(spec)
        halfway = asyncio.Event()

        async def chunks() -> AsyncIterator[control_pb2.UploadFilesRequest]:
            yield control_pb2.UploadFilesRequest(
                header=control_pb2.UploadFilesRequest.Header(digest=file_digest, size=len(content))
            )
            for i in range(0, len(content) // 2, 1 << 16):
                yield control_pb2.UploadFilesRequest(chunk=content[i : i + (1 << 16)])
            halfway.set()
            await asyncio.sleep(60)  # the service dies meanwhile

        upload = asyncio.ensure_future(client.stub.UploadFiles(chunks(), metadata=client.metadata, timeout=30))
        await asyncio.wait_for(halfway.wait(), 10)
        await asyncio.sleep(0.2)
        control.kill()
        with pytest.raises(grpc.aio.AioRpcError):
            await upload
    control = wait_listening(control_processes(home, "control", *args, wait=False))
    assert not LocalBlobStore(home / "bundles").has(file_digest)
    async with Client(control.address, control.api_key) as client:
        again = await client.register(spec)
        assert (again.endpoint_id, again.revision_id, again.upload_required) == (reg.endpoint_id, reg.revision_id, True)
        await client.upload_files(content)
        assert (await client.upload(data, digest)).stored
    store = _inspect(home, args)
    _check_rows(store, "uploading")

    # Killed while provisioning: workers are being started when the service dies.
    module = load_app(SOURCE, "provisioning", control)
    deploy = asyncio.ensure_future(module.app.ensure_ready())
    deadline = time.monotonic() + 60
    while not any(
        e for e in store.list_endpoints() if store.list_workers(endpoint_id=e.id) and e.id != reg.endpoint_id
    ):
        assert time.monotonic() < deadline and not deploy.done(), "no worker was started"
        await asyncio.sleep(0.02)
    recorded = {w.id for w in store.list_workers()}
    control.kill()
    control = wait_listening(control_processes(home, "control", *args, wait=False))
    try:
        # The deploy in flight fails with its control service, or finishes through the restarted one.
        await asyncio.wait_for(deploy, 100)
    except Exception:  # noqa: BLE001 - either way it is retried below
        pass
    await module.app.close()
    configure(module.app, control)
    result = await module.app.ensure_ready()
    assert result.ready_workers == 2
    pids = {await module.whoami() for _ in range(20)}
    assert pids and all(isinstance(p, int) for p in pids)
    _check_rows(store, "provisioning", workers=2)
    assert recorded <= {w.id for w in store.list_workers()}  # the killed service's worker rows are kept
    bundles = LocalBlobStore(home / "bundles")
    (endpoint,) = [e for e in store.list_endpoints() if e.id != reg.endpoint_id]
    assert bundles.has(store.get_revision(endpoint.live_revision_id).bundle_digest) and bundles.has(digest)
    agents = {w.pid for w in store.list_workers(endpoint_id=endpoint.id) if w.pid}
    await module.app.close()
    store.close()
    control.process.terminate()
    assert control.process.wait(60) == 0
    # No orphans: whatever ran for the killed service was stopped, by it or by the restarted one.
    for pid in agents | pids:
        deadline = time.monotonic() + 10
        while not pid_gone(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert pid_gone(pid), (kind, pid)


async def test_killed_under_load_then_restarted_keeps_every_row(
    store_kind: tuple[str, list[str]], tmp_path: Path, control_processes, load_app
) -> None:
    _, args = store_kind
    home = tmp_path / "home"
    control = control_processes(home, "control", *args)
    module = load_app(SOURCE, "loaded", control)
    first = await module.app.ensure_ready()
    store = _inspect(home, args)
    before = sorted(w.id for w in store.list_workers(endpoint_id=first.endpoint_id))
    errors: list[BaseException] = []
    served = 0
    stop = asyncio.Event()

    async def load() -> None:
        nonlocal served
        while not stop.is_set():
            try:
                await module.whoami()
                served += 1
            except Exception as exc:  # noqa: BLE001 - counted: none is expected
                errors.append(exc)
            await asyncio.sleep(0.005)

    callers = [asyncio.create_task(load()) for _ in range(4)]
    await asyncio.sleep(0.5)
    control.kill()
    down = served
    await asyncio.sleep(1.5)  # no control service: calls go straight to the workers
    assert served > down + 10
    control = wait_listening(control_processes(home, "control", *args, wait=False))
    await asyncio.sleep(2.0)  # workers heartbeat to the restarted service; the client's watch reconnects
    stop.set()
    await asyncio.gather(*callers)
    assert errors == []

    again = await module.app.ensure_ready()
    assert (again.tier, again.endpoint_id, again.revision_id, again.workers_started) == (
        0,
        first.endpoint_id,
        first.revision_id,
        0,
    )
    _check_rows(store, "loaded", workers=2)
    assert sorted(w.id for w in store.list_workers(endpoint_id=first.endpoint_id)) == before
    assert LocalBlobStore(home / "bundles").has(again.bundle_digest)
    store.close()
