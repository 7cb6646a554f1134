"""A host's content-addressed file cache, and a revision's folder built from it by hard links.

Each bundle file enters the cache once per host, verified against its SHA-256, and every
revision that holds it links to it: an unchanged file is never downloaded or written twice.
Synchronous and possibly long (many files): workers call these through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import logging
import os
import queue
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from vastrpc._errors import BundleError
from vastrpc._files import private_file, private_folder
from vastrpc._manifest import FileEntry, Manifest

log = logging.getLogger(__name__)

__all__ = ["CacheFiller", "FileCache", "endpoint_cache", "sweep_caches", "verify_digest"]

_COPY_SIZE = 1 << 20
# A cached file no revision folder links is removed once its links have not changed for this long.
IDLE_EVICTION = 24 * 3600.0
# Seconds between two sweeps of the other endpoints' caches on a host (``sweep_caches``).
SWEEP_INTERVAL = 3600.0
# A temporary file no write touched for this long was left by a worker that died writing it.
ABANDONED_WRITE = 3600.0
# What a cached file's link may not be made for: another filesystem, too many links, a refusal.
_LINK_ERRORS = frozenset({errno.EXDEV, errno.EMLINK, errno.EPERM, errno.EACCES, errno.ENOTSUP})
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_written = itertools.count()


def verify_digest(data: bytes, expected: str) -> None:
    """Check that ``data`` hashes to ``expected``.

    Args:
        data: The bytes received (a manifest).
        expected: The hex SHA-256 they were registered with.

    Raises:
        BundleError: The digests differ.
    """
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.strip().lower():
        raise BundleError(
            f"bundle digest mismatch: expected {expected}, got {actual} "
            f"({len(data)} bytes); the bundle was corrupted or replaced in transit: deploy it again"
        )


def _publish(tmp: str | Path, final: str | Path) -> None:
    """Give the verified temporary file ``tmp`` the cache's name ``final``, unless it is cached already.

    A cached file is never replaced: another worker of the endpoint may be linking it into a
    revision at that moment, and a link to a file whose last name a rename just took away fails
    (ENOENT). So the first copy stays (the contents are the same, both verified) and ``tmp`` goes.
    """
    try:
        os.link(tmp, final)
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno not in _LINK_ERRORS:
            raise
        os.replace(tmp, final)  # no links on this filesystem: revisions get copies, which a rename cannot fail
        return
    os.unlink(tmp)


class CacheWriter:
    """One file entering the cache: written to a temporary file, verified, then given its name (``_publish``).

    Use as a context manager: leaving it without ``commit()`` discards what was written.
    """

    def __init__(self, cache: FileCache, sha256: str, size: int) -> None:
        self._cache = cache
        self._sha256 = sha256
        self._size = size
        self._hash = hashlib.sha256()
        self._written = 0
        fd, name = tempfile.mkstemp(prefix=f".{sha256[:16]}.", suffix=".part", dir=cache.root)
        self._tmp = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._done = False

    def write(self, chunk: bytes) -> None:
        """Append a chunk; BundleError past the file's size."""
        self._written += len(chunk)
        if self._written > self._size:
            raise BundleError(f"file {self._sha256[:12]} is larger than its {self._size} bytes in the manifest")
        self._hash.update(chunk)
        self._file.write(chunk)

    def commit(self) -> None:
        """Check size and SHA-256, and make the file the cache's (read-only: revisions link to it)."""
        actual = self._hash.hexdigest()
        if self._written != self._size or actual != self._sha256:
            raise BundleError(
                f"bundle file {self._sha256} does not match its manifest: received {self._written} bytes of "
                f"{self._size} hashing to {actual}; the bundle store's copy is corrupt: deploy again"
            )
        os.fchmod(self._file.fileno(), 0o444)
        self._file.close()
        _publish(self._tmp, self._cache.path(self._sha256, 0o644))
        self._done = True

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._done:
            self._file.close()
            self._tmp.unlink(missing_ok=True)


