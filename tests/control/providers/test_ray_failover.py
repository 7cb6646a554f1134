"""Ray workers through faults of the control plane and of the cluster: a killed leader, a lost node.

On real parts: a two-node Ray cluster on this machine (tests/control/ray_cluster.py, its own
for this module: a test kills a node), PostgreSQL for two control services with ``--peer``,
real worker agents and serving processes. The figures printed are those RELIABILITY.md keeps.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_ports
from vastrpc import VastrpcError
from vastrpc.api.v1 import common_pb2, control_pb2

from ..conftest import ServiceProcess, configure
from ..helpers import Client
from ..ray_cluster import RAY_ENV, RayCluster, running_cluster

pytestmark = [pytest.mark.e2e]

# Quick loops, so that the test waits seconds, not minutes (the heartbeat timeout stays 10 s).
FAST = ["--heartbeat-interval", "0.5", "--autoscale-interval", "0.5", "--reaper-interval", "0.5"]
WORKER_READY = common_pb2.WORKER_STATE_READY

SOURCE = """
import os
from vastrpc import Deployment

app = Deployment(name="{name}"){image}
app.configure_autoscaling(min_workers=2, max_workers=2)

@app.remote(retries=2, benchmark_dataset=[{{}}])
async def whoami() -> list:
    return [os.environ.get("VASTRPC_RAY_NODE_ID"), os.getpid()]
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    """A head (2 CPUs, no GPU) and a GPU node (2 CPUs, 2 fake GPUs), for this module alone."""
    with running_cluster() as made:
        yield made


@pytest.fixture
def ray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Control services started by the test join the cluster as drivers: they need Ray's settings."""
    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)


def _actors(cluster: RayCluster) -> dict[str, str]:
    """The live vastrpc worker actors: name → actor id."""
    found = cluster.run(
        "names = [a['name'] for a in ray.util.list_named_actors(all_namespaces=True)]\n"
        "result = {n: ray.get_actor(n)._actor_id.hex() for n in names if n.startswith('vastrpc-')}"
    )
    assert isinstance(found, dict)
    return found


async def _until(check: Callable[[], Any], timeout: float, what: str) -> float:
    """Wait until ``check()`` (sync or async) holds; returns the seconds it took."""
    start = time.monotonic()
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} did not happen within {timeout:g}s")
        await asyncio.sleep(0.25)


async def _endpoint(service: ServiceProcess, name: str) -> control_pb2.DeploymentEndpoint:
    async with Client(service.address, service.api_key) as client:
        (deployment,) = (await client.list(name)).deployments
        (endpoint,) = deployment.endpoints
        return endpoint


def _ready_ids(endpoint: control_pb2.DeploymentEndpoint) -> list[str]:
    return sorted(w.worker_id for w in endpoint.workers if w.state == WORKER_READY)


def _import_again(module: types.ModuleType, service: ServiceProcess) -> types.ModuleType:
    """The same deployment file as another module, its app a client of ``service``: the same bundle, tier 0."""
    path = Path(str(module.__file__))
    spec = importlib.util.spec_from_file_location(f"{module.__name__}_again", path)
    assert spec is not None and spec.loader is not None
    again = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = again
    spec.loader.exec_module(again)
    configure(again.app, service)
    return again


class Callers:
    """Calls ``fn`` every ``period`` seconds from each module until stopped; counts answers and failures."""

    def __init__(self, modules: list[types.ModuleType], period: float) -> None:
        self.answers: list[list[Any]] = []
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.ensure_future(self._call(m, period)) for m in modules]

    async def _call(self, module: types.ModuleType, period: float) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.answers.append(await asyncio.wait_for(module.whoami(), 30))
            except (VastrpcError, TimeoutError) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


