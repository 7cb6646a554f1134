"""Invoke messages framed by hand: the same bytes protobuf would read, large data left as a view on receipt."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from vastrpc._wire import (
    FRAME_MIN,
    Framed,
    _varint,
    data_frame,
    parse_request,
    parse_response,
    result_frame,
    serialize,
    start_frame,
)
from vastrpc.api.v1 import worker_pb2

segments = st.lists(st.binary(max_size=2000), max_size=5)


@settings(max_examples=100, deadline=None)
@given(
    segments,
    st.integers(min_value=0, max_value=2**64 - 1),
    st.text(max_size=20),
    st.lists(st.integers(min_value=0, max_value=2**64 - 1), max_size=4),
    st.booleans(),
    st.floats(min_value=0, max_value=1e9),
)
def test_a_framed_start_is_the_message_protobuf_reads(
    parts: list[bytes], call_id: int, function: str, sizes: list[int], more: bool, timeout: float
) -> None:
    fields = {"call_id": call_id, "function": function, "buffer_sizes": sizes, "more": more, "timeout": timeout}
    data = b"".join(parts)
    frame = start_frame(fields, [memoryview(p) for p in parts], len(data))
    assert worker_pb2.InvokeRequest.FromString(frame) == worker_pb2.InvokeRequest(start={**fields, "data": data})


@settings(max_examples=50, deadline=None)
@given(segments, st.integers(min_value=0, max_value=2**64 - 1), st.booleans())
def test_framed_data_and_results_are_the_messages_protobuf_reads(parts: list[bytes], call_id: int, flag: bool) -> None:
    data = b"".join(parts)
    frame = data_frame(call_id, flag, parts, len(data))
    assert worker_pb2.InvokeRequest.FromString(frame) == worker_pb2.InvokeRequest(
        data={"call_id": call_id, "more": flag, "data": data}
    )
    fields = {"call_id": call_id, "done": flag, "encoding": 1, "buffer_sizes": [len(data)]}
    frame = result_frame(fields, parts, len(data))
    assert worker_pb2.InvokeResponse.FromString(frame) == worker_pb2.InvokeResponse(result={**fields, "data": data})


def test_large_messages_parse_framed_with_their_data_as_a_view() -> None:
    data = bytes(range(256)) * (FRAME_MIN // 256 + 1)
    fields = {"call_id": 7, "function": "f", "buffer_sizes": [10, 20], "more": True, "timeout": 1.5}
    # Written by protobuf (another client) or by hand: both parse the same.
    for raw in (
        worker_pb2.InvokeRequest(start={**fields, "data": data}).SerializeToString(),
        start_frame(fields, [data[:100], data[100:]], len(data)),
    ):
        parsed = parse_request(raw)
        assert isinstance(parsed, Framed)
        assert parsed.message == worker_pb2.InvokeRequest(start=fields)
        assert isinstance(parsed.data, memoryview) and parsed.data == data
    raw = worker_pb2.InvokeResponse(result={"call_id": 3, "data": data, "more": True}).SerializeToString()
    parsed = parse_response(raw)
    assert isinstance(parsed, Framed) and parsed.message.result.call_id == 3 and parsed.message.result.more
    assert parsed.data == data


def test_small_and_unusual_messages_go_through_protobuf() -> None:
    small = worker_pb2.InvokeRequest(start={"call_id": 1, "data": b"x"})
    assert parse_request(small.SerializeToString()) == small
    cancel = worker_pb2.InvokeRequest(cancel={"call_id": 1})
    assert parse_request(cancel.SerializeToString()) == cancel
    big = b"y" * FRAME_MIN
    # The data field twice (the last one counts in protobuf): parsed by protobuf, same answer.
    twice = worker_pb2.CallStart(data=b"first").SerializeToString() + worker_pb2.CallStart(data=big).SerializeToString()
    raw = b"\x0a" + _varint(len(twice)) + twice
    assert parse_request(raw) == worker_pb2.InvokeRequest(start={"data": big})
    batch = worker_pb2.InvokeRequest(batch={"requests": [{"start": {"call_id": 1, "data": big}}]})
    assert parse_request(batch.SerializeToString()) == batch


def test_garbage_raises_decode_error() -> None:
    with pytest.raises(DecodeError):
        parse_request(b"\x0a\xff\xff\xff\xff\x0f" + b"\x00" * FRAME_MIN)
    with pytest.raises(DecodeError):
        parse_response(b"\x0a\x05" + b"\xff" * FRAME_MIN)


def test_serialize_passes_frames_as_they_are() -> None:
    assert serialize(b"frame") == b"frame"
    message = worker_pb2.InvokeRequest(cancel={"call_id": 2})
    assert serialize(message) == message.SerializeToString()
