"""Bundles on a worker: the digest checked, then a safe extraction into a fresh folder, in bounded memory.

Synchronous and possibly long (a large bundle): workers call these through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import shutil
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from vastrpc._errors import BundleError

__all__ = ["MAX_BUNDLE_FILE_BYTES", "safe_extract", "verify_digest"]

_GZIP_MAGIC = b"\x1f\x8b"
# The most file bytes a bundle may hold (safe_extract's max_total_bytes).
MAX_BUNDLE_FILE_BYTES = 8 << 30
# Reads of the tar stream, inflated or not, are at most this large.
_READ_SIZE = 1 << 20
# A PAX or GNU long-name header is read into memory whole: no bigger than this.
_MAX_EXTENDED_HEADER = 1 << 20
# What may follow the archive's last member: its end blocks and a writer's padding.
_MAX_TRAILER = 1 << 20
# What validation hands to writing: by a member's position in the archive, its clean path.
_Plan = dict[int, str]
_EXTENDED_TYPES = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
)


def verify_digest(data: bytes, expected: str) -> None:
    """Check that ``data`` hashes to ``expected``.

    Args:
        data: The bundle bytes.
        expected: The hex SHA-256 the bundle was registered with.

    Raises:
        BundleError: The digests differ.
    """
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.strip().lower():
        raise BundleError(
            f"bundle digest mismatch: expected {expected}, got {actual} "
            f"({len(data)} bytes); the bundle was corrupted or replaced in transit: deploy it again"
        )


def safe_extract(
    data: bytes,
    dest: Path,
    *,
    max_total_bytes: int = MAX_BUNDLE_FILE_BYTES,
    max_members: int = 100_000,
    max_path_len: int = 4096,
) -> list[str]:
    """Extract a bundle (plain tar, or gzip-compressed tar) into a fresh directory.

    Every member is validated before anything is written: absolute paths, ``..``
    components, links of any kind (symbolic and hard), devices, FIFOs, sparse files and
    other special members are rejected, as are duplicate paths; the member count, total
    size and path length limits are checked over the whole archive first. Files
    get ``mode & 0o755`` plus owner read/write (setuid, setgid, sticky and
    group/world write bits dropped); folders get 0o755, and ``dest`` itself 0o700.

    The archive is read twice as a stream (validate, then write), never inflated whole:
    memory stays bounded by a constant (1 MiB read buffers, a 1 MiB cap on each extended
    header) whatever a compressed bundle claims to expand to.

    Args:
        data: The archive bytes.
        dest: The directory to create; it must not exist yet (its parents may).
        max_total_bytes: Largest allowed sum of file sizes.
        max_members: Largest allowed number of members.
        max_path_len: Longest allowed member path, in characters.

    Returns:
        The extracted files' paths relative to ``dest`` (POSIX form), sorted.

    Raises:
        BundleError: ``dest`` exists, the archive is unreadable, a member is unsafe
            or a limit is exceeded. Nothing is left at ``dest`` then.
    """
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise BundleError(f"extraction folder {dest} already exists: extract each bundle into a fresh folder")
    # Files plus, per member, a header, a PAX header with path and link name, and padding.
    bound = max_total_bytes + max_members * (4 * 512 + 2 * max_path_len) + 2 * 10240
    try:
        with _open_stream(data, bound) as (tar, source):
            plan = _validate_members(tar, max_total_bytes, max_members, max_path_len)
            _check_trailer(tar, source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(dest, 0o700)
        try:
            os.chmod(dest, 0o700)  # mkdir's mode is masked by the umask
            with _open_stream(data, bound) as (tar, _):
                return _write_members(tar, plan, dest)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    except BundleError:
        raise
    except OSError as exc:
        raise BundleError(f"bundle could not be extracted into {dest}: {exc}") from exc
    except (tarfile.TarError, EOFError, zlib.error, ValueError) as exc:
        raise BundleError(f"bundle could not be read: {exc}; the archive is corrupt: deploy it again") from exc


class _CappedStream:
    """The bundle's tar stream (inflated as it is read when gzip), refusing to go past ``bound`` bytes."""

    def __init__(self, data: bytes, bound: int) -> None:
        raw = io.BytesIO(data)
        # GzipFile inflates with a max_length per read: a read of n bytes holds about n bytes.
        self._source: io.BufferedIOBase = gzip.GzipFile(fileobj=raw, mode="rb") if data[:2] == _GZIP_MAGIC else raw
        self.bound = bound
        self.position = 0

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (never more than the read buffer, whatever is asked)."""
        chunk = self._source.read(min(size, _READ_SIZE) if size >= 0 else _READ_SIZE)
        self.position += len(chunk)
        if self.position > self.bound:
            raise BundleError(
                f"compressed bundle expands past {self.bound} bytes, more than its limits allow "
                f"(at most {MAX_BUNDLE_FILE_BYTES >> 30} GiB of files, each member's headers and padding): "
                "it is corrupt or a compression bomb; deploy it again"
            )
        return chunk


class _BoundedTarInfo(tarfile.TarInfo):
    """A tar header that refuses to read an oversized extended header or a sparse map into memory."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED_TYPES and self.size > _MAX_EXTENDED_HEADER:
            raise BundleError(
                f"bundle has an extended tar header of {self.size} bytes, over the limit of {_MAX_EXTENDED_HEADER}: "
                "it is corrupt or built to exhaust memory"
            )
        if self.type == tarfile.GNUTYPE_SPARSE:
            self._refuse_sparse()
        return super()._proc_member(archive)  # type: ignore[misc]

    def _refuse_sparse(self, *_args: object) -> None:
        raise BundleError(f"bundle member {self.name!r} is a sparse file; bundles hold regular files and folders only")

    # tarfile reads the sparse maps of PAX sparse members through these: refused before any is read.
    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_sparse


