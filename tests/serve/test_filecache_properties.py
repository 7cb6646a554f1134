"""Property-based and fuzz tests of manifests on a worker: whatever one says, nothing lands outside the folder."""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vastrpc import BundleError
from vastrpc._manifest import parse_manifest
from vastrpc.serve.filecache import FileCache

name_part = st.sampled_from(["a", "b", "..", ".", "", "etc", "x y", "ü", "/", "//", "../..", "~", "\\", "c:"])
names = st.lists(name_part, min_size=1, max_size=5).map("/".join)
modes = st.sampled_from([0o644, 0o755, 0o4755, 0o120777, 0o40755, 0o777, -1])
rows = st.lists(st.tuples(names, modes, st.binary(max_size=64)), max_size=6)


def _manifest(entries: list[tuple[str, int, bytes]]) -> bytes:
    files = [[p, m, len(c), hashlib.sha256(c).hexdigest()] for p, m, c in sorted(entries)]
    document = {"files": files, "format": "vastrpc-manifest/1"}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode()


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _check_contained(data: bytes, contents: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "outside").mkdir()
        (root / "outside" / "sentinel").write_text("keep")
        cache = FileCache(root / "box" / "cache")
        for content in contents:
            cache.add(hashlib.sha256(content).hexdigest(), [content], len(content))
        before = _snapshot(root)
        dest = root / "box" / "dest"
        try:
            files = cache.materialise(parse_manifest(data), dest)
        except BundleError:
            assert not dest.exists()  # a refused bundle leaves nothing behind
            files = []
        escaped = {p for p in _snapshot(root) - before if not p.startswith("box")}
        assert not escaped, escaped
        for rel in files:
            path = (dest / rel).resolve()
            assert path.is_relative_to(dest.resolve()) and path.is_file() and not path.is_symlink()
            assert not path.stat().st_mode & 0o7222  # read-only, no setuid, setgid or sticky bits
        if dest.exists():
            assert not dest.stat().st_mode & 0o022
            for p in dest.rglob("*"):
                assert not p.is_symlink() and (p.is_file() or p.is_dir())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows)
def test_nothing_is_written_outside_the_folder(entries: list[tuple[str, int, bytes]]) -> None:
    _check_contained(_manifest(entries), [c for _, _, c in entries])


def test_bounded_fuzz_of_mutated_manifests() -> None:
    """Byte-level mutations of a valid manifest: every outcome is a folder inside its place or a BundleError."""
    rng = random.Random(20261203)
    contents = [b"x = 1\n", b"\0" * 600]
    base = _manifest([("pkg/mod.py", 0o644, contents[0]), ("data/a.bin", 0o755, contents[1])])
    for _ in range(400):
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        _check_contained(bytes(data), contents)
        assert os.path.exists(tempfile.gettempdir())
