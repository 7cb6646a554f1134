"""The Ray provider: workers placed as actors on a real two-node Ray cluster on this machine, and its placement rules.

The cluster (tests/control/ray_cluster.py) is a head node without GPUs and a second node
declaring two fake GPUs of type FAKEGPU with 24 GB each; one cluster serves the module.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vastrpc import Deployment, DeploymentError
from vastrpc._errors import DefinitionError
from vastrpc._tls import ensure_local_ca, issue_certificate
from vastrpc.api.v1 import control_pb2
from vastrpc.client.control import ControlClient
from vastrpc.config import ControlConfig
from vastrpc.control.backends import open_provider
from vastrpc.control.providers.placement import (
    COMPUTE_CAP_LABEL,
    CUDA_LABEL,
    DRIVER_LABEL,
    GPU_RAM_LABEL,
    NodeInfo,
    Placement,
)
from vastrpc.control.providers.ray import RayProvider, _Worker
from vastrpc.image import keyword_queries
from vastrpc.query import (
    A100_SXM4,
    compute_cap,
    cpu_cores_effective,
    cpu_ram,
    cuda_max_good,
    dph_total,
    driver_vers,
    gpu_name,
    gpu_ram,
    label,
    num_gpus,
)

from ..ray_cluster import GPU_NODE_ACCELERATOR, RAY_ENV, RayCluster, running_cluster

# -- search filters (unit) ----------------------------------------------------------------


def test_require_turns_keyword_filters_and_labels_into_queries() -> None:
    image = Deployment(name="x").image("python:3.11-slim")
    image.require(gpus=1, accelerator="A100", gpu_ram_gb=40.5, cpus=2, ram_gb=16, labels={"zone": "us-east"})
    assert image.requirements == [
        num_gpus >= 1,
        gpu_name == "A100",
        gpu_ram >= 40.5,
        cpu_cores_effective >= 2,
        cpu_ram >= 16,
        label("zone") == "us-east",
    ]


@pytest.mark.parametrize(
    "filters, match",
    [
        ({"gpu": 1}, r"unknown filter 'gpu'; accepted filters: gpus= .*gpu_name= .*labels="),
        ({"gpus": "1"}, "gpus must be a number"),
        ({"gpus": True}, "gpus must be a number"),
        ({"gpus": -1}, "gpus must be at least 0"),
        ({"cpus": 0}, "cpus must be above 0"),
        ({"gpu_name": ""}, "GPU model name"),
        ({"labels": {}}, "non-empty dict"),
        ({"labels": {"zone": "us east"}}, "value of label 'zone'"),
    ],
)
def test_require_rejects_unknown_filters_and_bad_values(filters: dict[str, Any], match: str) -> None:
    with pytest.raises(DefinitionError, match=match):
        Deployment(name="x").image("python:3.11-slim").require(**filters)


HEAD = NodeInfo("a" * 56, "10.0.0.1", {"CPU": 4.0, "memory": 32e9}, {"zone": "head"})
GPU = NodeInfo(
    "b" * 56,
    "10.0.0.2",
    {"CPU": 8.0, "GPU": 2.0, "memory": 64e9, "accelerator_type:A100": 1.0},
    {"zone": "gpu", GPU_RAM_LABEL: "40"},
)


def _placement(**filters: Any) -> Placement:
    return Placement.from_queries(keyword_queries(filters))


def test_placement_maps_amounts_to_resources_and_properties_to_eligible_nodes() -> None:
    placement = _placement(gpus=2, gpu_name="a100", ram_gb=8)
    assert placement.unmet([HEAD, GPU]) is None
    options = placement.ray_options([HEAD, GPU])
    assert options == {
        "num_cpus": 1.0,
        "num_gpus": 2.0,
        "memory": 8 * 10**9,
        "scheduling_strategy": "SPREAD",
        "label_selector": {"ray.io/node-id": f"in({GPU.node_id})"},
    }
    # Nothing about the node itself: any node, with the default CPU.
    assert Placement.from_queries([]).ray_options([HEAD, GPU]) == {
        "num_cpus": 1.0,
        "num_gpus": 0.0,
        "scheduling_strategy": "SPREAD",
    }
    # A GPU model implies a GPU; Vast's spelling of the model matches Ray's.
    assert _placement(gpu_name="A100").gpus == 1.0
    assert Placement.from_queries([gpu_name == A100_SXM4]).unmet([HEAD, GPU]) is None
    # Labels are Ray's to select; GPU properties add the nodes that have them.
    labelled = _placement(labels={"zone": "gpu"}, gpu_ram_gb=24).ray_options([HEAD, GPU])
    assert labelled["label_selector"] == {"zone": "gpu", "ray.io/node-id": f"in({GPU.node_id})"}
    # The worker's share is the least the queries allow.
    share = Placement.from_queries([num_gpus > 1, cpu_cores_effective >= 2.5, cpu_ram.in_([16, 12])])
    assert (share.gpus, share.cpus, share.ram_gb) == (2.0, 2.5, 12.0)
    notin = Placement.from_queries([label("zone").notin_(["head", "moon"])]).ray_options([HEAD, GPU])
    assert notin["label_selector"] == {"zone": "!in(head,moon)"}


@pytest.mark.parametrize(
    "requirements, expected",
    [
        ({"gpus": 8}, "no node in the Ray cluster meets num_gpus >= 8: its 2 node(s) offer 0 GPUs, 2 GPUs"),
        ({"gpu_name": "H100"}, 'meets gpu_name == "H100": its 2 node(s) offer 0 GPUs, A100'),
        ({"gpu_ram_gb": 80}, "meets gpu_ram >= 80: its 2 node(s) offer 0 GPUs, 40"),
        ({"labels": {"zone": "moon"}}, 'meets label("zone") == "moon": its 2 node(s) offer gpu, head'),
        ({"ram_gb": 100}, "meets cpu_ram >= 100: its 2 node(s) offer 32, 64"),
        ({"gpus": 1, "labels": {"zone": "head"}}, 'meets num_gpus >= 1, label("zone") == "head" together'),
    ],
)
def test_placement_names_the_query_no_node_meets(requirements: dict[str, Any], expected: str) -> None:
    problem = _placement(**requirements).unmet([HEAD, GPU])
    assert problem is not None and expected in problem, problem


def test_placement_checks_node_properties_declared_in_labels_and_reports_columns_it_cannot_know() -> None:
    declared = NodeInfo(
        "c" * 56,
        "10.0.0.3",
        {"CPU": 8.0, "GPU": 1.0, "memory": 64e9, "accelerator_type:H100": 1.0},
        {COMPUTE_CAP_LABEL: "9.0", DRIVER_LABEL: "550.54.15", CUDA_LABEL: "12.4"},
    )
    placement = Placement.from_queries([compute_cap >= 8.9, driver_vers >= "535", cuda_max_good >= 12.2, dph_total < 2])
    assert placement.unmet([declared]) is None
    assert placement.unmet([GPU]) == (
        "no node in the Ray cluster meets compute_cap >= 890: its 1 node(s) offer compute_cap unknown; "
        "add a node that offers it (ray start --num-gpus/--resources/--labels) or change image().require(...)"
    )
    assert placement.not_applicable == [dph_total < 2]
    assert Placement.from_queries([]).unmet([]) == "the Ray cluster has no live node: start one with `ray start`"


def test_open_provider_checks_the_ray_flags(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="--provider ray needs --ray-address"):
        open_provider(ControlConfig(home=tmp_path, provider="ray"))
    with pytest.raises(DefinitionError, match="add --provider ray"):
        open_provider(ControlConfig(home=tmp_path, ray_address="127.0.0.1:6379"))
    with pytest.raises(DefinitionError, match="use 'local' or 'ray'"):
        open_provider(ControlConfig(home=tmp_path, provider="k8s"))


async def test_the_ray_provider_says_it_does_not_run_the_image(tmp_path: Path) -> None:
    provider = RayProvider("127.0.0.1:1", tmp_path)  # joins the cluster only when it starts a worker
    image = control_pb2.ImageSpec(
        from_image="pytorch/pytorch:2.5.1-cuda12.4",
        python_environment=control_pb2.PythonEnvironment(venv_path="/venv/main"),
    )
    notes = await provider.image_warnings(image)
    assert "image 'pytorch/pytorch:2.5.1-cuda12.4' is not run" in notes[0] and "--provider podman" in notes[0]
    assert any("venv /venv/main" in note for note in notes[1:])


class _Remote:
    """A Ray actor method for unit tests: ``.remote(...)`` returns a ref whose future holds the result."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_result(self.fn(*args))
        return types.SimpleNamespace(future=lambda: future)