@contextlib.contextmanager
def _open_stream(data: bytes, bound: int) -> Iterator[tuple[tarfile.TarFile, _CappedStream]]:
    """The archive as a forward-only tar stream over a capped reader, and that reader."""
    source = _CappedStream(data, bound)
    with tarfile.open(fileobj=source, mode="r|", tarinfo=_BoundedTarInfo, bufsize=_READ_SIZE) as tar:  # type: ignore[call-overload]
        yield tar, source


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The stream's members in order, one at a time (none kept: memory stays flat however many)."""
    while (member := tar.next()) is not None:
        tar.members.clear()  # type: ignore[attr-defined]  # kept by tarfile, undeclared in its stubs
        yield member


def _check_trailer(tar: tarfile.TarFile, source: _CappedStream) -> None:
    """Read what follows the archive's last member: end blocks and padding only, and not much of it."""
    end = tar.offset
    while source.read(_READ_SIZE):
        if source.position - end > _MAX_TRAILER:
            raise BundleError(
                f"compressed bundle expands past the end of its tar archive by more than {_MAX_TRAILER} bytes: "
                "it is corrupt or a compression bomb; deploy it again"
            )


def _clean_member_path(name: str, max_path_len: int) -> str:
    """The member's path as safe relative POSIX text, or BundleError."""
    if len(name) > max_path_len:
        raise BundleError(f"bundle member path is {len(name)} characters long, over the limit of {max_path_len}")
    if "\x00" in name:
        raise BundleError(f"bundle member {name!r} has a NUL character in its path")
    if name.startswith("/") or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        raise BundleError(f"bundle member {name!r} has an absolute path; bundles hold relative paths only")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BundleError(f"bundle member {name!r} has a '..' component; bundles must stay inside their folder")
    return "/".join(parts)


def _validate_members(tar: tarfile.TarFile, max_total_bytes: int, max_members: int, max_path_len: int) -> _Plan:
    """Check every member up front; returns, by position in the archive, the clean path of each one to write."""
    plan: _Plan = {}
    seen: set[str] = set()
    files: set[str] = set()
    total = 0
    for index, member in enumerate(_members(tar)):  # one header at a time: a huge count is caught early
        if index >= max_members:
            raise BundleError(f"bundle has more than {max_members} members: it is over the member limit")
        path = _clean_member_path(member.name, max_path_len)
        if member.issym() or member.islnk():
            raise BundleError(
                f"bundle member {member.name!r} is a link (to {member.linkname!r}); bundles may hold no links"
            )
        if member.isdir():
            if path:
                seen.add(path)
                plan[index] = path
            continue
        if not member.isreg() or member.issparse():
            raise BundleError(
                f"bundle member {member.name!r} is a special file (type {member.type!r}); "
                "bundles hold regular files and folders only"
            )
        if not path:
            raise BundleError(f"bundle member {member.name!r} is a file without a name")
        if path in files:
            raise BundleError(f"bundle member {path!r} appears twice in the archive")
        total += member.size
        if total > max_total_bytes:
            raise BundleError(f"bundle holds more than {max_total_bytes} bytes of files: it is over the size limit")
        files.add(path)
        seen.add(path)
        plan[index] = path
    # A path both a file and a folder (or a folder of a file) cannot be laid out safely.
    for path in seen:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in files:
                raise BundleError(f"bundle member {path!r} lies under {'/'.join(parts[:i])!r}, which is a file")
    return plan


def _write_members(tar: tarfile.TarFile, plan: _Plan, dest: Path) -> list[str]:
    """Write the planned members, reading the same archive again from its start."""
    made: set[str] = set()

    def make_dirs(rel: str) -> None:
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub in made:
                continue
            full = dest / sub
            if not full.is_dir():
                os.mkdir(full, 0o700)
            os.chmod(full, 0o755)  # explicit: mkdir's mode is masked by the umask
            made.add(sub)

    written: list[str] = []
    for index, member in enumerate(_members(tar)):
        path = plan.get(index)
        if path is None:
            continue
        if member.isdir():
            make_dirs(path)
            continue
        parent, _, _ = path.rpartition("/")
        if parent:
            make_dirs(parent)
        source = tar.extractfile(member)
        if source is None:  # cannot happen for a regular member; be explicit anyway
            raise BundleError(f"bundle member {path!r} has no data")
        # O_EXCL | O_NOFOLLOW: never write through anything already there.
        fd = os.open(dest / path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, _READ_SIZE)
            if out.tell() != member.size:
                raise BundleError(f"bundle member {path!r} is truncated: the archive is corrupt")
            os.fchmod(out.fileno(), (member.mode & 0o755) | 0o600)
        written.append(path)
    return sorted(written)
