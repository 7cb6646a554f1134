"""The agent's HeartbeatSender: one stream for all beats, unary against an older service, a late answer unanswered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from vastrpc.api.v1 import control_pb2, control_pb2_grpc
from vastrpc.serve.heartbeats import HeartbeatSender, Unanswered

pytestmark = pytest.mark.timeout(30)

_SERVICE = "vastrpc.api.v1.ControlService"


class _Control:
    """A control service of heartbeats only: ``stream`` False is one from before HeartbeatStream."""

    def __init__(self, *, stream: bool = True, delay: float = 0.0) -> None:
        self.stream, self.delay = stream, delay
        self.unary_beats = 0
        self.streams = 0
        self.stream_beats = 0

    async def heartbeat(self, request: control_pb2.HeartbeatRequest, context: Any) -> control_pb2.HeartbeatResponse:
        self.unary_beats += 1
        return control_pb2.HeartbeatResponse(stop=False)

    async def heartbeat_stream(
        self, requests: AsyncIterator[control_pb2.HeartbeatStreamRequest], context: Any
    ) -> AsyncIterator[control_pb2.HeartbeatStreamResponse]:
        self.streams += 1
        async for _ in requests:
            self.stream_beats += 1
            await asyncio.sleep(self.delay)
            yield control_pb2.HeartbeatStreamResponse(beat=control_pb2.HeartbeatResponse(stop=self.stream_beats >= 3))

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {
            "Heartbeat": grpc.unary_unary_rpc_method_handler(
                self.heartbeat,
                request_deserializer=control_pb2.HeartbeatRequest.FromString,
                response_serializer=control_pb2.HeartbeatResponse.SerializeToString,
            )
        }
        if self.stream:
            methods["HeartbeatStream"] = grpc.stream_stream_rpc_method_handler(
                self.heartbeat_stream,
                request_deserializer=control_pb2.HeartbeatStreamRequest.FromString,
                response_serializer=control_pb2.HeartbeatStreamResponse.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(_SERVICE, methods)


async def _serving(control: _Control) -> tuple[grpc.aio.Server, control_pb2_grpc.ControlServiceStub, grpc.aio.Channel]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((control.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return server, control_pb2_grpc.ControlServiceStub(channel), channel


_REQUEST = control_pb2.HeartbeatRequest(worker_id="w-000000000001")


async def test_all_beats_go_on_one_stream() -> None:
    control = _Control()
    server, stub, channel = await _serving(control)
    sender = HeartbeatSender([("authorization", "Bearer t")])
    try:
        answers = [(await sender.send(stub, _REQUEST, timeout=5)).stop for _ in range(3)]
        assert answers == [False, False, True]
        assert (control.streams, control.stream_beats, control.unary_beats) == (1, 3, 0)
    finally:
        sender.close()
        await channel.close()
        await server.stop(0)


async def test_a_service_without_the_stream_gets_unary_heartbeats() -> None:
    control = _Control(stream=False)
    server, stub, channel = await _serving(control)
    sender = HeartbeatSender([("authorization", "Bearer t")])
    try:
        for _ in range(3):
            assert (await sender.send(stub, _REQUEST, timeout=5)).stop is False
        assert sender.unary and control.unary_beats == 3
        # Another service (the agent turned to a peer) is tried with the stream again.
        newer = _Control()
        server2, stub2, channel2 = await _serving(newer)
        try:
            await sender.send(stub2, _REQUEST, timeout=5)
            assert not sender.unary and newer.stream_beats == 1
        finally:
            sender.close()
            await channel2.close()
            await server2.stop(0)
    finally:
        await channel.close()
        await server.stop(0)


async def test_a_late_answer_or_a_stopped_service_is_an_unanswered_beat_and_the_stream_reopens() -> None:
    control = _Control(delay=1.0)
    server, stub, channel = await _serving(control)
    sender = HeartbeatSender([("authorization", "Bearer t")])
    try:
        with pytest.raises(Unanswered, match="no answer within 0.2s"):
            await sender.send(stub, _REQUEST, timeout=0.2)
        control.delay = 0.0
        await sender.send(stub, _REQUEST, timeout=5)
        assert control.streams == 2  # the late one was closed; a new one carried the next beat
        await server.stop(0)
        with pytest.raises(Unanswered):
            await sender.send(stub, _REQUEST, timeout=2)
    finally:
        sender.close()
        await channel.close()
        await server.stop(0)


class _RacedStub:
    """A stub whose streams fail their first write as gRPC does when the service ended the call first."""

    def __init__(self, unary_error: grpc.StatusCode | None = None) -> None:
        self.unary_error = unary_error
        self.streams = self.unary_beats = 0

    def HeartbeatStream(self, metadata: Any) -> Any:  # noqa: N802 - the stub's method name
        self.streams += 1

        class _Call:
            async def write(self, request: Any) -> None:
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), "Internal error from Core"
                )

            def cancel(self) -> bool:
                return True

        return _Call()

    async def Heartbeat(self, request: Any, metadata: Any, timeout: float) -> control_pb2.HeartbeatResponse:  # noqa: N802
        self.unary_beats += 1
        if self.unary_error is not None:
            raise grpc.aio.AioRpcError(self.unary_error, grpc.aio.Metadata(), grpc.aio.Metadata(), "refused")
        return control_pb2.HeartbeatResponse(stop=True)


async def test_a_first_write_failing_as_internal_is_asked_again_as_a_unary_beat() -> None:
    # The service's answer (here a stop, or a refusal) is what the agent sees, not gRPC's INTERNAL.
    stub = _RacedStub()
    sender = HeartbeatSender([("authorization", "Bearer t")])
    assert (await sender.send(stub, _REQUEST, timeout=5)).stop is True  # type: ignore[arg-type]
    assert (stub.streams, stub.unary_beats, sender.unary) == (1, 1, False)  # the stream is tried again next beat
    refused = _RacedStub(grpc.StatusCode.UNAUTHENTICATED)
    with pytest.raises(Unanswered, match="UNAUTHENTICATED"):
        await sender.send(refused, _REQUEST, timeout=5)  # type: ignore[arg-type]