async def test_the_log_of_a_worker_on_another_machine_is_copied_from_where_its_launch_began(tmp_path: Path) -> None:
    remote_log = tmp_path / "node" / "w-1.log"
    remote_log.parent.mkdir()
    remote_log.write_bytes(b"an earlier launch on that node\n")
    start = remote_log.stat().st_size
    remote_log.write_bytes(remote_log.read_bytes() + b"starting\n")

    def read_log(offset: int, limit: int) -> bytes:
        with remote_log.open("rb") as f:
            f.seek(offset)
            return f.read(min(limit, 4))  # in small pieces, as a large log is

    provider = RayProvider("127.0.0.1:1", tmp_path / "home")
    local = provider.log_path("w-1")
    local.parent.mkdir(parents=True)
    local.write_bytes(b"an earlier launch elsewhere\n")
    worker = _Worker(types.SimpleNamespace(read_log=_Remote(read_log)), mirror=True, log_offset=start)
    await provider._mirror_once("w-1", worker)
    remote_log.write_bytes(remote_log.read_bytes() + b"ready\n")
    await provider._mirror_once("w-1", worker)
    assert local.read_bytes() == b"an earlier launch elsewhere\nstarting\nready\n"
    assert worker.log_offset == remote_log.stat().st_size


async def test_an_adopted_worker_is_watched_its_log_copied_on_and_its_exit_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ray = pytest.importorskip("ray")
    killed: list[Any] = []
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart=True: killed.append(actor))  # no cluster here
    remote_log = b"launch of another service\nstarting\nready\n"
    exited: concurrent.futures.Future[int] = concurrent.futures.Future()
    info = {"pid": 4321, "node_ip": "10.0.0.2", "node_id": "n" * 56, "log_start": 26, "log_size": len(remote_log)}
    actor = types.SimpleNamespace(
        info=_Remote(lambda marker: {**info, "shared_files": False, "running": True}),
        read_log=_Remote(lambda offset, limit: remote_log[offset : offset + limit]),
        wait=types.SimpleNamespace(remote=lambda: types.SimpleNamespace(future=lambda: exited)),
    )
    exits: list[tuple[str, int, int]] = []
    provider = RayProvider("127.0.0.1:1", tmp_path, on_exit=lambda *args: exits.append(args))

    async def find(worker_id: str) -> Any:
        return actor if worker_id == "w-1" else None

    provider._find_actor = find  # type: ignore[method-assign]
    provider.log_path("w-1").parent.mkdir(parents=True)
    provider.log_path("w-1").write_bytes(b"copied by the service that placed it\n")
    provider.adopt_worker("w-1", 99, ())
    provider.adopt_worker("w-1", 99, ())  # once
    assert provider.is_running("w-1")
    await _until(lambda: _watched(provider, "w-1"), 5, "the adoption")
    worker = provider._workers["w-1"]
    assert (worker.pid, worker.node_ip, worker.mirror) == (4321, "10.0.0.2", True)
    # Its log here is copied on from where the node's log is now, not again from its start.
    assert worker.log_offset == len(remote_log)
    exited.set_result(0)
    await _until(lambda: _exited(exits), 5, "the exit callback")
    assert exits == [("w-1", 4321, 0)] and not provider.is_running("w-1")
    assert killed == [actor]  # its actor ended once its agent exited
    # A worker with no actor (gone meanwhile) is left to its heartbeats.
    provider.adopt_worker("w-2", 7, ())
    await _until(lambda: _not_running(provider, "w-2"), 5, "giving up on the adoption")


