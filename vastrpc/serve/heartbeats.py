"""A worker agent's heartbeats: messages on one long-lived HeartbeatStream, else unary Heartbeat calls."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc

from vastrpc.api.v1 import control_pb2, control_pb2_grpc

__all__ = ["HeartbeatSender", "Unanswered"]


class Unanswered(Exception):
    """A heartbeat got no answer: the call failed, the stream ended, or the answer was late."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HeartbeatSender:
    """Sends one worker's heartbeats to the control service behind a stub.

    The first beat opens a HeartbeatStream; each beat is written on it and its answer read
    within ``timeout``. A stream that fails, ends, or answers late counts as an unanswered
    beat (``Unanswered``) and is closed: the next beat opens a new one. A stub other than the
    previous one (the agent turned to another control service) opens a new stream too. A
    service that does not know HeartbeatStream (UNIMPLEMENTED: an older one) is sent unary
    Heartbeats from then on, until the agent turns to another service.

    Args:
        metadata: The worker token's call metadata.
    """

    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._metadata = tuple(metadata)
        self._stub: control_pb2_grpc.ControlServiceStub | None = None
        self._call: grpc.aio.StreamStreamCall | None = None
        self.unary = False  # the service behind ``_stub`` has no HeartbeatStream

    async def send(
        self, stub: control_pb2_grpc.ControlServiceStub, request: control_pb2.HeartbeatRequest, timeout: float
    ) -> control_pb2.HeartbeatResponse:
        """Send one heartbeat and return its answer; ``Unanswered`` when none came within ``timeout`` seconds."""
        if stub is not self._stub:
            self.close()
            self._stub, self.unary = stub, False
        if self.unary:
            return await self._send_unary(stub, request, timeout)
        fresh = self._call is None
        if fresh:
            self._call = stub.HeartbeatStream(metadata=self._metadata)
        call = self._call
        assert call is not None
        try:
            async with asyncio.timeout(timeout):
                await call.write(control_pb2.HeartbeatStreamRequest(beat=request))
                response = await call.read()
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
        if response is grpc.aio.EOF:
            self.close()
            raise Unanswered(f"stream ended ({(await call.code()).name})")
        assert isinstance(response, control_pb2.HeartbeatStreamResponse)
        return response.beat

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
        if self._call is not None:
            self._call.cancel()
            self._call = None
