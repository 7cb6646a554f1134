"""Two control services on one PostgreSQL database: the same deployments through either, one leader, takeover.

Also the rules they follow, unit-tested: Leadership over a stand-in lock, and whose workers are whose.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests.ports import free_ports
from vastrpc.api.v1 import common_pb2, control_pb2
from vastrpc.control.lifecycle.leadership import Leadership, on_this_host, orphan_loss, owner_is_gone, process_owner
from vastrpc.control.stores.base import WorkerRow
from vastrpc.control.stores.postgres import _MIGRATIONS

from .conftest import configure, wait_listening
from .helpers import FAKE_WORKER, READY, Client, bundle, make_spec, pid_gone

pytestmark = pytest.mark.timeout(240)

STOPPED = common_pb2.ENDPOINT_STATE_STOPPED
WORKER_READY = common_pb2.WORKER_STATE_READY
# Quick loops, so that the test waits seconds, not minutes (the heartbeat timeout stays 10 s).
FAST = ["--heartbeat-interval", "0.5", "--autoscale-interval", "0.5", "--reaper-interval", "0.5"]
# A follower tries the lock every second; a killed leader's connection drops at once.
TAKEOVER_BOUND = 5.0

SOURCE = """
import os
from vastrpc import Deployment

app = Deployment(name="{name}")
app.configure_autoscaling(min_workers=1, max_workers=1)

@app.remote(benchmark_dataset=[{{}}])
async def whoami() -> int:
    return os.getpid()
"""


async def until(check, timeout: float, what: str) -> float:
    """Wait until ``check()`` holds; returns the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def _endpoint(client: Client, name: str) -> control_pb2.DeploymentEndpoint:
    (deployment,) = (await client.list(name)).deployments
    (endpoint,) = deployment.endpoints
    return endpoint


def _ready_ids(endpoint: control_pb2.DeploymentEndpoint | control_pb2.WatchEndpointResponse) -> list[str]:
    return sorted(w.worker_id for w in endpoint.workers if w.state == WORKER_READY)


@pytest.mark.e2e
async def test_with_peers_a_lost_services_workers_turn_to_the_survivor_and_keep_serving(
    pg_url: str, tmp_path: Path, control_processes, load_app
) -> None:
    home = tmp_path / "home"
    port_a, port_b = free_ports(2)
    a = control_processes(home, "a", "--store", pg_url, "--port", str(port_a), "--peer", f"127.0.0.1:{port_b}", *FAST)
    await until(lambda: a.leads, 10, "a leading")
    b = control_processes(home, "b", "--store", pg_url, "--port", str(port_b), "--peer", f"127.0.0.1:{port_a}", *FAST)
    module = load_app(SOURCE, "peers", a)
    await module.app.ensure_ready()
    serving_pid = await module.whoami()
    await module.app.close()
    configure(module.app, b)
    async with Client(b.address, b.api_key) as client:
        (worker_id,) = _ready_ids(await _endpoint(client, "peers"))

    a.kill()
    await until(lambda: b.leads, 15, "b taking over")
    # The worker A started turns to B within a few heartbeats and reports there from then on ...
    worker_log = home / "logs" / "workers" / f"{worker_id}.log"
    took = await until(lambda: f"reporting to 127.0.0.1:{port_b}" in worker_log.read_text(), 20, "turning to b")
    print(f"the worker turned to b {took:.2f}s after a died")
    # ... so past the heartbeat timeout (10 s) it is still the endpoint's ready worker: nothing lost, nothing started.
    await asyncio.sleep(12)
    async with Client(b.address, b.api_key) as client:
        endpoint = await _endpoint(client, "peers")
        assert _ready_ids(endpoint) == [worker_id], endpoint
        assert [w.state for w in endpoint.workers] == [WORKER_READY]
    assert await module.whoami() == serving_pid  # the same serving process, never restarted
    assert "started worker" not in b.log_text()

    # Its assignment watch follows it to B too: a code update through B reaches it in place (tier 2).
    source_file = Path(module.__file__)
    source_file.write_text(source_file.read_text() + "\n# a change of code\n")
    update = await module.app.ensure_ready()
    assert (update.tier, update.workers_started) == (2, 0)
    async with Client(b.address, b.api_key) as client:
        assert _ready_ids(await _endpoint(client, "peers")) == [worker_id]
    assert await module.whoami() != serving_pid  # a new serving process of the same worker


