"""HeartbeatStream over the real protocol: stream beats keep a worker alive; a stream is its worker's alone."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from vastrpc._grpc import bearer
from vastrpc.api.v1 import common_pb2, control_pb2, control_pb2_grpc
from vastrpc.serve.heartbeats import HeartbeatSender, Unanswered

from .helpers import Client, bundle, joined_worker, make_spec, two_joined, with_fake_worker

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


def _beat(worker_id: str) -> control_pb2.HeartbeatStreamRequest:
    return control_pb2.HeartbeatStreamRequest(beat=control_pb2.HeartbeatRequest(worker_id=worker_id))


async def _worker(client: Client, worker_id: str) -> common_pb2.Worker:
    [deployment] = (await client.list()).deployments
    return next(w for w in deployment.endpoints[0].workers if w.worker_id == worker_id)


@with_fake_worker
async def test_beats_on_one_stream_keep_a_worker_alive_past_the_heartbeat_timeout(control_service) -> None:
    async with Client(control_service.address, control_service.api_key) as client:
        data, digest = bundle()
        reg, _ = await client.deploy(make_spec(digest=digest, max_workers=4), data)
        await client.wait_ready(reg.endpoint_id)
        joined = await joined_worker(client, "hello")
        sender = HeartbeatSender(bearer(joined.worker_token))
        request = control_pb2.HeartbeatRequest(worker_id=joined.worker_id, calls_in_flight=2)
        try:
            # Past the service's heartbeat timeout (10 s): without beats it would be lost.
            deadline = time.monotonic() + 12
            seen = []
            while time.monotonic() < deadline:
                answer = await sender.send(client.stub, request, timeout=5)
                assert answer.stop is False and not sender.unary
                seen.append((await _worker(client, joined.worker_id)).last_heartbeat)
                await asyncio.sleep(1.0)
            assert seen == sorted(seen) and seen[-1] > seen[0]  # each beat recorded
            assert sender._call is not None  # one stream all along
            assert (await _worker(client, joined.worker_id)).state == common_pb2.WORKER_STATE_READY
            # Torn down: the next beat on the same stream is answered stop at once (the sender
            # asks for an answer every fourth beat only), which the beat after it returns.
            await client.teardown("hello")
            await sender.send(client.stub, request, timeout=5)
            await asyncio.sleep(0.5)
            assert (await sender.send(client.stub, request, timeout=5)).stop is True
        finally:
            sender.close()


@with_fake_worker
async def test_a_stream_asking_for_every_fourth_answer_gets_the_first_and_every_fourth(control_service) -> None:
    async with Client(control_service.address, control_service.api_key) as client:
        reg, a, _ = await two_joined(client)
        call = client.stub.HeartbeatStream(metadata=bearer(a.worker_token))
        try:
            for _ in range(10):
                await call.write(control_pb2.HeartbeatStreamRequest(beat=_beat(a.worker_id).beat, answer_every=4))
            await call.done_writing()
            answers = [answer async for answer in call]
            assert await call.code() == grpc.StatusCode.OK
            # Beats 1, 5 and 9 of 10: the others are answered by those.
            assert [answer.beat.stop for answer in answers] == [False] * 3
        finally:
            call.cancel()


@with_fake_worker
async def test_a_heartbeat_stream_refuses_beats_of_another_worker(control_service) -> None:
    async with Client(control_service.address, control_service.api_key) as client:
        reg, a, b = await two_joined(client)

        async def refused(token: str, *worker_ids: str) -> grpc.aio.AioRpcError:
            call = client.stub.HeartbeatStream(metadata=bearer(token))
            try:
                for worker_id in worker_ids[:-1]:
                    await call.write(_beat(worker_id))
                    response = await call.read()
                    assert response.beat.stop is False
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call.write(_beat(worker_ids[-1]))
                    assert await call.read() is grpc.aio.EOF  # an EOF would be no refusal
                    await call.code()
                return info.value
            finally:
                call.cancel()

        # A's token naming B at once; after a beat of its own; the API key's stream is its first worker's.
        for token, ids in ((a.worker_token, (b.worker_id,)), (a.worker_token, (a.worker_id, b.worker_id))):
            error = await refused(token, *ids)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
        error = await refused(control_service.api_key, a.worker_id, b.worker_id)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED and a.worker_id in (error.details() or "")

        # A token of no worker never opens one: refused at the headers, before any beat. (A beat
        # written meanwhile may fail as INTERNAL, gRPC's report of the failed write; the agent's
        # sender then asks with a unary beat, which gets the refusal itself.)
        call = client.stub.HeartbeatStream(metadata=bearer("not-a-token"))
        assert await asyncio.wait_for(call.code(), 10) == grpc.StatusCode.UNAUTHENTICATED
        sender = HeartbeatSender(bearer("not-a-token"))
        with pytest.raises(Unanswered, match="UNAUTHENTICATED"):
            await sender.send(client.stub, _beat(a.worker_id).beat, timeout=10)


def test_the_stream_is_a_worker_method() -> None:
    from vastrpc.control.service import WORKER_METHODS

    assert "/vastrpc.api.v1.ControlService/HeartbeatStream" in WORKER_METHODS
    assert hasattr(control_pb2_grpc.ControlServiceServicer, "HeartbeatStream")
