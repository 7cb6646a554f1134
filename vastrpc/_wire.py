"""Invoke messages carrying large data, framed by hand so that the data's bytes are copied once, not four times.

Building a protobuf message copies a bytes field into the message, serialising copies it again,
and reading the field of a parsed message copies it once more. A message whose data is large is
instead written as its protobuf encoding by hand: the small rest of the message serialised by
protobuf, then the data field's key and length, then the data's segments (a pickle and its
out-of-band buffers), joined once. On receipt the data stays a view into the received frame.
Either side still reads and writes plain protobuf: the bytes on the wire are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.message import Message

from vastrpc.api.v1 import worker_pb2

# Messages with at least this many bytes of data are framed by hand; smaller ones go through protobuf.
FRAME_MIN = 64 << 10

# Field numbers: InvokeRequest.start / .data, InvokeResponse.result, and the data field of each.
_START, _START_DATA = 1, 4
_DATA, _DATA_DATA = 2, 2
_RESULT, _RESULT_DATA = 1, 2


class Framed:
    """A parsed message whose large data was left out of it: the data is a view into the received frame."""

    __slots__ = ("data", "message")

    def __init__(self, message: Any, data: memoryview) -> None:
        self.message = message
        self.data = data


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _frame(outer: int, head: Message, field: int, segments: Sequence[bytes | memoryview], size: int) -> bytes:
    """``outer``'s submessage ``head`` plus bytes field ``field`` = the segments joined: one copy of the data."""
    inner = head.SerializeToString()
    key = bytes(((field << 3) | 2,)) + _varint(size)
    length = len(inner) + len(key) + size
    return b"".join((bytes(((outer << 3) | 2,)), _varint(length), inner, key, *segments))


def start_frame(fields: dict[str, Any], segments: Sequence[bytes | memoryview], size: int) -> bytes:
    """An InvokeRequest with a CallStart of ``fields`` whose data is the segments (``size`` bytes)."""
    return _frame(_START, worker_pb2.CallStart(**fields), _START_DATA, segments, size)


def data_frame(call_id: int, more: bool, segments: Sequence[bytes | memoryview], size: int) -> bytes:
    """An InvokeRequest with a CallData chunk of the segments."""
    return _frame(_DATA, worker_pb2.CallData(call_id=call_id, more=more), _DATA_DATA, segments, size)


def result_frame(fields: dict[str, Any], segments: Sequence[bytes | memoryview], size: int) -> bytes:
    """An InvokeResponse with a CallResult of ``fields`` whose data is the segments."""
    return _frame(_RESULT, worker_pb2.CallResult(**fields), _RESULT_DATA, segments, size)


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = raw[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _split(raw: bytes, data_fields: dict[int, int]) -> tuple[int, bytes, memoryview] | None:
    """``(outer field, the submessage without its data field, the data)``, or None for anything unusual.

    Expects one length-delimited outer field (the oneof) spanning the whole frame, holding one
    data field; anything else (another layout, a repeated data field, bad bytes) returns None
    and the caller parses it with protobuf, which raises DecodeError for what is not valid.
    """
    try:
        key, pos = _read_varint(raw, 0)
        outer = key >> 3
        field = data_fields.get(outer)
        if field is None or key & 7 != 2:
            return None
        length, pos = _read_varint(raw, pos)
        end = pos + length
        if end != len(raw):
            return None
        head: list[bytes] = []
        data: memoryview | None = None
        begin = pos
        while pos < end:
            at = pos
            key, pos = _read_varint(raw, pos)
            kind = key & 7
            if kind == 0:
                _, pos = _read_varint(raw, pos)
            elif kind == 1:
                pos += 8
            elif kind == 5:
                pos += 4
            elif kind == 2:
                size, pos = _read_varint(raw, pos)
                if key >> 3 == field:
                    if data is not None or pos + size > end:
                        return None
                    head.append(raw[begin:at])
                    data = memoryview(raw)[pos : pos + size]
                    begin = pos + size
                pos += size
            else:
                return None
        if pos != end or data is None:
            return None
        head.append(raw[begin:end])
        return outer, b"".join(head), data
    except (IndexError, ValueError):
        return None


def _parse(raw: bytes, message_type: Any, parts: dict[int, tuple[str, Any]], data_fields: dict[int, int]) -> Any:
    if len(raw) >= FRAME_MIN and (split := _split(raw, data_fields)) is not None:
        outer, head, data = split
        name, part_type = parts[outer]
        return Framed(message_type(**{name: part_type.FromString(head)}), data)
    return message_type.FromString(raw)


_REQUEST_PARTS = {_START: ("start", worker_pb2.CallStart), _DATA: ("data", worker_pb2.CallData)}
_REQUEST_DATA = {_START: _START_DATA, _DATA: _DATA_DATA}
_RESPONSE_PARTS = {_RESULT: ("result", worker_pb2.CallResult)}
_RESPONSE_DATA = {_RESULT: _RESULT_DATA}


class _Parser:
    """A deserializer that says which message it parses (``_grpc._parsing_handler`` names it in errors)."""

    def __init__(self, message_type: Any, parts: dict[int, tuple[str, Any]], data_fields: dict[int, int]) -> None:
        self.DESCRIPTOR = message_type.DESCRIPTOR
        self._args = (message_type, parts, data_fields)

    def parse(self, raw: bytes) -> Any:
        """The message, or a Framed one when its data is large; raises DecodeError for what is no such message."""
        return _parse(raw, *self._args)


parse_request = _Parser(worker_pb2.InvokeRequest, _REQUEST_PARTS, _REQUEST_DATA).parse
parse_response = _Parser(worker_pb2.InvokeResponse, _RESPONSE_PARTS, _RESPONSE_DATA).parse


def serialize(message: Message | bytes) -> bytes:
    """A message's bytes; a frame built by hand passes as it is."""
    return message if type(message) is bytes else message.SerializeToString()  # type: ignore[union-attr]


__all__ = [
    "FRAME_MIN",
    "Framed",
    "data_frame",
    "parse_request",
    "parse_response",
    "result_frame",
    "serialize",
    "start_frame",
]
