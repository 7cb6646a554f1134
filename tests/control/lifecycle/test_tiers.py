"""End to end: each update tier with its evidence, and a steady stream of calls through tiers 1-3 without a failure."""

from __future__ import annotations

import asyncio

import pytest

from vastrpc.api.v1 import control_pb2
from vastrpc.deploy.spec import revision_digests

pytestmark = pytest.mark.e2e

SOURCE = """
import asyncio, os
from vastrpc import Deployment

app = Deployment(name="{name}"{tag})
app.image("python:3.11-slim").env(STAGE="{stage}").secrets(TOKEN="{secret}")
app.configure_autoscaling(min_workers={workers}, max_workers=4)

@app.remote(benchmark_dataset=[{{"seconds": 0}}])
async def version(seconds: float = 0) -> str:
    await asyncio.sleep(seconds)
    return "{version}"

@app.remote
async def environment() -> list:
    return [os.environ.get("STAGE"), os.environ.get("TOKEN"), os.getpid()]
"""


def source(version: str = "v1", stage: str = "a", secret: str = "s1", workers: int = 1, tag: str = "") -> str:
    fields = {"version": version, "stage": stage, "secret": secret, "workers": str(workers)}
    fields["tag"] = f', tag="{tag}"' if tag else ""
    text = SOURCE.replace("{name}", "\x00").format(**fields)
    # Escaped again for the project fixture, which fills in {name}.
    return text.replace("{", "{{").replace("}", "}}").replace("\x00", "{name}")


async def test_tier1_settings_change_in_place_without_upload(project) -> None:
    mod = project(source())
    first = await mod.app.ensure_ready()
    before = await project.workers(mod.app)
    mod.app.configure_autoscaling(min_workers=1, max_workers=3)
    second = await mod.app.ensure_ready()
    assert (second.tier, second.uploaded, second.workers_started) == (1, False, 0)
    assert second.revision_id != first.revision_id
    after = await project.workers(mod.app)
    assert [(w["worker_id"], w["pid"]) for w in after] == [(w["worker_id"], w["pid"]) for w in before]
    assert await mod.version() == "v1"

    # ttl and the version label are settings too: relabelled in place, never tier 0.
    mod.app.ttl, mod.app.version_label = 3600, "release-7"
    third = await mod.app.ensure_ready()
    assert (third.tier, third.uploaded, third.workers_started) == (1, False, 0)
    endpoint = await project.endpoint(mod.app)
    assert (endpoint["ttl"], endpoint["version_label"]) == (3600, "release-7")


async def test_tier1_vast_autoscaling_settings_change_in_place(project) -> None:
    """Each of Vast's configure_autoscaling parameters is a setting: applied in place, no restart."""
    mod = project(source())
    await mod.app.ensure_ready()
    before = await project.workers(mod.app)
    changes = [
        {"min_load": 0.5},
        {"min_cold_load": 2.0},
        {"cold_mult": 2.0},
        {"max_queue_time": 12.0},
        {"target_queue_time": 3.0},
        {"inactivity_timeout": -1},
        {"cold_workers": 0, "target_util": 0.9},
    ]
    for change in changes:
        mod.app.configure_autoscaling(**change)
        result = await mod.app.ensure_ready()
        assert (result.tier, result.uploaded, result.workers_started) == (1, False, 0), change
        live = (await project.endpoint(mod.app))["autoscaling"]
        assert all(getattr(live, name) == value for name, value in change.items()), (change, live)
    after = await project.workers(mod.app)
    assert [(w["worker_id"], w["pid"]) for w in after] == [(w["worker_id"], w["pid"]) for w in before]
    assert await mod.version() == "v1"


async def test_tier2_code_change_switches_in_place_and_calls_in_flight_finish_on_old(project) -> None:
    mod = project(source())
    first = await mod.app.ensure_ready()
    (before,) = await project.workers(mod.app)
    old_serving_pid = (await mod.environment())[2]
    in_flight = asyncio.create_task(mod.version.call_with_info(2.0))  # running during the switch
    await asyncio.sleep(0.3)
    project.rewrite(mod, source(version="v2"))
    second = await mod.app.ensure_ready()
    assert (second.tier, second.uploaded, second.workers_started) == (2, True, 0)
    (after,) = await project.workers(mod.app)
    # The same worker (agent process) now serves the new revision from a new serving process.
    assert (after["worker_id"], after["pid"]) == (before["worker_id"], before["pid"])
    assert after["revision_id"] == second.revision_id and after["address"] != before["address"]
    info = await mod.version.call_with_info()
    assert (info.value, info.revision_id, info.worker_id) == ("v2", second.revision_id, before["worker_id"])
    assert (await mod.environment())[2] != old_serving_pid
    old = await in_flight
    assert (old.value, old.revision_id) == ("v1", first.revision_id)


