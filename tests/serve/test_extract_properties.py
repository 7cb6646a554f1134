"""Property-based and fuzz tests of bundle extraction: whatever a tar holds, nothing lands outside the folder."""

from __future__ import annotations

import io
import os
import random
import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vastrpc import BundleError
from vastrpc.serve.extract import safe_extract

name_part = st.sampled_from(["a", "b", "..", ".", "", "etc", "x y", "ü", "/", "//", "../..", "~"])
names = st.lists(name_part, min_size=1, max_size=5).map("/".join)
kinds = st.sampled_from(
    [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE]
)
members = st.lists(
    st.tuples(names, kinds, st.binary(max_size=64), names, st.integers(min_value=0, max_value=0o7777)), max_size=6
)


def _tar(entries: list[tuple[str, int, bytes, str, int]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data, target, mode in entries:
            info = tarfile.TarInfo(name or "empty")
            info.type = kind
            info.mode = mode
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.linkname = target
                tar.addfile(info)
    return buffer.getvalue()


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _check_contained(entries: list[tuple[str, int, bytes, str, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "outside").mkdir()
        (root / "outside" / "sentinel").write_text("keep")
        before = _snapshot(root)
        dest = root / "box" / "dest"
        dest.parent.mkdir()
        try:
            files = safe_extract(_tar(entries), dest)
        except BundleError:
            assert not dest.exists()  # a rejected bundle leaves nothing behind
            files = []
        after = _snapshot(root)
        escaped = {p for p in after - before if not p.startswith("box")}
        assert not escaped, escaped
        for rel in files:
            path = (dest / rel).resolve()
            assert path.is_relative_to(dest.resolve()) and path.is_file() and not path.is_symlink()
            assert not path.stat().st_mode & 0o7000  # no setuid, setgid or sticky bits
        if dest.exists():
            assert not dest.stat().st_mode & 0o022  # not group- or world-writable
            for p in dest.rglob("*"):
                assert not p.is_symlink() and (p.is_file() or p.is_dir())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members)
def test_nothing_is_written_outside_the_extraction_folder(entries: list[tuple[str, int, bytes, str, int]]) -> None:
    _check_contained(entries)


def test_bounded_fuzz_of_mutated_bundles() -> None:
    """Byte-level mutations of a valid bundle: every outcome is an extraction inside the folder or a BundleError."""
    rng = random.Random(20261129)
    base = _tar(
        [
            ("pkg/mod.py", tarfile.REGTYPE, b"x = 1\n", "", 0o644),
            ("data/a.bin", tarfile.REGTYPE, b"\0" * 600, "", 0o755),
        ]
    )
    for _ in range(400):
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        with tempfile.TemporaryDirectory() as tmp:
            dest = Path(tmp) / "dest"
            try:
                files = safe_extract(bytes(data), dest)
            except BundleError:
                assert not dest.exists()
                continue
            for rel in files:
                assert (dest / rel).resolve().is_relative_to(dest.resolve())
            assert sorted(os.listdir(tmp)) == ["dest"]
