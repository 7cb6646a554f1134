"""Tests for vastrpc.serve.extract: safe extraction, compression bombs in bounded memory, digests."""

from __future__ import annotations

import gzip
import hashlib
import io
import stat
import tarfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from vastrpc._errors import BundleError
from vastrpc.serve.extract import safe_extract, verify_digest


def make_tar(*entries: tarfile.TarInfo | tuple[str, bytes] | tuple[str, bytes, int]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
                continue
            name, content, *mode = entry
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = mode[0] if mode else 0o644
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


# --------------------------------------------------------------------------- safe_extract


def test_roundtrip(tmp_path: Path) -> None:
    d = tarfile.TarInfo("pkg")
    d.type = tarfile.DIRTYPE
    d.mode = 0o777
    data = make_tar(("deploy.py", b"print(1)\n"), d, ("pkg/__init__.py", b""), ("./pkg/sub/m.py", b"X = 1\n"))
    dest = tmp_path / "out"
    files = safe_extract(data, dest)
    assert files == ["deploy.py", "pkg/__init__.py", "pkg/sub/m.py"]
    assert (dest / "deploy.py").read_bytes() == b"print(1)\n"
    assert (dest / "pkg" / "sub" / "m.py").read_bytes() == b"X = 1\n"
    for path in [dest, *dest.rglob("*")]:
        assert not path.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH), path
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700


def test_gzip_accepted(tmp_path: Path) -> None:
    data = gzip.compress(make_tar(("a.txt", b"hello")))
    assert safe_extract(data, tmp_path / "out") == ["a.txt"]
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"hello"


def test_setuid_and_group_write_stripped_exec_kept(tmp_path: Path) -> None:
    data = make_tar(("run.sh", b"#!/bin/sh\n", 0o6777), ("plain.txt", b"", 0o1666))
    safe_extract(data, tmp_path / "out")
    assert stat.S_IMODE((tmp_path / "out" / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "plain.txt").stat().st_mode) == 0o644


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ((("/etc/evil", b"x"),), "absolute"),
        ((("ok.txt", b"x"), ("../evil", b"x")), r"'\.\.'"),
        ((("a/../../evil", b"x"),), r"'\.\.'"),
        ((special("link", tarfile.SYMTYPE, "/etc/passwd"),), "link"),
        ((("ok.txt", b"x"), special("hard", tarfile.LNKTYPE, "ok.txt")), "link"),
        ((special("dev", tarfile.CHRTYPE),), "special"),
        ((special("blk", tarfile.BLKTYPE),), "special"),
        ((special("fifo", tarfile.FIFOTYPE),), "special"),
        ((("dup.txt", b"x"), ("dup.txt", b"y")), "twice"),
        ((("f", b"x"), ("f/g", b"y")), "is a file"),
    ],
)
def test_unsafe_members_rejected(tmp_path: Path, entries: tuple, match: str) -> None:
    dest = tmp_path / "out"
    with pytest.raises(BundleError, match=match):
        safe_extract(make_tar(*entries), dest)
    assert not dest.exists()
    assert not (tmp_path / "etc").exists() and not (tmp_path / "evil").exists()


def test_limits(tmp_path: Path) -> None:
    data = make_tar(("a", b"x" * 600), ("b", b"x" * 600))
    with pytest.raises(BundleError, match="size limit"):
        safe_extract(data, tmp_path / "o1", max_total_bytes=1000)
    assert not (tmp_path / "o1").exists()
    many = make_tar(*[(f"f{i}", b"") for i in range(20)])
    with pytest.raises(BundleError, match="member limit"):
        safe_extract(many, tmp_path / "o2", max_members=10)
    assert not (tmp_path / "o2").exists()
    long = make_tar(("d/" * 60 + "f", b""))
    with pytest.raises(BundleError, match="over the limit of 100"):
        safe_extract(long, tmp_path / "o3", max_path_len=100)
    assert not (tmp_path / "o3").exists()
    # At the limits exactly: accepted.
    assert safe_extract(data, tmp_path / "o4", max_total_bytes=1200, max_members=2) == ["a", "b"]


def test_gzip_bomb_bounded(tmp_path: Path) -> None:
    bomb = gzip.compress(b"\0" * (20 << 20))
    with pytest.raises(BundleError, match="expands past"):
        safe_extract(bomb, tmp_path / "out", max_total_bytes=1 << 20, max_members=10)
    assert not (tmp_path / "out").exists()