async def _watched(provider: RayProvider, worker_id: str) -> bool:
    worker = provider._workers.get(worker_id)
    return worker is not None and worker.watcher is not None


async def _exited(exits: list[Any]) -> bool:
    return bool(exits)


async def _not_running(provider: RayProvider, worker_id: str) -> bool:
    return not provider.is_running(worker_id)


# -- on a real cluster (e2e) --------------------------------------------------------------

_CLUSTER: dict[str, str] = {}


def _ray_flags(tmp_path: Path) -> list[str]:
    return ["--provider", "ray", "--ray-address", _CLUSTER["address"]]


# The control service joins the module's cluster as a driver.
on_ray = pytest.mark.parametrize("control_service", [{"setup": _ray_flags, "env": RAY_ENV}], indirect=True)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    """A head (2 CPUs, no GPU) and a GPU node (2 CPUs, 2 fake FAKEGPU GPUs) for the module."""
    with running_cluster() as cluster:
        _CLUSTER["address"] = cluster.address
        addresses = cluster.run("result = sorted({n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']})")
        assert isinstance(addresses, list)
        _CLUSTER["node_ips"] = ",".join(addresses)
        yield cluster


SOURCE = """
import os
from vastrpc import Deployment

app = Deployment(name="{name}"{tag})
app.image("python:3.11-slim").env(STAGE="{stage}"){require}
app.configure_autoscaling(min_workers={workers}, max_workers={workers})

@app.remote(benchmark_dataset=[{{}}])
async def where() -> dict:
    return {{
        "version": "{version}",
        "stage": os.environ.get("STAGE"),
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "node_id": os.environ.get("VASTRPC_RAY_NODE_ID"),
        "host": os.environ.get("VASTRPC_WORKER_HOST"),
        "pid": os.getpid(),
    }}
"""


