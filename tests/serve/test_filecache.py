"""Tests for vastrpc.serve.filecache: files verified into the host's cache, revision folders made of links to it."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import sys
import threading
from pathlib import Path

import pytest

from vastrpc._errors import BundleError
from vastrpc._manifest import FileEntry, Manifest, encode_manifest
from vastrpc.serve import filecache
from vastrpc.serve.filecache import CacheFiller, FileCache, endpoint_cache, sweep_caches, verify_digest


def entry(path: str, content: bytes, mode: int = 0o644) -> FileEntry:
    return FileEntry(path, mode, len(content), hashlib.sha256(content).hexdigest())


def cached(cache: FileCache, *files: tuple[str, bytes] | tuple[str, bytes, int]) -> Manifest:
    """The manifest of ``files``, each added to ``cache``."""
    entries = [entry(*f) for f in files]
    for f, (_, content, *_rest) in zip(entries, files, strict=True):
        cache.add(f.sha256, [content], f.size)
    return encode_manifest(entries)


def test_materialise_links_each_file_to_the_cache(tmp_path: Path) -> None:
    cache = FileCache(tmp_path / "cache")
    manifest = cached(
        cache, ("deploy.py", b"print(1)\n"), ("pkg/__init__.py", b""), ("pkg/sub/run.sh", b"#!/bin/sh\n", 0o755)
    )
    dest = tmp_path / "rev"
    assert cache.materialise(manifest, dest) == ["deploy.py", "pkg/__init__.py", "pkg/sub/run.sh"]
    assert (dest / "deploy.py").read_bytes() == b"print(1)\n"
    assert os.path.samefile(dest / "deploy.py", cache.path(manifest.files[0].sha256, 0o644))
    assert stat.S_IMODE((dest / "deploy.py").stat().st_mode) == 0o444
    assert stat.S_IMODE((dest / "pkg/sub/run.sh").stat().st_mode) == 0o555
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert stat.S_IMODE((dest / "pkg").stat().st_mode) == 0o755
    assert stat.S_IMODE(cache.root.stat().st_mode) == 0o700  # private to this user
    # A second revision of the same files writes nothing new: the same inodes.
    again = tmp_path / "rev2"
    cache.materialise(manifest, again)
    assert os.path.samefile(again / "deploy.py", dest / "deploy.py")
    assert cache.missing(manifest) == []


def test_same_content_in_two_files_and_two_modes(tmp_path: Path) -> None:
    cache = FileCache(tmp_path / "cache")
    manifest = cached(cache, ("a.txt", b"same"), ("b.sh", b"same", 0o755))
    assert len(manifest.by_digest()) == 1
    cache.materialise(manifest, tmp_path / "rev")
    assert stat.S_IMODE((tmp_path / "rev/a.txt").stat().st_mode) == 0o444
    assert stat.S_IMODE((tmp_path / "rev/b.sh").stat().st_mode) == 0o555


def test_files_are_verified_before_they_enter_the_cache(tmp_path: Path) -> None:
    cache = FileCache(tmp_path / "cache")
    good = entry("a", b"content")
    with pytest.raises(BundleError, match="does not match its manifest"):
        cache.add(good.sha256, [b"contenT"], 7)
    with pytest.raises(BundleError, match="larger than"):
        cache.add(good.sha256, [b"content and more"], good.size)
    with pytest.raises(BundleError, match="does not match"):
        cache.add(good.sha256, [b"cont"], good.size)
    assert not any(cache.root.iterdir())  # nothing kept, not even a partial file
    assert cache.missing(encode_manifest([good])) == [good]


def test_a_missing_or_truncated_cache_file_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    cache = FileCache(tmp_path / "cache")
    manifest = cached(cache, ("a", b"1"))
    lacking = encode_manifest([manifest.files[0], entry("b", b"2")])
    with pytest.raises(BundleError, match="not in the cache"):
        cache.materialise(lacking, tmp_path / "rev")
    assert not (tmp_path / "rev").exists()
    path = cache.path(manifest.files[0].sha256, 0o644)
    os.chmod(path, 0o644)
    path.write_bytes(b"")
    with pytest.raises(BundleError, match="manifest says 1"):
        cache.materialise(manifest, tmp_path / "rev")
    assert not (tmp_path / "rev").exists()


def test_existing_folder_refused(tmp_path: Path) -> None:
    cache = FileCache(tmp_path / "cache")
    manifest = cached(cache, ("a", b""))
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "keep").write_text("x")
    with pytest.raises(BundleError, match="already exists"):
        cache.materialise(manifest, tmp_path / "exists")
    assert (tmp_path / "exists" / "keep").read_text() == "x"


def test_copies_where_links_cannot_be_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = FileCache(tmp_path / "cache")
    manifest = cached(cache, ("a.txt", b"data"), ("x.sh", b"#!", 0o755))

    def cross_device(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(filecache.os, "link", cross_device)
    cache.materialise(manifest, tmp_path / "rev")
    assert (tmp_path / "rev/a.txt").read_bytes() == b"data"
    assert not os.path.samefile(tmp_path / "rev/a.txt", cache.path(manifest.files[0].sha256, 0o644))
    assert stat.S_IMODE((tmp_path / "rev/x.sh").stat().st_mode) == 0o555


def test_leftovers_of_interrupted_writes_are_removed_but_not_writes_under_way(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    (root / ".abc.part").write_bytes(b"half")
    os.utime(root / ".abc.part", (0, 0))  # abandoned long ago
    (root / ".def.part").write_bytes(b"being written")  # another worker of the endpoint, now
    FileCache(root)
    assert [p.name for p in root.iterdir()] == [".def.part"]


def test_verify_digest() -> None:
    data = b"manifest bytes"
    good = hashlib.sha256(data).hexdigest()
    verify_digest(data, good)
    verify_digest(data, good.upper())
    with pytest.raises(BundleError, match=f"bundle digest mismatch: expected {'0' * 64}, got {good}"):
        verify_digest(data, "0" * 64)


def test_the_filler_writes_a_stream_of_files_each_verified(tmp_path: Path) -> None:
    cache = FileCache(tmp_path / "cache")
    one, empty, bad = entry("a", b"first" * 1000), entry("b", b""), entry("c", b"claimed")
    filler = CacheFiller(cache)
    filler.start(one.sha256, one.size)
    filler.chunk(b"first" * 500)
    filler.chunk(b"first" * 500)
    filler.start(empty.sha256, empty.size)
    filler.end()
    filler.run()
    assert filler.backlog == 0
    assert cache.missing(encode_manifest([one, empty])) == []
    # A file that is not what it claims stops the stream: nothing of it stays.
    filler = CacheFiller(cache)
    filler.start(bad.sha256, bad.size)
    filler.chunk(b"swapped")
    filler.end()
    with pytest.raises(BundleError, match="does not match its manifest"):
        filler.run()
    # An abort (end without commit) leaves the file in progress out.
    filler = CacheFiller(cache)
    filler.start(bad.sha256, bad.size)
    filler.chunk(b"claimed")
    filler.end(commit=False)
    filler.run()
    assert cache.missing(encode_manifest([bad])) == [bad]
    assert sorted(p.name for p in cache.root.iterdir()) == sorted([one.sha256, empty.sha256])


def test_files_no_revision_links_are_evicted_once_idle(tmp_path: Path) -> None:
    cache = FileCache(tmp_path / "cache")
    manifest = cached(cache, ("used.txt", b"in a revision"), ("old.txt", b"no longer used"))
    used = manifest.files[1]
    cache.materialise(encode_manifest([used]), tmp_path / "rev")
    assert FileCache(cache.root).missing(manifest) == []  # within the idle time: both kept
    assert cache.evict(idle=0) == 1  # the file no folder links goes, the linked one stays
    assert cache.missing(manifest) == [manifest.files[0]]
    assert (tmp_path / "rev" / "used.txt").read_bytes() == b"in a revision"


def test_each_endpoint_has_its_own_cache_and_long_gone_ones_are_swept(tmp_path: Path) -> None:
    root = tmp_path / "files"
    mine = endpoint_cache(root, "e-1")
    theirs = endpoint_cache(root, "e-2")
    assert mine.root == root / "e-1" and theirs.root == root / "e-2"
    one = cached(mine, ("a.txt", b"same bytes"))
    cached(theirs, ("a.txt", b"same bytes"))
    assert not os.path.samefile(mine.path(one.files[0].sha256, 0o644), theirs.path(one.files[0].sha256, 0o644))
    # An agent sweeps the others' idle files, and their folders once empty for as long; its own stay.
    assert sweep_caches(root, "e-1", idle=0)
    assert list(theirs.root.iterdir()) == [] and list(mine.root.iterdir()) != []
    os.utime(theirs.root, (0, 0))
    assert not sweep_caches(root, "e-1", idle=60)  # swept less than an hour ago: not again
    assert (root / "e-2").is_dir()
    assert sweep_caches(root, "e-1", idle=60, every=0)
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["e-1"]
    for bad in ("", "..", ".hidden", "a/b", "e 1"):
        with pytest.raises(BundleError, match="cannot name a cache folder"):
            endpoint_cache(root, bad)


def test_whole_files_are_verified_before_anything_is_written(tmp_path: Path) -> None:
    cache = FileCache(tmp_path / "cache")
    one, empty, bad = entry("a", b"whole" * 100), entry("b", b""), entry("c", b"claimed")
    filler = CacheFiller(cache)
    filler.whole([(one.sha256, one.size, b"whole" * 100), (empty.sha256, 0, b"")])
    filler.end()
    filler.run()
    assert filler.backlog == 0 and cache.missing(encode_manifest([one, empty])) == []
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o444 for p in cache.root.iterdir())
    # A whole file that is not what it claims (content or size) stops the stream: nothing of it stays.
    for content, size in ((b"swapped", bad.size), (b"claimed", bad.size + 1)):
        filler = CacheFiller(cache)
        filler.whole([(bad.sha256, size, content)])
        filler.end()
        with pytest.raises(BundleError, match="does not match its manifest"):
            filler.run()
    assert sorted(p.name for p in cache.root.iterdir()) == sorted([one.sha256, empty.sha256])


def test_a_file_cached_again_keeps_its_first_copy_so_links_to_it_never_fail(tmp_path: Path) -> None:
    # Two workers of an endpoint on one host fetch the same new file at once: the second to
    # finish must not replace the first's copy, which the first may be linking that moment
    # (a link to a file whose last name a rename took away fails with ENOENT).
    cache = FileCache(tmp_path / "cache")
    manifest = cached(cache, ("deploy.py", b"print(1)\n"), ("run.sh", b"#!/bin/sh\n", 0o755))
    plain, script = manifest.files
    cache.materialise(manifest, tmp_path / "rev")  # makes the executable twin too

    def inodes() -> list[int]:
        return [os.stat(cache.path(f.sha256, f.mode)).st_ino for f in (plain, script)]

    first = inodes()
    cache.put(plain.sha256, b"print(1)\n", plain.size)
    cache.add(plain.sha256, [b"print(1)\n"], plain.size)
    cache.add(script.sha256, [b"#!/bin/sh\n"], script.size)
    assert inodes() == first
    assert sorted(os.listdir(cache.root)) == sorted([plain.sha256, script.sha256, f"{script.sha256}.x"])  # no .part


def test_laying_out_while_another_worker_caches_the_same_files_never_fails(tmp_path: Path) -> None:
    cache = FileCache(tmp_path / "cache")
    contents = {f"m{i}.py": f"x = {i}\n".encode() for i in range(50)}
    manifest = cached(cache, *contents.items())
    stop = threading.Event()

    def other_worker() -> None:
        while not stop.is_set():
            for f in manifest.files:
                cache.put(f.sha256, contents[f.path], f.size)

    other = threading.Thread(target=other_worker)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads take turns between system calls, as two processes would
    other.start()
    try:
        for i in range(100):
            cache.materialise(manifest, tmp_path / f"rev{i}")
    finally:
        stop.set()
        other.join(10)
        sys.setswitchinterval(interval)
