"""Tests for vastrpc._manifest: the canonical encoding, the safety rules and the limits, in bounded memory."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from collections.abc import Callable

import pytest

from vastrpc._errors import BundleError
from vastrpc._manifest import FileEntry, ManifestLimits, encode_manifest, parse_manifest

SHA = hashlib.sha256(b"x").hexdigest()


def raw(*rows: object, fmt: str = "vastrpc-manifest/1") -> bytes:
    """A manifest as the canonical encoder would write it, whatever its rows."""
    document = {"files": list(rows), "format": fmt}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode()


def test_encoding_is_canonical_and_the_digest_is_its_sha256() -> None:
    files = [FileEntry("b/x.py", 0o644, 1, SHA), FileEntry("a.py", 0o755, 1, SHA), FileEntry("ü.txt", 0o644, 1, SHA)]
    one = encode_manifest(files)
    two = encode_manifest(reversed(files))
    assert one.data == two.data and one.digest == hashlib.sha256(one.data).hexdigest()
    assert [f.path for f in one.files] == ["a.py", "b/x.py", "ü.txt"]
    assert parse_manifest(one.data) == one
    assert one.total_size == 3 and list(one.by_digest()) == [SHA]
    assert encode_manifest([FileEntry("a.py", 0o644, 1, SHA)]).digest != encode_manifest(files[:1]).digest


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ((["/etc/evil", 420, 1, SHA],), "absolute"),
        ((["../evil", 420, 1, SHA],), r"'\.\.'"),
        ((["a/../../evil", 420, 1, SHA],), r"'\.\.'"),
        ((["a\\..\\evil", 420, 1, SHA],), "absolute"),
        ((["C:x", 420, 1, SHA],), "absolute"),
        ((["a//b", 420, 1, SHA],), "empty or '.'"),
        ((["./a", 420, 1, SHA],), "empty or '.'"),
        ((["", 420, 1, SHA],), "empty or '.'"),
        ((["a\x00b", 420, 1, SHA],), "NUL"),
        ((["link", 0o120777, 1, SHA],), "regular files of mode"),
        ((["suid", 0o4755, 1, SHA],), "regular files of mode"),
        ((["dir", 0o40755, 0, SHA],), "regular files of mode"),
        ((["a", 420, -1, SHA],), "invalid size"),
        ((["a", 420, 1, "../../x"],), "invalid sha256"),
        ((["dup", 420, 1, SHA], ["dup", 420, 1, SHA]), "twice"),
        ((["f", 420, 1, SHA], ["f/g", 420, 1, SHA]), "is a file"),
        ((["b", 420, 1, SHA], ["a", 420, 1, SHA]), "not sorted"),
        ((["a", 420, 1],), r"not \[path, mode, size, sha256\]"),
        ((["a", True, 1, SHA],), "regular files of mode"),
    ],
)
def test_unsafe_entries_are_refused(rows: tuple, match: str) -> None:
    with pytest.raises(BundleError, match=match):
        parse_manifest(raw(*rows))


def test_malformed_and_non_canonical_manifests_are_refused() -> None:
    for data in (b"not json", b"[]", b"{}", raw(fmt="tar"), b'{"files":{},"format":"vastrpc-manifest/1"}'):
        with pytest.raises(BundleError, match="manifest"):
            parse_manifest(data)
    spaced = json.dumps({"files": [["a", 420, 1, SHA]], "format": "vastrpc-manifest/1"}).encode()
    with pytest.raises(BundleError, match="canonical"):
        parse_manifest(spaced)


def test_limits_are_named() -> None:
    two = raw(["a", 420, 600, SHA], ["b", 420, 600, SHA])
    with pytest.raises(BundleError, match="more than 1000 bytes of files: it is over the size limit"):
        parse_manifest(two, ManifestLimits(max_total_bytes=1000))
    with pytest.raises(BundleError, match="more than 1: it is over the file limit"):
        parse_manifest(two, ManifestLimits(max_files=1))
    with pytest.raises(BundleError, match="over the limit of 100"):
        parse_manifest(raw(["d/" * 60 + "f", 420, 1, SHA]), ManifestLimits(max_path_len=100))
    with pytest.raises(BundleError, match=f"over the limit of {len(two) - 1} bytes"):
        parse_manifest(two, ManifestLimits(max_manifest_bytes=len(two) - 1))
    # At the limits exactly: accepted.
    assert len(parse_manifest(two, ManifestLimits(max_total_bytes=1200, max_files=2)).files) == 2


def traced_peak(fn: Callable[[], object]) -> int:
    """The most memory Python held while ``fn`` ran, beyond what it held before."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_bomb_manifests_are_refused_with_their_limit_in_bounded_memory() -> None:
    """A manifest declaring huge files or a huge count is refused before anything it names is read."""
    huge = raw(["weights.bin", 420, 9 << 40, SHA])
    many = raw(*[[f"f{i:07}", 420, 0, SHA] for i in range(100_001)])
    oversized = b" " * (65 << 20)
    bombs = {
        "more than 8589934592 bytes of files: it is over the size limit": huge,
        "100001 files, more than 100000: it is over the file limit": many,
        f"{65 << 20} bytes, over the limit of {64 << 20} bytes": oversized,
    }
    for match, data in bombs.items():

        def parse(data: bytes = data, match: str = match) -> None:
            with pytest.raises(BundleError, match=match):
                parse_manifest(data)

        # Parsing holds a few times the manifest (itself bounded): never what it declares.
        assert traced_peak(parse) < max(8 * len(data), 16 << 20) and traced_peak(parse) < 200 << 20, match


def test_pack_files_keeps_the_order_and_bounds_each_batch() -> None:
    from vastrpc._manifest import PACK_BYTES, PACK_FILE_BYTES, pack_files

    sizes = [10, PACK_FILE_BYTES, PACK_FILE_BYTES + 1, 5, *[PACK_FILE_BYTES // 2] * 9, 0, 3 << 20, 7]
    groups = list(pack_files(range(len(sizes)), sizes.__getitem__))
    flat = [i for g in groups for i in (g if isinstance(g, list) else [g])]
    assert flat == list(range(len(sizes)))
    for g in groups:
        if isinstance(g, list):
            assert sum(sizes[i] for i in g) <= PACK_BYTES and all(sizes[i] <= PACK_FILE_BYTES for i in g)
        else:
            assert sizes[g] > PACK_FILE_BYTES
    assert groups[:3] == [[0, 1], 2, [3, 4, 5, 6, 7, 8, 9, 10]]
