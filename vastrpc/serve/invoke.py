"""WorkerService: runs calls that arrive multiplexed on Invoke streams."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from vastrpc._errors import SerializationError
from vastrpc._grpc import BATCH_METADATA, CHUNK_SIZE
from vastrpc._payload import Gathered, assemble, decode_args, describe_exception, encode_result
from vastrpc._wire import FRAME_MIN, Framed, parse_request, result_frame, serialize
from vastrpc.api.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from vastrpc.definition import DEFAULT_MAX_ARGUMENT_BYTES, DEFAULT_MAX_QUEUE, DEFAULT_MAX_QUEUE_TIME
from vastrpc.serve.output import CallOutput, capturing_call

log = logging.getLogger("vastrpc.serve")

_DRAIN = worker_pb2.InvokeResponse(drain=worker_pb2.StreamDrain())
# At most this many answers, and this many bytes of their data, go in one InvokeResponseBatch.
_BATCH_MAX = 64
_BATCH_BYTES = CHUNK_SIZE


def _done(call_id: int, encoding: common_pb2.Encoding) -> worker_pb2.InvokeResponse:
    """The end of a generator call: no value follows."""
    return worker_pb2.InvokeResponse(result=worker_pb2.CallResult(call_id=call_id, done=True, encoding=encoding))


def _output_for(stream: _Stream, call_id: int) -> CallOutput:
    """A call's captured output, sent on its stream as CallLog messages."""

    async def send(kind: int, text: str) -> None:
        await stream.send(worker_pb2.InvokeResponse(log={"call_id": call_id, "stream": kind, "text": text}))

    return CallOutput(send)


async def _close_output(output: CallOutput | None) -> None:
    if output is not None:
        with contextlib.suppress(Exception):  # the stream broke: the call's answer fails the same way
            await output.close()


class Overloaded(Exception):
    """A call found the function's queue full, or waited past ``max_queue_time`` for a slot."""


class ServedFunction:
    """A function this worker serves, with its concurrency limit and bounded queue.

    At most ``limit`` calls run at once; up to ``max_queue`` more wait, each at most
    ``max_queue_time`` seconds. A call refused past either bound never ran, so the caller
    can send it to another worker; memory stays bounded however many calls arrive.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        limit: int,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_queue_time: float = DEFAULT_MAX_QUEUE_TIME,
        generator: bool = False,
        max_argument_bytes: int = DEFAULT_MAX_ARGUMENT_BYTES,
    ) -> None:
        self.fn = fn
        self.max_argument_bytes = max_argument_bytes
        self.limit = limit
        self.max_queue = max_queue
        self.max_queue_time = max_queue_time
        self.generator = generator
        self.semaphore = asyncio.Semaphore(limit)
        self.queued = 0
        # Wraps each call from its request for a slot to its answer: serve/metrics.py counts and times them.
        self.track: Callable[[], contextlib.AbstractAsyncContextManager[Any]] = contextlib.nullcontext

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the function's slots, waiting in its bounded queue when all are taken."""
        if self.semaphore.locked():
            if self.queued >= self.max_queue:
                raise Overloaded(f"its queue is full ({self.max_queue} calls waiting)")
            self.queued += 1
            try:
                async with asyncio.timeout(self.max_queue_time):
                    await self.semaphore.acquire()
            except TimeoutError:
                raise Overloaded(f"no slot freed within max_queue_time ({self.max_queue_time:g}s)") from None
            finally:
                self.queued -= 1
        else:
            await self.semaphore.acquire()
        try:
            yield
        finally:
            self.semaphore.release()


@dataclass(frozen=True)
class WorkerIdentity:
    """Who this serving process is; sent with every stream's initial metadata."""

    worker_id: str
    endpoint_id: str
    revision_id: str


