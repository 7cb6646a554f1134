"""Worker heartbeats as the control service takes them: one unary call each, or many on one stream per worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from vastrpc._errors import AuthenticationError, VastrpcError
from vastrpc.api.v1 import control_pb2
from vastrpc.control.rpcstatus import abort, unary

if TYPE_CHECKING:
    from vastrpc.control.lifecycle.endpoints import Lifecycle
    from vastrpc.control.metrics import ControlMetrics
    from vastrpc.control.stores.base import WorkerRow

__all__ = ["Heartbeats"]

# The two answers a beat on a stream can get, built once.
_STREAM_ANSWERS = {
    stop: control_pb2.HeartbeatStreamResponse(beat=control_pb2.HeartbeatResponse(stop=stop)) for stop in (False, True)
}


class Heartbeats:
    """The Heartbeat and HeartbeatStream handlers (a mixin of ControlService).

    A unary heartbeat costs the service a whole gRPC call (headers, a task, the token read from
    the store twice) for a few bytes; at a thousand workers beating once a second that call is
    most of the service's CPU. On HeartbeatStream a worker opens one call and sends each beat as
    a message on it: the token is checked once, as the stream opens, and the stream is bound to
    the worker it belongs to (the worker of the token; for the API key, of the first message).
    Both record a beat the same way (``_beat``).
    """

    if TYPE_CHECKING:
        lifecycle: Lifecycle
        metrics: ControlMetrics | None

        def _caller_worker(self, context: grpc.aio.ServicerContext) -> WorkerRow | None: ...
        def _check_worker(self, context: grpc.aio.ServicerContext, worker_id: str) -> WorkerRow | None: ...

    def _beat(self, request: control_pb2.HeartbeatRequest) -> bool:
        """Record one heartbeat of a worker already authorized; True when it should stop."""
        # Kept in memory, written with the others' within a second (``HeartbeatBatch``).
        stop = self.lifecycle.beats.record(
            request.worker_id, request.calls_in_flight, request.calls_queued, request.calls_started
        )
        if self.metrics is not None:
            self.metrics.heartbeat(request)
        return stop

    @unary
    async def Heartbeat(
        self, request: control_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.HeartbeatResponse:
        self._check_worker(context, request.worker_id)
        return control_pb2.HeartbeatResponse(stop=self._beat(request))

    async def HeartbeatStream(
        self,
        request_iterator: AsyncIterator[control_pb2.HeartbeatStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[control_pb2.HeartbeatStreamResponse]:
        try:
            caller = self._caller_worker(context)  # the token, once for the whole stream
        except VastrpcError as exc:
            await abort(context, exc)
        bound = caller.id if caller is not None else ""
        unanswered = -1  # beats since the last answer; the first beat is answered
        async for message in request_iterator:
            beat = message.beat
            try:
                if not bound:
                    bound = beat.worker_id  # the API key: the stream is the first message's worker's
                elif beat.worker_id != bound:
                    raise AuthenticationError(
                        f"this heartbeat stream belongs to worker {bound!r}, not {beat.worker_id!r}"
                    )
                stop = self._beat(beat)
            except VastrpcError as exc:
                await abort(context, exc)
            unanswered += 1
            # An agent that asks for an answer every N beats spares the service most writes
            # (the larger part of a beat's cost); a stop is never held back.
            if stop or unanswered == 0 or unanswered >= message.answer_every:
                unanswered = 0
                yield _STREAM_ANSWERS[stop]
            if self.lifecycle.shutting_down:
                # Its agent reopens the stream on a peer, or on this service once it is back.
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the control service is stopping")