@pytest.mark.e2e
async def test_two_services_serve_the_same_deployment_and_the_survivor_replaces_lost_workers(
    pg_url: str, tmp_path: Path, control_processes, load_app
) -> None:
    # One home for both: the API key, bundles and worker logs are shared; the state is in PostgreSQL.
    home = tmp_path / "home"
    a = control_processes(home, "a", "--store", pg_url, *FAST)
    await until(lambda: a.leads, 10, "a leading")
    b = control_processes(home, "b", "--store", pg_url, *FAST)
    await until(lambda: "following" in b.log_text(), 10, "b following")
    info = json.loads((home / "control.json").read_text())
    assert (info["pid"], info["leader"]) == (b.process.pid, False)
    assert a.leads and not b.leads

    module = load_app(SOURCE, "shared", a)
    first = await module.app.ensure_ready()
    pid_via_a = await module.whoami()

    async with Client(b.address, b.api_key) as client:
        endpoint = await _endpoint(client, "shared")
        assert (endpoint.endpoint_id, endpoint.state, endpoint.revision_id) == (
            first.endpoint_id,
            READY,
            first.revision_id,
        )
        (worker_id,) = _ready_ids(endpoint)
        update = await client.wait_ready(first.endpoint_id, workers=1)
        assert _ready_ids(update) == [worker_id]

    # A client of B: the same endpoint and revision, nothing started, its calls served by A's worker.
    await module.app.close()
    configure(module.app, b)
    again = await module.app.ensure_ready()
    assert (again.tier, again.endpoint_id, again.revision_id, again.workers_started) == (
        0,
        first.endpoint_id,
        first.revision_id,
        0,
    )
    assert await module.whoami() == pid_via_a

    a.kill()
    took = await until(lambda: b.leads, 15, "b taking over")
    print(f"takeover after {took:.2f}s")
    assert took < TAKEOVER_BOUND, f"b led {took:.1f}s after a died"
    assert json.loads((home / "control.json").read_text())["leader"] is True

    # A's worker lost its control service: after the heartbeat timeout the new leader stops it
    # and starts a replacement of its own, and B's client calls the new worker.
    async with Client(b.address, b.api_key) as client:

        async def replaced() -> list[str]:
            while True:
                ids = _ready_ids(await _endpoint(client, "shared"))
                if ids and ids != [worker_id]:
                    return ids
                await asyncio.sleep(0.25)

        (new_worker,) = await asyncio.wait_for(replaced(), 60)
        listing = await _endpoint(client, "shared")
        lost = [w for w in listing.workers if w.worker_id == worker_id]
        assert lost and lost[0].state == common_pb2.WORKER_STATE_FAILED, listing
        assert "heartbeat" in lost[0].failure.step, lost[0].failure
        await until(lambda: pid_gone(pid_via_a), 20, "the lost worker's serving process ending")
        assert await module.whoami() != pid_via_a
        assert f"started worker {new_worker}" in b.log_text()  # B's autoscaler replaced it

        torn = await client.teardown("shared")
        assert torn.endpoints_removed == 1
        after = await _endpoint(client, "shared")
        assert (after.state, list(after.workers)) == (STOPPED, [])
    await module.app.close()


@pytest.mark.e2e
async def test_services_started_together_elect_one_leader_and_the_survivor_runs_the_ttl(
    pg_url: str, tmp_path: Path, control_processes
) -> None:
    home = tmp_path / "home"
    args = ["--store", pg_url, "--worker-command", shlex.join(FAKE_WORKER), *FAST]
    starting = [control_processes(home, name, *args, wait=False) for name in ("a", "b")]
    for service in starting:
        wait_listening(service)
    await until(lambda: any(s.leads for s in starting), 10, "a leader")
    await asyncio.sleep(2.5)  # two more tries of the follower: it must still follow
    leaders = [s for s in starting if s.leads]
    assert len(leaders) == 1, [s.log_text() for s in starting]
    (leader,) = leaders
    (follower,) = [s for s in starting if s is not leader]
    assert "following" in follower.log_text()
    with psycopg.connect(pg_url) as db:  # both migrated the new database at once: each version once
        versions = [r[0] for r in db.execute("SELECT version FROM schema_version ORDER BY version")]
        assert versions == list(range(1, len(_MIGRATIONS) + 1))

    data, digest = bundle("ttl")
    spec = make_spec("ttl-app", digest=digest, api_key=leader.api_key)
    spec.ttl = 3.0
    async with (
        Client(leader.address, leader.api_key) as via_leader,
        Client(follower.address, follower.api_key) as via_follower,
    ):
        reg = await via_leader.register(spec)
        await via_leader.upload(data, digest)
        # A watcher on the follower sees what the leader does, and keeps the endpoint in use.
        watch = asyncio.create_task(via_follower.wait_ready(reg.endpoint_id, workers=1, timeout=30))
        await asyncio.sleep(0.3)
        await via_leader.provision(reg.endpoint_id, reg.revision_id)
        update = await watch
        (worker_id,) = _ready_ids(update)
        holder = via_follower.stub.WatchEndpoint(
            control_pb2.WatchEndpointRequest(endpoint_id=reg.endpoint_id), metadata=via_follower.metadata
        )
        await holder.read()
        await asyncio.sleep(6)  # twice the ttl: the leader's reaper counts the follower's watcher
        assert (await _endpoint(via_follower, "ttl-app")).state == READY
        assert "ttl: tearing down" not in leader.log_text()

        leader.kill()
        took = await until(lambda: follower.leads, 15, "the follower taking over")
        assert took < TAKEOVER_BOUND
        holder.cancel()  # the last client goes: the new leader's reaper tears it down after the ttl
        await until(lambda: "ttl: tearing down ttl-app" in follower.log_text(), 30, "the ttl teardown")
        assert (await _endpoint(via_follower, "ttl-app")).state == STOPPED
    # The dead leader's fake worker lost its service; the new leader found it gone too.
    assert f"worker {worker_id} failed at heartbeat" in follower.log_text()


