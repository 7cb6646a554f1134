"""The bundle manifest: a deployment's files by path, mode, size and SHA-256, in one canonical encoding.

A bundle is its manifest: the bundle digest is the SHA-256 of the manifest's bytes, and
each file is stored (and fetched, and cached) once by its own SHA-256. The client encodes
it (``encode_manifest``); the control service and the workers read it with
``parse_manifest``, which checks every safety rule and limit before anything is fetched
or written: no absolute paths, ``..``, duplicates or paths through a file, regular files
only (mode 0o644 or 0o755), and bounded total size, file count and path length.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from vastrpc._errors import BundleError

__all__ = [
    "MANIFEST_FORMAT",
    "MAX_BUNDLE_FILE_BYTES",
    "FileEntry",
    "Manifest",
    "ManifestLimits",
    "PACK_BYTES",
    "PACK_FILE_BYTES",
    "encode_manifest",
    "pack_files",
    "parse_manifest",
]

MANIFEST_FORMAT = "vastrpc-manifest/1"
# The most file bytes a bundle may hold (ManifestLimits.max_total_bytes).
MAX_BUNDLE_FILE_BYTES = 8 << 30
# The modes a file may have: executable by its owner or not (group and world read).
_MODES = frozenset({0o644, 0o755})
_DIGEST = re.compile(r"[0-9a-f]{64}")
# Bundle files up to this size travel whole, several to a message of up to PACK_BYTES
# (UploadFiles, DownloadFiles): a gRPC message per file costs more than a small file's bytes.
# Larger files travel as a header and 1 MiB chunks.
PACK_FILE_BYTES = 1 << 20
PACK_BYTES = 4 << 20

_T = TypeVar("_T")


@dataclass(frozen=True)
class ManifestLimits:
    """What a manifest may declare; each is checked before a file is fetched or written.

    Attributes:
        max_total_bytes: Largest allowed sum of file sizes.
        max_files: Largest allowed number of files.
        max_path_len: Longest allowed file path, in characters.
        max_manifest_bytes: Largest allowed manifest, in bytes (it is read into memory whole).
    """

    max_total_bytes: int = MAX_BUNDLE_FILE_BYTES
    max_files: int = 100_000
    max_path_len: int = 4096
    max_manifest_bytes: int = 64 << 20


@dataclass(frozen=True)
class FileEntry:
    """One file of a bundle.

    Attributes:
        path: Relative POSIX path in the bundle folder.
        mode: 0o644, or 0o755 for a file executable by its owner.
        size: Length in bytes.
        sha256: Hex SHA-256 of the content: the name it is stored, fetched and cached by.
    """

    path: str
    mode: int
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest.

    Attributes:
        files: The files, sorted by path.
        data: The canonical encoding (what ``digest`` hashes).
        digest: Hex SHA-256 of ``data``: the bundle digest.
    """

    files: tuple[FileEntry, ...]
    data: bytes
    digest: str

    @property
    def total_size(self) -> int:
        """The sum of the files' sizes."""
        return sum(f.size for f in self.files)

    def by_digest(self) -> dict[str, FileEntry]:
        """One entry per distinct content, by its SHA-256 (files with the same content share one)."""
        return {f.sha256: f for f in self.files}


def encode_manifest(files: Iterable[FileEntry]) -> Manifest:
    """The canonical manifest of ``files`` (sorted by path; the same files give the same bytes).

    Raises:
        BundleError: A file breaks a rule of the format (see ``parse_manifest``).
    """
    entries = sorted(files, key=lambda f: f.path)
    data = _encode(entries)
    return parse_manifest(data)


def _encode(entries: list[FileEntry]) -> bytes:
    document = {"files": [[f.path, f.mode, f.size, f.sha256] for f in entries], "format": MANIFEST_FORMAT}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode()