class _Stream:
    """The calls of one Invoke stream, and its writes: one at a time, those that wait packed into batches."""

    def __init__(self, context: grpc.aio.ServicerContext, batches: bool) -> None:
        self.context = context
        # The caller reads InvokeResponseBatch messages (said in its call metadata).
        self.batches = batches
        # A write is under way; the answers that come meanwhile wait in the outbox, in order.
        self.busy = False
        self.outbox: collections.deque[tuple[worker_pb2.InvokeResponse | bytes, int, asyncio.Future[None]]] = (
            collections.deque()
        )
        self.flusher: asyncio.Task[None] | None = None
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.partial: dict[int, tuple[worker_pb2.CallStart, Gathered]] = {}
        self.sizes: dict[int, int] = {}
        # Calls refused for their size whose remaining chunks are still arriving: dropped unread.
        self.refused: set[int] = set()

    async def send(self, response: worker_pb2.InvokeResponse | bytes, size: int = 0) -> None:
        """Write ``response`` (carrying ``size`` bytes of data) once the writes before it are done."""
        if not self.busy:
            # Nothing under way: write at once, no task or future (a sequential call's path).
            self.busy = True
            try:
                await self.context.write(response)
            finally:
                self._next()
            return
        done = asyncio.get_running_loop().create_future()
        self.outbox.append((response, size, done))
        await done

    def _next(self) -> None:
        if self.outbox:
            self.flusher = asyncio.get_running_loop().create_task(self._flush())
        else:
            self.busy = False

    async def _flush(self) -> None:
        """Write what waited in the outbox: small answers that queued up together go as one batch."""
        outbox = self.outbox
        try:
            while outbox:
                response, total, done = outbox.popleft()
                if done.done():
                    continue  # its call was cancelled while it waited: never written
                batch = [(response, done)]
                # Frames built by hand (large data) go alone.
                while self.batches and type(response) is not bytes and outbox and len(batch) < _BATCH_MAX:
                    nxt = outbox[0]
                    if type(nxt[0]) is bytes or total + nxt[1] > _BATCH_BYTES:
                        break
                    outbox.popleft()
                    if not nxt[2].done():
                        batch.append((nxt[0], nxt[2]))
                        total += nxt[1]
                try:
                    if len(batch) == 1:
                        await self.context.write(response)
                    else:
                        responses = [r for r, _ in batch]
                        await self.context.write(worker_pb2.InvokeResponse(batch={"responses": responses}))
                except BaseException as exc:  # the stream broke: each call's answer fails the same way
                    for _, waiter in batch:
                        if waiter.done():
                            continue
                        if isinstance(exc, asyncio.CancelledError):
                            waiter.cancel()
                        else:
                            waiter.set_exception(exc)
                            waiter.exception()  # retrieved: a call cancelled meanwhile never awaits it
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for _, waiter in batch:
                    if not waiter.done():
                        waiter.set_result(None)
        finally:
            for _, _, waiter in outbox:  # cancelled with the stream: nobody is left to answer
                waiter.cancel()
            outbox.clear()
            self.busy = False
            self.flusher = None

    async def send_error(
        self, call_id: int, kind: worker_pb2.ErrorKind, exc: BaseException | None = None, message: str = ""
    ) -> None:
        error = worker_pb2.CallError(call_id=call_id, kind=kind, message=message)
        if exc is not None:
            error.type, error.message, error.traceback, error.pickled = describe_exception(exc)
        await self.send(worker_pb2.InvokeResponse(error=error))


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    """Serves the functions of one revision of a deployment."""

    def __init__(self, identity: WorkerIdentity, functions: dict[str, ServedFunction], score: float) -> None:
        self.identity = identity
        self.functions = functions
        self.score = score
        self.calls_in_flight = 0
        self.calls_started = 0
        self.draining = False
        self._streams: set[_Stream] = set()
        self._metadata = (
            ("vastrpc-revision", identity.revision_id),
            ("vastrpc-worker-id", identity.worker_id),
            BATCH_METADATA,  # this worker reads InvokeBatch messages
        )

    @property
    def capacity(self) -> int:
        """Calls this worker runs at once across its functions."""
        return sum(f.limit for f in self.functions.values())

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Serve this WorkerService on ``server``; Invoke frames large data by hand (vastrpc._wire)."""
        handlers = {
            "Invoke": grpc.stream_stream_rpc_method_handler(
                self.Invoke, request_deserializer=parse_request, response_serializer=serialize
            ),
            "GetWorkerInfo": grpc.unary_unary_rpc_method_handler(
                self.GetWorkerInfo,
                request_deserializer=worker_pb2.GetWorkerInfoRequest.FromString,
                response_serializer=worker_pb2.GetWorkerInfoResponse.SerializeToString,
            ),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("vastrpc.api.v1.WorkerService", handlers),)
        )

    async def drain(self) -> None:
        """Take no more calls: tell every open stream, so callers send new calls elsewhere.

        Calls in flight finish and answer; each stream ends when its caller closes it.
        """
        self.draining = True
        await asyncio.gather(*(s.send(_DRAIN) for s in list(self._streams)), return_exceptions=True)

    async def Invoke(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await context.send_initial_metadata(self._metadata)
        stream = _Stream(context, BATCH_METADATA in (context.invocation_metadata() or ()))
        self._streams.add(stream)
        try:
            if self.draining:
                await stream.send(_DRAIN)
            async for request in request_iterator:
                if type(request) is Framed:  # a large chunk of arguments, its data a view of the frame
                    message = request.message
                    await self._on_request(stream, message, message.WhichOneof("message"), request.data)
                    continue
                kind = request.WhichOneof("message")
                if kind == "batch":
                    for one in request.batch.requests:
                        await self._on_request(stream, one, one.WhichOneof("message"))
                else:
                    await self._on_request(stream, request, kind)
        finally:
            # The caller closed its side: calls in flight still finish and answer, unless
            # the stream itself is gone, in which case nobody is left to answer.
            if context.done():
                for task in stream.tasks.values():
                    task.cancel()
                if stream.flusher is not None:
                    stream.flusher.cancel()
            if stream.tasks:
                await asyncio.gather(*stream.tasks.values(), return_exceptions=True)
            if stream.flusher is not None:  # the last answers are written before the stream ends
                await asyncio.gather(stream.flusher, return_exceptions=True)
            self._streams.discard(stream)

    async def _on_request(
        self, stream: _Stream, request: worker_pb2.InvokeRequest, kind: str | None, data: memoryview | None = None
    ) -> None:
        """Take one request; ``data``: its data, when it came framed by hand."""
        if kind == "start":
            start = request.start
            chunk = start.data if data is None else data
            if start.more:
                stream.partial[start.call_id] = (start, Gathered(chunk, start.buffer_sizes))
                stream.sizes[start.call_id] = len(chunk)
            else:
                self._start(stream, start, assemble([chunk], start.buffer_sizes))
        elif kind == "data":
            await self._on_data(stream, request.data, data)
        elif kind == "cancel":
            task = stream.tasks.get(request.cancel.call_id)
            if task is not None:
                task.cancel()

    async def _on_data(self, stream: _Stream, data: worker_pb2.CallData, framed: memoryview | None) -> None:
        call_id = data.call_id
        chunk = data.data if framed is None else framed
        if call_id in stream.refused:
            if not data.more:
                stream.refused.discard(call_id)
            return
        entry = stream.partial.get(call_id)
        if entry is None:
            await stream.send_error(call_id, worker_pb2.ERROR_KIND_PROTOCOL, message="data for an unknown call id")
            return
        size = stream.sizes[call_id] = stream.sizes[call_id] + len(chunk)
        served = self.functions.get(entry[0].function)
        limit = served.max_argument_bytes if served is not None else DEFAULT_MAX_ARGUMENT_BYTES
        if size > limit:
            # Refused before decoding anything; memory stays bounded by the limit.
            del stream.partial[call_id], stream.sizes[call_id]
            if data.more:
                stream.refused.add(call_id)
            await stream.send_error(
                call_id,
                worker_pb2.ERROR_KIND_BAD_ARGUMENTS,
                message=f"the arguments of {entry[0].function} are over its limit of {limit} bytes "
                "(@app.remote(max_argument_bytes=...))",
            )
            return
        entry[1].add(chunk)
        if not data.more:
            del stream.partial[call_id], stream.sizes[call_id]
            self._start(stream, entry[0], entry[1].value())

    def _start(self, stream: _Stream, start: worker_pb2.CallStart, data: bytes | bytearray) -> None:
        call_id = start.call_id
        if call_id in stream.tasks:
            task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
                stream.send_error(call_id, worker_pb2.ERROR_KIND_PROTOCOL, message=f"call id {call_id} is in use")
            )
            return
        task = asyncio.get_running_loop().create_task(self._run(stream, start, data))
        stream.tasks[call_id] = task
        task.add_done_callback(lambda _t: stream.tasks.pop(call_id, None))

    async def _run(self, stream: _Stream, start: worker_pb2.CallStart, data: bytes | bytearray) -> None:
        call_id = start.call_id
        served = self.functions.get(start.function)
        if served is None:
            names = ", ".join(sorted(self.functions)) or "none"
            await stream.send_error(
                call_id,
                worker_pb2.ERROR_KIND_FUNCTION_NOT_FOUND,
                message=f"this worker (revision {self.identity.revision_id}) has no function "
                f"{start.function!r}; it serves: {names}. Redeploy if the client's code is newer",
            )
            return
        if len(data) > served.max_argument_bytes:
            await stream.send_error(
                call_id,
                worker_pb2.ERROR_KIND_BAD_ARGUMENTS,
                message=f"the arguments of {start.function} are over its limit of {served.max_argument_bytes} bytes "
                "(@app.remote(max_argument_bytes=...))",
            )
            return
        if self.draining:
            # Never ran: the caller may safely send it to another worker.
            await stream.send_error(call_id, worker_pb2.ERROR_KIND_DRAINING, message="the worker is draining")
            return
        self.calls_in_flight += 1
        self.calls_started += 1
        try:
            try:
                args, kwargs = decode_args(data, start.encoding, start.buffer_sizes)
            except SerializationError as exc:
                await stream.send_error(call_id, worker_pb2.ERROR_KIND_BAD_ARGUMENTS, message=str(exc))
                return
            output = _output_for(stream, call_id) if start.stream_logs else None
            try:
                try:
                    async with served.track(), asyncio.timeout(start.timeout or None), served.slot():
                        with capturing_call(output) if output is not None else contextlib.nullcontext():
                            if served.generator:
                                async for value in served.fn(*args, **kwargs):
                                    if output is not None:
                                        await output.flush()  # what it printed precedes the value
                                    await self._send_value(stream, start, value, last=False)
                                await _close_output(output)
                                await stream.send(_done(call_id, start.encoding))
                            else:
                                value = await served.fn(*args, **kwargs)
                                await _close_output(output)
                                await self._send_value(stream, start, value, last=True)
                finally:
                    await _close_output(output)  # before the error that ends the call, if any
            except Overloaded as exc:
                await stream.send_error(
                    call_id, worker_pb2.ERROR_KIND_OVERLOADED, message=f"{start.function} refused the call: {exc}"
                )
            except asyncio.CancelledError:
                if stream.context.done():
                    raise
                await stream.send_error(call_id, worker_pb2.ERROR_KIND_CANCELLED, message="the call was cancelled")
            except TimeoutError:
                await stream.send_error(
                    call_id, worker_pb2.ERROR_KIND_CANCELLED, message=f"ran past its timeout of {start.timeout:g}s"
                )
            except SerializationError as exc:
                await stream.send_error(call_id, worker_pb2.ERROR_KIND_BAD_RESULT, message=str(exc))
            except Exception as exc:
                await stream.send_error(call_id, worker_pb2.ERROR_KIND_APPLICATION, exc)
        except asyncio.CancelledError:
            raise
        except Exception:  # the stream broke while answering: nobody is left to tell
            log.debug("could not answer call %d", call_id, exc_info=True)
        finally:
            self.calls_in_flight -= 1

    @staticmethod
    async def _send_value(stream: _Stream, start: worker_pb2.CallStart, value: Any, *, last: bool) -> None:
        payload = encode_result(value, start.encoding)
        buffer_sizes = payload.buffer_sizes  # on the value's first chunk only
        for views, size, more in payload.pieces():
            result: dict[str, Any] = {
                "call_id": start.call_id,
                "more": more,
                "done": last and not more,
                "encoding": start.encoding,
                "buffer_sizes": buffer_sizes,
            }
            buffer_sizes = []
            if size >= FRAME_MIN:  # large: framed by hand, the data copied once (vastrpc._wire)
                await stream.send(result_frame(result, views, size), size)
            else:
                # Built from a dict: passing a CallResult object would copy the chunk once more.
                result["data"] = b"".join(views)
                await stream.send(worker_pb2.InvokeResponse(result=result), size)

    @property
    def calls_queued(self) -> int:
        """Calls waiting for a slot."""
        return sum(f.queued for f in self.functions.values())

    async def GetWorkerInfo(
        self, request: worker_pb2.GetWorkerInfoRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.GetWorkerInfoResponse:
        return worker_pb2.GetWorkerInfoResponse(
            worker_id=self.identity.worker_id,
            endpoint_id=self.identity.endpoint_id,
            revision_id=self.identity.revision_id,
            functions=sorted(self.functions),
            score=self.score,
            capacity=self.capacity,
            pid=os.getpid(),
            calls_in_flight=self.calls_in_flight,
            calls_queued=self.calls_queued,
            calls_started=self.calls_started,
        )