class CacheFiller:
    """Files entering the cache from a stream of chunks, written and verified by a thread of its own.

    The event loop hands over each file's start and chunks without waiting (``start``,
    ``chunk``), then ``end`` or ``abort``; ``run`` (in a thread) writes them, each file
    verified before it enters the cache, and raises the first error.
    """

    def __init__(self, cache: FileCache) -> None:
        self.cache = cache
        self.queue: queue.SimpleQueue[tuple[str, int, bytes | list[tuple[str, int, bytes]] | None]] = (
            queue.SimpleQueue()
        )
        self.enqueued = 0
        self.consumed = 0

    @property
    def backlog(self) -> int:
        """Bytes handed over and not written yet."""
        return self.enqueued - self.consumed

    def start(self, sha256: str, size: int) -> None:
        self.queue.put((sha256, size, None))

    def chunk(self, data: bytes) -> None:
        self.enqueued += len(data)
        self.queue.put(("", 0, data))

    def whole(self, files: list[tuple[str, int, bytes]]) -> None:
        """Whole files (sha256, size, content): each is verified as it enters the cache."""
        size = sum(len(content) for _, _, content in files)
        self.enqueued += size
        self.queue.put(("*", size, files))

    def end(self, *, commit: bool = True) -> None:
        self.queue.put(("", 1 if commit else 0, None))

    def run(self) -> None:
        """Write until ``end`` (the last file committed) or an abort; a file left unfinished leaves nothing."""
        writer: CacheWriter | None = None
        try:
            while True:
                sha256, size, data = self.queue.get()
                if isinstance(data, list):
                    if writer is not None:  # whole files end a file sent in chunks
                        writer.commit()
                        writer.__exit__(None, None, None)
                        writer = None
                    for digest, length, content in data:
                        self.cache.put(digest, content, length)
                    self.consumed += size
                    continue
                if data is not None:
                    if writer is not None:
                        writer.write(data)
                    self.consumed += len(data)
                    continue
                if writer is not None and (sha256 or size):
                    writer.commit()
                    writer.__exit__(None, None, None)
                    writer = None
                if not sha256:
                    return
                writer = self.cache.writer(sha256, size)
        finally:
            if writer is not None:
                writer.__exit__(None, None, None)


def endpoint_cache(root: Path, endpoint_id: str, idle: float = IDLE_EVICTION) -> FileCache:
    """The file cache of one endpoint's workers on this host: ``root/<endpoint_id>``.

    One cache per endpoint, not per host: a revision's folder holds hard links to the cached
    files, which code that may write them (a container's root) could change in place, so a
    file is shared only among the revisions of one deployment, never with another one's.
    The other endpoints' caches are swept apart (``sweep_caches``), off a worker's start.

    Raises:
        BundleError: ``endpoint_id`` is not a plain name.
    """
    if not endpoint_id or endpoint_id.startswith(".") or not all(c.isalnum() or c in "-_." for c in endpoint_id):
        raise BundleError(f"endpoint id {endpoint_id!r} cannot name a cache folder")
    root = private_folder(Path(root))
    mine = private_folder(root / endpoint_id)
    os.utime(mine)  # in use: no other agent's sweep removes it, empty or not
    return FileCache(mine, idle)


def sweep_caches(root: Path, keep: str, idle: float = IDLE_EVICTION, every: float = SWEEP_INTERVAL) -> bool:
    """Sweep the idle files of every endpoint's cache but ``keep``'s, and their folders once empty.

    A host keeps the caches of every endpoint that ran on it within ``idle``: tens of thousands
    of files on a busy one, whose sweep (a ``stat`` each) took 0.3 s, on the start of every
    worker while it ran there. It runs at most once per ``every`` seconds on a host (the
    mtime of ``root/.swept``, set before sweeping, so agents starting together do not all
    sweep), and the agent runs it in the background. Returns whether it swept.
    """
    try:
        root = private_folder(Path(root))
        marker = root / ".swept"
        now = time.time()
        try:
            if now - marker.stat().st_mtime < every:
                return False
        except FileNotFoundError:
            pass
        private_file(marker)
        os.utime(marker, (now, now))
        cutoff = now - idle
        for folder in root.iterdir():
            if folder.is_dir() and folder.name != keep and not folder.name.startswith("."):
                FileCache(folder, idle)
                with contextlib.suppress(OSError):
                    if folder.stat().st_mtime <= cutoff:
                        folder.rmdir()  # only when the sweep left it empty
    except OSError as exc:  # a sweep is housekeeping: it never fails a worker
        log.warning("file cache: could not sweep %s: %s", root, exc)
        return False
    return True


