"""TTL teardown: Reaper.sweep on a real store and blob store, and end to end with real processes."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time

import pytest

from vastrpc._manifest import FileEntry, encode_manifest
from vastrpc.api.v1 import control_pb2
from vastrpc.control.bundles.local import LocalBlobStore
from vastrpc.control.lifecycle.endpoints import Lifecycle
from vastrpc.control.lifecycle.reaper import Reaper
from vastrpc.control.providers.local import LocalProcessProvider
from vastrpc.control.stores.base import WorkerRow
from vastrpc.control.stores.sqlite import SqliteStore

from ..helpers import eventually, pid_gone

pytestmark = pytest.mark.timeout(30)

# A point in time well after anything the tests create (revisions are stamped with time.time()).
LATER = time.time() + 10_000


class Setup:
    """A real SqliteStore, LocalBlobStore and Lifecycle (its provider never starts a process)."""

    def __init__(self, tmp_path, *, bundle_grace: float = 60.0) -> None:
        self.store = SqliteStore(tmp_path / "state.db")
        self.blobs = LocalBlobStore(tmp_path / "bundles")
        self.lifecycle = Lifecycle(self.store, self.blobs, LocalProcessProvider(tmp_path), stop_grace=1)
        self.reaper = Reaper(self.store, self.blobs, self.lifecycle, interval=0.05, bundle_grace=bundle_grace)

    def bundle(self, text: str | bytes, *, stored_at: float | None = None) -> str:
        data = text.encode() if isinstance(text, str) else text
        digest = hashlib.sha256(data).hexdigest()
        with self.blobs.open_writer(digest, len(data)) as writer:
            writer.write(data)
            writer.commit()
        if stored_at is not None:
            os.utime(self.blobs.path(digest), (stored_at, stored_at))
        return digest

    def endpoint(
        self, name: str, *, ttl: float, seen: float, tag: str = "default", digest: str = "", calls: int = 0
    ) -> str:
        """A ready endpoint with one ready worker, its client last seen at ``seen``."""
        deployment = self.store.get_or_create_deployment(name)
        endpoint, _ = self.store.get_or_create_endpoint(deployment.id, tag)
        spec = control_pb2.DeploymentSpec(name=name, tag=tag, ttl=ttl)
        revision = self.store.add_revision(
            endpoint.id,
            spec.SerializeToString(),
            {"bundle": digest or self.bundle(name), "code": "c", "environment": "e", "autoscaling": "a"},
        )
        self.store.update_endpoint(
            endpoint.id, state="ready", live_revision_id=revision.id, desired_workers=1, last_client_seen=seen
        )
        self.store.add_worker(
            WorkerRow(
                id=f"w-{name}-{tag}",
                endpoint_id=endpoint.id,
                revision_id=revision.id,
                state="ready",
                token_hash=f"h-{name}-{tag}",
                calls_in_flight=calls,
                last_heartbeat=seen,
            )
        )
        return endpoint.id

    def state(self, endpoint_id: str) -> str:
        return self.store.get_endpoint(endpoint_id).state


@pytest.fixture
def setup(tmp_path):
    made = Setup(tmp_path, bundle_grace=0)
    yield made
    made.store.close()


async def test_idle_past_ttl_is_torn_down_and_its_bundle_deleted(setup, caplog) -> None:
    caplog.set_level(logging.INFO, logger="vastrpc.control.lifecycle.reaper")
    endpoint_id = setup.endpoint("hello", ttl=30, seen=LATER - 29)
    digest = setup.store.get_revision(setup.store.get_endpoint(endpoint_id).live_revision_id).bundle_digest
    assert await setup.reaper.sweep(LATER) == []
    assert setup.state(endpoint_id) == "ready" and setup.blobs.has(digest)

    assert await setup.reaper.sweep(LATER + 1) == [endpoint_id]
    assert setup.state(endpoint_id) == "stopped"
    assert [w.state for w in setup.store.list_workers(endpoint_id=endpoint_id)] == ["stopped"]
    assert not setup.blobs.has(digest)
    assert "ttl: tearing down hello:default after 30 s without clients" in caplog.text
    # A stopped endpoint is left alone.
    assert await setup.reaper.sweep(LATER + 100) == []


async def test_a_watching_client_keeps_it_alive_and_the_ttl_counts_from_its_disconnect(setup) -> None:
    endpoint_id = setup.endpoint("hello", ttl=5, seen=0)
    setup.reaper.client_connected(endpoint_id)
    setup.reaper.client_connected(endpoint_id)
    assert await setup.reaper.sweep(LATER) == []
    setup.reaper.client_disconnected(endpoint_id, now=LATER)
    assert setup.reaper.clients(endpoint_id) == 1
    assert await setup.reaper.sweep(LATER + 100) == []  # one client is still there

    setup.reaper.client_disconnected(endpoint_id, now=LATER + 100)
    assert setup.reaper.clients(endpoint_id) == 0
    assert setup.store.get_endpoint(endpoint_id).last_client_seen == LATER + 100
    assert await setup.reaper.sweep(LATER + 104.9) == []
    assert await setup.reaper.sweep(LATER + 105) == [endpoint_id]


async def test_a_call_in_flight_keeps_it_alive_without_any_client(setup) -> None:
    busy = setup.endpoint("busy", ttl=5, seen=LATER - 100, calls=1)
    setup.store.update_worker("w-busy-default", last_heartbeat=LATER - 1)
    assert await setup.reaper.sweep(LATER) == []
    # The call counts as hearing from the client now: the TTL restarts when it ends.
    assert setup.store.get_endpoint(busy).last_client_seen == LATER
    setup.store.update_worker("w-busy-default", calls_in_flight=0, last_heartbeat=LATER + 1)
    assert await setup.reaper.sweep(LATER + 4) == []
    assert await setup.reaper.sweep(LATER + 5) == [busy]


async def test_a_silent_worker_calls_keep_nothing_alive(setup) -> None:
    # Its last heartbeat (with a call in flight) is older than the heartbeat timeout (30 s).
    stale = setup.endpoint("stale", ttl=5, seen=LATER - 100, calls=3)
    assert await setup.reaper.sweep(LATER) == [stale]


async def test_no_ttl_never_tears_down(setup) -> None:
    endpoint_id = setup.endpoint("forever", ttl=0, seen=0)
    assert await setup.reaper.sweep(LATER) == []
    assert setup.state(endpoint_id) == "ready"


async def test_only_the_idle_tag_goes_and_a_shared_bundle_stays(setup) -> None:
    digest = setup.bundle("shared")
    idle = setup.endpoint("hello", tag="old", ttl=5, seen=LATER - 10, digest=digest)
    used = setup.endpoint("hello", tag="new", ttl=5, seen=LATER - 10, digest=digest)
    setup.reaper.client_connected(used)
    assert await setup.reaper.sweep(LATER) == [idle]
    assert setup.state(used) == "ready"
    assert setup.blobs.has(digest)  # the live tag still runs it


async def test_bundle_grace_protects_recent_uploads_and_registrations(tmp_path) -> None:
    made = Setup(tmp_path, bundle_grace=60)
    now = time.time()
    old = made.bundle("old, unused", stored_at=now - 120)
    fresh = made.bundle("just uploaded", stored_at=now - 5)
    live = made.bundle("used", stored_at=now - 120)
    redeploy = made.bundle("registered again", stored_at=now - 120)
    made.endpoint("live", ttl=0, seen=now, digest=live)
    # A stopped endpoint whose revision was just registered: its Provision is on its way.
    stopped = made.endpoint("again", ttl=0, seen=now, digest=redeploy)
    made.store.update_endpoint(stopped, state="stopped")
    (made.blobs.root / f".{'c' * 16}.x.part").write_bytes(b"upload in flight")

    assert made.reaper.collect_bundles(now) == [old]
    assert sorted(made.blobs.stored()) == sorted([fresh, live, redeploy])
    # Once past the grace, only the bundle of the live endpoint is left.
    assert sorted(made.reaper.collect_bundles(LATER)) == sorted([fresh, redeploy])
    assert list(made.blobs.stored()) == [live]
    assert (made.blobs.root / f".{'c' * 16}.x.part").exists()
    made.store.close()


async def test_files_are_kept_while_a_kept_bundle_names_them(tmp_path) -> None:
    made = Setup(tmp_path, bundle_grace=60)
    now = time.time()
    old = now - 120
    shared, only_old, only_live = (made.bundle(text, stored_at=old) for text in ("shared", "old file", "live file"))
    fresh = made.bundle("uploaded for a manifest on its way", stored_at=now - 5)

    def manifest(*files: tuple[str, str]) -> str:
        entries = [FileEntry(path, 0o644, len(text), hashlib.sha256(text.encode()).hexdigest()) for path, text in files]
        return made.bundle(encode_manifest(entries).data, stored_at=old)

    unused = manifest(("a", "shared"), ("b", "old file"))
    live = manifest(("a", "shared"), ("c", "live file"))
    made.endpoint("live", ttl=0, seen=now, digest=live)

    assert sorted(made.reaper.collect_bundles(now)) == sorted([unused, only_old])
    assert sorted(made.blobs.stored()) == sorted([live, shared, only_live, fresh])
    assert sorted(made.reaper.collect_bundles(LATER)) == [fresh]
    assert sorted(made.blobs.stored()) == sorted([live, shared, only_live])
    made.store.close()


async def test_run_sweeps_and_gives_clients_of_an_earlier_run_the_whole_ttl(setup) -> None:
    # Idle for ages by its last_client_seen, but the reaper (a restarted service) just started.
    endpoint_id = setup.endpoint("hello", ttl=0.5, seen=0)
    task = asyncio.create_task(setup.reaper.run())
    try:
        await asyncio.sleep(0.25)
        assert setup.state(endpoint_id) == "ready"
        await eventually(lambda: setup.state(endpoint_id) == "stopped", timeout=5, what="ttl teardown")
        assert time.time() - setup.reaper.started_at >= 0.5
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- end to end ---------------------------------------------------------------------------------

TTL_SOURCE = """
from vastrpc import Deployment

