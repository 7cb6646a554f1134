"""The local bundle store: bundles as files in a directory (the embedded default), each digest verified."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from vastrpc._errors import BundleError, NotFoundError
from vastrpc._files import private_folder
from vastrpc.config import ControlConfig
from vastrpc.control.bundles.base import VerifyingWriter, check_digest, is_digest

__all__ = ["LocalBlobStore"]


def _load_syncfs() -> Callable[[int], int] | None:
    """Linux's ``syncfs`` (one filesystem), or None where the C library lacks it (``os.sync`` then)."""
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_written = itertools.count()


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class _LocalWriter(VerifyingWriter):
    """Writes to a temporary file next to the bundles; renames it into place once verified.

    Plain ``os.write`` calls on the file's descriptor, no buffered file object: a bundle's small
    files are written in one call each.
    """

    def __init__(self, root: Path | str, digest: str, size: int, sync: bool = True) -> None:
        super().__init__(digest, size)
        self._sync = sync
        # Plain strings, not Paths: a batch of small files spends more on pathlib than on them.
        folder = os.path.join(root, "")
        self._final = folder + digest
        # A name no other writer has (O_EXCL: this process's id and count, else a random one),
        # swept at start like mkstemp's if left by a crash.
        self._tmp = f"{folder}.{digest[:16]}.{os.getpid()}-{next(_written)}.part"
        try:
            self._fd = os.open(self._tmp, _CREATE, 0o600)
        except FileExistsError:  # left by an earlier process with the same id
            self._tmp = f"{folder}.{digest[:16]}.{secrets.token_hex(8)}.part"
            self._fd = os.open(self._tmp, _CREATE, 0o600)

    def write(self, chunk: bytes) -> None:
        self._accept(chunk)
        with memoryview(chunk) as view:
            written = os.write(self._fd, view)
            while written < len(view):
                written += os.write(self._fd, view[written:])

    def commit(self) -> bool:
        self._verify()
        if self._sync:
            os.fsync(self._fd)
        os.close(self._fd)
        self._done = True
        if os.path.exists(self._final):
            # A concurrent upload of the same content won; identical bytes, keep theirs.
            _unlink(self._tmp)
            return False
        os.replace(self._tmp, self._final)
        return True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        os.close(self._fd)
        _unlink(self._tmp)

    def __enter__(self) -> _LocalWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Whatever left the block early (an error, a cancelled upload) leaves nothing behind.
        self.abort()


class LocalBlobStore:
    """Bundles as files ``<root>/<digest>``; partial uploads are ``<root>/.*.part`` until verified."""

    @classmethod
    def from_config(cls, config: ControlConfig) -> LocalBlobStore:
        """The store in ``bundles/`` under the service's home."""
        return cls(Path(config.home) / "bundles")

    def __init__(self, root: Path) -> None:
        """Use (and create) ``root``; leftovers of uploads interrupted by a crash are removed."""
        self.root = Path(root)
        self._folder = str(self.root)
        private_folder(self.root)  # the bundles are the deployers' code: this user's alone
        for stale in self.root.glob(".*.part"):
            stale.unlink(missing_ok=True)

    def path(self, digest: str) -> Path:
        """Where the bundle with that digest is (or would be) stored."""
        return self.root / check_digest(digest)

    def has(self, digest: str) -> bool:
        """Whether a bundle with that digest is stored."""
        return is_digest(digest) and os.path.isfile(os.path.join(self._folder, digest))

    def size(self, digest: str) -> int:
        """The stored bundle's size; NotFoundError when missing."""
        try:
            return self.path(digest).stat().st_size
        except (FileNotFoundError, BundleError):
            raise NotFoundError(f"no bundle with digest {digest[:80]!r} is stored") from None

    def open_writer(self, digest: str, size: int, *, sync: bool = True) -> _LocalWriter:
        """Start storing a bundle that claims ``digest`` and ``size`` (``sync`` False: see ``sync``)."""
        if size < 0:
            raise BundleError(f"invalid bundle size {size}")
        return _LocalWriter(self._folder, check_digest(digest), size, sync)

    def sync(self) -> None:
        """Flush the store's filesystem once (``syncfs``): cheaper than an fsync per file of a batch."""
        fd = os.open(self.root, os.O_RDONLY)
        try:
            if _syncfs is None or _syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)

    def read_chunks(self, digest: str, chunk_size: int) -> Iterator[bytes]:
        """The stored bundle in chunks; NotFoundError when missing (raised before the first chunk)."""
        try:
            handle = self.path(digest).open("rb")
        except (FileNotFoundError, BundleError):
            raise NotFoundError(f"no bundle with digest {digest[:80]!r} is stored") from None
        return self._chunks(handle, chunk_size)

    def download_url(self, digest: str) -> None:
        """None: workers stream local bundles from the control service."""
        return None

    def stored(self) -> dict[str, float]:
        """Every stored bundle: digest to the time (Unix seconds) it was stored."""
        found = {}
        for entry in os.scandir(self.root):
            # Partial uploads (.*.part) and anything else that is not a digest are not bundles.
            if not is_digest(entry.name):
                continue
            try:
                # The bundle is renamed into place after it is written, so its mtime is when
                # it was stored (give or take the upload).
                found[entry.name] = entry.stat().st_mtime
            except FileNotFoundError:
                continue  # deleted meanwhile
        return found

    def delete(self, digest: str) -> bool:
        """Remove a stored bundle; False when it was not stored."""
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    @staticmethod
    def _chunks(handle: BinaryIO, chunk_size: int) -> Iterator[bytes]:
        with handle:
            while chunk := handle.read(chunk_size):
                yield chunk
