"""The local provider gives each worker GPUs of its own (a declared inventory of 4 fake GPUs, no real GPU)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from vastrpc.api.v1 import common_pb2
from vastrpc.client.control import ControlClient

pytestmark = pytest.mark.e2e

SOURCE = """
import asyncio, os
from vastrpc import Deployment
from vastrpc.query import gpu_ram, num_gpus

app = Deployment(name="{name}")
app.image("python:3.11-slim").env(ROUND="{round}").require(num_gpus == 2, gpu_ram >= 40)
app.configure_autoscaling(min_workers={workers}, max_workers={workers})

@app.remote(benchmark_dataset=[{{}}], max_concurrency=1)
async def gpus() -> list:
    await asyncio.sleep(0.1)
    return [os.getpid(), os.environ["CUDA_VISIBLE_DEVICES"], os.environ["NVIDIA_VISIBLE_DEVICES"]]
"""


def _four_gpus(tmp_path: Path) -> list[str]:
    path = tmp_path / "inventory.json"
    gpu = {"name": "NVIDIA H100 80GB HBM3", "memory_gb": 81.6, "compute_cap": 900}
    path.write_text(json.dumps({"cpu_cores": 8, "ram_gb": 64, "disk_gb": 100, "gpus": [gpu] * 4}))
    return ["--inventory", str(path)]


async def _listing(control: Any, app: Any) -> list[common_pb2.Worker]:
    client = ControlClient(control.address, control.api_key, control.tls)
    try:
        (deployment,) = (await client.list_deployments(app.name)).deployments
    finally:
        await client.close()
    return [w for e in deployment.endpoints for w in e.workers]


def _holding(workers: list[common_pb2.Worker]) -> dict[str, tuple[int, ...]]:
    """Each active worker's GPUs, by worker id."""
    active = (common_pb2.WORKER_STATE_READY, common_pb2.WORKER_STATE_STARTING)
    return {w.worker_id: tuple(w.gpus) for w in workers if w.state in active}


async def _seen(mod: Any, workers: int) -> dict[int, str]:
    """CUDA_VISIBLE_DEVICES as each serving process sees it, by pid (calls until every worker answered)."""
    seen: dict[int, str] = {}
    for _ in range(20):
        for pid, cuda, nvidia in await asyncio.gather(*(mod.gpus() for _ in range(8))):
            assert nvidia == cuda
            seen[pid] = cuda
        if len(seen) >= workers:
            break
    return seen


@pytest.mark.parametrize("control_service", [{"setup": _four_gpus}], indirect=True)
async def test_workers_get_disjoint_gpus_full_host_fails_the_new_worker_stopped_gpus_are_reused_tier3_keeps_them(
    project, control_service
) -> None:
    mod = project(SOURCE.replace("{workers}", "2").replace("{round}", "1"))
    result = await mod.app.ensure_ready()
    # Evaluated against the 2 GPUs each worker gets (not the host's 4): every query met.
    assert result.ready_workers == 2 and result.warnings == ()
    seen = await _seen(mod, 2)
    assert sorted(seen.values()) == ["0,1", "2,3"], seen
    workers = await _listing(control_service, mod.app)
    holding = _holding(workers)
    assert sorted(holding.values()) == [(0, 1), (2, 3)]

    # A third worker: the host's 4 GPUs are held. It fails at placement, alone; the two serve on.
    mod.app.configure_autoscaling(min_workers=3, max_workers=3)
    await asyncio.wait_for(mod.app.ensure_ready(), 60)
    for _ in range(100):
        failed = [w for w in await _listing(control_service, mod.app) if w.state == common_pb2.WORKER_STATE_FAILED]
        if failed:
            break
        await asyncio.sleep(0.1)
    assert failed[0].failure.step == "placement"
    message = failed[0].failure.message
    assert "needs 2 GPUs (num_gpus == 2, gpu_ram >= 40)" in message, message
    for worker_id, gpus in holding.items():
        assert f"GPUs {', '.join(map(str, gpus))} held by worker {worker_id}" in message
    assert _holding(await _listing(control_service, mod.app)) == holding
    assert len(await _seen(mod, 2)) == 2

    # Scale down to one: once the stopped worker's process has exited, its GPUs are free, and a new worker gets them.
    mod.app.configure_autoscaling(min_workers=1, max_workers=1)
    await mod.app.ensure_ready()
    for _ in range(100):
        left = _holding(await _listing(control_service, mod.app))
        if len(left) == 1:
            break
        await asyncio.sleep(0.1)
    (kept_id,) = left
    (stopped_id,) = set(holding) - {kept_id}
    for _ in range(200):
        if f"worker {stopped_id} (pid" in control_service.log_text():  # "... exited with code"
            break
        await asyncio.sleep(0.1)
    mod.app.configure_autoscaling(min_workers=2, max_workers=2)
    await mod.app.ensure_ready()
    for _ in range(300):
        workers = await _listing(control_service, mod.app)
        now = {w.worker_id: tuple(w.gpus) for w in workers if w.state == common_pb2.WORKER_STATE_READY}
        if len(now) == 2:
            break
        await asyncio.sleep(0.1)
    (new_id,) = set(now) - {kept_id}
    assert now[new_id] == holding[stopped_id] and now[kept_id] == holding[kept_id]

    # Tier 3 (an environment variable changes): each worker restarts in its slot with the same GPUs.
    project.rewrite(mod, SOURCE.replace("{workers}", "2").replace("{round}", "2"))
    mod.app.image_spec.env(ROUND="2")  # the client's module object too: env vars are part of the spec
    again = await mod.app.ensure_ready()
    assert again.tier == 3
    for _ in range(300):
        workers = await _listing(control_service, mod.app)
        ready = [w for w in workers if w.state == common_pb2.WORKER_STATE_READY and w.revision_id == again.revision_id]
        if len(ready) == 2:
            break
        await asyncio.sleep(0.1)
    assert _holding(workers) == now
    seen = await _seen(mod, 2)
    assert sorted(seen.values()) == ["0,1", "2,3"]
