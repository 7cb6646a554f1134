"""The control service's bundle transfers: manifests and content-addressed files, in and out of the bundle store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

from vastrpc._errors import (
    AuthenticationError,
    BundleError,
    DefinitionError,
    DeploymentError,
    NotFoundError,
    VastrpcError,
)
from vastrpc._grpc import CHUNK_SIZE
from vastrpc._manifest import MAX_BUNDLE_FILE_BYTES, ManifestLimits, pack_files, parse_manifest
from vastrpc._packed import download_files_message
from vastrpc.api.v1 import control_pb2
from vastrpc.control.bundles.base import BlobStore, BlobWriter, check_digest, manifest_file_sizes
from vastrpc.control.rpcstatus import abort, unary
from vastrpc.control.stores.base import WorkerRow

__all__ = ["BundleTransfer"]

log = logging.getLogger("vastrpc.control.service")

# Manifests whose file sets are kept in memory (content-addressed: they never change).
_MANIFESTS_KEPT = 256
# UploadFiles stops reading the stream while this many bytes wait to be written.
_WRITE_BACKLOG = 64 << 20


class _FileSink:
    """The files of one UploadFiles stream, written to the bundle store by a thread of their own.

    The event loop hands messages over without waiting (``put``); the thread checks each
    file against its digest and size as it commits it. Commits skip the per-file fsync, and
    one ``sync`` of the store makes the whole batch durable before the call answers.
    """

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.writer: BlobWriter | None = None
        self.queue: queue.SimpleQueue[tuple[str, Any, int]] = queue.SimpleQueue()
        self.files = self.stored = self.size = 0
        self.enqueued = 0  # bytes handed over (by the event loop)
        self.consumed = 0  # bytes written (by the thread)

    @property
    def backlog(self) -> int:
        """Bytes handed over and not written yet."""
        return self.enqueued - self.consumed

    def put(self, kind: str, value: Any = None, size: int = 0) -> None:
        """Hand the thread a ``head`` (digest, size), a ``chunk``, whole ``files`` (size: bytes), ``end``, ``abort``."""
        if kind == "chunk":
            self.enqueued += len(value)
        elif kind == "files":
            self.enqueued += size
        self.queue.put((kind, value, size))

    def run(self) -> None:
        """Write until ``end`` (then sync) or ``abort``; an error aborts the file in progress."""
        try:
            while True:
                kind, value, size = self.queue.get()
                if kind == "chunk":
                    if self.writer is not None:
                        self.writer.write(value)
                    self.consumed += len(value)
                elif kind == "files":
                    self._end()
                    for digest, content in value:
                        self._whole(digest, content)
                    self.consumed += size
                elif kind == "head":
                    self._end()
                    self.files += 1
                    self.size += size
                    # The client sent only what MissingFiles named: a file stored meanwhile is drained.
                    self.writer = None if self.blobs.has(value) else self.blobs.open_writer(value, size, sync=False)
                elif kind == "end":
                    self._end()
                    if self.stored:
                        self.blobs.sync()
                    return
                else:
                    return
        finally:
            if self.writer is not None:
                self.writer.abort()
                self.writer = None

    def _end(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            self.stored += writer.commit()

    def _whole(self, digest: str, content: bytes) -> None:
        """Store one whole file, checked against its digest and size before it is stored (else nothing stays)."""
        self.files += 1
        self.size += len(content)
        if self.blobs.has(digest):
            return
        with self.blobs.open_writer(digest, len(content), sync=False) as writer:
            writer.write(content)
            self.stored += writer.commit()


def _valid_digest(digest: str) -> str:
    try:
        return check_digest(digest)
    except BundleError as exc:
        raise DefinitionError(str(exc)) from None


class BundleTransfer:
    """The bundle RPCs of ``ControlService``: uploads checked file by file, downloads scoped to a worker.

    A bundle is a manifest (``vastrpc._manifest``) stored under its SHA-256, beside the
    files it names, each stored under its own: ``MissingFiles`` says which files the store
    lacks, ``UploadFiles`` stores them (each verified), ``UploadBundle`` stores the manifest
    once it is valid and every file it names is stored. A worker token reaches only the
    manifests of its revisions (``DownloadBundle``) and the files they name (``DownloadFiles``).
    """

    blobs: BlobStore
    lifecycle: Any

    def _caller_worker(self, context: grpc.aio.ServicerContext) -> WorkerRow | None:
        raise NotImplementedError

    async def _manifest_files(self, digest: str) -> dict[str, int]:
        """The files bundle ``digest`` names: each one's digest and size."""
        cache: dict[str, dict[str, int]] = self.__dict__.setdefault("_manifests", {})
        names = cache.get(digest)
        if names is None:
            names = await asyncio.to_thread(manifest_file_sizes, self.blobs, digest)
            if len(cache) >= _MANIFESTS_KEPT:
                cache.clear()
            cache[digest] = names
        return names

    @unary
    async def MissingFiles(
        self, request: control_pb2.MissingFilesRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.MissingFilesResponse:
        digests = sorted({_valid_digest(d) for d in request.digests})
        # Bundle store calls may go over the network (S3): in a thread, off the event loop.
        missing = await asyncio.to_thread(lambda: [d for d in digests if not self.blobs.has(d)])
        return control_pb2.MissingFilesResponse(missing=missing)

    @unary
    async def UploadFiles(
        self, request_iterator: AsyncIterator[control_pb2.UploadFilesRequest], context: grpc.aio.ServicerContext
    ) -> control_pb2.UploadFilesResponse:
        sink = _FileSink(self.blobs)
        writing = asyncio.ensure_future(asyncio.to_thread(sink.run))
        started = False
        try:
            async for message in request_iterator:
                if writing.done():
                    break  # the writer failed: its error is raised below
                part = message.WhichOneof("part")
                if part == "files":
                    # Small files whole, several to a message; it ends a file sent in chunks.
                    files = [(_valid_digest(f.digest), f.content) for f in message.files.files]
                    sink.put("files", files, sum(len(c) for _, c in files))
                    started = False
                elif part == "header":
                    header = message.header
                    _valid_digest(header.digest)
                    if header.size > MAX_BUNDLE_FILE_BYTES:
                        raise BundleError(
                            f"file {header.digest[:12]} is {header.size} bytes, over the limit of "
                            f"{MAX_BUNDLE_FILE_BYTES} bytes of a bundle"
                        )
                    sink.put("head", header.digest, header.size)
                    started = True
                elif not started:
                    raise DefinitionError(
                        "UploadFiles got a chunk without a header: send whole files, or {digest, size} then chunks"
                    )
                else:
                    sink.put("chunk", message.chunk)
                while sink.backlog > _WRITE_BACKLOG and not writing.done():
                    await asyncio.sleep(0.002)  # the disk is slower than the network: let it catch up
            sink.put("end")
            await writing
        finally:
            if not writing.done():
                # An error, or a client that cancelled mid-stream, leaves no partial file behind.
                sink.put("abort")
                with contextlib.suppress(BaseException):
                    await asyncio.shield(writing)
        if sink.stored:
            log.info("stored %d bundle files of %d received (%d bytes)", sink.stored, sink.files, sink.size)
        return control_pb2.UploadFilesResponse(files=sink.files, stored=sink.stored, size=sink.size)

    @unary
    async def UploadBundle(
        self, request_iterator: AsyncIterator[control_pb2.UploadBundleRequest], context: grpc.aio.ServicerContext
    ) -> control_pb2.UploadBundleResponse:
        header: control_pb2.UploadBundleRequest.Header | None = None
        limits = ManifestLimits()
        data = bytearray()
        async for message in request_iterator:
            if header is None:
                if not message.HasField("header"):
                    raise DefinitionError("the first UploadBundle message must be the header {digest, size}")
                header = message.header
                _valid_digest(header.digest)
                if header.size > limits.max_manifest_bytes:
                    raise BundleError(
                        f"bundle manifest is {header.size} bytes, over the limit of {limits.max_manifest_bytes} bytes: "
                        "it names too many files or too long paths; bundle fewer files"
                    )
                continue
            if message.HasField("header"):
                raise DefinitionError("UploadBundle got a second header; send one header, then chunks")
            data += message.chunk
            if len(data) > header.size:
                raise BundleError(f"bundle {header.digest[:12]} is larger than its announced {header.size} bytes")
        if header is None:
            raise DefinitionError("UploadBundle got no header: send {digest, size} first, then chunks")
        stored = await asyncio.to_thread(self._store_manifest, header.digest, header.size, bytes(data))
        if stored:
            log.info("stored bundle %s (%d bytes of manifest)", header.digest[:12], header.size)
        return control_pb2.UploadBundleResponse(digest=header.digest, size=header.size, stored=stored)

    def _store_manifest(self, digest: str, size: int, data: bytes) -> bool:
        """Check the manifest and that its files are stored, then store it (in a thread: store calls)."""
        if self.blobs.has(digest):
            return False
        with self.blobs.open_writer(digest, size) as writer:
            writer.write(data)
            if len(data) == size:  # else commit names what is wrong
                manifest = parse_manifest(data)
                missing = [f for f in manifest.by_digest().values() if not self.blobs.has(f.sha256)]
                if missing:
                    raise DeploymentError(
                        f"bundle {digest[:12]} names {len(missing)} files the service does not store "
                        f"(e.g. {missing[0].path!r}, sha256 {missing[0].sha256[:12]}): upload them first (UploadFiles)"
                    )
            return writer.commit()

    async def DownloadBundle(
        self, request: control_pb2.DownloadBundleRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[control_pb2.DownloadBundleResponse]:
        try:
            # A worker token reaches only the bundles of the revisions its worker serves or moves to.
            if (worker := self._caller_worker(context)) is not None:
                self.lifecycle.check_worker_bundle(worker, request.digest)
            # A store that hands out URLs (S3): the worker fetches the bundle from it directly.
            url = await asyncio.to_thread(self.blobs.download_url, request.digest)
            if url is not None:
                yield control_pb2.DownloadBundleResponse(url=url)
                return
            chunks = self.blobs.read_chunks(request.digest, CHUNK_SIZE)
        except VastrpcError as exc:
            await abort(context, exc)
        for chunk in chunks:
            yield control_pb2.DownloadBundleResponse(chunk=chunk)

    async def DownloadFiles(
        self, request: control_pb2.DownloadFilesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[control_pb2.DownloadFilesResponse | bytes]:
        try:
            worker = self._caller_worker(context)
            # A worker token reaches only the files that its revisions' bundles name.
            if worker is not None:
                self.lifecycle.check_worker_bundle(worker, request.bundle)
            names = await self._manifest_files(_valid_digest(request.bundle))
            for digest in request.digests:
                if digest not in names:
                    error = AuthenticationError if worker is not None else NotFoundError
                    raise error(f"bundle {request.bundle[:12]} names no file {digest[:80]!r}: ask only for its files")
        except VastrpcError as exc:
            await abort(context, exc)
        digests = list(dict.fromkeys(request.digests))
        try:
            # One thread hop for all: a store without URLs (local) answers None at once.
            urls = await asyncio.to_thread(lambda: [self.blobs.download_url(d) for d in digests])
        except VastrpcError as exc:
            await abort(context, exc)
        streamed = []
        for digest, url in zip(digests, urls, strict=True):
            if url is not None:
                yield control_pb2.DownloadFilesResponse(digest=digest, url=url)
            else:
                streamed.append(digest)
        # A worker that reads packed messages gets small files whole, several to a message.
        groups: list[list[str] | str] = list(pack_files(streamed, names.__getitem__) if request.packed else streamed)
        async for message in self._file_messages(groups, names, context):
            yield message

    async def _file_messages(
        self, groups: list[list[str] | str], sizes: dict[str, int], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[control_pb2.DownloadFilesResponse | bytes]:
        """Each group's messages: a list of small files read whole in a thread (the next list is
        read while this one is sent), a single file as its digest and chunks."""
        ahead: asyncio.Future[bytes] | None = None
        try:
            for i, group in enumerate(groups):
                if not isinstance(group, list):
                    try:
                        chunks: Iterator[bytes] = self.blobs.read_chunks(group, CHUNK_SIZE)
                    except VastrpcError as exc:
                        await abort(context, exc)
                    first = True
                    for chunk in chunks:
                        yield control_pb2.DownloadFilesResponse(digest=group, chunk=chunk)
                        first = False
                    if first:  # an empty file: one message says it
                        yield control_pb2.DownloadFilesResponse(digest=group)
                    continue
                reading = ahead or asyncio.ensure_future(asyncio.to_thread(self._read_whole, group, sizes))
                ahead = None
                try:
                    files = await reading
                except VastrpcError as exc:
                    await abort(context, exc)
                following = groups[i + 1] if i + 1 < len(groups) else None
                if isinstance(following, list):
                    ahead = asyncio.ensure_future(asyncio.to_thread(self._read_whole, following, sizes))
                yield files  # serialised already (vastrpc._packed)
        finally:
            if ahead is not None:
                ahead.cancel()

    def _read_whole(self, digests: list[str], sizes: dict[str, int]) -> bytes:
        """Stored small files read whole, as one serialised ``DownloadFilesResponse`` (in a thread).

        A file is read up to one byte past the size its manifest gives (a manifest that lies
        about a large file cannot make the message large); the worker refuses a wrong size.
        """

        def read(digest: str) -> bytes:
            chunks = self.blobs.read_chunks(digest, sizes[digest] + 1)
            try:
                return next(chunks, b"")
            finally:
                getattr(chunks, "close", lambda: None)()

        return download_files_message((d, read(d)) for d in digests)