async def test_tier2_with_broken_new_code_fails_the_deploy_and_the_old_code_keeps_serving(project) -> None:
    from vastrpc import DeploymentError

    mod = project(source())
    await mod.app.ensure_ready()
    (before,) = await project.workers(mod.app)
    broken = source(version="v2").replace("await asyncio.sleep(seconds)", "raise RuntimeError('broken release')")
    project.rewrite(mod, broken)
    with pytest.raises(DeploymentError, match="broken release") as info:
        await mod.app.ensure_ready()
    assert info.value.step == "benchmark"
    assert await mod.version() == "v1"  # the old revision still serves
    (after,) = await project.workers(mod.app)
    assert (after["worker_id"], after["pid"], after["state"]) == (before["worker_id"], before["pid"], "READY")


async def test_tier3_environment_change_restarts_the_worker_in_its_slot(project) -> None:
    mod = project(source())
    await mod.app.ensure_ready()
    (before,) = await project.workers(mod.app)
    assert (await mod.environment())[:2] == ["a", "s1"]
    project.rewrite(mod, source(stage="b"))
    mod.app.image_spec.env(STAGE="b")  # the client's module object too: env vars are part of the spec
    second = await mod.app.ensure_ready()
    assert second.tier == 3
    (after,) = await project.workers(mod.app)
    assert after["worker_id"] == before["worker_id"] and after["pid"] != before["pid"]
    assert (await mod.environment())[:2] == ["b", "s1"]

    mod.app.image_spec.secrets(TOKEN="s2")  # a changed secret value is tier 3 as well
    third = await mod.app.ensure_ready()
    assert third.tier == 3
    assert (await mod.environment())[:2] == ["b", "s2"]


def test_secret_changes_environment_digest_without_revealing_it(project) -> None:
    mod = project(source(secret="hunter2-secret-value"))
    d1 = revision_digests(mod.app.describe(), "0" * 64, "api-key")
    mod.app.image_spec.secrets(TOKEN="another-secret-value")
    d2 = revision_digests(mod.app.describe(), "0" * 64, "api-key")
    assert d1.environment != d2.environment and d1.code == d2.code
    assert d1.environment != revision_digests(mod.app.describe(), "0" * 64, "other-key").environment
    for digests in (d1, d2):
        raw = control_pb2.RevisionDigests.SerializeToString(digests)
        assert b"secret-value" not in raw


async def test_tier4_new_tag_is_a_new_endpoint_and_old_tag_keeps_serving(project) -> None:
    old = project(source(version="v1"))
    await old.app.ensure_ready()
    new = project(source(version="v2", tag="canary"), name=old.app.name)
    result = await new.app.ensure_ready()
    assert result.tier == 4 and result.workers_started == 1
    old_endpoint, new_endpoint = await project.endpoint(old.app), await project.endpoint(new.app)
    assert old_endpoint["endpoint_id"] != new_endpoint["endpoint_id"] == result.endpoint_id
    old_ids = {w["worker_id"] for w in old_endpoint["workers"]}
    assert old_ids.isdisjoint(w["worker_id"] for w in new_endpoint["workers"])
    a, b = await asyncio.gather(old.version.call_with_info(), new.version.call_with_info())
    assert a.value == "v1" and a.worker_id in old_ids
    assert b.value == "v2" and b.worker_id not in old_ids


@pytest.mark.timeout(180)
async def test_steady_calls_through_tiers_1_2_3_never_fail(project) -> None:
    mod = project(source(workers=2))
    await mod.app.ensure_ready()
    results: list[str] = []
    errors: list[BaseException] = []
    stop = asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            try:
                results.append((await mod.version.call_with_info()).revision_id)
            except Exception as exc:  # every failure is counted, none is expected
                errors.append(exc)
            await asyncio.sleep(0.01)

    callers = [asyncio.create_task(caller()) for _ in range(4)]
    try:
        mod.app.configure_autoscaling(min_workers=2, max_workers=3)
        tiers = [(await mod.app.ensure_ready()).tier]
        project.rewrite(mod, source(version="v2", workers=2))
        tiers.append((await mod.app.ensure_ready()).tier)
        mod.app.image_spec.env(STAGE="c")
        project.rewrite(mod, source(version="v2", stage="c", workers=2))
        tier3 = await mod.app.ensure_ready()
        tiers.append(tier3.tier)
        # Tier 3 rolls one worker at a time: wait until both serve the new environment.
        for _ in range(200):
            if all(
                w["revision_id"] == tier3.revision_id and w["state"] == "READY" for w in await project.workers(mod.app)
            ):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*callers)
    assert tiers == [1, 2, 3]
    assert errors == []
    assert len(results) > 100
    assert results[-1] == tier3.revision_id
