"""A persistent stat cache: an unchanged project is packaged (its digest known) without reading a file."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vastrpc._errors import BundleError
from vastrpc.deploy.bundle import Bundle, Observer, Reuse, build_bundle, cached_bundle_from

__all__ = ["cache_path", "cached_bundle"]

log = logging.getLogger("vastrpc.deploy")

# Bump when what build_bundle discovers or how it writes the manifest changes, so that
# caches written by an older vastrpc are rebuilt rather than trusted.
CACHE_VERSION = 3

# A file modified this close to (or after) the moment a build started may be
# modified again later within the same timestamp tick, leaving its stat data
# unchanged (git's "racily clean" entries). Linux stamps files from a coarse
# clock that lags the real one by at most one tick (<= 10 ms); filesystems that
# stamp whole seconds (FAT: 2 s) get a wider window. A build that saw such a
# path is not cached: the next one rebuilds, and by then the path is old enough.
_RACY_NS = 50_000_000
_RACY_COARSE_NS = 2_000_000_000

# What a stat signature holds: enough that any write, chmod, rename over, or
# replacement by another file shows (ctime cannot be set back by ``touch``).
_Sig = list[int]


def cache_path(
    cache_dir: Path, module_file: Path, copies: Sequence[tuple[str, str]], project_root: Path | None
) -> Path:
    """Where the cache of one deployment's bundle lives: ``cache_dir/<sha256 of its inputs>.json``."""
    return Path(cache_dir) / f"{hashlib.sha256(_inputs_text(module_file, copies, project_root)).hexdigest()}.json"


def cached_bundle(
    module_file: Path,
    *,
    copies: Sequence[tuple[str, str]] = (),
    project_root: Path | None = None,
    cache_dir: Path | None = None,
) -> Bundle:
    """The deployment's bundle, from the stat cache when no file it depends on changed.

    On a hit no file is opened: every path recorded by the last build is stat'ed and
    compared (files read, folders listed, paths whose existence or type was tested),
    and the manifest recorded then is returned (files are read only to upload them). Otherwise the bundle is built with
    :func:`build_bundle` and the cache rewritten (atomically: temp file and rename).
    A missing, corrupt or foreign cache file just means a rebuild; a cache that
    cannot be written is skipped.

    Args:
        module_file: The deployment's Python file.
        copies: ``Image.copy`` pairs, as for :func:`build_bundle`.
        project_root: As for :func:`build_bundle`.
        cache_dir: Folder of the cache files (``home/cache/bundles``); ``None`` disables the cache.

    Returns:
        The bundle; ``from_cache`` says whether it came from the cache.

    Raises:
        DefinitionError: As :func:`build_bundle`, when a rebuild is needed.
    """
    if cache_dir is None:
        return build_bundle(module_file, copies=copies, project_root=project_root)
    text = _inputs_text(module_file, copies, project_root)
    path = Path(cache_dir) / f"{hashlib.sha256(text).hexdigest()}.json"
    inputs = json.loads(text)
    hit = _load(path, inputs, module_file, project_root)
    if hit is not None:
        return hit
    recorder = _Recorder(time.time_ns())
    bundle = build_bundle(
        module_file, copies=copies, project_root=project_root, observer=recorder, reuse=_known_hashes(path, inputs)
    )
    racy = recorder.racy()
    if racy:
        log.debug("stat cache: not saved, %s changed too recently to trust its stat data", racy)
        return bundle
    record = {
        "version": CACHE_VERSION,
        "inputs": inputs,
        "resolved": _resolved(module_file, project_root),
        "manifest": bundle.data.decode(),
        "content_digest": bundle.content_digest,
        "module": bundle.module,
        "members": {arcname: str(p) for arcname, p in bundle.members.items()},
        "probes": recorder.probes,
        "stats": recorder.stats,
    }
    try:
        _write_atomic(path, json.dumps(record, separators=(",", ":")).encode())
    except OSError as exc:
        log.debug("stat cache: could not write %s: %s", path, exc)
    return bundle


def _inputs_text(module_file: Path, copies: Sequence[tuple[str, str]], project_root: Path | None) -> bytes:
    return json.dumps(
        [
            os.path.abspath(module_file),
            [[str(a), str(b)] for a, b in copies],
            project_root and os.path.abspath(project_root),
        ]
    ).encode()


def _resolved(module_file: Path, project_root: Path | None) -> list[str]:
    # build_bundle works on resolved paths: a symlinked folder above the project,
    # pointed elsewhere, changes what is built without changing any recorded stat.
    return [str(Path(module_file).resolve()), str(Path(project_root).resolve()) if project_root else ""]


