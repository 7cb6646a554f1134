"""Package a deployment module, its local imports and copied files as a manifest of content-addressed files."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from vastrpc._errors import BundleError, DefinitionError
from vastrpc._manifest import FileEntry, Manifest, encode_manifest, parse_manifest
from vastrpc.deploy.settings import blank_settings
from vastrpc.image import ABSOLUTE_COPY_FOLDER, absolute_copy_bundle_path

__all__ = ["Bundle", "Observer", "Reuse", "build_bundle"]

# Given a file and its lstat, the SHA-256 a previous build found for it when nothing about it
# changed since (the stat cache's answer), or None to read and hash it.
Reuse = Callable[[Path, os.stat_result], str | None]

# Directory and file names never walked into or stored: caches, VCS data,
# virtual environments. Anything starting with "." is skipped as well, which
# also keeps files such as ``.env`` (often holding secrets) out of bundles.
_SKIP_NAMES = frozenset({"__pycache__", "venv", "node_modules", "site-packages"})
_SKIP_SUFFIXES = (".pyc", ".pyo")
# Files are read and hashed in this many threads (hashlib releases the GIL on large inputs).
_HASH_THREADS = min(8, os.cpu_count() or 1)
# Uploads read files in chunks of this size.
_READ_SIZE = 1 << 20


class Bundle:
    """A deployment's bundle: its manifest (each file by path, mode, size and SHA-256) and where the files are.

    A bundle found unchanged by the stat cache (``vastrpc.deploy.statcache``) knows its
    manifest without having read a file; a file is read only when it is uploaded
    (``read_chunks``), and the control service checks its SHA-256 then.

    Attributes:
        digest: Hex SHA-256 of the manifest's bytes: the bundle digest.
        content_digest: Hex SHA-256 of the files' paths and contents, the deployment
            module's in-place settings blanked (``vastrpc.deploy.settings``): what the code
            digest is made of, so that editing only those settings is not a code change.
        files: Bundle paths of the stored files, sorted.
        module: Dotted name of the deployment module to import on the worker
            with the bundle root on ``sys.path`` (e.g. ``"deploy"`` or ``"pkg.deploy"``).
        size: Length of the manifest in bytes (what is stored under ``digest``).
        manifest: The parsed manifest.
        members: Bundle path -> local file it is read from (a ``Path``, or its string).
        from_cache: Whether digest and metadata came from the stat cache (no file was read).
    """

    def __init__(
        self,
        *,
        content_digest: str,
        module: str,
        manifest: Manifest,
        members: Mapping[str, str | Path],
        from_cache: bool = False,
    ) -> None:
        self.manifest = manifest
        self.digest = manifest.digest
        self.content_digest = content_digest
        self.files = tuple(f.path for f in manifest.files)
        self.module = module
        self.size = len(manifest.data)
        self.members = members
        self.from_cache = from_cache

    @property
    def data(self) -> bytes:
        """The manifest's bytes (what is uploaded last, under ``digest``)."""
        return self.manifest.data

    @property
    def total_size(self) -> int:
        """The sum of the files' sizes."""
        return self.manifest.total_size

    def read_chunks(self, entry: FileEntry) -> Iterator[bytes]:
        """The content of the file ``entry`` names, in chunks, read from its local path.

        Raises:
            BundleError: The file is gone or its size changed since it was hashed; the next
                ``ensure_ready`` sees the change and packages the current files.
        """
        path = self.members[entry.path]
        try:
            fh = open(path, "rb")  # noqa: SIM115  # closed by the generator below
        except OSError as exc:
            raise _changed(self.digest, f"{entry.path}: {exc}") from None
        with fh:
            if os.fstat(fh.fileno()).st_size != entry.size:
                raise _changed(self.digest, f"{entry.path} is no longer {entry.size} bytes")
            left = entry.size
            while left > 0:
                chunk = fh.read(min(_READ_SIZE, left))
                if not chunk:
                    raise _changed(self.digest, f"{entry.path} is shorter than {entry.size} bytes")
                left -= len(chunk)
                yield chunk

    def __repr__(self) -> str:
        return f"<Bundle {self.module} sha256={self.digest:.12} files={len(self.files)} size={self.total_size}>"


