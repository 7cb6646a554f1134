"""WorkerService: runs calls that arrive multiplexed on Invoke streams."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from vastrpc._errors import SerializationError
from vastrpc._payload import chunks, decode_args, describe_exception, encode_result
from vastrpc.api.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger("vastrpc.serve")

_DRAIN = worker_pb2.InvokeResponse(drain=worker_pb2.StreamDrain())


class ServedFunction:
    """A function this worker serves, with its concurrency limit."""

    def __init__(self, fn: Callable[..., Awaitable[Any]], limit: int) -> None:
        self.fn = fn
        self.limit = limit
        self.semaphore = asyncio.Semaphore(limit)


@dataclass(frozen=True)
class WorkerIdentity:
    """Who this serving process is; sent with every stream's initial metadata."""

    worker_id: str
    endpoint_id: str
    revision_id: str


class _Stream:
    """The calls of one Invoke stream."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self.context = context
        self.lock = asyncio.Lock()
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.partial: dict[int, tuple[worker_pb2.CallStart, list[bytes]]] = {}

    async def send(self, response: worker_pb2.InvokeResponse) -> None:
        async with self.lock:
            await self.context.write(response)

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
        self.draining = False
        self._streams: set[_Stream] = set()
        self._metadata = (
            ("vastrpc-revision", identity.revision_id),
            ("vastrpc-worker-id", identity.worker_id),
        )

    @property
    def capacity(self) -> int:
        """Calls this worker runs at once across its functions."""
        return sum(f.limit for f in self.functions.values())

    async def drain(self) -> None:
        """Take no more calls: tell every open stream, so callers send new calls elsewhere.

        Calls in flight finish and answer; each stream ends when its caller closes it.
        """
        self.draining = True
        await asyncio.gather(*(s.send(_DRAIN) for s in list(self._streams)), return_exceptions=True)

    async def Invoke(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await context.send_initial_metadata(self._metadata)
        stream = _Stream(context)
        self._streams.add(stream)
        try:
            if self.draining:
                await stream.send(_DRAIN)
            async for request in request_iterator:
                kind = request.WhichOneof("message")
                if kind == "start":
                    start = request.start
                    if start.more:
                        stream.partial[start.call_id] = (start, [start.data])
                    else:
                        self._start(stream, start, start.data)
                elif kind == "data":
                    await self._on_data(stream, request.data)
                elif kind == "cancel":
                    task = stream.tasks.get(request.cancel.call_id)
                    if task is not None:
                        task.cancel()
        finally:
            # The caller closed its side: calls in flight still finish and answer, unless
            # the stream itself is gone, in which case nobody is left to answer.
            if context.done():
                for task in stream.tasks.values():
                    task.cancel()
            if stream.tasks:
                await asyncio.gather(*stream.tasks.values(), return_exceptions=True)
            self._streams.discard(stream)

    async def _on_data(self, stream: _Stream, data: worker_pb2.CallData) -> None:
        entry = stream.partial.get(data.call_id)
        if entry is None:
            await stream.send_error(data.call_id, worker_pb2.ERROR_KIND_PROTOCOL, message="data for an unknown call id")
            return
        entry[1].append(data.data)
        if not data.more:
            del stream.partial[data.call_id]
            self._start(stream, entry[0], b"".join(entry[1]))

    def _start(self, stream: _Stream, start: worker_pb2.CallStart, data: bytes) -> None:
        call_id = start.call_id
        if call_id in stream.tasks:
            task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
                stream.send_error(call_id, worker_pb2.ERROR_KIND_PROTOCOL, message=f"call id {call_id} is in use")
            )
            return
        task = asyncio.get_running_loop().create_task(self._run(stream, start, data))
        stream.tasks[call_id] = task
        task.add_done_callback(lambda _t: stream.tasks.pop(call_id, None))

    async def _run(self, stream: _Stream, start: worker_pb2.CallStart, data: bytes) -> None:
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
        if self.draining:
            # Never ran: the caller may safely send it to another worker.
            await stream.send_error(call_id, worker_pb2.ERROR_KIND_OVERLOADED, message="the worker is draining")
            return
        self.calls_in_flight += 1
        try:
            try:
                args, kwargs = decode_args(data, start.encoding)
            except SerializationError as exc:
                await stream.send_error(call_id, worker_pb2.ERROR_KIND_BAD_ARGUMENTS, message=str(exc))
                return
            try:
                async with served.semaphore:
                    if start.timeout > 0:
                        value = await asyncio.wait_for(served.fn(*args, **kwargs), start.timeout)
                    else:
                        value = await served.fn(*args, **kwargs)
            except asyncio.CancelledError:
                if stream.context.done():
                    raise
                await stream.send_error(call_id, worker_pb2.ERROR_KIND_CANCELLED, message="the call was cancelled")
                return
            except TimeoutError:
                await stream.send_error(
                    call_id, worker_pb2.ERROR_KIND_CANCELLED, message=f"ran past its timeout of {start.timeout:g}s"
                )
                return
            except Exception as exc:
                await stream.send_error(call_id, worker_pb2.ERROR_KIND_APPLICATION, exc)
                return
            try:
                payload = encode_result(value, start.encoding)
            except SerializationError as exc:
                await stream.send_error(call_id, worker_pb2.ERROR_KIND_BAD_RESULT, message=str(exc))
                return
            for chunk, more in chunks(payload):
                await stream.send(
                    worker_pb2.InvokeResponse(
                        result=worker_pb2.CallResult(
                            call_id=call_id, data=chunk, more=more, done=not more, encoding=start.encoding
                        )
                    )
                )
        except asyncio.CancelledError:
            raise
        except Exception:  # the stream broke while answering: nobody is left to tell
            log.debug("could not answer call %d", call_id, exc_info=True)
        finally:
            self.calls_in_flight -= 1

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
        )