app = Deployment(name="{name}", ttl=2)

@app.remote(benchmark_dataset=[{{"x": 1}}])
async def inc(x: int) -> int:
    return x + 1
"""

# A short bundle grace: the bundle of a torn-down endpoint goes at once, not a minute later.
with_short_bundle_grace = pytest.mark.parametrize("control_service", [{"args": ["--bundle-grace", "1"]}], indirect=True)


@pytest.mark.e2e
@with_short_bundle_grace
async def test_ttl_tears_down_after_the_client_leaves_and_ensure_ready_brings_it_back(project, control_service) -> None:
    mod = project(TTL_SOURCE)
    first = await mod.app.ensure_ready()
    assert await mod.inc(1) == 2
    pids = [w["pid"] for w in await project.workers(mod.app)]
    bundle_path = control_service.home / "bundles" / first.bundle_digest
    assert pids and bundle_path.is_file()

    await mod.app.close()
    closed = time.monotonic()
    while (await project.endpoint(mod.app))["state"] != "STOPPED":
        assert time.monotonic() - closed < 10, "not torn down within 10 s of a 2 s ttl"
        await asyncio.sleep(0.1)
    # Not before the ttl: the close itself counts as hearing from the client.
    assert time.monotonic() - closed >= 1.5
    await eventually(lambda: all(pid_gone(p) for p in pids), timeout=10, what="workers gone")
    assert await project.workers(mod.app) == []
    await eventually(lambda: not bundle_path.exists(), timeout=5, what="bundle deleted")
    assert f"ttl: tearing down {mod.app.name}:default after" in control_service.log_text()

    again = await mod.app.ensure_ready()
    assert again.tier == 4 and again.uploaded and again.endpoint_id == first.endpoint_id
    assert await mod.inc(41) == 42
    assert bundle_path.is_file()


@pytest.mark.e2e
async def test_a_connected_idle_client_keeps_it_alive(project) -> None:
    mod = project(TTL_SOURCE)
    await mod.app.ensure_ready()
    before = await project.workers(mod.app)
    await asyncio.sleep(5)  # 2.5 times the ttl, without a call
    assert (await project.endpoint(mod.app))["state"] == "READY"
    assert await project.workers(mod.app) == before
    result = await mod.app.ensure_ready()
    assert result.tier == 0 and result.workers_started == 0
    assert await mod.inc(1) == 2
