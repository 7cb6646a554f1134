"""A worker token reaches its own endpoint only: bundles and reports of other deployments are refused."""

from __future__ import annotations

import grpc
import pytest

from vastrpc._manifest import parse_manifest
from vastrpc.api.v1 import common_pb2, control_pb2

from .helpers import FILES, Client, bundle, make_spec, read_dumps, with_fake_worker

pytestmark = pytest.mark.timeout(60)


async def _refused(coro) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value
    return info.value.details()


@with_fake_worker
async def test_a_worker_token_downloads_and_reports_only_within_its_endpoint(client, control_service, tmp_path) -> None:
    env = {"FAKE_DUMP_DIR": str(tmp_path)}
    data_a, digest_a = bundle("print('deployment a')")
    data_b, digest_b = bundle("print('deployment b')")
    reg_a, _ = await client.deploy(make_spec("alpha", digest=digest_a, env=env), data_a)
    reg_b, _ = await client.deploy(make_spec("other", digest=digest_b, env=env), data_b)
    await client.wait_ready(reg_a.endpoint_id)
    await client.wait_ready(reg_b.endpoint_id)

    # A token as `vastrpc worker --join other` gets it; and the one the provider gave alpha's worker.
    joined = await client.stub.JoinEndpoint(
        control_pb2.JoinEndpointRequest(name="other"), metadata=client.metadata, timeout=10
    )
    assert joined.endpoint_id == reg_b.endpoint_id
    (provider_token,) = [d["token"] for d in read_dumps(tmp_path).values() if d["revision_id"] == reg_a.revision_id]

    async with Client(control_service.address, joined.worker_token) as other:
        details = await _refused(other.download(digest_a))
        assert digest_a[:12] in details and "may download only" in details
        assert await other.download(digest_b) == data_b
        # Files too: only those its endpoint's bundles name.
        (sha_a,), (sha_b,) = ([f.sha256 for f in parse_manifest(d).files] for d in (data_a, data_b))
        assert await other.download_files(digest_b, [sha_b]) == {sha_b: FILES[sha_b]}
        details = await _refused(other.download_files(digest_a, [sha_a]))
        assert "may download only" in details
        details = await _refused(other.download_files(digest_b, [sha_a]))
        assert "names no file" in details
        # Nor may it report on a revision of another deployment (which would fail or switch that one).
        for state in (common_pb2.WORKER_STATE_READY, common_pb2.WORKER_STATE_FAILED):
            await _refused(
                other.stub.UpdateWorker(
                    control_pb2.UpdateWorkerRequest(
                        worker_id=joined.worker_id, state=state, revision_id=reg_a.revision_id
                    ),
                    metadata=other.metadata,
                    timeout=5,
                )
            )
    async with Client(control_service.address, provider_token) as alpha:
        await _refused(alpha.download(digest_b))
        assert await alpha.download(digest_a) == data_a
        await _refused(alpha.download("0" * 64))  # a digest no revision uses: refused, not "not found"

    # alpha still serves, untouched by the refused reports.
    listing = await client.list("alpha")
    [endpoint] = listing.deployments[0].endpoints
    assert endpoint.state == common_pb2.ENDPOINT_STATE_READY and endpoint.revision_id == reg_a.revision_id

    # A tier 2 update: alpha's worker may fetch the revision it moves to, not the one it leaves behind.
    data_a2, digest_a2 = bundle("print('deployment a, version 2')")
    reg_a2, _ = await client.deploy(make_spec("alpha", digest=digest_a2, env=env, code="code-2"), data_a2)
    assert reg_a2.tier == common_pb2.UPDATE_TIER_CODE
    async with Client(control_service.address, provider_token) as alpha:
        assert await alpha.download(digest_a2) == data_a2
        assert await alpha.download(digest_a) == data_a  # still serving it until it switches
        await _refused(alpha.download(digest_b))

    # Torn down, a worker's token reaches nothing any more.
    await client.teardown("other")
    async with Client(control_service.address, joined.worker_token) as other:
        await _refused(other.download(digest_b))