def source(
    require: str = "", *, workers: int = 1, version: str = "v1", stage: str = "a", tag: str = "", ttl: int = 0
) -> str:
    """A deployment module's source; ``require`` is the text inside ``.require(...)``."""
    options = (f', tag="{tag}"' if tag else "") + (f", ttl={ttl}" if ttl else "")
    text = SOURCE.replace("{name}", "\x00").format(
        tag=options,
        stage=stage,
        require=f".require({require})" if require else "",
        workers=workers,
        version=version,
    )
    # Escaped again for the project fixture, which fills in {name}.
    return text.replace("{", "{{").replace("}", "}}").replace("\x00", "{name}")


def _node_ids(cluster: RayCluster) -> dict[str, str]:
    """Node id → "gpu" or "head"."""
    nodes = cluster.run("result = [[n['NodeID'], n['Resources'].get('GPU', 0)] for n in ray.nodes() if n['Alive']]")
    assert isinstance(nodes, list)
    return {node_id: "gpu" if gpus else "head" for node_id, gpus in nodes}


def _actors(cluster: RayCluster) -> list[str]:
    """Names of the live vastrpc worker actors on the cluster."""
    names = cluster.run("result = sorted(a['name'] for a in ray.util.list_named_actors(all_namespaces=True))")
    assert isinstance(names, list)
    return [n for n in names if n.startswith("vastrpc-")]


async def _until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g}s")
        await asyncio.sleep(0.5)


@pytest.mark.e2e
@pytest.mark.timeout(300)
@on_ray
async def test_gpu_worker_lands_on_the_gpu_node_with_exactly_its_gpus(ray_cluster: RayCluster, project) -> None:
    mod = project(source("gpus=1"))
    await mod.app.ensure_ready()
    info = await mod.where()
    nodes = _node_ids(ray_cluster)
    assert nodes[info["node_id"]] == "gpu"
    assert info["cuda"] in ("0", "1")  # one of the node's two GPUs, and only it
    (worker,) = await project.workers(mod.app)
    # It serves on its node's address, which it registered; the client called it there.
    assert worker["address"].rpartition(":")[0] == info["host"] != "127.0.0.1"
    assert worker["pid"] == (await _serving_parent(info["pid"]))
    logs = await project.logs(worker["worker_id"])
    assert f"starting worker {worker['worker_id']} on Ray node {info['host']}" in logs
    assert f"GPUs [{info['cuda']}]" in logs