def _changed(digest: str, what: str) -> BundleError:
    return BundleError(
        f"the bundle's files changed after it was hashed (sha256 {digest:.12}; {what}); "
        "run ensure_ready again to package the current files"
    )


def cached_bundle_from(
    *, content_digest: str, module: str, manifest: bytes, members: Mapping[str, str | Path]
) -> Bundle:
    """A bundle of a manifest recorded earlier (the stat cache's), checked again as any manifest is."""
    return Bundle(
        content_digest=content_digest,
        module=module,
        manifest=parse_manifest(manifest),
        members=members,
        from_cache=True,
    )


class Observer:
    """Told about every file-system fact a build depends on, before the build reads it.

    The base class ignores everything; the stat cache records what it is told, so that
    comparing those facts later says whether a rebuild could give a different bundle.
    """

    def probed(self, path: Path) -> None:
        """The build depends on whether ``path`` exists and on its type (file, folder, symlink)."""

    def listed(self, path: Path) -> None:
        """The build depends on the entries of the folder ``path``."""

    def read(self, path: Path, st: os.stat_result | None = None) -> None:
        """The build depends on the content and mode of the file ``path`` (``st``: its fstat, if open)."""


_IGNORE = Observer()


def build_bundle(
    module_file: Path,
    *,
    copies: Sequence[tuple[str, str]] = (),
    project_root: Path | None = None,
    observer: Observer | None = None,
    reuse: Reuse | None = None,
) -> Bundle:
    """Build the deterministic bundle of a deployment.

    What goes in:

    * the deployment module;
    * every local module it imports, transitively (found with ``ast``: ``import x``,
      ``import x.y``, ``from x import y``, relative imports, and
      ``importlib.import_module("literal")``). A name is local when it resolves to
      a ``.py`` file or a package directory under ``project_root``; anything else
      (stdlib, site-packages) is left to the worker's environment. When a regular
      package is imported, all ``.py`` files of its top-level package directory
      are included (and scanned), so submodules loaded dynamically still work;
    * ``copies`` from ``Image.copy``: files or whole directories, stored at their
      destination path; one with an absolute destination (a path on the worker) under
      ``.vastrpc-absolute/`` at the same layout (``/app/x`` → ``.vastrpc-absolute/app/x``).

    Never stored: ``__pycache__``, ``*.pyc``, names starting with a dot (``.git``,
    ``.venv``, ``.env``...), ``venv``, ``node_modules``, and symlinks (none are
    followed: symlinks met while walking a directory are skipped; a symlink named
    directly, as the module, an imported module or a copy source, is an error).
    Empty directories are not stored (the manifest lists regular files only).

    The manifest (``vastrpc._manifest``) lists each file's path, mode (0o755 for files
    executable by their owner, 0o644 otherwise), size and SHA-256, sorted by path, in one
    canonical encoding: the same files give the same bytes and the same digest, whatever
    their mtimes, owners, the umask or discovery order.

    Args:
        module_file: The deployment's Python file.
        copies: ``(local_path, dest_path)`` pairs; relative local paths are
            relative to ``project_root``; ``dest_path`` is relative (in the bundle) or
            absolute (on the worker), never with ``..``.
        project_root: The folder that becomes the bundle root (and the worker's
            import root). Defaults to the module's folder, or, when that folder is
            a package (has ``__init__.py``), the folder above its top-level package.
        observer: Told about every path the result depends on, before it is read
            (see :class:`Observer`; the stat cache uses it).
        reuse: Asked for each file but the deployment module: a SHA-256 it returns is used
            without reading the file (the stat cache's hashes of files whose stat data did
            not change), so that editing one file re-reads that file only.

    Returns:
        The built :class:`Bundle`.

    Raises:
        DefinitionError: The module is missing or not importable by its path, a
            copy source is missing, a destination is unsafe, two sources map to the
            same archive path, or a needed file is a symlink.
    """
    obs = observer or _IGNORE
    module_file = Path(module_file)
    obs.probed(module_file)
    if module_file.is_symlink():
        raise DefinitionError(
            f"deployment module {module_file} is a symlink; bundles store regular files only: use the real file"
        )
    if module_file.suffix != ".py" or not module_file.is_file():
        raise DefinitionError(f"deployment module {module_file} is not an existing .py file")
    module_file = module_file.resolve()
    if project_root is None:
        root = module_file.parent
        # A module inside a package is imported by its dotted name, so the
        # import root is the folder above the outermost package.
        while _probe(obs, root / "__init__.py").is_file() and root.parent != root:
            root = root.parent
    else:
        root = _probe(obs, Path(project_root).resolve())
        if not root.is_dir():
            raise DefinitionError(f"project root {project_root} is not an existing directory")
    module = _module_name(module_file, root)

    members: dict[str, Path] = {}
    for path in _LocalImports(root, obs).collect(module_file, module):
        _add_member(members, path.relative_to(root).as_posix(), path)
    for local, dest in copies:
        for arcname, path in _expand_copy(root, local, dest, obs):
            _add_member(members, arcname, path)
    _check_no_file_dir_clash(members)

    entries, hashes = _hash_files(members, obs, settings_in=module_file.relative_to(root).as_posix(), reuse=reuse)
    try:
        manifest = encode_manifest(entries)
    except BundleError as exc:
        raise DefinitionError(f"the bundle cannot be stored: {exc}") from None
    return Bundle(content_digest=content_digest(hashes), module=module, manifest=manifest, members=members)


