"""How arguments, results and exceptions are encoded on the wire: cloudpickle for Python, JSON for everyone else.

A cloudpickle payload is the pickle stream followed by its protocol 5 out-of-band buffers
(their sizes travel in the message): a large array is never copied into the pickle, and
the receiver rebuilds it over one writable buffer that every chunk was copied into once.
"""

from __future__ import annotations

import json
import os
import pickle
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

import cloudpickle

from vastrpc._errors import RemoteError, RemoteTraceback, SerializationError
from vastrpc._grpc import CHUNK_SIZE
from vastrpc.api.v1 import common_pb2

CLOUDPICKLE = common_pb2.ENCODING_CLOUDPICKLE
JSON = common_pb2.ENCODING_JSON

# Buffers smaller than this stay in the pickle: out of band only pays for large ones.
_OUT_OF_BAND_MIN = 64 << 10
# Frames under this folder are vastrpc's own: a remote traceback starts after them.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class Payload:
    """An encoded value: segments to send in order, and the sizes of its out-of-band buffers."""

    __slots__ = ("buffer_sizes", "segments")

    def __init__(self, segments: Sequence[bytes | memoryview], buffer_sizes: Sequence[int] = ()) -> None:
        self.segments = segments
        self.buffer_sizes = list(buffer_sizes)

    @property
    def size(self) -> int:
        return sum(len(s) for s in self.segments)

    def pieces(self, size: int = CHUNK_SIZE) -> Iterator[tuple[list[memoryview], int, bool]]:
        """``(views, nbytes, more)`` per chunk of at most ``size`` bytes: views of the segments, nothing copied."""
        pending: list[memoryview] = []
        filled = 0
        total, sent = self.size, 0
        for segment in self.segments:
            view = memoryview(segment).cast("B")
            start = 0
            while start < len(view):
                take = min(size - filled, len(view) - start)
                pending.append(view[start : start + take])
                filled += take
                start += take
                if filled == size:
                    sent += filled
                    yield pending, filled, sent < total
                    pending, filled = [], 0
        if pending or total == 0:
            yield pending, filled, False

    def chunks(self, size: int = CHUNK_SIZE) -> Iterator[tuple[bytes, bool]]:
        """``(chunk, more)`` pairs of at most ``size`` bytes; an empty payload is one empty chunk."""
        for views, _, more in self.pieces(size):
            yield b"".join(views), more


def _dumps(value: Any, what: str) -> Payload:
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: must stay in band
            return True
        if raw.nbytes < _OUT_OF_BAND_MIN:
            return True
        buffers.append(raw)
        return False

    try:
        data = cloudpickle.dumps(value, protocol=5, buffer_callback=out_of_band)
    except Exception as exc:  # cloudpickle raises many types for unpicklable objects
        raise SerializationError(f"cannot pickle {what}: {exc}") from exc
    return Payload([data, *buffers], [b.nbytes for b in buffers])


def _loads(data: bytes | bytearray | memoryview, buffer_sizes: Sequence[int]) -> Any:
    if not buffer_sizes:
        return pickle.loads(data)
    view = memoryview(data)
    end = len(view) - sum(buffer_sizes)
    buffers = []
    for size in buffer_sizes:
        buffers.append(view[end : end + size])
        end += size
    return pickle.loads(view[: len(view) - sum(buffer_sizes)], buffers=buffers)


def assemble(parts: Sequence[bytes | memoryview], buffer_sizes: Sequence[int]) -> bytes | bytearray:
    """The received chunks as one buffer; writable when it carries out-of-band buffers (arrays stay writable)."""
    if len(parts) == 1 and not buffer_sizes:
        part = parts[0]
        return part if type(part) is bytes else bytes(part)
    if not buffer_sizes:
        return b"".join(parts)
    return bytearray().join(parts)  # one copy, no zero-fill first


class Gathered:
    """A value's chunks as they arrive: copied at once into one writable buffer when it carries out-of-band buffers.

    Copying each chunk as it comes overlaps the copy with the rest of the transfer (the sender
    is still writing), where gathering at the end would add it to the call's time; a growing
    bytearray is moved, not copied, by realloc once it is large.
    """

    __slots__ = ("buffer", "parts")

    def __init__(self, first: bytes | memoryview, buffer_sizes: Sequence[int]) -> None:
        self.buffer: bytearray | None = bytearray(first) if buffer_sizes else None
        self.parts: list[bytes | memoryview] = [] if buffer_sizes else [first]

    def add(self, chunk: bytes | memoryview) -> None:
        if self.buffer is not None:
            self.buffer += chunk
        else:
            self.parts.append(chunk)

    def value(self) -> bytes | bytearray:
        return self.buffer if self.buffer is not None else assemble(self.parts, ())


