"""Tests for vastrpc.deploy.bundle: deterministic manifests of a deployment and its local code."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from vastrpc._errors import DefinitionError
from vastrpc._manifest import FileEntry, parse_manifest
from vastrpc.deploy.bundle import Bundle, Observer, build_bundle


def write(path: Path, text: str = "", mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mode is not None:
        os.chmod(path, mode)
    return path


def members(bundle: Bundle) -> dict[str, FileEntry]:
    return {f.path: f for f in parse_manifest(bundle.data).files}


def read_member(bundle: Bundle, name: str) -> bytes:
    entry = members(bundle)[name]
    content = b"".join(bundle.read_chunks(entry))
    assert hashlib.sha256(content).hexdigest() == entry.sha256
    return content


def make_project(root: Path, order: list[str] | None = None) -> None:
    files = {
        "deploy.py": "import os, json\nimport helpers\nfrom pkg import sub\nimport numpy\n",
        "helpers.py": "import util.deep\n",
        "util/__init__.py": "",
        "util/deep.py": "X = 1\n",
        "pkg/__init__.py": "",
        "pkg/sub.py": "from . import rel\nfrom .other import thing\n",
        "pkg/rel.py": "",
        "pkg/other.py": "thing = 1\n",
        "unused.py": "SECRET = 'not imported'\n",
        "data/weights.bin": "abc",
    }
    for name in order or sorted(files):
        write(root / name, files[name])


def test_same_content_same_digest_regardless_of_mtime_and_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    make_project(a)
    old_umask = os.umask(0o077)
    try:
        make_project(b)  # a different umask: group/world bits differ on disk
    finally:
        os.umask(old_umask)
    # Different mtimes for every file in b.
    for i, path in enumerate(sorted(b.rglob("*"))):
        os.utime(path, (1_000_000 + i * 7919, 1_000_000 + i * 7919))
    ba = build_bundle(a / "deploy.py", copies=[("data", "data")])
    bb = build_bundle(b / "deploy.py", copies=[("data", "data")])
    assert ba.data == bb.data
    assert ba.digest == bb.digest == hashlib.sha256(ba.data).hexdigest()
    assert ba.files == bb.files


def test_creation_order_does_not_matter(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    make_project(a)
    names = [
        "pkg/sub.py",
        "data/weights.bin",
        "helpers.py",
        "pkg/other.py",
        "util/deep.py",
        "deploy.py",
        "pkg/rel.py",
        "unused.py",
        "util/__init__.py",
        "pkg/__init__.py",
    ]
    make_project(b, order=names)
    time.sleep(0.01)
    assert build_bundle(a / "deploy.py").digest == build_bundle(b / "deploy.py").digest


def test_one_byte_changes_digest(tmp_path: Path) -> None:
    make_project(tmp_path)
    before = build_bundle(tmp_path / "deploy.py")
    write(tmp_path / "util" / "deep.py", "X = 2\n")
    after = build_bundle(tmp_path / "deploy.py")
    assert before.digest != after.digest
    assert before.files == after.files


def test_manifest_entries_are_normalised(tmp_path: Path) -> None:
    write(tmp_path / "deploy.py", "import tool\n")
    write(tmp_path / "tool.py", "", mode=0o4775)  # setuid, group-writable, executable
    bundle = build_bundle(tmp_path / "deploy.py")
    info = members(bundle)
    assert sorted(info) == ["deploy.py", "tool.py"]
    assert info["tool.py"] == FileEntry("tool.py", 0o755, 0, hashlib.sha256(b"").hexdigest())
    assert info["deploy.py"] == FileEntry("deploy.py", 0o644, 12, hashlib.sha256(b"import tool\n").hexdigest())
    assert bundle.digest == hashlib.sha256(bundle.data).hexdigest() and bundle.size == len(bundle.data)


def test_transitive_local_imports_only(tmp_path: Path) -> None:
    make_project(tmp_path)
    bundle = build_bundle(tmp_path / "deploy.py")
    assert bundle.module == "deploy"
    # Exactly the local code reached by imports: no unused.py, no data, no stdlib/site-packages.
    assert bundle.files == (
        "deploy.py",
        "helpers.py",
        "pkg/__init__.py",
        "pkg/other.py",
        "pkg/rel.py",
        "pkg/sub.py",
        "util/__init__.py",
        "util/deep.py",
    )
    assert set(members(bundle)) == set(bundle.files)


def test_from_package_import_submodule_and_relative_imports(tmp_path: Path) -> None:
    # Namespace folder (no __init__) so only the modules actually imported are included.
    write(tmp_path / "deploy.py", "from ns import a\nimport ns.b as b2\n")
    write(tmp_path / "ns" / "a.py", "from ns.c import f\n")
    write(tmp_path / "ns" / "b.py", "")
    write(tmp_path / "ns" / "c.py", "import importlib\nimportlib.import_module('dyn')\n")
    write(tmp_path / "ns" / "d.py", "")
    write(tmp_path / "dyn.py", "")
    bundle = build_bundle(tmp_path / "deploy.py")
    assert bundle.files == ("deploy.py", "dyn.py", "ns/a.py", "ns/b.py", "ns/c.py")


def test_skips_caches_dotfiles_and_symlinks(tmp_path: Path) -> None:
    write(tmp_path / "deploy.py", "import pkg\n")
    write(tmp_path / "pkg" / "__init__.py", "")
    write(tmp_path / "pkg" / "__pycache__" / "x.cpython-311.pyc", "junk")
    write(tmp_path / "pkg" / ".hidden" / "y.py", "")
    write(tmp_path / "pkg" / "node_modules" / "z.py", "")
    outside = write(tmp_path.parent / f"{tmp_path.name}-outside.py", "SECRET = 1\n")
    os.symlink(outside, tmp_path / "pkg" / "link.py")
    bundle = build_bundle(tmp_path / "deploy.py")
    assert bundle.files == ("deploy.py", "pkg/__init__.py")


def test_symlinked_module_rejected(tmp_path: Path) -> None:
    real = write(tmp_path / "real" / "helpers.py", "")
    proj = tmp_path / "proj"
    write(proj / "deploy.py", "import helpers\n")
    os.symlink(real, proj / "helpers.py")
    with pytest.raises(DefinitionError, match="symlink"):
        build_bundle(proj / "deploy.py")


def test_module_inside_package_gets_dotted_name(tmp_path: Path) -> None:
    write(tmp_path / "app" / "__init__.py", "")
    write(tmp_path / "app" / "serving" / "__init__.py", "")
    write(tmp_path / "app" / "serving" / "deploy.py", "from ..model import net\n")
    write(tmp_path / "app" / "model" / "__init__.py", "")
    write(tmp_path / "app" / "model" / "net.py", "")
    write(tmp_path / "other.py", "")
    bundle = build_bundle(tmp_path / "app" / "serving" / "deploy.py")
    assert bundle.module == "app.serving.deploy"
    assert bundle.files == (
        "app/__init__.py",
        "app/model/__init__.py",
        "app/model/net.py",
        "app/serving/__init__.py",
        "app/serving/deploy.py",
    )


def test_explicit_project_root(tmp_path: Path) -> None:
    write(tmp_path / "src" / "deploy.py", "import shared\n")
    write(tmp_path / "shared.py", "")
    bundle = build_bundle(tmp_path / "src" / "deploy.py", project_root=tmp_path)
    assert bundle.module == "src.deploy"
    assert bundle.files == ("shared.py", "src/deploy.py")
    with pytest.raises(DefinitionError, match="not inside the project root"):
        build_bundle(tmp_path / "src" / "deploy.py", project_root=write(tmp_path / "other" / "x.py").parent)


def test_copies_files_and_directories(tmp_path: Path) -> None:
    write(tmp_path / "deploy.py", "")
    write(tmp_path / "config.yaml", "a: 1\n")
    write(tmp_path / "assets" / "one.txt", "1")
    write(tmp_path / "assets" / "sub" / "two.txt", "2")
    write(tmp_path / "assets" / ".env", "TOKEN=secret")
    ext = write(tmp_path.parent / f"{tmp_path.name}-ext" / "abs.txt", "abs")
    bundle = build_bundle(
        tmp_path / "deploy.py",
        copies=[("config.yaml", "conf/config.yaml"), ("assets", "static"), (str(ext), "."), ("assets", ".")],
    )
    assert bundle.files == (
        "abs.txt",
        "conf/config.yaml",
        "deploy.py",
        "one.txt",
        "static/one.txt",
        "static/sub/two.txt",
        "sub/two.txt",
    )
    assert read_member(bundle, "static/sub/two.txt") == b"2"
    assert read_member(bundle, "conf/config.yaml") == b"a: 1\n"


@pytest.mark.parametrize(
    "dest", ["../outside", "a/../../b", "C:/x", "/../etc/x", "/app/../../etc/x", "/", ".vastrpc-absolute/etc/x"]
)
def test_bad_copy_dest_rejected(tmp_path: Path, dest: str) -> None:
    write(tmp_path / "deploy.py", "")
    write(tmp_path / "f.txt", "")
    with pytest.raises(DefinitionError, match="destination"):
        build_bundle(tmp_path / "deploy.py", copies=[("f.txt", dest)])


def test_missing_copy_source_named(tmp_path: Path) -> None:
    write(tmp_path / "deploy.py", "")
    with pytest.raises(DefinitionError, match="no-such-file.txt"):
        build_bundle(tmp_path / "deploy.py", copies=[("no-such-file.txt", "x.txt")])


def test_conflicting_destinations_rejected(tmp_path: Path) -> None:
    write(tmp_path / "deploy.py", "")
    write(tmp_path / "a.txt", "a")
    write(tmp_path / "b.txt", "b")
    with pytest.raises(DefinitionError, match="two files map"):
        build_bundle(tmp_path / "deploy.py", copies=[("a.txt", "x"), ("b.txt", "x")])
    with pytest.raises(DefinitionError, match="folder"):
        build_bundle(tmp_path / "deploy.py", copies=[("a.txt", "x"), ("b.txt", "x/y")])


def test_missing_module_rejected(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="not an existing .py file"):
        build_bundle(tmp_path / "nope.py")


def test_only_expected_files_no_secrets(tmp_path: Path) -> None:
    write(tmp_path / "deploy.py", "import helpers\n")
    write(tmp_path / "helpers.py", "")
    write(tmp_path / ".env", "HF_TOKEN=hf_secret")
    write(tmp_path / "secrets.json", '{"token": "s3cr3t"}')
    bundle = build_bundle(tmp_path / "deploy.py")
    assert bundle.files == ("deploy.py", "helpers.py")
    assert b"s3cr3t" not in bundle.data and b"hf_secret" not in bundle.data


@pytest.mark.timeout(60)
def test_large_bundle_is_fast(tmp_path: Path) -> None:
    write(tmp_path / "deploy.py", "")
    big = tmp_path / "weights"
    big.mkdir()
    chunk = os.urandom(1 << 20)
    for i in range(4):
        (big / f"part{i}.bin").write_bytes(chunk * 25)  # 4 x 25 MB
    for i in range(500):
        write(big / "small" / f"f{i:04d}.txt", str(i))
    # Warm the page cache so the timing measures bundling, not the disk.
    for p in big.rglob("*"):
        if p.is_file():
            p.read_bytes()
    start = time.perf_counter()
    bundle = build_bundle(tmp_path / "deploy.py", copies=[("weights", "weights")])
    elapsed = time.perf_counter() - start
    assert bundle.total_size > 100 << 20
    assert len(bundle.files) == 505
    assert elapsed < 3.0, f"bundling 100 MB took {elapsed:.2f} s"


def test_observer_is_told_every_member_and_folder(tmp_path: Path) -> None:
    make_project(tmp_path)

    class Log(Observer):
        def __init__(self) -> None:
            self.probed_paths: set[Path] = set()
            self.listed_paths: set[Path] = set()
            self.read_paths: set[Path] = set()

        def probed(self, path: Path) -> None:
            self.probed_paths.add(path)

        def listed(self, path: Path) -> None:
            self.listed_paths.add(path)

        def read(self, path: Path, st: os.stat_result | None = None) -> None:
            self.read_paths.add(path)

    seen = Log()
    bundle = build_bundle(tmp_path / "deploy.py", copies=[("data", "data")], observer=seen)
    assert {p.relative_to(tmp_path).as_posix() for p in seen.read_paths} == set(bundle.files)
    assert {tmp_path / "data", tmp_path / "pkg", tmp_path / "util"} <= seen.listed_paths
    # "import numpy" looked for a local numpy: its absence is part of the result.
    assert {tmp_path / "numpy.py", tmp_path / "numpy" / "__init__.py"} <= seen.probed_paths
    assert bundle.size == len(bundle.data) and bundle.members["helpers.py"] == tmp_path / "helpers.py"


def test_copies_to_absolute_paths_are_stored_under_the_reserved_folder(tmp_path: Path) -> None:
    write(tmp_path / "deploy.py", "")
    write(tmp_path / "local_config.json", '{"a": 1}')
    write(tmp_path / "models" / "m.bin", "weights")
    write(tmp_path / "models" / "sub" / "n.bin", "more")
    write(tmp_path / ".vastrpc-absolute" / "sneaky.py", "")  # a dot folder of the project is never walked
    bundle = build_bundle(
        tmp_path / "deploy.py",
        copies=[("local_config.json", "/app/config.json"), ("models", "/data/models/"), ("local_config.json", "c")],
    )
    assert bundle.files == (
        ".vastrpc-absolute/app/config.json",
        ".vastrpc-absolute/data/models/m.bin",
        ".vastrpc-absolute/data/models/sub/n.bin",
        "c",
        "deploy.py",
    )
    assert read_member(bundle, ".vastrpc-absolute/app/config.json") == b'{"a": 1}'
    # Moving the file to another absolute destination is a change of the bundle.
    moved = build_bundle(tmp_path / "deploy.py", copies=[("local_config.json", "/etc/config.json")])
    assert moved.files == (".vastrpc-absolute/etc/config.json", "deploy.py") and moved.digest != bundle.digest


def test_absolute_copies_extract_inside_the_workers_folder_only(tmp_path: Path) -> None:
    from vastrpc.serve.filecache import FileCache

    write(tmp_path / "p" / "deploy.py", "")
    write(tmp_path / "p" / "cfg.json", "{}")
    bundle = build_bundle(tmp_path / "p" / "deploy.py", copies=[("cfg.json", "/etc/passwd")])
    cache = FileCache(tmp_path / "cache")
    for entry in bundle.manifest.files:
        cache.add(entry.sha256, bundle.read_chunks(entry), entry.size)
    files = cache.materialise(parse_manifest(bundle.data), tmp_path / "out")
    assert files == [".vastrpc-absolute/etc/passwd", "deploy.py"]
    assert (tmp_path / "out" / ".vastrpc-absolute" / "etc" / "passwd").read_text() == "{}"