# A gzip member of 64 MiB of zeros, 65 KB compressed: concatenated, N of them inflate to N × 64 MiB.
_ZEROS = 64 << 20


@pytest.fixture(scope="module")
def zeros_member() -> bytes:
    return gzip.compress(b"\0" * _ZEROS, compresslevel=9, mtime=0)


def gzip_bomb(zeros_member: bytes, head: bytes, inflated: int) -> bytes:
    """``head`` then zeros, gzip-compressed, inflating to ``inflated`` bytes (about 1/1000 of it compressed)."""
    return gzip.compress(head, mtime=0) + zeros_member * (inflated // _ZEROS)


def traced_peak(fn: Callable[[], object]) -> int:
    """The most memory Python (zlib included) held while ``fn`` ran, beyond what it held before."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_gzip_bombs_refused_at_their_limit_in_bounded_memory(tmp_path: Path, zeros_member: bytes) -> None:
    declared = tarfile.TarInfo("zeros.bin")
    declared.size = 9 << 30
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, 4 << 30
    small = tarfile.TarInfo("small.bin")
    small.size = 1 << 20
    bombs = {
        # A header declaring a 9 GiB member (9 MB compressed): refused at the header, nothing inflated.
        "bytes of files: it is over the size limit": declared.tobuf(format=tarfile.PAX_FORMAT),
        # A PAX header of 4 GiB, which tarfile would read into memory whole.
        "extended tar header of 4294967296 bytes, over the limit of 1048576": pax.tobuf(format=tarfile.USTAR_FORMAT),
        # A small member, then gigabytes of zeros past the archive's end.
        "past the end of its tar archive by more than 1048576 bytes": small.tobuf() + b"\0" * small.size,
    }
    for match, head in bombs.items():
        bomb = gzip_bomb(zeros_member, head, 9 << 30)
        assert len(bomb) < 10 << 20
        dest = tmp_path / f"out-{len(head)}"

        def extract(bomb: bytes = bomb, dest: Path = dest, match: str = match) -> None:
            with pytest.raises(BundleError, match=match):
                safe_extract(bomb, dest)

        assert traced_peak(extract) < 16 << 20, match
        assert not dest.exists()


def test_a_large_member_streams_through_in_bounded_memory(tmp_path: Path, zeros_member: bytes) -> None:
    # 256 MiB of zeros inside the limits: inflated twice as a stream (validate, write), never held whole.
    member = tarfile.TarInfo("zeros.bin")
    member.size = 4 * _ZEROS
    bomb = gzip.compress(member.tobuf(), mtime=0) + zeros_member * 4 + gzip.compress(b"\0" * 1024, mtime=0)
    dest = tmp_path / "out"
    peak = traced_peak(lambda: safe_extract(bomb, dest, max_total_bytes=member.size))
    assert (dest / "zeros.bin").stat().st_size == member.size
    assert peak < 16 << 20


def test_sparse_members_refused(tmp_path: Path) -> None:
    sparse = tarfile.TarInfo("holes.bin")
    sparse.type = tarfile.GNUTYPE_SPARSE
    data = sparse.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 1024
    with pytest.raises(BundleError, match="sparse"):
        safe_extract(data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_partial_dest_removed_on_corrupt_data(tmp_path: Path) -> None:
    data = make_tar(("first.txt", b"1" * 10), ("second.bin", b"2" * 5000))
    # Cut the archive inside the second member's data: detected only while writing.
    truncated = data[: 512 * 4 + 1000]
    dest = tmp_path / "out"
    with pytest.raises(BundleError):
        safe_extract(truncated, dest)
    assert not dest.exists()


def test_garbage_and_existing_dest(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="corrupt"):
        safe_extract(b"not a tar at all" * 100, tmp_path / "g")
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "keep").write_text("x")
    with pytest.raises(BundleError, match="already exists"):
        safe_extract(make_tar(("a", b"")), tmp_path / "exists")
    assert (tmp_path / "exists" / "keep").read_text() == "x"


def test_verify_digest() -> None:
    data = b"bundle bytes"
    good = hashlib.sha256(data).hexdigest()
    verify_digest(data, good)
    verify_digest(data, good.upper())
    with pytest.raises(BundleError, match=f"bundle digest mismatch: expected {'0' * 64}, got {good}"):
        verify_digest(data, "0" * 64)