async def _serving_parent(pid: int) -> int:
    """The parent of a process (the agent of a serving process), from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[1])


@pytest.mark.e2e
@pytest.mark.timeout(240)
@on_ray
async def test_requirements_no_node_meets_fail_promptly_naming_the_filter(ray_cluster: RayCluster, project) -> None:
    cases = [
        ("gpus=8", "no node in the Ray cluster meets num_gpus >= 8: its 2 node(s) offer 0 GPUs, 2 GPUs"),
        (
            'gpu_name="H100"',
            f'no node in the Ray cluster meets gpu_name == "H100": its 2 node(s) offer 0 GPUs, {GPU_NODE_ACCELERATOR}',
        ),
        ("gpu_ram_gb=80", "no node in the Ray cluster meets gpu_ram >= 80: its 2 node(s) offer 0 GPUs, 24"),
        ('labels={"zone": "moon"}', 'no node in the Ray cluster meets label("zone") == "moon"'),
    ]
    for require, expected in cases:
        mod = project(source(require))
        started = time.monotonic()
        with pytest.raises(DeploymentError) as failure:
            await mod.app.ensure_ready()
        assert time.monotonic() - started < 20, require
        assert failure.value.step == "placement" and expected in failure.value.reason, failure.value
    assert _actors(ray_cluster) == []
    # A filter the GPU node meets, given the same way, places the worker there.
    mod = project(source(f'gpu_name="{GPU_NODE_ACCELERATOR.lower()}", gpu_ram_gb=24, labels={{"zone": "gpu"}}'))
    await mod.app.ensure_ready()
    info = await mod.where()
    assert _node_ids(ray_cluster)[info["node_id"]] == "gpu" and info["cuda"] in ("0", "1")


@pytest.mark.e2e
@pytest.mark.timeout(360)
@on_ray
async def test_workers_spread_over_both_nodes_serve_calls_and_killed_ones_are_replaced(
    ray_cluster: RayCluster, project
) -> None:
    mod = project(source(workers=2), balancer="round_robin")
    await mod.app.ensure_ready()
    nodes = _node_ids(ray_cluster)
    workers = await project.workers(mod.app)
    assert len(workers) == 2
    # One worker per node (SPREAD), as each says in its log.
    placed = {await _placed_on(project, w["worker_id"], nodes) for w in workers}
    assert placed == {"gpu", "head"}

    async def answered_by() -> set[str]:
        infos = await asyncio.gather(*(mod.where() for _ in range(12)))
        return {nodes[i["node_id"]] for i in infos}

    # Calls reach both.
    assert await _until(lambda: _both(answered_by), 60, "calls answered on both nodes")
    assert all(i["cuda"] == "" for i in await asyncio.gather(*(mod.where() for _ in range(4))))

    # The agent's process killed on its node: the worker fails and a new one takes its place.
    victim = workers[0]
    serving = _children(victim["pid"])
    assert serving
    os.kill(victim["pid"], signal.SIGKILL)
    after_kill = await _until(lambda: _replaced(project, mod.app, {victim["worker_id"]}), 120, "a replacement")
    assert await mod.where()
    await _until(lambda: _gone(serving), 30, "the end of the killed agent's serving process")

    # Its actor killed through Ray: the agent goes with it, and it is replaced too.
    victim = after_kill[0]
    serving = _children(victim["pid"])
    assert serving
    (name,) = [a for a in _actors(ray_cluster) if a == f"vastrpc-{victim['worker_id']}"]
    ray_cluster.run(f"ray.kill(ray.get_actor({name!r})); result = 1")
    gone = {victim["worker_id"]}
    replaced = await _until(lambda: _replaced(project, mod.app, gone), 120, "a replacement of the killed actor")
    await _until(
        lambda: _gone([victim["pid"], *serving]), 30, "the end of the killed actor's agent and its serving process"
    )
    # SPREAD is Ray's best effort: the replacement may share a node with the survivor. Calls
    # reach the nodes the two ready workers are on, whichever those are.
    placed = {await _placed_on(project, w["worker_id"], nodes) for w in replaced}
    assert await _until(lambda: _answered_by_exactly(answered_by, placed), 60, f"calls answered on {placed}")
    assert len(_actors(ray_cluster)) == 2


async def _placed_on(project, worker_id: str, nodes: dict[str, str]) -> str:  # type: ignore[no-untyped-def]
    """Which node ("gpu" or "head") the worker's log says it was started on."""
    logs = await project.logs(worker_id)
    (kind,) = {kind for node_id, kind in nodes.items() if f"({node_id[:12]})" in logs} or {"?"}
    return kind


