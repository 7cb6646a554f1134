"""Bundle files packed several to a gRPC message, its bytes encoded by hand: each file's content copied once.

Building the same message with protobuf copies every file's bytes three times (into each
``BundleFile``, into the message holding them, then when serialised); these functions write
the wire format of ``UploadFilesRequest{files}`` and ``DownloadFilesResponse{files}`` in one
``bytes.join``. gRPC sends such bytes as they are (``send_raw``); the receiver parses them as
the message they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from vastrpc.api.v1 import control_pb2

__all__ = ["download_files_message", "send_raw", "upload_files_message"]

_LEN = 2  # wire type of strings, bytes and messages: a length, then that many bytes


def _tag(message: Any, field: str) -> bytes:
    return _varint(message.DESCRIPTOR.fields_by_name[field].number << 3 | _LEN)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_DIGEST = _tag(control_pb2.BundleFile, "digest")
_CONTENT = _tag(control_pb2.BundleFile, "content")
_BUNDLE_FILES_FILE = _tag(control_pb2.BundleFiles, "files")
_UPLOAD_FILES = _tag(control_pb2.UploadFilesRequest, "files")
_DOWNLOAD_FILE = _tag(control_pb2.DownloadFilesResponse, "files")


def _files(tag: bytes, files: Iterable[tuple[str, bytes]]) -> tuple[list[bytes], int]:
    """Each file as a ``BundleFile`` field ``tag``: the parts to join, and their length."""
    parts: list[bytes] = []
    total = 0
    for digest, content in files:
        name = digest.encode()
        head = b"".join((_DIGEST, _varint(len(name)), name, _CONTENT, _varint(len(content))))
        size = len(head) + len(content)
        lead = tag + _varint(size)
        parts += (lead, head, content)
        total += len(lead) + size
    return parts, total


def upload_files_message(files: Iterable[tuple[str, bytes]]) -> bytes:
    """A serialised ``UploadFilesRequest`` whose ``files`` holds ``(digest, content)`` of each file, in order."""
    parts, total = _files(_BUNDLE_FILES_FILE, files)
    return b"".join([_UPLOAD_FILES, _varint(total), *parts])


def download_files_message(files: Iterable[tuple[str, bytes]]) -> bytes:
    """A serialised ``DownloadFilesResponse`` whose ``files`` holds ``(digest, content)`` of each file, in order."""
    parts, _ = _files(_DOWNLOAD_FILE, files)
    return b"".join(parts)


def send_raw(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """A serialiser that sends ``bytes`` (a message already serialised) as they are, and serialises the rest."""
    if serialize is None:
        return None
    inner = serialize

    def serialise(message: Any) -> bytes:
        return message if type(message) is bytes else inner(message)

    return serialise