def _probe(obs: Observer, path: Path) -> Path:
    obs.probed(path)
    return path


def _module_name(module_file: Path, root: Path) -> str:
    """Dotted import name of ``module_file`` with ``root`` on ``sys.path``."""
    try:
        rel = module_file.relative_to(root)
    except ValueError:
        raise DefinitionError(
            f"deployment module {module_file} is not inside the project root {root}: "
            "pass a project_root that contains it"
        ) from None
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if not parts or not all(p.isidentifier() for p in parts):
        raise DefinitionError(
            f"deployment module {rel} cannot be imported by a dotted name from {root}: "
            "every folder and the file name must be valid Python identifiers"
        )
    return ".".join(parts)


def _skipped(name: str) -> bool:
    return name.startswith(".") or name in _SKIP_NAMES or name.endswith(_SKIP_SUFFIXES)


def _walk_files(top: Path, obs: Observer, *, suffix: str = "") -> Iterator[Path]:
    """Regular files under ``top`` (symlinks and skipped names left out), no order promised."""
    stack = [top]
    while stack:
        folder = stack.pop()
        # Told before listing, so a change made while listing shows in a later check.
        obs.listed(folder)
        try:
            with os.scandir(folder) as entries:
                found = list(entries)
        except OSError:
            continue  # like os.walk: an unreadable folder is left out
        for entry in found:
            if _skipped(entry.name):
                continue
            # Symlinks are never followed nor stored (see build_bundle); d_type
            # answers these without a stat call on most file systems.
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False) and (not suffix or entry.name.endswith(suffix)):
                yield Path(entry.path)