def encode_args(args: tuple[Any, ...], kwargs: dict[str, Any], encoding: common_pb2.Encoding = CLOUDPICKLE) -> Payload:
    """Encode a call's arguments."""
    if encoding == JSON:
        return Payload([_json_dumps({"args": list(args), "kwargs": kwargs})])
    return _dumps((args, kwargs), "the call's arguments")


def decode_args(
    data: bytes | bytearray, encoding: common_pb2.Encoding, buffer_sizes: Sequence[int] = ()
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Decode a call's arguments; raises SerializationError with the reason."""
    try:
        if encoding == JSON:
            obj = json.loads(data) if data else {}
            if (
                not isinstance(obj, dict)
                or not isinstance(obj.get("args", []), list)
                or not isinstance(obj.get("kwargs", {}), dict)
            ):
                raise SerializationError('JSON arguments must be an object {"args": [...], "kwargs": {...}}')
            return tuple(obj.get("args", [])), dict(obj.get("kwargs", {}))
        if encoding != CLOUDPICKLE:
            raise SerializationError(f"unknown argument encoding {encoding}")
        args, kwargs = _loads(data, buffer_sizes)
        return tuple(args), dict(kwargs)
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(f"cannot decode the call's arguments: {type(exc).__name__}: {exc}") from exc


def encode_result(value: Any, encoding: common_pb2.Encoding) -> Payload:
    """Encode a result in the caller's encoding."""
    if encoding == JSON:
        return Payload([_json_dumps(value)])
    return _dumps(value, f"the result ({type(value).__name__})")


def decode_result(data: bytes | bytearray, encoding: common_pb2.Encoding, buffer_sizes: Sequence[int] = ()) -> Any:
    """Decode a result."""
    try:
        return json.loads(data) if encoding == JSON else _loads(data, buffer_sizes)
    except Exception as exc:
        raise SerializationError(f"cannot decode the result: {type(exc).__name__}: {exc}") from exc


def _json_dumps(value: Any) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"value is not JSON-serialisable: {exc}") from exc


def describe_exception(exc: BaseException) -> tuple[str, str, str, bytes]:
    """``(type name, message, formatted traceback, pickled exception or b"")`` for the wire."""
    cls = type(exc)
    type_name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    tb = _user_traceback(exc)
    try:
        pickled = cloudpickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(pickled)  # an exception whose __init__ takes other arguments pickles but cannot be rebuilt
    except Exception:
        pickled = b""
    return type_name, str(exc), tb, pickled


def _user_traceback(exc: BaseException) -> str:
    """The formatted traceback without its leading frames in vastrpc: the caller sees where *their* code raised."""
    summary = traceback.TracebackException.from_exception(exc)
    frames = list(summary.stack)
    while len(frames) > 1 and frames[0].filename.startswith(_PACKAGE_DIR):
        frames.pop(0)
    summary.stack = traceback.StackSummary.from_list(frames)
    return "".join(summary.format())


def rebuild_exception(type_name: str, message: str, tb: str, pickled: bytes) -> BaseException:
    """The remote exception as its own type with the remote traceback attached, or a RemoteError."""
    if pickled:
        try:
            exc = pickle.loads(pickled)
        except Exception:
            exc = None
        if isinstance(exc, BaseException):
            # The remote traceback shows once, as the cause (as multiprocessing does).
            exc.__cause__ = RemoteTraceback(tb)
            exc.remote_traceback = tb  # type: ignore[attr-defined]
            return exc
    return RemoteError(type_name, message, tb)


def chunks(data: bytes, size: int = CHUNK_SIZE) -> Iterator[tuple[bytes, bool]]:
    """Split plain bytes into ``(chunk, more)`` pairs (bundles, arguments of other encodings)."""
    if len(data) <= size:
        return iter(((data, False),))
    return Payload([data]).chunks(size)
