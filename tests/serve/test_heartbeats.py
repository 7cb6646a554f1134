"""The agent's HeartbeatSender: one stream for all beats, answers asked sparsely, unary against an older service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from vastrpc.api.v1 import control_pb2, control_pb2_grpc
from vastrpc.serve.heartbeats import ANSWER_EVERY, HeartbeatSender, Unanswered

pytestmark = pytest.mark.timeout(30)

_SERVICE = "vastrpc.api.v1.ControlService"


class _Control:
    """A control service of heartbeats only: ``stream`` False is one from before HeartbeatStream.

    It answers every beat on a stream, as services before ``answer_every`` did, unless
    ``honour`` (every ``answer_every``-th beat, the first and a stop, as the real one) or
    ``frozen`` (the first beat only: a service that stopped answering but holds the stream).
    """

    def __init__(self, *, stream: bool = True, delay: float = 0.0, honour: bool = False) -> None:
        self.stream, self.delay, self.honour = stream, delay, honour
        self.frozen = False
        self.unary_beats = 0
        self.streams = 0
        self.stream_beats = 0
        self.answers = 0
        self.stop_at = 3  # the beat (counted over all streams) from which the answer is stop

    async def heartbeat(self, request: control_pb2.HeartbeatRequest, context: Any) -> control_pb2.HeartbeatResponse:
        self.unary_beats += 1
        return control_pb2.HeartbeatResponse(stop=False)

    async def heartbeat_stream(
        self, requests: AsyncIterator[control_pb2.HeartbeatStreamRequest], context: Any
    ) -> AsyncIterator[control_pb2.HeartbeatStreamResponse]:
        self.streams += 1
        since = -1
        async for message in requests:
            self.stream_beats += 1
            since += 1
            await asyncio.sleep(self.delay)
            stop = self.stream_beats >= self.stop_at
            if since == 0 or not (self.frozen or (self.honour and not stop and since < message.answer_every)):
                since = 0
                self.answers += 1
                yield control_pb2.HeartbeatStreamResponse(beat=control_pb2.HeartbeatResponse(stop=stop))

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


@contextlib.asynccontextmanager
async def _serving(
    control: _Control, answer_every: int = ANSWER_EVERY
) -> AsyncIterator[tuple[grpc.aio.Server, control_pb2_grpc.ControlServiceStub, HeartbeatSender]]:
    """A server of ``control``, a stub on it and a sender: all three closed at the end."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((control.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    sender = HeartbeatSender([("authorization", "Bearer t")], answer_every=answer_every)
    try:
        yield server, control_pb2_grpc.ControlServiceStub(channel), sender
    finally:
        sender.close()
        await channel.close()
        await server.stop(0)


_REQUEST = control_pb2.HeartbeatRequest(worker_id="w-000000000001")


async def test_all_beats_go_on_one_stream() -> None:
    control = _Control()
    async with _serving(control) as (_, stub, sender):
        answers = []
        for _ in range(4):
            answers.append((await sender.send(stub, _REQUEST, timeout=5)).stop)
            await asyncio.sleep(0.1)  # (an interval) the answer is read beside the beats
        # The third beat's answer said stop; a send returns the answers read so far.
        assert answers == [False, False, False, True]
        assert (control.streams, control.stream_beats, control.unary_beats) == (1, 4, 0)


async def test_the_service_is_asked_to_answer_every_fourth_beat_and_a_stop_comes_at_once() -> None:
    control = _Control(honour=True)
    control.stop_at = 11
    async with _serving(control, answer_every=4) as (_, stub, sender):
        answers = []
        for _ in range(12):
            answers.append((await sender.send(stub, _REQUEST, timeout=5)).stop)
            await asyncio.sleep(0.05)
        # Beats 1, 5 and 9 answered, then every stop (11, 12) at once, seen by the next send.
        assert control.answers == 5 and control.streams == 1
        assert answers == [False] * 11 + [True]


async def test_a_service_that_stops_answering_is_an_unanswered_beat_within_six() -> None:
    control = _Control(honour=True)
    control.stop_at = 1000
    async with _serving(control, answer_every=4) as (_, stub, sender):
        await sender.send(stub, _REQUEST, timeout=5)
        control.frozen = True  # the stream stays open, nothing more is answered
        for _ in range(5):
            assert (await sender.send(stub, _REQUEST, timeout=5)).stop is False
        with pytest.raises(Unanswered, match="no answer to the last 5 beats"):
            await sender.send(stub, _REQUEST, timeout=5)
        control.frozen = False
        await sender.send(stub, _REQUEST, timeout=5)
        assert control.streams == 2  # the silent one was closed; a new one carried the next beat


async def test_a_service_without_the_stream_gets_unary_heartbeats() -> None:
    control, newer = _Control(stream=False), _Control()
    async with _serving(control) as (_, stub, sender), _serving(newer) as (_, stub2, _):
        for _ in range(3):
            assert (await sender.send(stub, _REQUEST, timeout=5)).stop is False
        assert sender.unary and control.unary_beats == 3
        # Another service (the agent turned to a peer) is tried with the stream again.
        await sender.send(stub2, _REQUEST, timeout=5)
        assert not sender.unary and newer.stream_beats == 1


async def test_a_late_answer_or_a_stopped_service_is_an_unanswered_beat_and_the_stream_reopens() -> None:
    control = _Control(delay=1.0)
    async with _serving(control) as (server, stub, sender):
        with pytest.raises(Unanswered, match="no answer within 0.2s"):
            await sender.send(stub, _REQUEST, timeout=0.2)
        control.delay = 0.0
        await sender.send(stub, _REQUEST, timeout=5)
        assert control.streams == 2  # the late one was closed; a new one carried the next beat
        await server.stop(0)
        with pytest.raises(Unanswered):
            # The broken stream is seen by the reader; the beat after it says so.
            for _ in range(3):
                await sender.send(stub, _REQUEST, timeout=2)
                await asyncio.sleep(0.1)


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
