"""Bundle transfers through a real control service: only missing files are sent, each verified, manifests checked."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from vastrpc._manifest import FileEntry, encode_manifest
from vastrpc.api.v1 import control_pb2
from vastrpc.client.control import ControlClient

from .helpers import sha

pytestmark = pytest.mark.timeout(60)


async def _code(coro) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value.code(), info.value.details()


async def test_missing_files_upload_and_manifest_checks(control_service, client) -> None:
    big, small, empty = b"w" * (3 << 20), b"print(1)\n", b""
    asked = await client.stub.MissingFiles(
        control_pb2.MissingFilesRequest(digests=[sha(big), sha(small), sha(small)]), metadata=client.metadata
    )
    assert sorted(asked.missing) == sorted({sha(big), sha(small)})

    manifest = encode_manifest(
        [
            FileEntry("weights.bin", 0o644, len(big), sha(big)),
            FileEntry("deploy.py", 0o755, len(small), sha(small)),
            FileEntry("empty", 0o644, 0, sha(empty)),
        ]
    )
    # The manifest is refused while a file it names is not stored, naming the file.
    code, details = await _code(client.upload(manifest.data, manifest.digest))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "upload them first" in details
    assert not (control_service.home / "bundles" / manifest.digest).exists()

    sent = await client.upload_files(big, small, empty)
    assert (sent.files, sent.stored, sent.size) == (3, 3, len(big) + len(small))
    assert (await client.upload_files(small)).stored == 0  # stored already: drained, not written again
    assert (await client.upload(manifest.data, manifest.digest)).stored
    asked = await client.stub.MissingFiles(
        control_pb2.MissingFilesRequest(digests=[sha(big), sha(b"new")]), metadata=client.metadata
    )
    assert list(asked.missing) == [sha(b"new")]

    files = await client.download_files(manifest.digest, [sha(big), sha(empty)])
    assert files == {sha(big): big, sha(empty): b""}
    code, details = await _code(client.download_files(manifest.digest, [sha(b"other")]))
    assert code == grpc.StatusCode.NOT_FOUND and "names no file" in details


async def test_files_are_verified_and_bad_manifests_refused(control_service, client) -> None:
    async def lying() -> AsyncIterator[control_pb2.UploadFilesRequest]:
        header = control_pb2.UploadFilesRequest.Header(digest=sha(b"claimed"), size=7)
        yield control_pb2.UploadFilesRequest(header=header)
        yield control_pb2.UploadFilesRequest(chunk=b"swapped")

    code, details = await _code(client.stub.UploadFiles(lying(), metadata=client.metadata, timeout=10))
    assert code == grpc.StatusCode.DATA_LOSS and "digest mismatch" in details
    assert not [p for p in (control_service.home / "bundles").iterdir()]

    bombs = {
        b"not a manifest": "not a vastrpc manifest",
        encode_manifest([FileEntry("ok", 0o644, 1, "0" * 64)]).data.replace(b'"ok"', b'"../x"'): "'..'",
        b'{"files":[["huge",420,9999999999999,"' + b"0" * 64 + b'"]],"format":"vastrpc-manifest/1"}': "size limit",
    }
    for data, words in bombs.items():
        code, details = await _code(client.upload(data, sha(data)))
        assert code == grpc.StatusCode.DATA_LOSS and words in details, details
    assert not [p for p in (control_service.home / "bundles").iterdir()]


async def test_a_file_collected_between_question_and_manifest_is_sent_again(control_service, monkeypatch) -> None:
    """The reaper may delete an old unused file after MissingFiles said it was stored: the client asks again."""
    contents = [b"kept", b"collected meanwhile"]
    manifest = encode_manifest([FileEntry(f"f{i}", 0o644, len(c), sha(c)) for i, c in enumerate(contents)])
    by_sha = {sha(c): c for c in contents}
    client = ControlClient(control_service.address, control_service.api_key)
    try:
        first = ControlClient._upload_missing
        calls = []

        async def then_collected(self, *args):
            sent = await first(self, *args)
            if not calls:  # as the reaper would, right after the files were stored
                (control_service.home / "bundles" / sha(contents[1])).unlink()
            calls.append(sent)
            return sent

        monkeypatch.setattr(ControlClient, "_upload_missing", then_collected)
        up = await client.upload_bundle(manifest, lambda entry: iter([by_sha[entry.sha256]]))
    finally:
        await client.close()
    assert calls == [(2, 23), (1, 19)] and (up.files, up.file_bytes, up.stored) == (3, 42, True)
    assert (control_service.home / "bundles" / manifest.digest).is_file()