@pytest.mark.timeout(420)
async def test_ray_workers_outlive_a_killed_leader_and_the_survivor_adopts_them(
    cluster: RayCluster, ray_env: None, pg_url: str, tmp_path: Path, control_processes, load_app
) -> None:
    home = tmp_path / "home"
    port_a, port_b = free_ports(2)
    ray = ["--provider", "ray", "--ray-address", cluster.address, "--store", pg_url, *FAST]
    a = control_processes(home, "a", *ray, "--port", str(port_a), "--peer", f"127.0.0.1:{port_b}")
    await _until(lambda: a.leads, 15, "a leading")
    b = control_processes(home, "b", *ray, "--port", str(port_b), "--peer", f"127.0.0.1:{port_a}")
    via_a = load_app(SOURCE.replace("{image}", ""), "adopted", a)
    await via_a.app.ensure_ready()
    via_b = _import_again(via_a, b)
    try:
        assert (await via_b.app.ensure_ready()).tier == 0
        workers = _ready_ids(await _endpoint(b, "adopted"))
        assert len(workers) == 2
        actors = _actors(cluster)
        assert sorted(actors) == [f"vastrpc-{w}" for w in workers]

        # ~10 calls/s, through both services' clients, from before the kill until well past the heartbeat timeout.
        callers = Callers([via_a, via_b], period=0.2)
        await asyncio.sleep(3)
        serving = {tuple(answer) for answer in callers.answers}
        killed_at = time.monotonic()
        a.kill()
        await _until(lambda: b.leads, 15, "b taking over")
        adopted = await _until(
            lambda: all(f"adopted worker {w}" in b.log_text() for w in workers), 30, "b adopting a's workers"
        )
        print(f"the survivor adopted both Ray workers {adopted:.2f}s after the leader was killed")
        await asyncio.sleep(max(0.0, 15 - (time.monotonic() - killed_at)))
        await callers.stop()
    finally:
        await via_b.app.close()
        sys.modules.pop(via_b.__name__, None)

    assert callers.failures == [], callers.failures[:5]
    assert len(callers.answers) > 100
    # The same workers serve on: their actors (same ids) were neither replaced nor restarted, and
    # the serving processes that answered before the kill answer after it.
    assert {tuple(answer) for answer in callers.answers[-20:]} <= serving
    assert _ready_ids(await _endpoint(b, "adopted")) == workers
    assert _actors(cluster) == actors
    assert "started worker" not in b.log_text()
    for worker_id in workers:
        assert f"reporting to 127.0.0.1:{port_b}" in (home / "logs" / "workers" / f"{worker_id}.log").read_text()

    # The survivor tears them down: no actor left behind on the cluster.
    async with Client(b.address, b.api_key) as client:
        await client.teardown("adopted")
    await _until(lambda: _no_actors(cluster), 60, "no worker actor left after the teardown")


async def _no_actors(cluster: RayCluster) -> bool:
    return not await asyncio.to_thread(_actors, cluster)


@pytest.mark.timeout(600)
async def test_an_endpoint_that_lost_its_only_node_waits_for_it_and_serves_again_when_it_returns(
    cluster: RayCluster, ray_env: None, tmp_path: Path, control_processes, load_app
) -> None:
    service = control_processes(tmp_path / "home", "c", "--provider", "ray", "--ray-address", cluster.address, *FAST)
    image = '\napp.image("python:3.11-slim").require(gpus=1)'
    module = load_app(SOURCE.replace("{image}", image), "needsgpu", service)
    await module.app.ensure_ready()
    workers = _ready_ids(await _endpoint(service, "needsgpu"))
    assert len(workers) == 2
    gpu_nodes = [n for n in cluster.nodes if n.name.startswith("gpu") and not n.killed]
    assert len(gpu_nodes) == 1

    # The only node that meets the filters goes away, every process on it at once.
    gpu_nodes[0].kill()
    lost_at = time.monotonic()

    async def waiting_for(text: str) -> str | None:
        endpoint = await _endpoint(service, "needsgpu")
        if endpoint.state == common_pb2.ENDPOINT_STATE_WAITING and text in endpoint.failure.message:
            return endpoint.failure.message
        return None

    waited = await _until(lambda: waiting_for("its last worker w-"), 60, "the endpoint waiting, naming the lost worker")
    print(f"waiting {waited:.1f}s after the node was lost")
    message = await waiting_for("its last worker w-")
    assert message is not None and any(w in message for w in workers), message
    # Ray's side of it, not a bare "killed by signal SIGKILL": the actor and its node.
    assert "its Ray actor on node" in message or "its Ray node" in message, message
    unmet = "no node in the Ray cluster meets num_gpus >= 1"
    named = await _until(lambda: waiting_for(unmet), 120, "the endpoint naming the unmet query")
    print(f"naming the unmet query {time.monotonic() - lost_at:.1f}s after the node was lost ({named:.1f}s later)")

    # A node with the same resources comes back: the endpoint serves again by itself, no redeploy.
    back_at = time.monotonic()
    await asyncio.to_thread(cluster.start_gpu_node, f"gpu{len(cluster.nodes)}")

    async def serving() -> bool:
        return (await _endpoint(service, "needsgpu")).state == common_pb2.ENDPOINT_STATE_READY

    await _until(serving, 90, "the endpoint serving again")
    took = time.monotonic() - back_at
    print(f"serving again {took:.1f}s after a node that meets the filters was started again")
    assert took < 60
    node_id, _ = await asyncio.wait_for(module.whoami(), 60)
    alive = cluster.run("result = [n['NodeID'] for n in ray.nodes() if n['Alive'] and n['Resources'].get('GPU')]")
    assert alive == [node_id]  # served on the node that came back
    assert not set(_ready_ids(await _endpoint(service, "needsgpu"))) & set(workers)  # by new workers

    async with Client(service.address, service.api_key) as client:
        await client.teardown("needsgpu")
    await _until(lambda: _no_actors(cluster), 60, "no worker actor left after the teardown")