class FileCache:
    """Files by SHA-256 in ``root`` (private to this user): ``<sha256>`` read-only, ``<sha256>.x`` executable.

    Args:
        root: The cache folder, created 0700; leftovers of interrupted writes are removed, and
            so are files that no revision folder links (one link, the cache's own) and whose
            links last changed ``idle`` seconds ago or more (a link made or removed sets the ctime).
        idle: See ``root``; None keeps every file.
    """

    def __init__(self, root: Path, idle: float | None = IDLE_EVICTION) -> None:
        self.root = private_folder(Path(root))
        self._folder = os.path.join(self.root, "")
        # Only writes long abandoned: another worker of the endpoint may be writing the rest now.
        abandoned = time.time() - ABANDONED_WRITE
        for stale in self.root.glob(".*.part"):
            try:
                if stale.stat().st_mtime <= abandoned:
                    stale.unlink()
            except FileNotFoundError:
                continue
        if idle is not None:
            self.evict(idle)

    def evict(self, idle: float) -> int:
        """Remove the files no revision folder links, their links unchanged for ``idle`` seconds; how many."""
        cutoff = time.time() - idle
        removed = 0
        with os.scandir(self.root) as entries:
            for found in entries:
                try:
                    st = found.stat(follow_symlinks=False)
                    if not found.name.startswith(".") and st.st_nlink == 1 and st.st_ctime <= cutoff:
                        os.unlink(found.path)
                        removed += 1
                except FileNotFoundError:
                    continue  # removed meanwhile (another worker of this host)
        return removed

    def path(self, sha256: str, mode: int) -> Path:
        """Where the file with that content and mode is cached."""
        return self.root / (f"{sha256}.x" if mode & 0o100 else sha256)

    def missing(self, manifest: Manifest) -> list[FileEntry]:
        """One entry for each distinct content of ``manifest`` the cache lacks."""
        return [f for f in manifest.by_digest().values() if not self.path(f.sha256, 0o644).is_file()]

    def writer(self, sha256: str, size: int) -> CacheWriter:
        """Start adding the file with that SHA-256 and size (see ``CacheWriter``)."""
        return CacheWriter(self, sha256, size)

    def put(self, sha256: str, content: bytes, size: int) -> None:
        """Add a whole file, checked against ``sha256`` and ``size`` before anything is written (else BundleError)."""
        actual = hashlib.sha256(content).hexdigest()
        if len(content) != size or actual != sha256:
            raise BundleError(
                f"bundle file {sha256} does not match its manifest: received {len(content)} bytes of "
                f"{size} hashing to {actual}; the bundle store's copy is corrupt: deploy again"
            )
        # A temporary file (O_EXCL: this process's id and count, else a random name), renamed
        # into place once written whole. Plain strings: pathlib costs more than a small file.
        folder = self._folder
        tmp = f"{folder}.{sha256[:16]}.{os.getpid()}-{next(_written)}.part"
        try:
            fd = os.open(tmp, _CREATE, 0o600)
        except FileExistsError:  # left by an earlier process with the same id
            tmp = f"{folder}.{sha256[:16]}.{os.urandom(8).hex()}.part"
            fd = os.open(tmp, _CREATE, 0o600)
        try:
            with memoryview(content) as view:
                written = 0
                while written < size:
                    written += os.write(fd, view[written:])
            os.fchmod(fd, 0o444)  # read-only: revisions link to it
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        _publish(tmp, folder + sha256)

    def add(self, sha256: str, chunks: Iterable[bytes], size: int) -> None:
        """Add a file from its chunks, verified against ``sha256`` and ``size`` (BundleError if not)."""
        with self.writer(sha256, size) as out:
            for chunk in chunks:
                out.write(chunk)
            out.commit()

    def materialise(self, manifest: Manifest, dest: Path) -> list[str]:
        """Lay out ``manifest``'s files in the fresh folder ``dest``, each a hard link to the cache.

        A file is copied instead where a link cannot be made (``dest`` on another filesystem,
        too many links). The manifest was checked when parsed (``vastrpc._manifest``): paths
        stay inside ``dest``, none twice, none through a file. Folders get 0o755, ``dest``
        itself 0o700; files are read-only (0o444, or 0o555 for executables): they are the
        cache's, shared by every revision that holds them.

        Args:
            manifest: The bundle's manifest; every file it names must be in the cache.
            dest: The folder to create; it must not exist yet (its parents may).

        Returns:
            The files' paths relative to ``dest``, sorted.

        Raises:
            BundleError: ``dest`` exists, a file is not in the cache, or writing failed.
                Nothing is left at ``dest`` then.
        """
        dest = Path(dest)
        if dest.exists() or dest.is_symlink():
            raise BundleError(f"revision folder {dest} already exists: lay out each bundle in a fresh folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(dest, 0o700)
        try:
            os.chmod(dest, 0o700)  # mkdir's mode is masked by the umask
            made: set[str] = set()
            for entry in manifest.files:
                parent, _, _ = entry.path.rpartition("/")
                if parent:
                    self._make_dirs(dest, parent, made)
                self._place(entry, dest / entry.path)
        except BaseException as exc:
            shutil.rmtree(dest, ignore_errors=True)
            if isinstance(exc, OSError):
                raise BundleError(f"bundle could not be laid out in {dest}: {exc}") from exc
            raise
        return [f.path for f in manifest.files]

    @staticmethod
    def _make_dirs(dest: Path, rel: str, made: set[str]) -> None:
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub in made:
                continue
            os.mkdir(dest / sub, 0o700)
            os.chmod(dest / sub, 0o755)  # explicit: mkdir's mode is masked by the umask
            made.add(sub)

    def _source(self, entry: FileEntry) -> Path:
        """The cached file to link ``entry`` to, its executable twin made once from the plain one."""
        plain = self.path(entry.sha256, 0o644)
        try:
            size = plain.stat().st_size
        except FileNotFoundError:
            raise BundleError(f"bundle file {entry.path!r} (sha256 {entry.sha256[:12]}) is not in the cache") from None
        if size != entry.size:
            raise BundleError(
                f"cached file {plain} is {size} bytes, its manifest says {entry.size}: remove it and restart the worker"
            )
        if not entry.mode & 0o100:
            return plain
        twin = self.path(entry.sha256, entry.mode)
        if not twin.is_file():
            fd, name = tempfile.mkstemp(prefix=f".{entry.sha256[:16]}.", suffix=".part", dir=self.root)
            with os.fdopen(fd, "wb") as out, open(plain, "rb") as src:
                shutil.copyfileobj(src, out, _COPY_SIZE)
                os.fchmod(out.fileno(), 0o555)
            _publish(name, twin)
        return twin

    def _place(self, entry: FileEntry, target: Path) -> None:
        source = self._source(entry)
        try:
            os.link(source, target, follow_symlinks=False)
            return
        except OSError as exc:
            if exc.errno not in _LINK_ERRORS:
                raise
        # O_EXCL | O_NOFOLLOW: never write through anything already there.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, _COPY_SIZE)
            os.fchmod(out.fileno(), 0o555 if entry.mode & 0o100 else 0o444)