def _probe_sig(path: str) -> _Sig | None:
    """Existence and type of ``path`` (and of its target, for a symlink); ``None`` when absent."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    target = 0
    if stat.S_ISLNK(mode):
        try:
            target = stat.S_IFMT(os.stat(path).st_mode)
        except OSError:
            target = -1  # dangling
    return [stat.S_IFMT(mode), target]


def _stat_sig(st: os.stat_result) -> _Sig:
    return [st.st_mode, st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _lstat_sig(path: str) -> _Sig | None:
    try:
        return _stat_sig(os.lstat(path))
    except OSError:
        return None


class _Recorder(Observer):
    """Records the state of every path a build depends on, as first seen (before it was read)."""

    def __init__(self, started_ns: int) -> None:
        self.started_ns = started_ns
        self.probes: dict[str, _Sig | None] = {}
        self.stats: dict[str, _Sig | None] = {}

    def probed(self, path: Path) -> None:
        key = str(path)
        if key not in self.probes:
            self.probes[key] = _probe_sig(key)

    def listed(self, path: Path) -> None:
        key = str(path)
        if key not in self.stats:
            self.stats[key] = _lstat_sig(key)

    def read(self, path: Path, st: os.stat_result | None = None) -> None:
        key = str(path)
        if key not in self.stats:
            self.stats[key] = _stat_sig(st) if st is not None else _lstat_sig(key)

    def racy(self) -> str | None:
        """A path whose stat data cannot be trusted yet (see ``_RACY_NS``), or ``None``."""
        for key, sig in self.stats.items():
            if sig is None:
                return key  # vanished while being built: the build is already stale
            mtime, ctime = sig[4], sig[5]
            coarse = mtime % 1_000_000_000 == 0 and ctime % 1_000_000_000 == 0
            window = _RACY_COARSE_NS if coarse else _RACY_NS
            if max(mtime, ctime) >= self.started_ns - window:
                return key
        return None


def _load(path: Path, inputs: Any, module_file: Path, project_root: Path | None) -> Bundle | None:
    """The cached bundle when the cache file is valid and nothing it recorded changed, else ``None``."""
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.debug("stat cache: ignoring unreadable %s: %s", path, exc)
        return None
    try:
        if record["version"] != CACHE_VERSION or record["inputs"] != inputs:
            return None
        if record["resolved"] != _resolved(module_file, project_root):
            return None
        probes: dict[str, Any] = record["probes"]
        stats: dict[str, Any] = record["stats"]
        for key, sig in probes.items():
            if _probe_sig(key) != sig:
                return None
        for key, sig in stats.items():
            if _lstat_sig(key) != sig:
                return None
        # Kept as strings: building 1,000 Path objects would cost more than stat'ing the files.
        members: dict[str, str | Path] = record["members"]
        if not all(isinstance(a, str) and isinstance(p, str) for a, p in members.items()):
            raise TypeError("members must map strings to strings")
        manifest, content, module = record["manifest"], record["content_digest"], record["module"]
        if not (isinstance(manifest, str) and isinstance(content, str) and len(content) == 64):
            raise TypeError("manifest or content_digest has the wrong type")
        if not isinstance(module, str):
            raise TypeError("module has the wrong type")
        bundle = cached_bundle_from(content_digest=content, module=module, manifest=manifest.encode(), members=members)
        if set(bundle.files) != set(members):
            raise TypeError("the manifest and the members name different files")
    except (KeyError, TypeError, AttributeError, BundleError) as exc:
        log.debug("stat cache: ignoring malformed %s: %s", path, exc)
        return None
    return bundle


def _known_hashes(path: Path, inputs: Any) -> Reuse | None:
    """The hashes the last build of these inputs recorded, for files whose stat data is unchanged since."""
    try:
        record = json.loads(path.read_bytes())
        if record["version"] != CACHE_VERSION or record["inputs"] != inputs:
            return None
        stats: dict[str, Any] = record["stats"]
        members: dict[str, str] = record["members"]
        # A hint only: what the build makes of it is checked again as any manifest is.
        by_path = {members[row[0]]: row[3] for row in json.loads(record["manifest"])["files"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return None
    known = {p: (stats[p], sha) for p, sha in by_path.items() if isinstance(stats.get(p), list) and _is_sha(sha)}

    def reuse(file: Path, st: os.stat_result) -> str | None:
        found = known.get(str(file))
        return found[1] if found is not None and found[0] == _stat_sig(st) else None

    return reuse


def _is_sha(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and not value.strip("0123456789abcdef")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A reader sees the old file or the new one, never half of one; two writers
    # racing just leave one complete record.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem[:16]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
