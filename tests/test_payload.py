"""The wire encoding: chunk framing and out-of-band buffers, checked by properties over many inputs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vastrpc import SerializationError
from vastrpc._payload import (
    CLOUDPICKLE,
    JSON,
    Gathered,
    Payload,
    assemble,
    chunks,
    decode_args,
    decode_result,
    encode_args,
    encode_result,
)

segments = st.lists(st.binary(max_size=300), max_size=6)


@settings(max_examples=300, deadline=None)
@given(segments, st.integers(min_value=1, max_value=64))
def test_chunks_reassemble_exactly_and_flag_the_last(parts: list[bytes], size: int) -> None:
    out = list(Payload(parts).chunks(size))
    assert b"".join(c for c, _ in out) == b"".join(parts)
    assert all(len(c) <= size for c, _ in out)
    assert [more for _, more in out] == [True] * (len(out) - 1) + [False]


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=1024))
def test_plain_chunks_roundtrip(data: bytes, size: int) -> None:
    assert b"".join(c for c, _ in chunks(data, size)) == data


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(values, st.integers(min_value=1, max_value=4096))
def test_results_roundtrip_through_any_chunking(value: object, size: int) -> None:
    payload = encode_result(value, CLOUDPICKLE)
    parts = [c for c, _ in payload.chunks(size)]
    assert decode_result(assemble(parts, payload.buffer_sizes), CLOUDPICKLE, payload.buffer_sizes) == value


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=300_000), st.integers(min_value=1, max_value=1 << 20))
def test_arrays_travel_out_of_band_and_arrive_writable(n: int, size: int) -> None:
    array = np.arange(n, dtype=np.uint8)
    payload = encode_args((array,), {"k": array[: n // 2]})
    parts = [c for c, _ in payload.chunks(size)]
    (back,), kwargs = decode_args(assemble(parts, payload.buffer_sizes), CLOUDPICKLE, payload.buffer_sizes)
    assert np.array_equal(back, array) and np.array_equal(kwargs["k"], array[: n // 2])
    if payload.buffer_sizes:
        assert back.flags.writeable


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=300_000), st.integers(min_value=1, max_value=1 << 20))
def test_chunks_gathered_as_they_come_decode_the_same_and_arrays_stay_writable(n: int, size: int) -> None:
    array = np.arange(n, dtype=np.uint8)
    payload = encode_result({"a": array, "s": "x"}, CLOUDPICKLE)
    pieces = [b"".join(views) for views, _, _ in payload.pieces(size)]
    gathered = Gathered(memoryview(pieces[0]), payload.buffer_sizes)
    for piece in pieces[1:]:
        gathered.add(memoryview(piece))
    back = decode_result(gathered.value(), CLOUDPICKLE, payload.buffer_sizes)
    assert np.array_equal(back["a"], array) and back["s"] == "x"
    if payload.buffer_sizes:
        assert back["a"].flags.writeable


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=300), max_size=3))
def test_garbage_never_escapes_as_anything_but_serialization_error(data: bytes, sizes: list[int]) -> None:
    for encoding in (CLOUDPICKLE, JSON):
        try:
            decode_args(data, encoding, sizes if encoding == CLOUDPICKLE else ())
        except SerializationError:
            pass


def test_json_arguments_must_be_an_object() -> None:
    assert decode_args(b'{"args": [1], "kwargs": {"a": 2}}', JSON) == ((1,), {"a": 2})
    with pytest.raises(SerializationError, match="JSON arguments must be an object"):
        decode_args(b"[1, 2]", JSON)
    with pytest.raises(SerializationError, match="not JSON-serialisable"):
        encode_result(object(), JSON)


def test_protocol_5_is_used_for_large_buffers_only() -> None:
    small = encode_result(np.zeros(10), CLOUDPICKLE)
    large = encode_result(np.zeros(100_000), CLOUDPICKLE)
    assert small.buffer_sizes == [] and large.buffer_sizes == [800_000]
    assert pickle.loads(small.segments[0]).shape == (10,)
