"""A worker agent's heartbeats: messages on one long-lived HeartbeatStream, else unary Heartbeat calls."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc

from vastrpc.api.v1 import control_pb2, control_pb2_grpc

__all__ = ["ANSWER_EVERY", "HeartbeatSender", "Unanswered"]

# Beats per answer an agent asks of the service on its HeartbeatStream: a quarter of the writes;
# a service that stops answering is noticed within six beats (a broken stream at the next beat).
ANSWER_EVERY = 4


class Unanswered(Exception):
    """A heartbeat got no answer: the call failed, the stream ended, or the answer was late."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HeartbeatSender:
    """Sends one worker's heartbeats to the control service behind a stub.

    The first beat opens a HeartbeatStream and waits for its answer; later beats are written
    on it asking for an answer only every ``answer_every`` beats (a stop comes at once), and a
    task beside the beats reads the answers: the service writes a fraction of the messages. A
    stream that fails or ends, a write that does not go through within ``timeout``, or
    ``answer_every + 1`` beats written since the last answer count as an unanswered beat
    (``Unanswered``) and close the stream: the next beat opens a new one. A stub other than
    the previous one (the agent turned to another control service) opens a new stream too. A
    service that does not know HeartbeatStream (UNIMPLEMENTED: an older one) is sent unary
    Heartbeats from then on, until the agent turns to another service.

    Args:
        metadata: The worker token's call metadata.
        answer_every: Beats per answer asked of the service (1: every beat).
    """

    def __init__(self, metadata: Sequence[tuple[str, str]], answer_every: int = ANSWER_EVERY) -> None:
        self._metadata = tuple(metadata)
        self.answer_every = max(1, answer_every)
        self._stub: control_pb2_grpc.ControlServiceStub | None = None
        self._call: grpc.aio.StreamStreamCall | None = None
        self._reader: asyncio.Task[str] | None = None
        self._unanswered = 0  # beats written since the last answer
        self._stop = False  # an answer said stop
        self.unary = False  # the service behind ``_stub`` has no HeartbeatStream

    async def send(
        self, stub: control_pb2_grpc.ControlServiceStub, request: control_pb2.HeartbeatRequest, timeout: float
    ) -> control_pb2.HeartbeatResponse:
        """Send one heartbeat and return the latest answer; ``Unanswered`` when the stream is not answering."""
        if stub is not self._stub:
            self.close()
            self._stub, self.unary = stub, False
        if self.unary:
            return await self._send_unary(stub, request, timeout)
        if self._reader is not None and self._reader.done():
            reason = self._reader.result()
            self.close()
            raise Unanswered(reason)
        fresh = self._call is None
        if fresh:
            self._call = stub.HeartbeatStream(metadata=self._metadata)
            self._unanswered, self._stop = 0, False
        call = self._call
        assert call is not None
        message = control_pb2.HeartbeatStreamRequest(beat=request, answer_every=self.answer_every)
        try:
            async with asyncio.timeout(timeout):
                await call.write(message)
                response = await call.read() if fresh else None
        except TimeoutError:
            self.close()
            raise Unanswered(f"no answer within {timeout:g}s") from None
        except grpc.aio.AioRpcError as exc:
            self.close()
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.unary = True  # an older control service: one call per heartbeat
            elif not (fresh and exc.code() == grpc.StatusCode.INTERNAL):
                raise Unanswered(exc.code().name) from None
            # INTERNAL on a new stream's first write: the service ended the call at its headers
            # (refused or unknown) while the write was in flight, and gRPC reports the failed
            # write instead of the service's status. A unary beat gets the real answer.
            return await self._send_unary(stub, request, timeout)
        except asyncio.InvalidStateError:  # written after the call ended: its status says why
            self.close()
            raise Unanswered(f"stream ended ({(await call.code()).name})") from None
        if fresh:
            if response is grpc.aio.EOF:
                self.close()
                raise Unanswered(f"stream ended ({(await call.code()).name})")
            assert isinstance(response, control_pb2.HeartbeatStreamResponse)
            self._reader = asyncio.create_task(self._read(call))
            return response.beat
        self._unanswered += 1
        if self._unanswered > self.answer_every + 1:
            self.close()
            raise Unanswered(f"no answer to the last {self.answer_every + 1} beats")
        return control_pb2.HeartbeatResponse(stop=self._stop)

    async def _read(self, call: grpc.aio.StreamStreamCall) -> str:
        """Take the stream's answers until it ends; returns why it ended."""
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                assert isinstance(response, control_pb2.HeartbeatStreamResponse)
                self._unanswered = 0
                self._stop = self._stop or response.beat.stop
            return f"stream ended ({(await call.code()).name})"
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        except Exception as exc:  # noqa: BLE001 - a broken stream is an unanswered beat, never the heartbeats' end
            return f"stream failed ({type(exc).__name__}: {exc})"

    async def _send_unary(
        self, stub: control_pb2_grpc.ControlServiceStub, request: control_pb2.HeartbeatRequest, timeout: float
    ) -> control_pb2.HeartbeatResponse:
        try:
            response: control_pb2.HeartbeatResponse = await stub.Heartbeat(
                request, metadata=self._metadata, timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise Unanswered(exc.code().name) from None
        return response

    def close(self) -> None:
        """End the open stream, if any."""
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        if self._call is not None:
            self._call.cancel()
            self._call = None
