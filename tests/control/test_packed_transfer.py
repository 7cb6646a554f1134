"""Small bundle files packed several to a message both ways through a real control service; old messages too."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import grpc
import pytest

from vastrpc._manifest import PACK_BYTES, PACK_FILE_BYTES, FileEntry, encode_manifest
from vastrpc._packed import download_files_message, upload_files_message
from vastrpc.api.v1 import control_pb2, control_pb2_grpc
from vastrpc.client.control import ControlClient
from vastrpc.serve.download import download_bundle
from vastrpc.serve.filecache import FileCache

from .helpers import Client, sha

pytestmark = pytest.mark.timeout(60)


def _contents(count: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    sizes = [0, 1, 127, 128, 16_383, 16_384, PACK_FILE_BYTES, PACK_FILE_BYTES + 1, 3 << 20]
    sizes += [rng.randrange(1, 200_000) for _ in range(count - len(sizes))]
    return [rng.randbytes(n) + i.to_bytes(4, "big") for i, n in enumerate(sizes)]


@pytest.mark.parametrize("sizes", [[], [0], [5, 0, 300], [127, 128, 16_383, 16_384, 2_097_152]])
def test_hand_encoded_messages_parse_as_the_protobuf_ones(sizes: list[int]) -> None:
    files = [(sha(bytes([i]) * n), bytes([i]) * n) for i, n in enumerate(sizes)]
    up = control_pb2.UploadFilesRequest.FromString(upload_files_message(files))
    assert up.WhichOneof("part") == "files"
    assert [(f.digest, f.content) for f in up.files.files] == files
    down = control_pb2.DownloadFilesResponse.FromString(download_files_message(files))
    assert [(f.digest, f.content) for f in down.files] == files and not (down.digest or down.chunk or down.url)


async def test_many_files_round_trip_packed_through_a_real_service(control_service, client) -> None:
    contents = _contents(300)
    manifest = encode_manifest([FileEntry(f"data/{i:03d}", 0o644, len(c), sha(c)) for i, c in enumerate(contents)])
    by_sha = {sha(c): c for c in contents}
    control = ControlClient(control_service.address, control_service.api_key)
    sent: list[control_pb2.UploadFilesRequest | bytes] = []
    stream = control.stub.UploadFiles

    def recording(requests, **kwargs):
        def tap():
            for message in requests:
                sent.append(message)
                yield message

        return stream(tap(), **kwargs)

    control.stub.UploadFiles = recording
    try:
        up = await control.upload_bundle(manifest, lambda entry: iter([by_sha[entry.sha256]]))
    finally:
        await control.close()
    assert (up.files, up.file_bytes, up.stored) == (len(contents), sum(map(len, contents)), True)
    # Small files went whole, many to a message; the two larger than PACK_FILE_BYTES as header + chunks.
    packed = [m for m in sent if isinstance(m, bytes)]
    assert len(packed) < len(contents) / 10 and all(len(m) <= PACK_BYTES + (64 << 10) for m in packed)
    headers = [m for m in sent if not isinstance(m, bytes) and m.HasField("header")]
    assert sorted(h.header.size for h in headers) == sorted(len(c) for c in contents if len(c) > PACK_FILE_BYTES)
    for digest, content in by_sha.items():
        assert (control_service.home / "bundles" / digest).read_bytes() == content

    # A worker that asks for packed files gets them whole, many to a message...
    call = client.stub.DownloadFiles(
        control_pb2.DownloadFilesRequest(bundle=manifest.digest, digests=list(by_sha), packed=True),
        metadata=client.metadata,
        timeout=10,
    )
    got: dict[str, bytes] = {}
    messages = 0
    async for response in call:
        messages += 1
        for f in response.files:
            got[f.digest] = f.content
        if response.digest:
            got[response.digest] = got.get(response.digest, b"") + response.chunk
    assert got == by_sha and messages < len(contents) / 5
    # ...and one that does not (an older worker) each file as its digest and chunks.
    assert await client.download_files(manifest.digest, list(by_sha)) == by_sha


async def test_old_one_file_messages_and_packed_ones_mix_in_a_stream(control_service, client) -> None:
    chunked, small, other = b"c" * 5000, b"small", b"other"

    async def requests() -> AsyncIterator[control_pb2.UploadFilesRequest]:
        header = control_pb2.UploadFilesRequest.Header(digest=sha(chunked), size=5000)
        yield control_pb2.UploadFilesRequest(header=header)
        yield control_pb2.UploadFilesRequest(chunk=chunked[:2000])
        yield control_pb2.UploadFilesRequest(chunk=chunked[2000:])
        files = [control_pb2.BundleFile(digest=sha(c), content=c) for c in (small, other)]
        yield control_pb2.UploadFilesRequest(files=control_pb2.BundleFiles(files=files))

    up = await client.stub.UploadFiles(requests(), metadata=client.metadata, timeout=10)
    assert (up.files, up.stored, up.size) == (3, 3, 5010)
    assert (await client.upload_files(small, b"one more")).stored == 1  # the old client's stream
    for content in (chunked, small, other, b"one more"):
        assert (control_service.home / "bundles" / sha(content)).read_bytes() == content


async def test_a_corrupt_file_in_a_packed_message_is_refused_and_not_stored(control_service, client) -> None:
    good, claimed = b"good file", b"claimed content"
    files = [
        control_pb2.BundleFile(digest=sha(good), content=good),
        control_pb2.BundleFile(digest=sha(claimed), content=b"swapped content"),
    ]

    async def requests() -> AsyncIterator[control_pb2.UploadFilesRequest]:
        yield control_pb2.UploadFilesRequest(files=control_pb2.BundleFiles(files=files))

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.stub.UploadFiles(requests(), metadata=client.metadata, timeout=10)
    assert info.value.code() == grpc.StatusCode.DATA_LOSS
    assert "digest mismatch" in info.value.details() and sha(claimed) in info.value.details()
    stored = sorted(p.name for p in (control_service.home / "bundles").iterdir())
    assert sha(claimed) not in stored and not [n for n in stored if n.endswith(".part")]

    async def bad_digest() -> AsyncIterator[control_pb2.UploadFilesRequest]:
        bad = control_pb2.BundleFile(digest="../escape", content=b"x")
        yield control_pb2.UploadFilesRequest(files=control_pb2.BundleFiles(files=[bad]))

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.stub.UploadFiles(bad_digest(), metadata=client.metadata, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "invalid bundle digest" in info.value.details()


async def test_a_manifest_lying_about_a_size_cannot_make_a_packed_message_large(control_service, client) -> None:
    big = b"b" * (3 << 20)
    await client.upload_files(big)
    manifest = encode_manifest([FileEntry("small.txt", 0o644, 10, sha(big))])
    assert (await client.upload(manifest.data, manifest.digest)).stored
    call = client.stub.DownloadFiles(
        control_pb2.DownloadFilesRequest(bundle=manifest.digest, digests=[sha(big)], packed=True),
        metadata=client.metadata,
        timeout=10,
    )
    responses = [r async for r in call]
    # One byte past the size the manifest gives: the worker refuses the file for its size.
    assert [(f.digest, f.content) for r in responses for f in r.files] == [(sha(big), big[:11])]


async def test_a_worker_lays_out_a_bundle_from_packed_and_from_one_file_messages(control_service, tmp_path) -> None:
    contents = _contents(60, seed=3)
    manifest = encode_manifest([FileEntry(f"d/{i:02d}", 0o644, len(c), sha(c)) for i, c in enumerate(contents)])
    by_sha = {sha(c): c for c in contents}
    control = ControlClient(control_service.address, control_service.api_key)
    try:
        await control.upload_bundle(manifest, lambda entry: iter([by_sha[entry.sha256]]))
    finally:
        await control.close()

    class Unpacked:
        """A service that does not know packed messages (an older one): the flag is dropped on the way."""

        def __init__(self, stub) -> None:
            self.DownloadBundle = stub.DownloadBundle
            self._files = stub.DownloadFiles

        def DownloadFiles(self, request, **kwargs):
            request.packed = False
            return self._files(request, **kwargs)

    async with Client(control_service.address, control_service.api_key) as client:
        for name, stub in (("packed", client.stub), ("unpacked", Unpacked(client.stub))):
            cache = FileCache(tmp_path / name / "cache")
            dest = await download_bundle(
                stub, client.metadata, manifest.digest, len(manifest.data), cache, tmp_path / name / "rev"
            )
            for i, content in enumerate(contents):
                assert (dest / "d" / f"{i:02d}").read_bytes() == content


async def test_a_client_sends_one_file_messages_to_a_service_older_than_packed_files() -> None:
    contents = _contents(12, seed=5)
    manifest = encode_manifest([FileEntry(f"f{i:02d}", 0o644, len(c), sha(c)) for i, c in enumerate(contents)])
    by_sha = {sha(c): c for c in contents}
    received: dict[str, bytes] = {}

    class OlderService(control_pb2_grpc.ControlServiceServicer):
        """What a service before packed files does: a message that is not a header or a chunk is refused."""

        async def MissingFiles(self, request, context):
            return control_pb2.MissingFilesResponse(missing=list(request.digests))

        async def UploadFiles(self, request_iterator, context):
            current = None
            async for message in request_iterator:
                if message.HasField("header"):
                    current = message.header.digest
                    received[current] = b""
                elif current is None:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "UploadFiles got no header: send {digest, size}, then the file's chunks",
                    )
                else:
                    received[current] += message.chunk
            return control_pb2.UploadFilesResponse(files=len(received), stored=len(received))

        async def UploadBundle(self, request_iterator, context):
            async for _ in request_iterator:
                pass
            return control_pb2.UploadBundleResponse(stored=True)

    server = grpc.aio.server()
    control_pb2_grpc.add_ControlServiceServicer_to_server(OlderService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = ControlClient(f"127.0.0.1:{port}", "key")
    try:
        up = await client.upload_bundle(manifest, lambda entry: iter([by_sha[entry.sha256]]))
    finally:
        await client.close()
        await server.stop(None)
    assert up.stored and received == by_sha
