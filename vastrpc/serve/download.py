"""A revision's bundle on a worker: the manifest fetched and checked, missing files fetched, the folder laid out.

Only the files this host's cache (``vastrpc.serve.filecache``) lacks are downloaded, from the
control service (``DownloadFiles``) or the bundle store's URLs (S3), each verified by its
SHA-256 before it enters the cache; the revision's folder is then hard links to the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

import grpc

from vastrpc._errors import BundleError
from vastrpc._manifest import FileEntry, parse_manifest
from vastrpc.api.v1 import control_pb2, control_pb2_grpc
from vastrpc.serve.fetch import fetch_bundle, public_part
from vastrpc.serve.filecache import CacheFiller, FileCache, verify_digest

__all__ = ["download_bundle"]

log = logging.getLogger("vastrpc.worker")

# A download stops reading while this many bytes wait to be written to the file cache.
_WRITE_BACKLOG = 64 << 20
# Files fetched from the bundle store's URLs (S3) at once: each GET waits on the network.
_URL_FETCHES = 16

Metadata = Sequence[tuple[str, str]]


async def download_bundle(
    stub: control_pb2_grpc.ControlServiceStub, metadata: Metadata, digest: str, size: int, cache: FileCache, dest: Path
) -> Path:
    """Lay out bundle ``digest`` in the fresh folder ``dest`` from ``cache``, fetching what it lacks.

    Args:
        stub: The control service.
        metadata: The call's credentials (the worker token).
        digest: The bundle (manifest) digest.
        size: The manifest's registered size (0: not checked).
        cache: This host's file cache.
        dest: The revision's folder; it must not exist yet.

    Returns:
        ``dest``.

    Raises:
        BundleError: The manifest or a file is not what was registered, a rule or limit of the
            manifest is broken (named), or a download failed.
    """
    parts = []
    url = ""
    try:
        async for resp in stub.DownloadBundle(
            control_pb2.DownloadBundleRequest(digest=digest), metadata=metadata, timeout=600
        ):
            url = url or resp.url
            parts.append(resp.chunk)
    except grpc.aio.AioRpcError as exc:
        raise BundleError(f"cannot download bundle {digest[:12]}: {exc.code().name} {exc.details()}") from None
    if url:
        # The bundle store's presigned URL: no credentials here, and the digest is checked.
        log.info("download: bundle %.12s by URL from %s", digest, public_part(url))
        data = await asyncio.to_thread(fetch_bundle, url, digest, size)
    else:
        data = b"".join(parts)
        verify_digest(data, digest)
    # Every rule and limit is checked before a file is fetched or written.
    manifest = parse_manifest(data)
    missing = await asyncio.to_thread(cache.missing, manifest)
    if missing:
        await _fetch_files(stub, metadata, digest, missing, cache)
    dest.parent.mkdir(parents=True, exist_ok=True)
    files = await asyncio.to_thread(cache.materialise, manifest, dest)
    fetched = f"{len(missing)} fetched, {sum(f.size for f in missing)} bytes"
    log.info("download: bundle %.12s verified, %d files (%s), the rest cached", digest, len(files), fetched)
    return dest


async def _fetch_files(
    stub: control_pb2_grpc.ControlServiceStub,
    metadata: Metadata,
    bundle: str,
    missing: list[FileEntry],
    cache: FileCache,
) -> None:
    """Fetch the files the cache lacks, each verified against its SHA-256 as it enters the cache."""
    wanted = {f.sha256: f for f in missing}
    done: set[str] = set()
    filler = CacheFiller(cache)
    filling = asyncio.ensure_future(asyncio.to_thread(filler.run))
    request = control_pb2.DownloadFilesRequest(bundle=bundle, digests=list(wanted), packed=True)
    current = ""
    by_url: list[tuple[FileEntry, str]] = []
    try:
        async for resp in stub.DownloadFiles(request, metadata=metadata, timeout=3600):
            if filling.done():
                break  # writing failed: its error is raised below
            if resp.files:
                # Small files whole, several to a message: each verified as it enters the cache.
                files = []
                for f in resp.files:
                    if (entry := wanted.get(f.digest)) is None:
                        raise BundleError(f"the control service sent file {f.digest[:12]}, which was not asked for")
                    files.append((entry.sha256, entry.size, f.content))
                    done.add(entry.sha256)
                filler.whole(files)
                current = ""
                await _drain(filler, filling)
                continue
            entry = wanted.get(resp.digest)
            if entry is None:
                raise BundleError(f"the control service sent file {resp.digest[:12]}, which was not asked for")
            if resp.url:
                by_url.append((entry, resp.url))
            elif resp.digest != current:
                filler.start(entry.sha256, entry.size)
                current = resp.digest
            done.add(entry.sha256)
            if resp.chunk:
                filler.chunk(resp.chunk)
                await _drain(filler, filling)
        filler.end()
        await filling
        await _fetch_urls(by_url, cache)
    except grpc.aio.AioRpcError as exc:
        raise BundleError(
            f"cannot download the files of bundle {bundle[:12]}: {exc.code().name} {exc.details()}"
        ) from None
    finally:
        if not filling.done():
            filler.end(commit=False)
            with contextlib.suppress(BaseException):
                await asyncio.shield(filling)
    if lacking := set(wanted) - done:
        raise BundleError(
            f"the control service sent {len(done)} of the {len(wanted)} files asked for "
            f"(e.g. sha256 {min(lacking)[:12]} is missing): deploy again"
        )


async def _drain(filler: CacheFiller, filling: asyncio.Future[None]) -> None:
    """Wait while ``_WRITE_BACKLOG`` bytes wait for the disk (slower than the network), unless writing ended."""
    while filler.backlog > _WRITE_BACKLOG and not filling.done():
        await asyncio.sleep(0.002)


async def _fetch_urls(files: list[tuple[FileEntry, str]], cache: FileCache) -> None:
    """GET files from the bundle store's URLs, ``_URL_FETCHES`` at a time, each verified into the cache."""
    slots = asyncio.Semaphore(_URL_FETCHES)

    def fetch(entry: FileEntry, url: str) -> None:
        cache.add(entry.sha256, (fetch_bundle(url, entry.sha256, entry.size),), entry.size)

    async def one(entry: FileEntry, url: str) -> None:
        async with slots:
            await asyncio.to_thread(fetch, entry, url)

    await asyncio.gather(*(one(entry, url) for entry, url in files))
