"""Property tests for vastrpc._packed: hand-encoded packed messages parse as protobuf's own, and raw bytes pass."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vastrpc._packed import download_files_message, send_raw, upload_files_message
from vastrpc.api.v1 import control_pb2

files = st.lists(st.tuples(st.text(max_size=80), st.binary(max_size=70_000)), max_size=12)


@settings(max_examples=100, deadline=None)
@given(files)
def test_packed_messages_parse_as_the_protobuf_ones(pairs: list[tuple[str, bytes]]) -> None:
    up = control_pb2.UploadFilesRequest.FromString(upload_files_message(pairs))
    assert up.WhichOneof("part") == "files" and [(f.digest, f.content) for f in up.files.files] == pairs
    built = control_pb2.UploadFilesRequest(
        files=control_pb2.BundleFiles(files=[control_pb2.BundleFile(digest=d, content=c) for d, c in pairs])
    )
    assert up == built
    down = control_pb2.DownloadFilesResponse.FromString(download_files_message(pairs))
    assert down == control_pb2.DownloadFilesResponse(
        files=[control_pb2.BundleFile(digest=d, content=c) for d, c in pairs]
    )


def test_send_raw_passes_bytes_and_serialises_messages() -> None:
    serialise = send_raw(control_pb2.DownloadFilesResponse.SerializeToString)
    assert serialise is not None and send_raw(None) is None
    message = control_pb2.DownloadFilesResponse(digest="d", chunk=b"x")
    assert serialise(message) == message.SerializeToString()
    assert serialise(b"\x22\x00") == b"\x22\x00"
