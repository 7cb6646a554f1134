"""LocalBlobStore: verified, atomic, deduplicated bundle storage."""

from __future__ import annotations

import hashlib

import pytest

from vastrpc._errors import BundleError, NotFoundError
from vastrpc.control.bundles.local import LocalBlobStore

pytestmark = pytest.mark.timeout(10)
DATA = b"bundle bytes " * 1000
DIGEST = hashlib.sha256(DATA).hexdigest()


def test_store_read_and_dedup(tmp_path) -> None:
    blobs = LocalBlobStore(tmp_path)
    assert not blobs.has(DIGEST)
    with blobs.open_writer(DIGEST, len(DATA)) as writer:
        writer.write(DATA[:100])
        writer.write(DATA[100:])
        assert writer.commit() is True
    assert blobs.has(DIGEST) and blobs.size(DIGEST) == len(DATA)
    assert b"".join(blobs.read_chunks(DIGEST, 4096)) == DATA
    assert [len(c) for c in blobs.read_chunks(DIGEST, 5000)] == [5000, 5000, 3000]
    with blobs.open_writer(DIGEST, len(DATA)) as writer:
        writer.write(DATA)
        assert writer.commit() is False  # someone stored it first
    assert sorted(p.name for p in tmp_path.iterdir()) == [DIGEST]


@pytest.mark.parametrize(
    ("claimed", "size", "payload", "words"),
    [
        ("a" * 64, len(DATA), DATA, "digest mismatch"),
        (DIGEST, len(DATA) + 1, DATA, "incomplete"),
        (DIGEST, 10, DATA, "larger than"),
    ],
)
def test_bad_uploads_leave_nothing(tmp_path, claimed, size, payload, words) -> None:
    blobs = LocalBlobStore(tmp_path)
    with pytest.raises(BundleError, match=words), blobs.open_writer(claimed, size) as writer:
        writer.write(payload)
        writer.commit()
    assert list(tmp_path.iterdir()) == []


def test_abandoned_writer_and_crash_leftovers_are_removed(tmp_path) -> None:
    blobs = LocalBlobStore(tmp_path)
    with pytest.raises(KeyboardInterrupt), blobs.open_writer(DIGEST, len(DATA)) as writer:
        writer.write(DATA[:10])
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    (tmp_path / f".{DIGEST[:16]}.x.part").write_bytes(b"half")
    LocalBlobStore(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_digests_never_name_other_files(tmp_path) -> None:
    blobs = LocalBlobStore(tmp_path / "bundles")
    (tmp_path / "secret").write_text("x")
    for digest in ("../secret", "A" * 64, "", "a" * 63):
        assert not blobs.has(digest)
        with pytest.raises(BundleError):
            blobs.open_writer(digest, 1)
        with pytest.raises(NotFoundError):
            blobs.read_chunks(digest, 10)


def test_stored_lists_bundles_with_their_time_and_delete_removes_one(tmp_path) -> None:
    blobs = LocalBlobStore(tmp_path)
    with blobs.open_writer(DIGEST, len(DATA)) as writer:
        writer.write(DATA)
        writer.commit()
    (tmp_path / f".{'b' * 16}.x.part").write_bytes(b"an upload in flight")
    stored = blobs.stored()
    assert list(stored) == [DIGEST]  # partial uploads are not bundles
    assert stored[DIGEST] == pytest.approx((tmp_path / DIGEST).stat().st_mtime)
    assert blobs.delete(DIGEST) is True
    assert not blobs.has(DIGEST) and blobs.stored() == {}
    assert blobs.delete(DIGEST) is False
    with pytest.raises(BundleError):
        blobs.delete("../x")