def parse_manifest(data: bytes, limits: ManifestLimits = ManifestLimits()) -> Manifest:
    """Read and check a manifest: its encoding, every path and mode, and the limits.

    Memory stays bounded by ``limits.max_manifest_bytes`` whatever sizes or counts the
    manifest declares: nothing it names is read here.

    Args:
        data: The manifest bytes.
        limits: What it may declare.

    Returns:
        The manifest, its digest the SHA-256 of ``data``.

    Raises:
        BundleError: The manifest is over a limit (named in the message), malformed, not in
            its canonical encoding, or names an unsafe path or a file that is not regular.
    """
    if len(data) > limits.max_manifest_bytes:
        raise BundleError(
            f"bundle manifest is {len(data)} bytes, over the limit of {limits.max_manifest_bytes} bytes: "
            "it names too many files or too long paths; bundle fewer files"
        )
    try:
        document = json.loads(data)
        if document.get("format") != MANIFEST_FORMAT:
            raise BundleError(f"bundle manifest has format {document.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        rows = document["files"]
        if not isinstance(rows, list):
            raise TypeError("files is not a list")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BundleError(
            f"bundle is not a vastrpc manifest ({exc}); it is corrupt or from an older vastrpc: deploy it again"
        ) from None
    if len(rows) > limits.max_files:
        raise BundleError(f"bundle has {len(rows)} files, more than {limits.max_files}: it is over the file limit")
    files: list[FileEntry] = []
    names: set[str] = set()
    total = 0
    previous = ""
    for row in rows:
        entry = _entry(row, limits.max_path_len)
        if entry.path in names:
            raise BundleError(f"bundle file {entry.path!r} appears twice in the manifest")
        if files and entry.path < previous:
            raise BundleError("bundle manifest is not sorted by path: it is not in its canonical encoding")
        total += entry.size
        if total > limits.max_total_bytes:
            raise BundleError(
                f"bundle holds more than {limits.max_total_bytes} bytes of files: it is over the size limit"
            )
        names.add(entry.path)
        files.append(entry)
        previous = entry.path
    for entry in files:
        parts = entry.path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in names:
                raise BundleError(f"bundle file {entry.path!r} lies under {parent!r}, which is a file")
    if _encode(files) != data:
        raise BundleError("bundle manifest is not in its canonical encoding: it was altered; deploy it again")
    return Manifest(files=tuple(files), data=bytes(data), digest=hashlib.sha256(data).hexdigest())


def _entry(row: object, max_path_len: int) -> FileEntry:
    """One manifest row ``[path, mode, size, sha256]`` checked, or BundleError."""
    if not (isinstance(row, list) and len(row) == 4):
        raise BundleError(f"bundle manifest row {str(row)[:200]!r} is not [path, mode, size, sha256]")
    path, mode, size, sha = row
    if not isinstance(path, str):
        raise BundleError(f"bundle manifest path {str(path)[:200]!r} is not text")
    check_path(path, max_path_len)
    if type(mode) is not int or mode not in _MODES:
        raise BundleError(
            f"bundle file {path!r} has mode {mode!r}: bundles hold regular files of mode 0o644 or 0o755 only "
            "(no links, devices or folders)"
        )
    if type(size) is not int or size < 0:
        raise BundleError(f"bundle file {path!r} has an invalid size {size!r}")
    if not (isinstance(sha, str) and _DIGEST.fullmatch(sha)):
        raise BundleError(f"bundle file {path!r} has an invalid sha256 {str(sha)[:80]!r}")
    return FileEntry(path, mode, size, sha)


def check_path(path: str, max_path_len: int) -> None:
    """Refuse a path that is not a clean relative POSIX path inside the bundle folder (BundleError)."""
    if len(path) > max_path_len:
        raise BundleError(f"bundle file path is {len(path)} characters long, over the limit of {max_path_len}")
    if "\x00" in path:
        raise BundleError(f"bundle file {path!r} has a NUL character in its path")
    if path.startswith("/") or "\\" in path or (len(path) > 1 and path[1] == ":"):
        raise BundleError(f"bundle file {path!r} has an absolute path; bundles hold relative paths only")
    parts = path.split("/")
    if ".." in parts:
        raise BundleError(f"bundle file {path!r} has a '..' component; bundles must stay inside their folder")
    if any(p in ("", ".") for p in parts):
        raise BundleError(f"bundle file {path!r} has an empty or '.' component; write its clean path")


def pack_files(files: Iterable[_T], size: Callable[[_T], int]) -> Iterator[list[_T] | _T]:
    """``files`` in order, small ones (``size`` up to ``PACK_FILE_BYTES``) in lists of up to ``PACK_BYTES``.

    A list travels as one message of whole files; a single file (a large one) as its chunks.
    """
    batch: list[_T] = []
    held = 0
    for f in files:
        n = size(f)
        if batch and (n > PACK_FILE_BYTES or held + n > PACK_BYTES):
            yield batch
            batch, held = [], 0
        if n > PACK_FILE_BYTES:
            yield f
            continue
        batch.append(f)
        held += n
    if batch:
        yield batch
