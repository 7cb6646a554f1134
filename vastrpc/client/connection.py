"""One worker's channel, with calls multiplexed over a long-lived Invoke stream."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import grpc

from vastrpc._errors import (
    CallError,
    CallTimeoutError,
    FunctionNotFoundError,
    SerializationError,
    WorkerUnavailableError,
)
from vastrpc._grpc import bearer, channel, error_from_rpc
from vastrpc._payload import Payload, assemble, rebuild_exception
from vastrpc.api.v1 import common_pb2, worker_pb2, worker_pb2_grpc

# At most this many Invoke streams per worker; another opens once each carries this many calls.
_MAX_STREAMS = 4
_CALLS_PER_STREAM = 16

# Seconds a worker that refused a call for being full counts as full, unless a call of ours on it ends sooner.
FULL_HOLD = 0.5

# A received value: its bytes and the sizes of its out-of-band buffers.
Received = tuple[bytes | bytearray, list[int]]
# Takes a call's output as the worker sends it: (LogStream value, text).
LogSink = Callable[[int, str], None]


class CallNotDelivered(WorkerUnavailableError):
    """The call never ran on that worker (it was draining, at its limits, or unreachable): safe to send elsewhere.

    Attributes:
        overloaded: The worker refused it for being at its limits (rather than going away).
    """

    def __init__(self, message: str, *, overloaded: bool = False) -> None:
        self.overloaded = overloaded
        super().__init__(message)


_ERRORS: dict[int, type[CallError]] = {
    worker_pb2.ERROR_KIND_FUNCTION_NOT_FOUND: FunctionNotFoundError,
    worker_pb2.ERROR_KIND_BAD_ARGUMENTS: SerializationError,
    worker_pb2.ERROR_KIND_BAD_RESULT: SerializationError,
    worker_pb2.ERROR_KIND_CANCELLED: CallTimeoutError,
}


def _call_error(err: worker_pb2.CallError) -> BaseException:
    if err.kind == worker_pb2.ERROR_KIND_APPLICATION:
        return rebuild_exception(err.type, err.message, err.traceback, err.pickled)
    if err.kind in (worker_pb2.ERROR_KIND_OVERLOADED, worker_pb2.ERROR_KIND_DRAINING):
        return CallNotDelivered(err.message, overloaded=err.kind == worker_pb2.ERROR_KIND_OVERLOADED)
    return _ERRORS.get(err.kind, CallError)(err.message)


_END = object()

# How a worker's established stream ends when its process or connection goes away.
_BROKEN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


class _Pending:
    """A call waiting for its answer: one value (a future) or a stream of them (a queue)."""

    __slots__ = ("begun", "buffer_sizes", "future", "on_log", "parts", "queue")

    def __init__(self, streaming: bool, on_log: LogSink | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.on_log = on_log
        self.future: asyncio.Future[Received] | None = None if streaming else loop.create_future()
        self.queue: asyncio.Queue[object] | None = asyncio.Queue() if streaming else None
        self.parts: list[bytes] = []
        self.buffer_sizes: list[int] = []
        # Its first message was handed to the stream: from then on the worker may run it.
        self.begun = False

    def on_result(self, result: worker_pb2.CallResult) -> None:
        if result.buffer_sizes:
            self.buffer_sizes = list(result.buffer_sizes)
        self.parts.append(result.data)
        if result.more:
            return
        value: Received = (assemble(self.parts, self.buffer_sizes), self.buffer_sizes)
        self.parts, self.buffer_sizes = [], []
        if self.future is not None:
            if not self.future.done():
                self.future.set_result(value)
        else:
            assert self.queue is not None
            self.queue.put_nowait(_END if result.done else value)

    def fail(self, error: BaseException) -> None:
        if self.future is not None:
            if not self.future.done():
                self.future.set_exception(error)
                # Marked retrieved: a call that failed before awaiting its answer (its stream
                # never opened, its timeout passed) never will, and asyncio would print
                # "Future exception was never retrieved" for each. One awaiting it still gets it.
                self.future.exception()
        else:
            assert self.queue is not None
            self.queue.put_nowait(error)


class InvokeStream:
    """A bidirectional Invoke stream carrying many calls at once, each tagged with its call id.

    Opening an RPC costs about twice a message on an open stream, so calls reuse this
    stream instead of opening one each.
    """

    def __init__(self, stub: worker_pb2_grpc.WorkerServiceStub, token: str, worker_id: str) -> None:
        self.worker_id = worker_id
        self._call = stub.Invoke(metadata=bearer(token))
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._write_lock = asyncio.Lock()
        self.revision_id = ""
        self.closed = False
        # The worker asked for no more calls on this stream (it is stopping or switching).
        self.draining = False
        self._half_closed = False
        # The call being written now, if any (one at a time, under the write lock).
        self._writing: asyncio.Task[None] | None = None
        # Set once the worker's handler has answered (initial metadata). No call is written
        # before it, so a stream that fails earlier provably delivered nothing.
        self._opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    @property
    def calls_in_flight(self) -> int:
        return len(self._pending)

    def _open(self, streaming: bool, on_log: LogSink | None) -> tuple[int, _Pending]:
        if self.closed or self.draining:
            raise CallNotDelivered(f"the stream to worker {self.worker_id} takes no more calls")
        call_id = next(self._ids)
        pending = self._pending[call_id] = _Pending(streaming, on_log)
        return call_id, pending

    def _finish(self, call_id: int, pending: _Pending, unanswered: bool) -> None:
        if unanswered:
            # The caller gave up (cancelled, timed out, stopped iterating): stop it on the worker.
            asyncio.get_running_loop().create_task(self._cancel(call_id))
        self._pending.pop(call_id, None)
        if self.draining and not self._pending:
            self._close_sending()

    async def invoke(
        self,
        function: str,
        payload: Payload,
        encoding: common_pb2.Encoding,
        timeout: float | None,
        on_log: LogSink | None = None,
    ) -> Received:
        """Run one call on this stream and return its encoded result; ``on_log`` gets its output."""
        call_id, pending = self._open(False, on_log)
        assert pending.future is not None
        # The timeout bounds the whole call: waiting for the stream to open and sending too
        # (a worker that stopped answering never opens it).
        bound = asyncio.timeout(timeout)
        try:
            async with bound:
                await self._send(call_id, function, payload, encoding, timeout, on_log is not None)
                return await asyncio.shield(pending.future)
        except TimeoutError:
            if not bound.expired():
                raise  # the function's own TimeoutError, raised on the worker
            where = "" if pending.begun else ", which did not take it in time (it never ran there)"
            raise CallTimeoutError(
                f"{function} did not finish within its timeout on worker {self.worker_id}{where}"
            ) from None
        finally:
            # Begun but unanswered: cancel it on the worker (written after the call itself).
            self._finish(call_id, pending, pending.begun and not pending.future.done())

    async def stream(
        self,
        function: str,
        payload: Payload,
        encoding: common_pb2.Encoding,
        timeout: float | None,
        on_log: LogSink | None = None,
    ) -> AsyncIterator[Received]:
        """Run a generator call on this stream, yielding each value as the worker produces it."""
        call_id, pending = self._open(True, on_log)
        assert pending.queue is not None
        ended = False
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            bound = asyncio.timeout(timeout)
            try:
                async with bound:
                    await self._send(call_id, function, payload, encoding, timeout, on_log is not None)
            except TimeoutError:
                if not bound.expired():
                    raise
                where = "" if pending.begun else ", which did not take it in time (it never ran there)"
                raise CallTimeoutError(
                    f"{function} did not finish within its timeout on worker {self.worker_id}{where}"
                ) from None
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                try:
                    async with asyncio.timeout(remaining):
                        item = await pending.queue.get()
                except TimeoutError:
                    raise CallTimeoutError(
                        f"{function} did not finish within its timeout on worker {self.worker_id}"
                    ) from None
                if item is _END:
                    ended = True
                    return
                if isinstance(item, BaseException):
                    ended = True
                    raise item
                yield item  # type: ignore[misc]
        finally:
            self._finish(call_id, pending, pending.begun and not ended)

    def _close_sending(self) -> None:
        # Half-close: the worker ends the stream once it has answered everything.
        if not self._half_closed and not self.closed:
            self._half_closed = True
            asyncio.get_running_loop().create_task(self._done_writing())

    async def _done_writing(self) -> None:
        try:
            async with self._write_lock:
                await self._call.done_writing()
        except Exception:  # the stream is gone already
            pass

    async def _send(
        self,
        call_id: int,
        function: str,
        payload: Payload,
        encoding: common_pb2.Encoding,
        timeout: float | None,
        stream_logs: bool,
    ) -> None:
        parts = payload.chunks()
        first, more = next(parts)
        # Nested messages are built from dicts: passing a message object copies it, chunk and all.
        start = {
            "call_id": call_id,
            "function": function,
            "encoding": encoding,
            "data": first,
            "more": more,
            "timeout": timeout or 0.0,
            "buffer_sizes": payload.buffer_sizes,
            "stream_logs": stream_logs,
        }
        # Waiting for the stream to open and for our turn to write may be given up (the call's
        # timeout, a cancel): nothing is written yet.
        await asyncio.shield(self._opened)
        await self._write_lock.acquire()
        if self.closed:
            self._write_lock.release()
            raise CallNotDelivered(f"the stream to worker {self.worker_id} ended before the call was sent")

        async def write() -> None:
            await self._call.write(worker_pb2.InvokeRequest(start=start))
            for chunk, more in parts:
                await self._call.write(worker_pb2.InvokeRequest(data={"call_id": call_id, "data": chunk, "more": more}))

        # Once begun, the call is written whole even if the caller gives up meanwhile: half a call
        # would stay in the worker's memory for the stream's life. The worker ends it by its timeout.
        if (pending := self._pending.get(call_id)) is not None:
            pending.begun = True
        writing = self._writing = asyncio.get_running_loop().create_task(write())
        writing.add_done_callback(self._written)
        try:
            await asyncio.shield(writing)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not writing.cancelled() or (task is not None and task.cancelling()):
                raise  # the caller gave up
            # The stream died under the write (the read loop stopped it): the worker drops a
            # call of a dead stream, so it never ran.
            raise CallNotDelivered(
                f"the stream to worker {self.worker_id} ended while the call was being sent: the worker stopped "
                "or its connection broke"
            ) from None
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
            # The worker never got the whole call, so it never ran: safe to send elsewhere.
            self.closed = True
            what = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc) or type(exc).__name__
            raise CallNotDelivered(
                f"the stream to worker {self.worker_id} ended before the call was sent ({what}): the worker "
                "stopped or its connection broke"
            ) from None

    def _written(self, writing: asyncio.Task[None]) -> None:
        if self._writing is writing:
            self._writing = None
        self._write_lock.release()
        if not writing.cancelled():
            writing.exception()  # retrieved: a caller that gave up never awaits it; one that waits still sees it

    async def _cancel(self, call_id: int) -> None:
        try:
            async with self._write_lock:
                await self._call.write(worker_pb2.InvokeRequest(cancel=worker_pb2.CallCancel(call_id=call_id)))
        except Exception:  # the stream is gone: the worker cancels the calls of a dead stream itself
            pass

    async def _read_loop(self) -> None:
        error: BaseException = WorkerUnavailableError(f"worker {self.worker_id} closed the stream during the call")
        established = False
        try:
            for key, value in await self._call.initial_metadata():
                if key == "vastrpc-revision":
                    self.revision_id = value
            established = True
            self._opened.set_result(None)
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    break
                kind = response.WhichOneof("message")
                if kind == "result":
                    pending = self._pending.get(response.result.call_id)
                    if pending is not None:
                        pending.on_result(response.result)
                elif kind == "error":
                    pending = self._pending.get(response.error.call_id)
                    if pending is not None:
                        pending.fail(_call_error(response.error))
                elif kind == "log":
                    pending = self._pending.get(response.log.call_id)
                    if pending is not None and pending.on_log is not None:
                        pending.on_log(response.log.stream, response.log.text)
                elif kind == "drain":
                    self.draining = True
                    if not self._pending:
                        self._close_sending()
        except grpc.aio.AioRpcError as exc:
            if not established and exc.code() == grpc.StatusCode.UNAVAILABLE:
                # The stream never reached the worker's handler: nothing sent on it ran.
                error = CallNotDelivered(f"cannot reach worker {self.worker_id}: {exc.details()}")
            elif exc.code() in _BROKEN:
                # "Stream removed", "Connection reset by peer", cancelled by a stopping server,
                # "Internal error from Core": the worker's process or its connection went away.
                error = WorkerUnavailableError(
                    f"the connection to worker {self.worker_id} broke during the call ({exc.details()}): the worker "
                    "stopped or was killed, so the call may or may not have run. Declare the function "
                    "@app.remote(retries=N) if running it twice is safe, to have such calls retried on another "
                    "worker; otherwise decide whether to call again"
                )
            else:
                error = error_from_rpc(exc, unavailable=WorkerUnavailableError, target=f"worker {self.worker_id}")
        except asyncio.CancelledError:
            error = WorkerUnavailableError(f"the connection to worker {self.worker_id} was closed")
            raise
        finally:
            self.closed = True
            if self._writing is not None:
                # A write to a dead stream may never return: stop it, so that the calls behind it
                # are told at once instead of at their timeout.
                self._writing.cancel()
            if not self._opened.done():
                # Nothing was written yet: a lost connection is "not delivered" (retried
                # elsewhere); anything else (a refused token, say) is said as it is.
                if isinstance(error, WorkerUnavailableError) and not isinstance(error, CallNotDelivered):
                    error = CallNotDelivered(str(error))
                self._opened.set_exception(error)
                self._opened.exception()  # retrieved: callers that never waited on it need not
            for pending in list(self._pending.values()):
                pending.fail(error)

    async def close(self) -> None:
        self.closed = True
        self._call.cancel()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


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
        self._stub = worker_pb2_grpc.WorkerServiceStub(self.channel)
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
            best = InvokeStream(self._stub, self.token, self.worker_id)
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
