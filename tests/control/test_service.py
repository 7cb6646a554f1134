"""The control service over real gRPC: a real `vastrpc control serve` process, fake workers as its agents."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vastrpc import AuthenticationError
from vastrpc._manifest import parse_manifest
from vastrpc._secrets import unseal
from vastrpc.api.v1 import common_pb2, control_pb2

from .helpers import (
    FAILED,
    FILES,
    READY,
    Client,
    bundle,
    eventually,
    make_spec,
    pid_gone,
    read_dumps,
    with_fake_worker,
)

pytestmark = pytest.mark.timeout(60)


async def _code(coro) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value.code(), info.value.details()


# -- auth -----------------------------------------------------------------------------------


async def test_health_is_open_and_everything_else_needs_the_key(control_service, client) -> None:
    health = health_pb2_grpc.HealthStub(client.channel)
    response = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING

    request = control_pb2.ListDeploymentsRequest()
    code, _ = await _code(client.stub.ListDeployments(request, timeout=5))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = await _code(client.stub.ListDeployments(request, metadata=(("authorization", "Bearer nope"),), timeout=5))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert (await client.list()).deployments == []
    assert control_service.api_key not in control_service.log_text()


# -- register -------------------------------------------------------------------------------


async def test_register_rejects_invalid_specs_with_what_to_fix(client) -> None:
    cases = {
        "name": make_spec(name=""),
        "invalid": make_spec(name="no spaces please"),
        "benchmark": make_spec(),
        "min_workers": make_spec(min_workers=3, max_workers=2),
        "at least 1": make_spec(min_workers=0, max_workers=0),
        "digest": make_spec(digest="../../etc/passwd"),
        "function": make_spec(),
    }
    cases["benchmark"].functions[0].has_benchmark = False
    del cases["function"].functions[:]
    for words, spec in cases.items():
        code, details = await _code(client.register(spec))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, words
        assert words in details, details
    assert (await client.list()).deployments == []


@with_fake_worker
async def test_register_classifies_tiers_against_the_live_revision(client) -> None:
    data, digest = bundle()
    base = make_spec(digest=digest)
    first = await client.register(base)
    assert first.tier == common_pb2.UPDATE_TIER_NEW_ENDPOINT and first.upload_required
    assert (await client.register(base)).tier == common_pb2.UPDATE_TIER_NEW_ENDPOINT  # nothing live yet
    await client.upload(data, digest)
    assert await client.provision(first.endpoint_id, first.revision_id) == 1

    same = await client.register(base)
    assert (same.tier, same.revision_id, same.upload_required) == (
        common_pb2.UPDATE_TIER_NONE,
        first.revision_id,
        False,
    )
    assert same.endpoint_id == first.endpoint_id and same.deployment_id == first.deployment_id

    def variant(**changes: str) -> control_pb2.DeploymentSpec:
        spec = make_spec(digest=digest)
        for key, value in changes.items():
            setattr(spec.digests, key, value)
        return spec

    settings = await client.register(variant(autoscaling="auto-2"))
    assert settings.tier == common_pb2.UPDATE_TIER_SETTINGS and settings.revision_id != first.revision_id
    assert (await client.register(variant(code="code-2", autoscaling="auto-2"))).tier == common_pb2.UPDATE_TIER_CODE
    # A new bundle with the same code digest (the file differs only in its in-place settings'
    # values): no code change, and the workers keep the live bundle — nothing to upload.
    same_code = await client.register(variant(bundle="1" * 64))
    assert (same_code.tier, same_code.upload_required) == (common_pb2.UPDATE_TIER_NONE, False)
    new_bundle = await client.register(variant(bundle="1" * 64, code="code-3"))
    assert new_bundle.tier == common_pb2.UPDATE_TIER_CODE and new_bundle.upload_required
    assert (
        await client.register(variant(environment="env-2", code="code-2"))
    ).tier == common_pb2.UPDATE_TIER_ENVIRONMENT
    other_tag = await client.register(make_spec(digest=digest, tag="canary"))
    assert other_tag.tier == common_pb2.UPDATE_TIER_NEW_ENDPOINT and other_tag.endpoint_id != first.endpoint_id
    assert other_tag.deployment_id == first.deployment_id


# -- bundles --------------------------------------------------------------------------------


async def test_upload_verifies_deduplicates_and_downloads(control_service, client) -> None:
    data, digest = bundle("x = 1\n" * 100_000)  # several chunks each way
    first = await client.upload(data, digest)
    assert (first.digest, first.size, first.stored) == (digest, len(data), True)
    assert (await client.upload(data, digest)).stored is False
    assert await client.download(digest) == data
    assert (control_service.home / "bundles" / digest).read_bytes() == data

    code, details = await _code(client.download("f" * 64))
    assert code == grpc.StatusCode.NOT_FOUND

    other, other_digest = bundle("y = 2")
    code, details = await _code(client.upload(other, "a" * 64))
    assert code == grpc.StatusCode.DATA_LOSS and "digest mismatch" in details
    code, details = await _code(client.upload(other, other_digest, size=len(other) + 5))
    assert code == grpc.StatusCode.DATA_LOSS and "incomplete" in details
    code, details = await _code(client.upload(other, other_digest, size=3))
    assert code == grpc.StatusCode.DATA_LOSS
    # The first bundle and its file; the second's file (uploaded before each refused manifest), no manifest.
    files = {hashlib.sha256(FILES[f.sha256]).hexdigest() for m in (data, other) for f in parse_manifest(m).files}
    assert sorted(p.name for p in (control_service.home / "bundles").iterdir()) == sorted({digest, *files})

    async def headerless():
        yield control_pb2.UploadBundleRequest(chunk=b"data")

    code, details = await _code(client.stub.UploadBundle(headerless(), metadata=client.metadata, timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "header" in details


async def test_cancelled_upload_leaves_nothing(control_service, client) -> None:
    sent = asyncio.Event()

    async def stalling():
        yield control_pb2.UploadFilesRequest(header=control_pb2.UploadFilesRequest.Header(digest="b" * 64, size=100))
        yield control_pb2.UploadFilesRequest(chunk=b"half" * 10)
        sent.set()
        await asyncio.sleep(30)

    bundles = control_service.home / "bundles"
    call = client.stub.UploadFiles(stalling(), metadata=client.metadata)
    await asyncio.wait_for(sent.wait(), 5)
    await eventually(lambda: any(bundles.iterdir()), what="a partial upload file exists")
    call.cancel()
    await eventually(lambda: not any(bundles.iterdir()), what="the partial upload is removed")


# -- provisioning and workers ---------------------------------------------------------------


async def test_provision_needs_the_bundle(client) -> None:
    reg = await client.register(make_spec(digest="c" * 64))
    code, details = await _code(client.provision(reg.endpoint_id, reg.revision_id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "upload the bundle first" in details
    code, _ = await _code(client.provision(reg.endpoint_id, "r-unknown"))
    assert code == grpc.StatusCode.NOT_FOUND


@with_fake_worker
async def test_provision_to_ready_worker_tokens_logs_list_teardown(control_service, client, tmp_path) -> None:
    data, digest = bundle()
    spec = make_spec(
        digest=digest,
        min_workers=2,
        max_workers=3,
        env={"FAKE_DUMP_DIR": str(tmp_path)},
        secrets={"HF_TOKEN": "s3cret-value"},
        api_key=control_service.api_key,
    )
    reg, started = await client.deploy(spec, data)
    assert started == 2
    state = await client.wait_ready(reg.endpoint_id, workers=2)
    assert state.revision_id == reg.revision_id and state.desired_workers == 2 and state.endpoint_token
    assert {(w.address, w.score, w.capacity) for w in state.workers} == {("127.0.0.1:9", 12.5, 4)}
    assert await client.provision(reg.endpoint_id, reg.revision_id) == 0  # tier 0 starts nothing

    # What each worker was told at RegisterWorker: its revision, the full spec with secrets, the endpoint token.
    await eventually(lambda: len(read_dumps(tmp_path)) == 2, what="both fake workers dumped their registration")
    dumps = read_dumps(tmp_path)
    (a, first), (b, second) = sorted(dumps.items())
    assert first["revision_id"] == reg.revision_id and first["endpoint_token"] == state.endpoint_token
    # Secrets arrive resealed for the worker's own token: it alone can open them.
    sealed = {k: base64.b64decode(v) for k, v in first["spec"]["image"]["sealed_secrets"].items()}
    assert unseal(first["token"], sealed) == {"HF_TOKEN": "s3cret-value"}
    with pytest.raises(AuthenticationError):
        unseal(control_service.api_key, sealed)
    assert first["home"] == str(control_service.home)
    assert {w.pid for w in state.workers} == {first["pid"], second["pid"]}

    # A worker token admits only the worker methods, for its own worker.
    async with Client(control_service.address, first["token"]) as worker:
        code, _ = await _code(worker.register(spec))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _ = await _code(worker.list())
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _ = await _code(
            worker.stub.WakeEndpoint(
                control_pb2.WakeEndpointRequest(endpoint_id=reg.endpoint_id), metadata=worker.metadata, timeout=5
            )
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _ = await _code(
            worker.stub.UpdateWorker(
                control_pb2.UpdateWorkerRequest(worker_id=b, state=common_pb2.WORKER_STATE_FAILED),
                metadata=worker.metadata,
                timeout=5,
            )
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
        code, _ = await _code(
            worker.stub.Heartbeat(control_pb2.HeartbeatRequest(worker_id=b), metadata=worker.metadata)
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
        beat = await worker.stub.Heartbeat(
            control_pb2.HeartbeatRequest(worker_id=a), metadata=worker.metadata, timeout=5
        )
        assert beat.stop is False
        assert await worker.download(digest) == data

        listing = await client.list()
        [deployment] = listing.deployments
        [endpoint] = deployment.endpoints
        assert (deployment.name, endpoint.tag, endpoint.state) == ("hello", "default", READY)
        assert endpoint.autoscaling.max_workers == 3 and len(endpoint.workers) == 2
        assert (await client.list("other")).deployments == []

        assert f"fake worker {a}" in await client.logs(a)
        assert (await client.logs(a, tail_bytes=6)) == "ready\n"
        code, _ = await _code(client.logs("w-000000000000"))
        assert code == grpc.StatusCode.NOT_FOUND

        down = await client.teardown("hello")
        assert (down.endpoints_removed, down.workers_stopped) == (1, 2)
        assert pid_gone(first["pid"]) and pid_gone(second["pid"])
        again = await client.teardown("hello")
        assert (again.endpoints_removed, again.workers_stopped) == (0, 0)
        beat = await worker.stub.Heartbeat(
            control_pb2.HeartbeatRequest(worker_id=a), metadata=worker.metadata, timeout=5
        )
        assert beat.stop is True
        code, _ = await _code(
            worker.stub.RegisterWorker(
                control_pb2.RegisterWorkerRequest(worker_id=a, pid=1), metadata=worker.metadata, timeout=5
            )
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION

    stopped = await client.watch_until(reg.endpoint_id, lambda u: True)
    assert stopped.state == common_pb2.ENDPOINT_STATE_STOPPED and list(stopped.workers) == []
    code, _ = await _code(client.teardown("nope"))
    assert code == grpc.StatusCode.NOT_FOUND
    for secret in ("s3cret-value", first["token"], state.endpoint_token, control_service.api_key):
        assert secret not in control_service.log_text()

    # Torn down, the next deploy (here with new code) brings it back as a new endpoint with fresh
    # workers, and the listing says the tier the deploy said.
    spec.digests.code = "code-after-teardown"
    back = await client.register(spec)
    assert back.tier == common_pb2.UPDATE_TIER_NEW_ENDPOINT and back.endpoint_id == reg.endpoint_id
    assert await client.provision(back.endpoint_id, back.revision_id) == 2
    await client.wait_ready(back.endpoint_id, workers=2)
    (listed,) = (await client.list("hello")).deployments[0].endpoints
    assert listed.live_revision_tier == common_pb2.UPDATE_TIER_NEW_ENDPOINT


@with_fake_worker
async def test_worker_failure_fails_the_endpoint(client) -> None:
    data, digest = bundle()
    reg, started = await client.deploy(make_spec(digest=digest, env={"FAKE_MODE": "fail"}), data)
    assert started == 1
    failed = await client.watch_until(reg.endpoint_id, lambda u: u.state == FAILED)
    assert failed.failure.step == "install" and "pip install failed" in failed.failure.message
    assert "installing packages..." in failed.failure.log_tail
    [worker] = failed.workers
    assert worker.state == common_pb2.WORKER_STATE_FAILED and worker.failure.step == "install"


@with_fake_worker
async def test_worker_exiting_early_fails_with_its_log_tail(client) -> None:
    data, digest = bundle()
    reg, _ = await client.deploy(make_spec(digest=digest, env={"FAKE_MODE": "exit"}), data)
    failed = await client.watch_until(reg.endpoint_id, lambda u: u.state == FAILED)
    assert failed.failure.step == "installing"
    assert failed.failure.message == "worker process exited with code 3"
    assert "fatal: something broke during install" in failed.failure.log_tail

    # A retry of the failed endpoint starts a fresh worker, and says so: tier 4, whatever changed.
    fixed = await client.register(make_spec(digest=digest, environment="env-2"))
    assert fixed.tier == common_pb2.UPDATE_TIER_NEW_ENDPOINT
    assert await client.provision(fixed.endpoint_id, fixed.revision_id) == 1
    ready = await client.wait_ready(fixed.endpoint_id)
    assert not ready.HasField("failure") and ready.revision_id == fixed.revision_id


@with_fake_worker
async def test_settings_change_keeps_workers_code_change_is_taken_in_place(client, control_service, tmp_path) -> None:
    data, digest = bundle()
    env = {"FAKE_DUMP_DIR": str(tmp_path)}
    reg, _ = await client.deploy(make_spec(digest=digest, env=env), data)
    [original] = (await client.wait_ready(reg.endpoint_id)).workers

    more, started = await client.deploy(
        make_spec(digest=digest, env=env, autoscaling="auto-2", min_workers=2, max_workers=2)
    )
    assert more.tier == common_pb2.UPDATE_TIER_SETTINGS and started == 1
    state = await client.wait_ready(reg.endpoint_id, workers=2)
    assert original.worker_id in {w.worker_id for w in state.workers}
    assert {w.revision_id for w in state.workers} == {more.revision_id} and state.desired_workers == 2

    fewer, started = await client.deploy(make_spec(digest=digest, env=env, autoscaling="auto-3"))
    assert fewer.tier == common_pb2.UPDATE_TIER_SETTINGS and started == 0
    state = await client.watch_until(reg.endpoint_id, lambda u: len(u.workers) == 1 and u.state == READY)
    assert state.desired_workers == 1

    code, started = await client.deploy(make_spec(digest=digest, env=env, code="code-2"))
    assert code.tier == common_pb2.UPDATE_TIER_CODE and started == 0  # tier 2: no new worker
    state = await client.watch_until(reg.endpoint_id, lambda u: u.revision_id == code.revision_id)
    assert state.state == common_pb2.ENDPOINT_STATE_DEPLOYING
    [kept] = state.workers
    assert kept.state == common_pb2.WORKER_STATE_READY and kept.revision_id == fewer.revision_id  # still serving

    # The worker is told through WatchWorker, and switches by reporting ready on the new revision.
    token = read_dumps(tmp_path)[kept.worker_id]["token"]
    async with Client(control_service.address, token) as worker:
        watch = worker.stub.WatchWorker(
            control_pb2.WatchWorkerRequest(worker_id=kept.worker_id), metadata=worker.metadata
        )
        assignment = await watch.read()
        watch.cancel()
        assert assignment.revision_id == code.revision_id and not assignment.stop
        assert assignment.spec.digests.code == "code-2"
        for progress in (common_pb2.WORKER_STATE_DOWNLOADING, common_pb2.WORKER_STATE_READY):
            await worker.stub.UpdateWorker(
                control_pb2.UpdateWorkerRequest(
                    worker_id=kept.worker_id, state=progress, revision_id=code.revision_id, address="127.0.0.1:10"
                ),
                metadata=worker.metadata,
            )
            if progress != common_pb2.WORKER_STATE_READY:
                # Progress of the new revision leaves the worker ready on the old one.
                mid = await client.watch_until(reg.endpoint_id, lambda u: True)
                assert mid.workers[0].state == common_pb2.WORKER_STATE_READY
                assert mid.workers[0].revision_id == fewer.revision_id
    state = await client.wait_ready(reg.endpoint_id)
    assert [(w.worker_id, w.revision_id, w.address) for w in state.workers] == [
        (kept.worker_id, code.revision_id, "127.0.0.1:10")
    ]
    assert not pid_gone(original.pid)


@with_fake_worker
async def test_ready_worker_that_dies_is_replaced_and_losing_all_waits_for_capacity_then_recovers(client) -> None:
    data, digest = bundle()
    reg, _ = await client.deploy(make_spec(digest=digest, min_workers=2, max_workers=2), data)
    first, second = (await client.wait_ready(reg.endpoint_id, workers=2)).workers

    def failed(worker_id: str):
        return lambda u: any(w.worker_id == worker_id and w.state == common_pb2.WORKER_STATE_FAILED for w in u.workers)

    os.kill(first.pid, signal.SIGKILL)
    state = await client.watch_until(reg.endpoint_id, failed(first.worker_id))
    assert state.state == READY
    lost = next(w for w in state.workers if w.worker_id == first.worker_id)
    assert (lost.failure.step, lost.failure.message) == ("serving", "worker process was killed by signal SIGKILL")
    # The autoscaler starts a replacement: two ready workers again.
    state = await client.wait_ready(reg.endpoint_id, workers=2)
    (replacement,) = [
        w for w in state.workers if w.state == common_pb2.WORKER_STATE_READY and w.worker_id != second.worker_id
    ]
    assert replacement.worker_id != first.worker_id

    # Both at once: none is left before a replacement could be ready. The endpoint does not
    # fail for good: it waits for capacity, says why, and comes back by itself.
    os.kill(second.pid, signal.SIGKILL)
    os.kill(replacement.pid, signal.SIGKILL)
    state = await client.watch_until(reg.endpoint_id, lambda u: u.state == common_pb2.ENDPOINT_STATE_WAITING)
    assert state.failure.step == "serving"
    assert state.failure.message in (
        f"its last worker {w} was lost: worker process was killed by signal SIGKILL"
        for w in (second.worker_id, replacement.worker_id)
    )
    state = await client.wait_ready(reg.endpoint_id, workers=2)
    assert not state.HasField("failure")
    assert {second.worker_id, replacement.worker_id}.isdisjoint(
        w.worker_id for w in state.workers if w.state == common_pb2.WORKER_STATE_READY
    )


@with_fake_worker
async def test_sigterm_stops_workers_ends_watches_and_removes_control_json(control_service, client) -> None:
    data, digest = bundle()
    reg, _ = await client.deploy(make_spec(digest=digest), data)
    [worker] = (await client.wait_ready(reg.endpoint_id)).workers
    call = client.stub.WatchEndpoint(
        control_pb2.WatchEndpointRequest(endpoint_id=reg.endpoint_id), metadata=client.metadata
    )
    await call.read()
    started = time.monotonic()
    control_service.process.terminate()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        while await call.read() is not grpc.aio.EOF:
            pass
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await asyncio.to_thread(control_service.process.wait, 10) == 0
    assert time.monotonic() - started < 4
    assert pid_gone(worker.pid)
    assert not (control_service.home / "control.json").exists()
