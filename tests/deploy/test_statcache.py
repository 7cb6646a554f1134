"""Tests for vastrpc.deploy.statcache: an unchanged project is packaged without reading a file."""

from __future__ import annotations

import builtins
import io
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vastrpc._errors import BundleError
from vastrpc.deploy import statcache
from vastrpc.deploy.bundle import Bundle, build_bundle
from vastrpc.deploy.statcache import cache_path, cached_bundle

COPIES = [("data", "data")]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def settle(folder: Path) -> None:
    """Wait until what was just written is older than the cache's "too recent to trust" window."""
    probe = write(folder / ".settle", "")
    st = probe.stat()
    coarse = st.st_mtime_ns % 1_000_000_000 == 0 and st.st_ctime_ns % 1_000_000_000 == 0
    window = statcache._RACY_COARSE_NS if coarse else statcache._RACY_NS
    time.sleep(window / 1e9 + 0.03)


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    write(root / "deploy.py", "import helpers\nimport numpy\n")
    write(root / "helpers.py", "X = 1\n")
    write(root / "unused.py", "Y = 1\n")
    for i in range(20):
        write(root / "data" / f"f{i:02d}.bin", os.urandom(1000))
    write(root / "data" / "sub" / "deep.txt", "deep")
    settle(root)
    return root


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "home" / "cache" / "bundles"


def cached(proj: Path, cache_dir: Path, copies: list[tuple[str, str]] = COPIES) -> Bundle:
    return cached_bundle(proj / "deploy.py", copies=copies, cache_dir=cache_dir)


def full(proj: Path, copies: list[tuple[str, str]] = COPIES) -> Bundle:
    return build_bundle(proj / "deploy.py", copies=copies)