def _children(pid: int) -> list[int]:
    """The pids of a process's children (a worker agent's serving processes), from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


async def _gone(pids: list[int]) -> bool:
    """Whether none of these processes runs any more (exited, or a zombie)."""
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z":
            return False
    return True


async def _both(answered_by: Any) -> bool:
    return await answered_by() == {"gpu", "head"}


async def _answered_by_exactly(answered_by: Any, nodes: set[str]) -> bool:
    return await answered_by() == nodes


async def _replaced(project, app, gone: set[str]) -> list[dict[str, Any]] | None:  # type: ignore[no-untyped-def]
    workers = await project.workers(app)
    ready = [w for w in workers if w["state"] == "READY" and w["worker_id"] not in gone]
    return ready if len(ready) == 2 else None


@pytest.mark.e2e
@pytest.mark.timeout(360)
@on_ray
async def test_update_tiers_and_teardown_on_ray_leave_no_actor_behind(ray_cluster: RayCluster, project) -> None:
    mod = project(source("gpus=1"))
    await mod.app.ensure_ready()
    (before,) = await project.workers(mod.app)
    first = await mod.where()

    # Tier 2: new code, loaded in place by the same worker (agent) on the same node.
    project.rewrite(mod, source("gpus=1", version="v2"))
    second = await mod.app.ensure_ready()
    assert second.tier == 2
    (after,) = await project.workers(mod.app)
    assert (after["worker_id"], after["pid"]) == (before["worker_id"], before["pid"])
    info = await mod.where()
    assert (info["version"], info["node_id"], info["cuda"]) == ("v2", first["node_id"], first["cuda"])

    # Tier 3: a new environment restarts the worker in its slot, placed again by its filters.
    project.rewrite(mod, source("gpus=1", version="v2", stage="b"))
    mod.app.image_spec.env(STAGE="b")  # the client's module object too: env vars are part of the spec
    third = await mod.app.ensure_ready()
    assert third.tier == 3
    info = await _until(lambda: _stage(mod, "b"), 120, "the restarted worker serving stage b")
    (restarted,) = await project.workers(mod.app)
    assert restarted["worker_id"] == before["worker_id"] and restarted["pid"] != before["pid"]
    assert _node_ids(ray_cluster)[info["node_id"]] == "gpu" and info["cuda"] in ("0", "1")
    assert len(_actors(ray_cluster)) == 1

    # Tier 4: another tag is a new endpoint with a worker of its own, beside the first.
    other = project(source("gpus=1", tag="canary"), name=mod.app.name)
    assert (await other.app.ensure_ready()).tier == 4
    assert (await other.where())["cuda"] in ("0", "1")
    assert len(_actors(ray_cluster)) == 2

    # Teardown stops every worker's actor: the GPUs are free again.
    client = ControlClient(project.control.address, project.control.api_key, project.control.tls)
    try:
        await client.teardown(mod.app.name)
    finally:
        await client.close()
    assert await _until(lambda: _no_actors(ray_cluster), 60, "no worker actor left")
    free = ray_cluster.run("result = ray.available_resources().get('GPU', 0)")
    assert free == 2


async def _stage(mod, stage: str) -> dict[str, Any] | None:  # type: ignore[no-untyped-def]
    info = await mod.where()
    return info if info["stage"] == stage else None


async def _no_actors(cluster: RayCluster) -> bool:
    return not await asyncio.to_thread(_actors, cluster)


@pytest.mark.e2e
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "control_service", [{"setup": _ray_flags, "env": RAY_ENV, "args": ["--reaper-interval", "0.5"]}], indirect=True
)
async def test_ttl_teardown_on_ray_stops_the_actor(ray_cluster: RayCluster, project) -> None:
    mod = project(source(ttl=3))
    await mod.app.ensure_ready()
    assert await mod.where()
    assert len(_actors(ray_cluster)) == 1
    await mod.app.close()  # the last client goes: the TTL runs from now
    assert await _until(lambda: _no_actors(ray_cluster), 60, "the TTL teardown")
    assert (await project.endpoint(mod.app))["state"] == "STOPPED"


def _ray_tls_flags(tmp_path: Path) -> list[str]:
    """TLS whose certificate names the nodes' addresses: workers serve with it there."""
    folder = tmp_path / "tls"
    ca, ca_key = ensure_local_ca(folder)
    hosts = ["127.0.0.1", *_CLUSTER["node_ips"].split(",")]
    cert, key = issue_certificate(
        ca, ca_key, folder / "cert.pem", folder / "key.pem", common_name="vastrpc on ray", hosts=hosts, server=True
    )
    return [*_ray_flags(tmp_path), "--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca)]


@pytest.mark.e2e
@pytest.mark.timeout(240)
@pytest.mark.parametrize("control_service", [{"setup": _ray_tls_flags, "env": RAY_ENV}], indirect=True)
async def test_tls_files_travel_to_workers_on_ray_and_calls_use_tls(ray_cluster: RayCluster, project) -> None:
    assert project.control.tls is not None  # the client trusts the CA and checks names
    mod = project(source())
    await mod.app.ensure_ready()
    info = await mod.where()  # over TLS, to the worker on its node's address
    (worker,) = await project.workers(mod.app)
    assert worker["address"].rpartition(":")[0] == info["host"] != "127.0.0.1"
    # The worker's copy of the TLS files, private to it, is gone with the worker.
    folder = project.control.home / "ray-worker-tls" / worker["worker_id"]
    assert sorted(p.name for p in folder.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    assert (folder / "key.pem").stat().st_mode & 0o777 == 0o600
    client = ControlClient(project.control.address, project.control.api_key, project.control.tls)
    try:
        await client.teardown(mod.app.name)
    finally:
        await client.close()
    assert await _until(lambda: _no_actors(ray_cluster), 60, "no worker actor left")
    await _until(lambda: _missing(folder), 30, "the removal of the worker's TLS files")
    assert "does not name" not in project.control.log_text()


async def _missing(path: Path) -> bool:
    return not path.exists()


SCALING_SOURCE = """
import asyncio
from vastrpc import Deployment

app = Deployment(name="{name}")
app.configure_autoscaling(min_workers=1, max_workers=2, target_util=0.5)

@app.remote(max_concurrency=1, benchmark_dataset=[{{"seconds": 0}}])
async def busy(seconds: float) -> None:
    await asyncio.sleep(seconds)
"""


def _ray_scaling_flags(tmp_path: Path) -> list[str]:
    return [*_ray_flags(tmp_path), "--scale-down-delay", "2", "--heartbeat-interval", "0.5"]


@pytest.mark.e2e
@pytest.mark.timeout(240)
@pytest.mark.parametrize("control_service", [{"setup": _ray_scaling_flags, "env": RAY_ENV}], indirect=True)
async def test_the_autoscaler_adds_and_removes_ray_actors_with_the_load(ray_cluster: RayCluster, project) -> None:
    mod = project(SCALING_SOURCE)
    await mod.app.ensure_ready()
    assert len(await asyncio.to_thread(_actors, ray_cluster)) == 1

    async def load(stop: asyncio.Event) -> None:
        while not stop.is_set():
            await mod.busy(0.3)

    stop = asyncio.Event()
    callers = [asyncio.ensure_future(load(stop)) for _ in range(6)]
    try:
        # Six callers on one slot: the autoscaler places a second worker on the cluster.
        await _until(lambda: _count_actors(ray_cluster, 2), 90, "scaling up to 2 Ray actors")
        await _until(lambda: _ready_count(project, mod.app, 2), 90, "the second worker getting ready")
    finally:
        stop.set()
        await asyncio.gather(*callers)
    # Idle for longer than the scale-down delay: back to min_workers, the extra actor gone.
    await _until(lambda: _count_actors(ray_cluster, 1), 90, "scaling back down to 1 Ray actor")


async def _count_actors(cluster: RayCluster, count: int) -> bool:
    return len(await asyncio.to_thread(_actors, cluster)) == count


async def _ready_count(project, app, count: int) -> bool:
    return sum(w["state"] == "READY" for w in (await project.endpoint(app))["workers"]) == count