class _LocalImports:
    """Finds the local files a module needs, following imports transitively."""

    def __init__(self, root: Path, obs: Observer) -> None:
        self.root = root
        self.obs = obs
        self._resolved: dict[str, tuple[Path, ...]] = {}

    def collect(self, module_file: Path, module: str) -> set[Path]:
        files: set[Path] = {module_file}
        # The module's own package (when it has one) is needed to import it.
        files.update(self._resolve(module))
        queue = list(files)
        while queue:
            path = queue.pop()
            for name in self._imports_of(path):
                for found in self._resolve(name):
                    if found not in files:
                        files.add(found)
                        queue.append(found)
        return files

    def _imports_of(self, path: Path) -> set[str]:
        """Absolute dotted names ``path`` may import (candidates; not all are modules)."""
        self.obs.read(path)
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):
            # Not our job to report: the worker's import shows the real error,
            # and only if this file is actually imported.
            return set()
        rel = path.relative_to(self.root).with_suffix("")
        is_package = rel.name == "__init__"
        mod_parts = list(rel.parts[:-1] if is_package else rel.parts)
        package = mod_parts if is_package else mod_parts[:-1]

        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    if node.level - 1 > len(package):
                        continue  # beyond the top-level package: fails at import anyway
                    base = package[: len(package) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target:
                    names.add(target)
                # ``from x import y``: y may be a submodule of x.
                for alias in node.names:
                    if alias.name != "*":
                        names.add(f"{target}.{alias.name}" if target else alias.name)
            elif isinstance(node, ast.Call) and _is_import_module_call(node):
                names.add(node.args[0].value)  # type: ignore[attr-defined]
        return names

    def _resolve(self, name: str) -> tuple[Path, ...]:
        """Local files that importing ``name`` needs; empty when it is not local."""
        if name in self._resolved:
            return self._resolved[name]
        found: tuple[Path, ...] = ()
        cur = self.root
        for part in name.split("."):
            if not part.isidentifier():
                break
            pkg_dir = _probe(self.obs, cur / part)
            if _probe(self.obs, pkg_dir / "__init__.py").is_file():
                # A regular package: take its whole tree (see build_bundle).
                init = pkg_dir / "__init__.py"
                if init.is_symlink() or pkg_dir.is_symlink():
                    raise DefinitionError(
                        f"local package {pkg_dir} is (or holds) a symlink at its root; "
                        "bundles store regular files only: use real files"
                    )
                found = tuple(_walk_files(pkg_dir, self.obs, suffix=".py"))
                break
            mod_file = _probe(self.obs, cur / f"{part}.py")
            if mod_file.is_file():
                if mod_file.is_symlink():
                    raise DefinitionError(
                        f"local module {mod_file} is a symlink; bundles store regular files only: use the real file"
                    )
                found = (mod_file,)
                break
            if pkg_dir.is_dir() and not pkg_dir.is_symlink() and not _skipped(part):
                cur = pkg_dir  # a namespace package: only its submodules can be local
                continue
            break
        self._resolved[name] = found
        return found


def _is_import_module_call(node: ast.Call) -> bool:
    func = node.func
    named = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in ("import_module", "__import__")
    )
    return (
        named
        and len(node.args) >= 1
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
        and not node.args[0].value.startswith(".")
    )


def _normalise_dest(dest: str) -> str:
    """Validate a copy destination; returns its archive path as a clean relative POSIX path ("" = bundle root).

    An absolute destination (a path on the worker) is stored under ``ABSOLUTE_COPY_FOLDER``
    at the same layout: ``/app/config.json`` → ``.vastrpc-absolute/app/config.json``.
    """
    text = str(dest).replace("\\", "/")
    posix = PurePosixPath(text)
    if ".." in posix.parts:
        raise DefinitionError(f"copy destination {dest!r} must not contain '..': write the path it means")
    if posix.is_absolute():
        if len(posix.parts) < 2:
            raise DefinitionError(f"copy destination {dest!r} names no file or folder: e.g. '/app/config.json'")
        return absolute_copy_bundle_path(str(posix))
    if len(text) > 1 and text[1] == ":":
        raise DefinitionError(f"copy destination {dest!r} must be a POSIX path inside the bundle or on the worker")
    parts = [p for p in posix.parts if p not in ("", ".")]
    if parts and parts[0] == ABSOLUTE_COPY_FOLDER:
        raise DefinitionError(
            f"copy destination {dest!r} is inside {ABSOLUTE_COPY_FOLDER}/, reserved for absolute destinations: "
            "pass the absolute path instead, e.g. '/app/config.json'"
        )
    return "/".join(parts)


