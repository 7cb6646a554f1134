"""One Invoke stream to a worker: calls multiplexed on it by call id, written by one task, small ones batched."""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from vastrpc._errors import (
    CallError,
    CallTimeoutError,
    FunctionNotFoundError,
    SerializationError,
    WorkerUnavailableError,
)
from vastrpc._grpc import BATCH_METADATA, CHUNK_SIZE, bearer, error_from_rpc
from vastrpc._payload import Gathered, Payload, assemble, rebuild_exception
from vastrpc._wire import FRAME_MIN, Framed, data_frame, start_frame
from vastrpc.api.v1 import common_pb2, worker_pb2

# At most this many calls, and this many bytes of their arguments, go in one InvokeBatch message.
_BATCH_MAX = 64
_BATCH_BYTES = CHUNK_SIZE

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

    __slots__ = ("begun", "buffer_sizes", "future", "gathered", "on_log", "queue", "sent")

    def __init__(self, streaming: bool, on_log: LogSink | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.on_log = on_log
        self.future: asyncio.Future[Received] | None = None if streaming else loop.create_future()
        self.queue: asyncio.Queue[object] | None = asyncio.Queue() if streaming else None
        # The chunks of the value being received, and the sizes of its out-of-band buffers.
        self.gathered: Gathered | None = None
        self.buffer_sizes: list[int] = []
        # Its first message was handed to the stream: from then on the worker may run it.
        self.begun = False
        # All of it was written: only from then on can a broken stream leave it run or not.
        self.sent = False

    def on_result(self, result: worker_pb2.CallResult, data: memoryview | None = None) -> None:
        """Take a chunk of the result; ``data``: its data, when it came framed by hand (see vastrpc._wire)."""
        chunk = result.data if data is None else data
        if self.gathered is None:  # a value's first chunk
            self.buffer_sizes = list(result.buffer_sizes)
            if not result.more:  # the whole value in one message
                value: Received = (assemble([chunk], self.buffer_sizes), self.buffer_sizes)
            else:
                self.gathered = Gathered(chunk, self.buffer_sizes)
                return
        else:
            self.gathered.add(chunk)
            if result.more:
                return
            value = (self.gathered.value(), self.buffer_sizes)
            self.gathered = None
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


class _Outgoing:
    """What the writer sends next: one call (its first message and its further chunks) or a control message."""

    __slots__ = ("call_id", "chunks", "first", "pending", "size")

    def __init__(
        self,
        first: dict[str, Any] | bytes | None,
        call_id: int = 0,
        pending: _Pending | None = None,
        chunks: Iterator[bytes] | None = None,
        size: int = 0,
    ) -> None:
        # An InvokeRequest as a dict, or framed by hand (large data); None: half-close the stream.
        self.first = first
        self.call_id = call_id
        self.pending = pending
        self.chunks = chunks  # the further chunks of a call's arguments (framed InvokeRequests), if any
        self.size = size  # bytes of arguments in ``first``


class InvokeStream:
    """A bidirectional Invoke stream carrying many calls at once, each tagged with its call id.

    Opening an RPC costs about twice a message on an open stream, so calls reuse this
    stream instead of opening one each. One writer task per stream sends what the calls
    queue (no task, lock or shield per call); while it writes, small calls queue up and go
    together as one InvokeBatch message when the worker takes batches (its initial metadata
    says so): one gRPC write for many calls.
    """

    def __init__(self, invoke: grpc.aio.StreamStreamMultiCallable, token: str, worker_id: str) -> None:
        self.worker_id = worker_id
        self._call = invoke(metadata=(*bearer(token), BATCH_METADATA))
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self.revision_id = ""
        self.closed = False
        # The worker asked for no more calls on this stream (it is stopping or switching).
        self.draining = False
        self._half_closed = False
        # The worker reads InvokeBatch messages (said in its initial metadata).
        self._batches = False
        loop = asyncio.get_running_loop()
        # What the writer sends next, in order; set when something was queued while it waited.
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        self._wake: asyncio.Future[None] = loop.create_future()
        # Set once the worker's handler has answered (initial metadata). No call is written
        # before it, so a stream that fails earlier provably delivered nothing.
        self._opened: asyncio.Future[None] = loop.create_future()
        self._reader = loop.create_task(self._read_loop())
        self._writer = loop.create_task(self._write_loop())

    @property
    def calls_in_flight(self) -> int:
        return len(self._pending)

    def _open(self, streaming: bool, on_log: LogSink | None) -> tuple[int, _Pending]:
        if self.closed or self.draining:
            raise CallNotDelivered(f"the stream to worker {self.worker_id} takes no more calls")
        call_id = next(self._ids)
        pending = self._pending[call_id] = _Pending(streaming, on_log)
        return call_id, pending

    def _queue(self, item: _Outgoing) -> None:
        self._outbox.append(item)
        if not self._wake.done():
            self._wake.set_result(None)

    def _finish(self, call_id: int, pending: _Pending, unanswered: bool) -> None:
        if unanswered and not self.closed:
            # The caller gave up (cancelled, timed out, stopped iterating): stop it on the worker
            # (queued behind the call itself, which is always written whole).
            self._queue(_Outgoing({"cancel": {"call_id": call_id}}))
        self._pending.pop(call_id, None)
        if self.draining and not self._pending:
            self._close_sending()

    def _start(
        self,
        call_id: int,
        pending: _Pending,
        function: str,
        payload: Payload,
        encoding: common_pb2.Encoding,
        timeout: float | None,
        stream_logs: bool,
    ) -> None:
        """Queue the call for the writer; it is begun once the writer takes it."""
        if self.closed:
            raise CallNotDelivered(f"the stream to worker {self.worker_id} ended before the call was sent")
        parts = payload.pieces()
        views, size, more = next(parts)
        # Nested messages are built from dicts: passing a message object copies it, chunk and all.
        start: dict[str, Any] = {
            "call_id": call_id,
            "function": function,
            "encoding": encoding,
            "more": more,
            "timeout": timeout or 0.0,
            "buffer_sizes": payload.buffer_sizes,
            "stream_logs": stream_logs,
        }
        first: dict[str, Any] | bytes
        if size >= FRAME_MIN:  # large: framed by hand, the data copied once (vastrpc._wire)
            first = start_frame(start, views, size)
        else:
            start["data"] = b"".join(views)
            first = {"start": start}
        rest = (data_frame(call_id, m, v, n) for v, n, m in parts) if more else None
        self._queue(_Outgoing(first, call_id, pending, rest, size))

    def _timed_out(self, function: str, pending: _Pending) -> CallTimeoutError:
        where = "" if pending.begun else ", which did not take it in time (it never ran there)"
        return CallTimeoutError(f"{function} did not finish within its timeout on worker {self.worker_id}{where}")

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
        future = pending.future
        assert future is not None
        # The timeout bounds the whole call: waiting for the stream to open and sending too
        # (a worker that stopped answering never opens it).
        bound = asyncio.timeout(timeout)
        try:
            async with bound:
                self._start(call_id, pending, function, payload, encoding, timeout, on_log is not None)
                return await future
        except TimeoutError:
            if not bound.expired():
                raise  # the function's own TimeoutError, raised on the worker
            raise self._timed_out(function, pending) from None
        finally:
            # Begun but unanswered: cancel it on the worker (written after the call itself).
            self._finish(call_id, pending, pending.begun and (not future.done() or future.cancelled()))

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
            self._start(call_id, pending, function, payload, encoding, timeout, on_log is not None)
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                bound = asyncio.timeout(remaining)
                try:
                    async with bound:
                        item = await pending.queue.get()
                except TimeoutError:
                    if not bound.expired():
                        raise
                    raise self._timed_out(function, pending) from None
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
            self._queue(_Outgoing(None))

    async def _write_loop(self) -> None:
        """Write what the calls queue, in order, until the stream ends.

        Once begun, a call is written whole even if its caller gives up meanwhile: half a call
        would stay in the worker's memory for the stream's life (the worker ends it by its
        timeout). A call whose caller gave up before it was begun is never written.
        """
        outbox = self._outbox
        writing: list[_Outgoing] = []
        try:
            await asyncio.shield(self._opened)
        except Exception:  # the stream never opened: the read loop fails the calls
            return
        try:
            while True:
                if not outbox:
                    self._wake = asyncio.get_running_loop().create_future()
                    await self._wake
                    continue
                item = outbox.popleft()
                if item.first is None:
                    await self._call.done_writing()
                    return
                if item.pending is not None and item.call_id not in self._pending:
                    continue  # given up while queued: the worker never sees it
                writing = [item]
                if self._batches and type(item.first) is dict:
                    # Small calls and cancels queued behind this one go in the same message.
                    size = item.size
                    while outbox and len(writing) < _BATCH_MAX:
                        nxt = outbox[0]
                        if type(nxt.first) is not dict or nxt.chunks is not None or size + nxt.size > _BATCH_BYTES:
                            break
                        outbox.popleft()
                        if nxt.pending is None or nxt.call_id in self._pending:
                            writing.append(nxt)
                            size += nxt.size
                for w in writing:
                    if w.pending is not None:
                        w.pending.begun = True
                if len(writing) > 1:
                    await self._call.write(worker_pb2.InvokeRequest(batch={"requests": [w.first for w in writing]}))
                elif type(item.first) is dict:
                    await self._call.write(worker_pb2.InvokeRequest(**item.first))
                else:
                    await self._call.write(item.first)
                if item.chunks is not None:
                    for frame in item.chunks:
                        await self._call.write(frame)
                for w in writing:
                    if w.pending is not None:
                        w.pending.sent = True
                writing = []
        except asyncio.CancelledError:
            # The stream died under the write (the read loop stopped it), or it closed: the
            # worker drops a call of a dead stream, so the calls not yet written never ran.
            self._undelivered(
                writing,
                f"the stream to worker {self.worker_id} ended while the call was being sent: the worker stopped "
                "or its connection broke",
            )
            raise
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
            # The worker never got these calls whole, so they never ran: safe to send elsewhere.
            self.closed = True
            what = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc) or type(exc).__name__
            self._undelivered(
                writing,
                f"the stream to worker {self.worker_id} ended before the call was sent ({what}): the worker "
                "stopped or its connection broke",
            )

    def _undelivered(self, writing: list[_Outgoing], message: str) -> None:
        """Fail the calls being written and those still queued: none of them reached the worker whole."""
        for item in [*writing, *self._outbox]:
            if item.pending is not None:
                item.pending.fail(CallNotDelivered(message))
        self._outbox.clear()

    def _on_response(self, response: worker_pb2.InvokeResponse | Framed) -> None:
        if type(response) is Framed:  # a large result chunk, its data a view of the frame
            result = response.message.result
            if (pending := self._pending.get(result.call_id)) is not None:
                pending.on_result(result, response.data)
            return
        assert isinstance(response, worker_pb2.InvokeResponse)
        kind = response.WhichOneof("message")
        if kind == "result":
            pending = self._pending.get(response.result.call_id)
            if pending is not None:
                pending.on_result(response.result)
        elif kind == "batch":
            for one in response.batch.responses:
                self._on_response(one)
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

    async def _read_loop(self) -> None:
        error: BaseException = WorkerUnavailableError(f"worker {self.worker_id} closed the stream during the call")
        established = False
        try:
            for key, value in await self._call.initial_metadata():
                if key == "vastrpc-revision":
                    self.revision_id = value
                elif (key, value) == BATCH_METADATA:
                    self._batches = True
            established = True
            self._opened.set_result(None)
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    break
                self._on_response(response)
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
            # A write to a dead stream may never return: stop the writer, so that the calls
            # behind it are told at once instead of at their timeout.
            self._writer.cancel()
            undelivered: BaseException = error
            if isinstance(error, WorkerUnavailableError) and not isinstance(error, CallNotDelivered):
                if not self._opened.done():
                    # Nothing was written yet: a lost connection is "not delivered" (retried
                    # elsewhere); anything else (a refused token, say) is said as it is.
                    error = undelivered = CallNotDelivered(str(error))
                else:
                    undelivered = CallNotDelivered(
                        f"the stream to worker {self.worker_id} ended before the call was sent whole ({error}): it "
                        "never ran there"
                    )
            if not self._opened.done():
                self._opened.set_exception(error)
                self._opened.exception()  # retrieved: callers that never waited on it need not
            for pending in list(self._pending.values()):
                # A call not written whole never ran: the worker drops a call of a dead stream.
                pending.fail(error if pending.sent else undelivered)

    async def close(self) -> None:
        self.closed = True
        self._call.cancel()
        self._reader.cancel()
        self._writer.cancel()
        await asyncio.gather(self._reader, self._writer, return_exceptions=True)