class _Lock:
    """A leader lock the test hands out and takes away (a unit-test stand-in for PostgreSQL's)."""

    def __init__(self) -> None:
        self.free = False
        self.held = False
        self.released = 0

    async def try_acquire(self) -> bool:
        self.held = self.free
        return self.held

    async def still_held(self) -> bool:
        return self.held

    async def release(self) -> None:
        self.held = False
        self.released += 1


async def test_leadership_runs_the_loops_only_while_it_holds_the_lock() -> None:
    lock = _Lock()
    changes: list[bool] = []
    runs: list[str] = []

    async def loops() -> None:
        runs.append("start")
        try:
            await asyncio.sleep(3600)
        finally:
            runs.append("stop")

    leadership = Leadership(lock, interval=0.02, on_change=changes.append)
    task = asyncio.create_task(leadership.run(loops))
    await asyncio.sleep(0.2)
    assert (leadership.is_leader, runs, changes) == (False, [], [])  # following
    lock.free = True
    await until(lambda: runs == ["start"], 2, "the loops starting")
    assert leadership.is_leader and changes == [True]
    lock.held = False  # its connection broke: the lock is gone
    lock.free = False
    await until(lambda: runs == ["start", "stop"], 2, "the loops stopping")
    assert not leadership.is_leader and changes == [True, False]
    lock.free = True
    await until(lambda: runs == ["start", "stop", "start"], 2, "leading again")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert runs[-1] == "stop" and changes == [True, False, True, False] and lock.released == 1


def test_owners_on_this_host_are_judged_by_their_process() -> None:
    me = process_owner()
    host = socket.gethostname()
    assert me.startswith(f"{host}:") and owner_is_gone(me, me=me) is False and on_this_host(me)
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert owner_is_gone(f"{host}:{exited.stdout.strip()}:1", me=me) is True
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        alive = Path(f"/proc/{parent.pid}/stat").read_text().rpartition(")")[2].split()[19]
        assert owner_is_gone(f"{host}:{parent.pid}:{alive}", me=me) is False
        # The same pid with another start time is another process: the owner is gone.
        assert owner_is_gone(f"{host}:{parent.pid}:{int(alive) - 1}", me=me) is True
    finally:
        parent.kill()
        parent.wait()
    assert owner_is_gone("elsewhere:1:1", me=me) is None and not on_this_host("elsewhere:1:1")
    assert owner_is_gone("", me=me) is True and on_this_host("")


def test_orphans_of_a_dead_service_are_lost_at_once_and_silent_starters_after_a_minute() -> None:
    me = process_owner()
    now = time.time()
    dead = f"{socket.gethostname()}:999999999:1"
    worker = WorkerRow(id="w-1", endpoint_id="e", revision_id="r", state="ready", token_hash="h", created_at=now)
    assert "gone" in (orphan_loss(WorkerRow(**{**worker.__dict__, "owner": dead}), now, 10, me=me) or "")
    # A worker on another machine (Ray): its pid is no process of this host; its heartbeats judge it.
    assert orphan_loss(WorkerRow(**{**worker.__dict__, "owner": dead}), now, 10, me=me, local=False) is None
    assert orphan_loss(WorkerRow(**{**worker.__dict__, "owner": me}), now, 10, me=me) is None
    remote = WorkerRow(**{**worker.__dict__, "owner": "elsewhere:1:1", "state": "starting"})
    assert orphan_loss(remote, now + 30, 10, me=me) is None
    assert "never registered" in (orphan_loss(remote, now + 61, 10, me=me) or "")
    registered = WorkerRow(**{**remote.__dict__, "last_heartbeat": now})
    assert orphan_loss(registered, now + 61, 10, me=me) is None  # heartbeats judge it