def _expand_copy(root: Path, local: str, dest: str, obs: Observer) -> list[tuple[str, Path]]:
    """The (archive path, file) pairs one ``Image.copy(local, dest)`` contributes."""
    target = _normalise_dest(dest)
    src = Path(local)
    if not src.is_absolute():
        src = root / src
    obs.probed(src)
    if src.is_symlink():
        raise DefinitionError(f"copy source {local} is a symlink; bundles store regular files only: copy the real path")
    if src.is_file():
        # dest "." (or "") means "into the bundle root", like ``cp file .``.
        return [(target or src.name, src)]
    if src.is_dir():
        out = []
        prefix = str(src) + os.sep
        for path in _walk_files(src, obs):
            # String slicing: pathlib's relative_to costs more than the walk on a 1,000-file folder.
            text = str(path)
            rel = (
                text[len(prefix) :].replace(os.sep, "/")
                if text.startswith(prefix)
                else path.relative_to(src).as_posix()
            )
            out.append((f"{target}/{rel}" if target else rel, path))
        return out
    raise DefinitionError(f"copy source {local} does not exist (looked for {src}): fix the path passed to Image.copy")


def _add_member(members: dict[str, Path], arcname: str, path: Path) -> None:
    previous = members.get(arcname)
    if previous is not None and previous.resolve() != path.resolve():
        raise DefinitionError(
            f"two files map to {arcname!r} in the bundle ({previous} and {path}): change a copy destination"
        )
    members[arcname] = path


def _check_no_file_dir_clash(members: dict[str, Path]) -> None:
    # A path stored both as a file and as a folder of other files could not be laid out.
    for arcname in members:
        parts = arcname.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in members:
                raise DefinitionError(
                    f"bundle path {prefix!r} is a file but {arcname!r} needs it to be a folder: "
                    "change a copy destination"
                )


def content_digest(hashes: Mapping[str, str]) -> str:
    """One SHA-256 over every member's path and content digest."""
    return hashlib.sha256(json.dumps(sorted(hashes.items()), separators=(",", ":")).encode()).hexdigest()


def _hash_files(
    members: Mapping[str, str | Path], obs: Observer = _IGNORE, *, settings_in: str = "", reuse: Reuse | None = None
) -> tuple[list[FileEntry], dict[str, str]]:
    """Each member's manifest entry, and its content SHA-256 (``settings_in``'s with its settings blanked)."""

    def known(arcname: str) -> tuple[FileEntry, str] | None:
        if reuse is None or arcname == settings_in:
            return None
        path = Path(members[arcname])
        st = os.lstat(path)
        sha = reuse(path, st) if stat.S_ISREG(st.st_mode) else None
        if sha is None:
            return None
        obs.read(path, st)
        return FileEntry(arcname, 0o755 if st.st_mode & stat.S_IXUSR else 0o644, st.st_size, sha), sha

    def one(arcname: str) -> tuple[FileEntry, str]:
        path = members[arcname]
        with open(path, "rb") as fh:
            # Size and mode from the open file, so a file replaced between discovery and
            # reading cannot desynchronise the entry and the content hashed.
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise DefinitionError(f"{path} is not a regular file; bundles store regular files only")
            obs.read(Path(path), st)
            content = fh.read(st.st_size)
        if len(content) != st.st_size:
            raise DefinitionError(f"{path} changed while it was read: package it again")
        sha = hashlib.sha256(content).hexdigest()
        hashed = hashlib.sha256(blank_settings(content)).hexdigest() if arcname == settings_in else sha
        mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
        return FileEntry(arcname, mode, st.st_size, sha), hashed

    results = [(name, known(name)) for name in sorted(members)]
    unknown = [name for name, found in results if found is None]
    if len(unknown) > 8 and _HASH_THREADS > 1:
        with ThreadPoolExecutor(_HASH_THREADS, thread_name_prefix="vastrpc-hash") as pool:
            read = dict(zip(unknown, pool.map(one, unknown), strict=True))
    else:
        read = {name: one(name) for name in unknown}
    done = [found or read[name] for name, found in results]
    return [entry for entry, _ in done], {entry.path: hashed for entry, hashed in done}
