"""One worker's channel, with calls multiplexed over long-lived Invoke streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable

import grpc

from vastrpc._errors import WorkerUnavailableError
from vastrpc._grpc import channel
from vastrpc._payload import Payload
from vastrpc._wire import parse_response, serialize
from vastrpc.api.v1 import common_pb2
from vastrpc.client.invoke_stream import CallNotDelivered, InvokeStream, LogSink, Received, _Pending

__all__ = ["FULL_HOLD", "CallNotDelivered", "InvokeStream", "LogSink", "Received", "WorkerConnection", "_Pending"]

# At most this many Invoke streams per worker; another opens once each carries this many calls.
# Calls that queue on one stream go out batched, so one stream carries 64 in flight best
# (measured: 5,800-7,100 calls/s against 4,100-6,900 with a new stream every 16 calls).
_MAX_STREAMS = 4
_CALLS_PER_STREAM = 64

# Seconds a worker that refused a call for being full counts as full, unless a call of ours on it ends sooner.
FULL_HOLD = 0.5


class WorkerConnection:
    """A channel to one worker's serving process and its Invoke stream, with load figures for the balancer."""

    def __init__(
        self,
        worker_id: str,
        address: str,
        token: str,
        score: float,
        capacity: int,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.address = address
        self.token = token
        self.score = score
        self.capacity = max(1, capacity)
        # TLS with the credentials the client uses for the control service; plaintext without.
        self.channel = channel(address, credentials)
        # Invoke with hand-framed messages for large data both ways (vastrpc._wire).
        self._invoke = self.channel.stream_stream(
            "/vastrpc.api.v1.WorkerService/Invoke", request_serializer=serialize, response_deserializer=parse_response
        )
        self._streams: list[InvokeStream] = []
        self.in_flight = 0
        self.calls = 0
        # Seconds one call takes in one of the worker's slots, smoothed; the benchmark's score
        # (calls per second with every slot busy) gives the first estimate.
        self.service_time = self.capacity / score if score > 0 else 0.01
        self.failures = 0
        # Until then (time.monotonic()) the worker counts as full: it refused a call for being at its limits.
        self.full_until = 0.0
        # Called when a call here ends (a slot freed): the router wakes a call waiting for room.
        self.on_room: Callable[[], None] | None = None

    def expected_queue_time(self) -> float:
        """Seconds a new call would wait here for a slot: this client's calls beyond the slots / the throughput.

        The throughput is ``capacity / service_time`` calls per second: the benchmark score
        at first, then as measured.
        """
        return max(0, self.in_flight - self.capacity) * self.service_time / self.capacity

    def _ended(self, refused: bool) -> None:
        if refused:
            self.full_until = time.monotonic() + FULL_HOLD
            return
        self.full_until = 0.0
        if self.on_room is not None:
            self.on_room()

    def expected_wait(self) -> float:
        """Expected seconds until a new call here completes: the balancer picks the lowest.

        With ``n`` calls in flight on ``c`` slots a new call finishes after about
        ``max(1, (n + 1) / c)`` service times: calls queue at a worker only in proportion to
        its speed, so every slot stays busy without one worker's queue growing ahead.
        """
        return self.service_time * max(1.0, (self.in_flight + 1) / self.capacity) * (1 + self.failures)

    @property
    def draining(self) -> bool:
        """The worker's serving process is stopping: route no new calls here."""
        return any(s.draining for s in self._streams)

    def _live_stream(self) -> InvokeStream:
        """The open stream with the fewest calls; another one opens while each carries many.

        Several streams keep writes from queueing behind one another when many calls are
        in flight; one is enough (and cheapest) for a few.
        """
        if self.draining:
            raise CallNotDelivered(f"worker {self.worker_id} is draining")
        self._streams = [s for s in self._streams if not s.closed]
        best = min(self._streams, key=lambda s: s.calls_in_flight, default=None)
        if best is None or (best.calls_in_flight >= _CALLS_PER_STREAM and len(self._streams) < _MAX_STREAMS):
            best = InvokeStream(self._invoke, self.token, self.worker_id)
            self._streams.append(best)
        return best

    async def invoke(
        self,
        function: str,
        payload: Payload,
        encoding: common_pb2.Encoding,
        timeout: float | None,
        on_log: LogSink | None = None,
    ) -> tuple[Received, str]:
        """Run a call; returns its encoded result and the revision that served it."""
        stream = self._live_stream()
        rounds = max(1.0, (self.in_flight + 1) / self.capacity)  # service times this call waits
        self.in_flight += 1
        self.calls += 1
        started = time.perf_counter()
        refused = False
        try:
            result = await stream.invoke(function, payload, encoding, timeout, on_log)
        except WorkerUnavailableError as exc:
            self.failures += 1
            refused = isinstance(exc, CallNotDelivered) and exc.overloaded
            raise
        finally:
            self.in_flight -= 1
            self._ended(refused)
        self.failures = 0
        self.service_time += 0.2 * ((time.perf_counter() - started) / rounds - self.service_time)
        return result, stream.revision_id

    async def stream(
        self,
        function: str,
        payload: Payload,
        encoding: common_pb2.Encoding,
        timeout: float | None,
        on_log: LogSink | None = None,
    ) -> AsyncGenerator[Received, None]:
        """Run a generator call, yielding its encoded values as they come."""
        stream = self._live_stream()
        self.in_flight += 1
        self.calls += 1
        refused = False
        try:
            async for item in stream.stream(function, payload, encoding, timeout, on_log):
                yield item
        except CallNotDelivered as exc:
            refused = exc.overloaded
            raise
        finally:
            self.in_flight -= 1
            self._ended(refused)

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self._streams), return_exceptions=True)
        await self.channel.close()