@pytest.fixture
def opened(proj: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], list[str]]]:
    """Counts files opened and folders listed under the project (the cache file itself is elsewhere)."""
    seen: list[str] = []
    prefix = str(proj)

    def counting(real: Any) -> Any:
        def wrapper(target: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(target, (str, os.PathLike)) and os.fspath(target).startswith(prefix):
                seen.append(os.fspath(target))
            return real(target, *args, **kwargs)

        return wrapper

    # builtins.open is the tar writer's; io.open is Path.read_bytes'; os.open and
    # os.scandir catch anything lower level and every folder listing.
    for owner, name in ((builtins, "open"), (io, "open"), (os, "open"), (os, "scandir"), (os, "listdir")):
        monkeypatch.setattr(owner, name, counting(getattr(owner, name)))
    yield lambda: list(seen)


def test_unchanged_project_reads_no_file(proj: Path, cache_dir: Path, opened: Callable[[], list[str]]) -> None:
    first = cached(proj, cache_dir)
    assert not first.from_cache
    assert opened(), "the first build reads the project"
    assert cache_path(cache_dir, proj / "deploy.py", COPIES, None).is_file()
    before = len(opened())

    second = cached(proj, cache_dir)
    assert second.from_cache
    assert opened()[before:] == []  # nothing opened, nothing listed
    assert (second.digest, second.files, second.module, second.size) == (
        first.digest,
        first.files,
        first.module,
        first.size,
    )
    assert "helpers.py" in second.files and "data/sub/deep.txt" in second.files


def test_cached_digest_equals_full_rebuild_and_no_file_is_read(proj: Path, cache_dir: Path) -> None:
    cached(proj, cache_dir)
    hit = cached(proj, cache_dir)
    rebuilt = full(proj)
    assert hit.from_cache and hit.digest == rebuilt.digest and hit.files == rebuilt.files
    assert hit.data == rebuilt.data  # the manifest recorded by the last build


def test_content_change_is_seen(proj: Path, cache_dir: Path) -> None:
    before = cached(proj, cache_dir)
    write(proj / "helpers.py", "X = 2\n")  # same size
    after = cached(proj, cache_dir)
    assert not after.from_cache
    assert after.digest != before.digest and after.digest == full(proj).digest


def test_copied_data_change_is_seen(proj: Path, cache_dir: Path) -> None:
    before = cached(proj, cache_dir)
    write(proj / "data" / "sub" / "deep.txt", "DEEP")
    after = cached(proj, cache_dir)
    assert not after.from_cache and after.digest != before.digest and after.digest == full(proj).digest


def test_mode_change_is_seen(proj: Path, cache_dir: Path) -> None:
    before = cached(proj, cache_dir)
    os.chmod(proj / "helpers.py", 0o755)  # stored as mode 0o755 in the tar
    after = cached(proj, cache_dir)
    assert not after.from_cache and after.digest != before.digest and after.digest == full(proj).digest


def test_file_added_to_copied_folder_is_seen(proj: Path, cache_dir: Path) -> None:
    cached(proj, cache_dir)
    write(proj / "data" / "sub" / "new.txt", "new")
    after = cached(proj, cache_dir)
    assert not after.from_cache and "data/sub/new.txt" in after.files
    assert after.digest == full(proj).digest


def test_deleted_files_are_seen(proj: Path, cache_dir: Path) -> None:
    cached(proj, cache_dir)
    (proj / "data" / "f07.bin").unlink()
    after = cached(proj, cache_dir)
    assert not after.from_cache and "data/f07.bin" not in after.files
    assert after.digest == full(proj).digest

    settle(proj)
    cached(proj, cache_dir)
    (proj / "helpers.py").unlink()  # no longer local: "import helpers" is left to the worker
    gone = cached(proj, cache_dir)
    assert not gone.from_cache and "helpers.py" not in gone.files


def test_new_local_import_is_bundled(proj: Path, cache_dir: Path) -> None:
    first = cached(proj, cache_dir)
    assert "unused.py" not in first.files
    write(proj / "deploy.py", "import helpers\nimport numpy\nimport unused\n")
    after = cached(proj, cache_dir)
    assert "unused.py" in after.files and after.digest == full(proj).digest


def test_new_local_module_shadowing_an_outside_import_is_bundled(proj: Path, cache_dir: Path) -> None:
    # "import numpy" was not local at the first build; a numpy.py next to the module makes it local.
    cached(proj, cache_dir)
    write(proj / "numpy.py", "")
    after = cached(proj, cache_dir)
    assert not after.from_cache and "numpy.py" in after.files


def test_file_added_to_imported_package_is_seen(proj: Path, cache_dir: Path) -> None:
    write(proj / "deploy.py", "import pkg\n")
    write(proj / "pkg" / "__init__.py", "")
    write(proj / "pkg" / "inner" / "a.py", "")
    settle(proj)
    cached(proj, cache_dir)
    assert cached(proj, cache_dir).from_cache
    write(proj / "pkg" / "inner" / "b.py", "")  # whole package trees are bundled
    after = cached(proj, cache_dir)
    assert not after.from_cache and "pkg/inner/b.py" in after.files


def test_module_folder_becoming_a_package_changes_the_module_name(proj: Path, cache_dir: Path) -> None:
    nested = proj / "app"
    write(nested / "deploy.py", "")
    settle(proj)
    first = cached_bundle(nested / "deploy.py", cache_dir=cache_dir)
    assert first.module == "deploy"
    write(nested / "__init__.py", "")
    after = cached_bundle(nested / "deploy.py", cache_dir=cache_dir)
    assert not after.from_cache and after.module == "app.deploy"


def test_corrupt_cache_is_ignored_and_rewritten(proj: Path, cache_dir: Path) -> None:
    first = cached(proj, cache_dir)
    path = cache_path(cache_dir, proj / "deploy.py", COPIES, None)
    for garbage in (b"{not json", b'{"version": 1}', b"[]", b'{"version":1,"inputs":[],"probes":3}'):
        path.write_bytes(garbage)
        again = cached(proj, cache_dir)
        assert not again.from_cache and again.digest == first.digest
        assert cached(proj, cache_dir).from_cache  # rewritten whole


def test_cache_is_per_inputs(proj: Path, cache_dir: Path) -> None:
    with_data = cached(proj, cache_dir)
    without = cached(proj, cache_dir, copies=[])
    assert not without.from_cache and without.digest != with_data.digest
    assert cached(proj, cache_dir).from_cache and cached(proj, cache_dir, copies=[]).from_cache


def test_build_right_after_a_write_is_not_cached(proj: Path, cache_dir: Path) -> None:
    # A file written within the same timestamp tick as the build could be rewritten
    # again within that tick, same size, leaving its stat data unchanged: not trusted.
    write(proj / "helpers.py", "X = 3\n")
    first = cached(proj, cache_dir)
    assert not cache_path(cache_dir, proj / "deploy.py", COPIES, None).exists()
    write(proj / "helpers.py", "X = 4\n")
    second = cached(proj, cache_dir)
    assert not second.from_cache and second.digest != first.digest and second.digest == full(proj).digest


def test_files_changed_after_hashing_fail_the_upload_read(proj: Path, cache_dir: Path) -> None:
    cached(proj, cache_dir)
    hit = cached(proj, cache_dir)
    write(proj / "helpers.py", "X = 9999\n")  # another size: the read for the upload sees it
    entry = next(f for f in hit.manifest.files if f.path == "helpers.py")
    with pytest.raises(BundleError, match="changed after it was hashed"):
        b"".join(hit.read_chunks(entry))
    assert not cached(proj, cache_dir).from_cache  # and the next build sees the change


def test_unwritable_cache_dir_still_builds(proj: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = write(tmp_path / "not-a-dir", "")
    caplog.set_level(logging.DEBUG, logger="vastrpc.deploy")
    bundle = cached(proj, blocker / "bundles")
    assert bundle.digest == full(proj).digest and not bundle.from_cache
    assert "could not write" in caplog.text


def test_no_cache_dir_means_a_plain_build(proj: Path) -> None:
    bundle = cached_bundle(proj / "deploy.py", copies=COPIES, cache_dir=None)
    assert not bundle.from_cache and bundle.digest == full(proj).digest


SQUARE = """
from vastrpc import Deployment

app = Deployment(name="{name}")

@app.remote(benchmark_dataset=[{{"x": 2}}])
async def square(x: int) -> int:
    return x * x
"""


@pytest.mark.e2e
async def test_ensure_ready_packages_from_the_cache_and_uploads_lazily(
    project: Any, control_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    mod = project(SQUARE)
    settle(Path(mod.__file__).parent)
    caplog.set_level(logging.DEBUG, logger="vastrpc.deploy")
    first = await mod.app.ensure_ready()
    assert first.uploaded and "from stat cache" not in caplog.text

    # The control service loses the bundle (as after a teardown): the cache still
    # knows the digest, and the tar is built only for the upload it now needs.
    stored = control_service.home / "bundles" / first.bundle_digest
    stored.unlink()
    caplog.clear()
    second = await mod.app.ensure_ready()
    assert (second.tier, second.bundle_digest, second.uploaded) == (0, first.bundle_digest, True)
    assert "(unchanged, from stat cache)" in caplog.text
    assert stored.is_file()
    assert await mod.square(7) == 49

    caplog.clear()
    third = await mod.app.ensure_ready()
    assert (third.tier, third.uploaded) == (0, False) and "(unchanged, from stat cache)" in caplog.text


@pytest.mark.timeout(60)
def test_unchanged_1000_files_is_much_cheaper_than_hashing(tmp_path: Path, cache_dir: Path) -> None:
    root = tmp_path / "big"
    write(root / "deploy.py", "")
    blob = os.urandom(20_000)
    for i in range(1000):
        write(root / "data" / f"d{i // 100}" / f"f{i:04d}.bin", blob + i.to_bytes(4, "big"))
    settle(root)
    start = time.perf_counter()
    built = cached_bundle(root / "deploy.py", copies=COPIES, cache_dir=cache_dir)
    build_s = time.perf_counter() - start
    checks = []
    for _ in range(3):
        start = time.perf_counter()
        hit = cached_bundle(root / "deploy.py", copies=COPIES, cache_dir=cache_dir)
        checks.append(time.perf_counter() - start)
        assert hit.from_cache and hit.digest == built.digest
    # A stat per file instead of a read, a hash and a tar header: several times cheaper
    # (about 10x here); the margin leaves room for a noisy machine.
    assert min(checks) < build_s / 2, f"cache hit {min(checks) * 1e3:.1f} ms vs build {build_s * 1e3:.1f} ms"


def test_editing_one_file_rereads_that_file_only(proj: Path, cache_dir: Path, opened: Callable[[], list[str]]) -> None:
    first = cached(proj, cache_dir)
    write(proj / "data" / "f03.bin", b"edited")
    settle(proj)
    before = len(opened())
    second = cached(proj, cache_dir)
    read = {Path(p).name for p in opened()[before:] if Path(p).suffix in (".bin", ".txt")}
    # The edited file is read and hashed again; the other 20 data files' hashes come from the cache.
    assert read == {"f03.bin"}, read
    rebuilt = full(proj)
    assert not second.from_cache and second.digest == rebuilt.digest != first.digest
    assert second.content_digest == rebuilt.content_digest
