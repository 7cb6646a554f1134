"""The bundle store port: the interface every store implements, and the size and digest checks they share."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from types import TracebackType
from typing import Protocol

from vastrpc._errors import BundleError
from vastrpc._grpc import CHUNK_SIZE
from vastrpc._manifest import ManifestLimits, parse_manifest

__all__ = [
    "BlobStore",
    "BlobWriter",
    "VerifyingWriter",
    "check_digest",
    "is_digest",
    "manifest_file_sizes",
    "manifest_files",
]

_DIGEST = re.compile(r"[0-9a-f]{64}")


def is_digest(name: str) -> bool:
    """Whether ``name`` is a lower-case hex SHA-256 (the name of a stored bundle)."""
    return _DIGEST.fullmatch(name or "") is not None


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is a lower-case hex SHA-256, else raise BundleError.

    The digest names a file, so anything else (a path, ``..``) must never get that far.
    """
    if not _DIGEST.fullmatch(digest or ""):
        raise BundleError(f"invalid bundle digest {digest[:80]!r}: expected 64 lower-case hex characters (SHA-256)")
    return digest


class BlobWriter(Protocol):
    """An upload in progress. Use as a context manager: leaving it without ``commit()`` discards it."""

    def write(self, chunk: bytes) -> None:
        """Append a chunk; raises BundleError past the announced size."""

    def commit(self) -> bool:
        """Verify size and digest and store the bundle; False when it was already stored."""

    def abort(self) -> None:
        """Discard what was written."""

    def __enter__(self) -> BlobWriter: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class BlobStore(Protocol):
    """Where bundles live, addressed by their SHA-256: a local directory, or an S3 bucket (``s3blobs``)."""

    def has(self, digest: str) -> bool:
        """Whether a bundle with that digest is stored."""

    def size(self, digest: str) -> int:
        """The stored bundle's size; NotFoundError when missing."""

    def open_writer(self, digest: str, size: int, *, sync: bool = True) -> BlobWriter:
        """Start storing a bundle that claims ``digest`` and ``size``.

        With ``sync`` False, ``commit`` may return before the bytes are durable: call ``sync()``
        once after a batch of such writers (many small files), before telling anyone they are stored.
        """

    def sync(self) -> None:
        """Make every committed write durable (a no-op for a store whose commits already are)."""

    def read_chunks(self, digest: str, chunk_size: int) -> Iterator[bytes]:
        """The stored bundle in chunks; NotFoundError when missing."""

    def download_url(self, digest: str) -> str | None:
        """A URL a worker can GET the bundle from without credentials, valid for a short while.

        None when the store hands out no URLs: workers then stream the bundle from the
        control service (``read_chunks``). NotFoundError when a URL store lacks the bundle.
        """

    def stored(self) -> dict[str, float]:
        """Every stored bundle: digest to the time (Unix seconds) it was stored."""

    def delete(self, digest: str) -> bool:
        """Remove a stored bundle; False when it was not stored.

        Readers that already opened it finish reading it (the embedded store unlinks).
        """


def manifest_files(blobs: BlobStore, digest: str) -> frozenset[str]:
    """The file digests the stored manifest ``digest`` names (blocking: a store read).

    Raises:
        NotFoundError: No bundle with that digest is stored.
        BundleError: What is stored is not a valid manifest.
    """
    return frozenset(manifest_file_sizes(blobs, digest))


def manifest_file_sizes(blobs: BlobStore, digest: str) -> dict[str, int]:
    """The file digests the stored manifest ``digest`` names, each with its size (blocking: a store read).

    Raises:
        NotFoundError: No bundle with that digest is stored.
        BundleError: What is stored is not a valid manifest.
    """
    limits = ManifestLimits()
    data = bytearray()
    for chunk in blobs.read_chunks(digest, CHUNK_SIZE):
        data += chunk
        if len(data) > limits.max_manifest_bytes:
            break  # parse_manifest names the limit
    return {f.sha256: f.size for f in parse_manifest(bytes(data), limits).files}


class VerifyingWriter:
    """What every store's writer checks: the bytes received are the announced size and digest.

    Subclasses call ``_accept`` with each chunk before storing it and ``_verify`` before
    making the bundle visible; both abort the upload (``abort``) on a violation.
    """

    def __init__(self, digest: str, size: int) -> None:
        self._digest = digest
        self._size = size
        self._hash = hashlib.sha256()
        self._written = 0
        self._done = False

    def abort(self) -> None:
        raise NotImplementedError

    def _accept(self, chunk: bytes) -> None:
        if self._done:
            raise BundleError("bundle writer already closed")
        self._written += len(chunk)
        if self._written > self._size:
            self.abort()
            raise BundleError(f"bundle {self._digest[:12]} is larger than its announced {self._size} bytes")
        self._hash.update(chunk)

    def _verify(self) -> None:
        if self._done:
            raise BundleError("bundle writer already closed")
        if self._written != self._size:
            self.abort()
            raise BundleError(
                f"bundle {self._digest[:12]} is incomplete: received {self._written} of {self._size} announced bytes"
            )
        actual = self._hash.hexdigest()
        if actual != self._digest:
            self.abort()
            raise BundleError(f"bundle digest mismatch: announced {self._digest}, received data hashes to {actual}")
