"""How arguments, results and exceptions are encoded on the wire: cloudpickle for Python, JSON for everyone else."""

from __future__ import annotations

import json
import pickle
import traceback
from collections.abc import Iterator
from typing import Any

import cloudpickle

from vastrpc._errors import RemoteError, RemoteTraceback, SerializationError
from vastrpc._grpc import CHUNK_SIZE
from vastrpc.api.v1 import common_pb2

CLOUDPICKLE = common_pb2.ENCODING_CLOUDPICKLE
JSON = common_pb2.ENCODING_JSON


def encode_args(args: tuple[Any, ...], kwargs: dict[str, Any], encoding: common_pb2.Encoding = CLOUDPICKLE) -> bytes:
    """Encode a call's arguments."""
    if encoding == JSON:
        return _json_dumps({"args": list(args), "kwargs": kwargs})
    try:
        return cloudpickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # cloudpickle raises many types for unpicklable objects
        raise SerializationError(f"cannot pickle the call's arguments: {exc}") from exc


def decode_args(data: bytes, encoding: common_pb2.Encoding) -> tuple[tuple[Any, ...], dict[str, Any]]:
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
        args, kwargs = pickle.loads(data)
        return tuple(args), dict(kwargs)
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(f"cannot decode the call's arguments: {type(exc).__name__}: {exc}") from exc


def encode_result(value: Any, encoding: common_pb2.Encoding) -> bytes:
    """Encode a result in the caller's encoding."""
    if encoding == JSON:
        return _json_dumps(value)
    try:
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise SerializationError(f"cannot pickle the result ({type(value).__name__}): {exc}") from exc


def decode_result(data: bytes, encoding: common_pb2.Encoding) -> Any:
    """Decode a result."""
    try:
        return json.loads(data) if encoding == JSON else pickle.loads(data)
    except Exception as exc:
        raise SerializationError(f"cannot decode the result: {type(exc).__name__}: {exc}") from exc


def _json_dumps(value: Any) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"value is not JSON-serialisable: {exc}") from exc


def chunks(data: bytes, size: int = CHUNK_SIZE) -> Iterator[tuple[bytes, bool]]:
    """Split ``data`` into ``(chunk, more)`` pairs; empty data is one empty chunk."""
    view = memoryview(data)
    if len(view) <= size:
        yield data, False
        return
    for start in range(0, len(view), size):
        yield bytes(view[start : start + size]), start + size < len(view)


def describe_exception(exc: BaseException) -> tuple[str, str, str, bytes]:
    """``(type name, message, formatted traceback, pickled exception or b"")`` for the wire."""
    cls = type(exc)
    type_name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    tb = "".join(traceback.format_exception(exc))
    try:
        pickled = cloudpickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(pickled)  # an exception whose __init__ takes other arguments pickles but cannot be rebuilt
    except Exception:
        pickled = b""
    return type_name, str(exc), tb, pickled


def rebuild_exception(type_name: str, message: str, tb: str, pickled: bytes) -> BaseException:
    """The remote exception as its own type with the remote traceback attached, or a RemoteError."""
    if pickled:
        try:
            exc = pickle.loads(pickled)
        except Exception:
            exc = None
        if isinstance(exc, BaseException):
            exc.__cause__ = RemoteTraceback(tb)
            exc.add_note(f"Remote traceback:\n{tb}")
            exc.remote_traceback = tb  # type: ignore[attr-defined]
            return exc
    return RemoteError(type_name, message, tb)
