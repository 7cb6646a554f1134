"""What a worker does to a bundle before importing it: verify, extract safely, install packages, run startup commands.

Everything here is synchronous and may block for minutes (installs, startup
scripts). Workers run an asyncio program, so call these through
``await asyncio.to_thread(...)``; each one bounds itself with its ``timeout``.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from vastrpc._errors import BundleError, DeploymentError

__all__ = [
    "ensure_apt",
    "ensure_pip_env",
    "requirements_key",
    "run_startup_commands",
    "safe_extract",
    "verify_digest",
]

Log = Callable[[str], None]

_LOG_TAIL_LINES = 40
_GZIP_MAGIC = b"\x1f\x8b"
# The most file bytes a bundle may hold (safe_extract's max_total_bytes).
MAX_BUNDLE_FILE_BYTES = 8 << 30
# Reads of the tar stream, inflated or not, are at most this large.
_READ_SIZE = 1 << 20
# A PAX or GNU long-name header is read into memory whole: no bigger than this.
_MAX_EXTENDED_HEADER = 1 << 20
# What may follow the archive's last member: its end blocks and a writer's padding.
_MAX_TRAILER = 1 << 20
# What validation hands to writing: by a member's position in the archive, its clean path.
_Plan = dict[int, str]
_EXTENDED_TYPES = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
)


# --------------------------------------------------------------------------- bundles


def verify_digest(data: bytes, expected: str) -> None:
    """Check that ``data`` hashes to ``expected``.

    Args:
        data: The bundle bytes.
        expected: The hex SHA-256 the bundle was registered with.

    Raises:
        BundleError: The digests differ.
    """
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.strip().lower():
        raise BundleError(
            f"bundle digest mismatch: expected {expected}, got {actual} "
            f"({len(data)} bytes); the bundle was corrupted or replaced in transit: deploy it again"
        )


def safe_extract(
    data: bytes,
    dest: Path,
    *,
    max_total_bytes: int = MAX_BUNDLE_FILE_BYTES,
    max_members: int = 100_000,
    max_path_len: int = 4096,
) -> list[str]:
    """Extract a bundle (plain tar, or gzip-compressed tar) into a fresh directory.

    Every member is validated before anything is written: absolute paths, ``..``
    components, links of any kind (symbolic and hard), devices, FIFOs, sparse files and
    other special members are rejected, as are duplicate paths; the member count, total
    size and path length limits are checked over the whole archive first. Files
    get ``mode & 0o755`` plus owner read/write (setuid, setgid, sticky and
    group/world write bits dropped); folders get 0o755, and ``dest`` itself 0o700.

    The archive is read twice as a stream (validate, then write), never inflated whole:
    memory stays bounded by a constant (1 MiB read buffers, a 1 MiB cap on each extended
    header) whatever a compressed bundle claims to expand to.

    Args:
        data: The archive bytes.
        dest: The directory to create; it must not exist yet (its parents may).
        max_total_bytes: Largest allowed sum of file sizes.
        max_members: Largest allowed number of members.
        max_path_len: Longest allowed member path, in characters.

    Returns:
        The extracted files' paths relative to ``dest`` (POSIX form), sorted.

    Raises:
        BundleError: ``dest`` exists, the archive is unreadable, a member is unsafe
            or a limit is exceeded. Nothing is left at ``dest`` then.
    """
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise BundleError(f"extraction folder {dest} already exists: extract each bundle into a fresh folder")
    # Files plus, per member, a header, a PAX header with path and link name, and padding.
    bound = max_total_bytes + max_members * (4 * 512 + 2 * max_path_len) + 2 * 10240
    try:
        with _open_stream(data, bound) as (tar, source):
            plan = _validate_members(tar, max_total_bytes, max_members, max_path_len)
            _check_trailer(tar, source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(dest, 0o700)
        try:
            os.chmod(dest, 0o700)  # mkdir's mode is masked by the umask
            with _open_stream(data, bound) as (tar, _):
                return _write_members(tar, plan, dest)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    except BundleError:
        raise
    except OSError as exc:
        raise BundleError(f"bundle could not be extracted into {dest}: {exc}") from exc
    except (tarfile.TarError, EOFError, zlib.error, ValueError) as exc:
        raise BundleError(f"bundle could not be read: {exc}; the archive is corrupt: deploy it again") from exc


class _CappedStream:
    """The bundle's tar stream (inflated as it is read when gzip), refusing to go past ``bound`` bytes."""

    def __init__(self, data: bytes, bound: int) -> None:
        raw = io.BytesIO(data)
        # GzipFile inflates with a max_length per read: a read of n bytes holds about n bytes.
        self._source: io.BufferedIOBase = gzip.GzipFile(fileobj=raw, mode="rb") if data[:2] == _GZIP_MAGIC else raw
        self.bound = bound
        self.position = 0

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (never more than the read buffer, whatever is asked)."""
        chunk = self._source.read(min(size, _READ_SIZE) if size >= 0 else _READ_SIZE)
        self.position += len(chunk)
        if self.position > self.bound:
            raise BundleError(
                f"compressed bundle expands past {self.bound} bytes, more than its limits allow "
                f"(at most {MAX_BUNDLE_FILE_BYTES >> 30} GiB of files, each member's headers and padding): "
                "it is corrupt or a compression bomb; deploy it again"
            )
        return chunk


class _BoundedTarInfo(tarfile.TarInfo):
    """A tar header that refuses to read an oversized extended header or a sparse map into memory."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED_TYPES and self.size > _MAX_EXTENDED_HEADER:
            raise BundleError(
                f"bundle has an extended tar header of {self.size} bytes, over the limit of {_MAX_EXTENDED_HEADER}: "
                "it is corrupt or built to exhaust memory"
            )
        if self.type == tarfile.GNUTYPE_SPARSE:
            self._refuse_sparse()
        return super()._proc_member(archive)  # type: ignore[misc]

    def _refuse_sparse(self, *_args: object) -> None:
        raise BundleError(f"bundle member {self.name!r} is a sparse file; bundles hold regular files and folders only")

    # tarfile reads the sparse maps of PAX sparse members through these: refused before any is read.
    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_sparse


@contextlib.contextmanager
def _open_stream(data: bytes, bound: int) -> Iterator[tuple[tarfile.TarFile, _CappedStream]]:
    """The archive as a forward-only tar stream over a capped reader, and that reader."""
    source = _CappedStream(data, bound)
    with tarfile.open(fileobj=source, mode="r|", tarinfo=_BoundedTarInfo, bufsize=_READ_SIZE) as tar:  # type: ignore[call-overload]
        yield tar, source


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The stream's members in order, one at a time (none kept: memory stays flat however many)."""
    while (member := tar.next()) is not None:
        tar.members.clear()  # type: ignore[attr-defined]  # kept by tarfile, undeclared in its stubs
        yield member


def _check_trailer(tar: tarfile.TarFile, source: _CappedStream) -> None:
    """Read what follows the archive's last member: end blocks and padding only, and not much of it."""
    end = tar.offset
    while source.read(_READ_SIZE):
        if source.position - end > _MAX_TRAILER:
            raise BundleError(
                f"compressed bundle expands past the end of its tar archive by more than {_MAX_TRAILER} bytes: "
                "it is corrupt or a compression bomb; deploy it again"
            )


def _clean_member_path(name: str, max_path_len: int) -> str:
    """The member's path as safe relative POSIX text, or BundleError."""
    if len(name) > max_path_len:
        raise BundleError(f"bundle member path is {len(name)} characters long, over the limit of {max_path_len}")
    if "\x00" in name:
        raise BundleError(f"bundle member {name!r} has a NUL character in its path")
    if name.startswith("/") or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        raise BundleError(f"bundle member {name!r} has an absolute path; bundles hold relative paths only")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BundleError(f"bundle member {name!r} has a '..' component; bundles must stay inside their folder")
    return "/".join(parts)


def _validate_members(tar: tarfile.TarFile, max_total_bytes: int, max_members: int, max_path_len: int) -> _Plan:
    """Check every member up front; returns, by position in the archive, the clean path of each one to write."""
    plan: _Plan = {}
    seen: set[str] = set()
    files: set[str] = set()
    total = 0
    for index, member in enumerate(_members(tar)):  # one header at a time: a huge count is caught early
        if index >= max_members:
            raise BundleError(f"bundle has more than {max_members} members: it is over the member limit")
        path = _clean_member_path(member.name, max_path_len)
        if member.issym() or member.islnk():
            raise BundleError(
                f"bundle member {member.name!r} is a link (to {member.linkname!r}); bundles may hold no links"
            )
        if member.isdir():
            if path:
                seen.add(path)
                plan[index] = path
            continue
        if not member.isreg() or member.issparse():
            raise BundleError(
                f"bundle member {member.name!r} is a special file (type {member.type!r}); "
                "bundles hold regular files and folders only"
            )
        if not path:
            raise BundleError(f"bundle member {member.name!r} is a file without a name")
        if path in files:
            raise BundleError(f"bundle member {path!r} appears twice in the archive")
        total += member.size
        if total > max_total_bytes:
            raise BundleError(f"bundle holds more than {max_total_bytes} bytes of files: it is over the size limit")
        files.add(path)
        seen.add(path)
        plan[index] = path
    # A path both a file and a folder (or a folder of a file) cannot be laid out safely.
    for path in seen:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in files:
                raise BundleError(f"bundle member {path!r} lies under {'/'.join(parts[:i])!r}, which is a file")
    return plan


def _write_members(tar: tarfile.TarFile, plan: _Plan, dest: Path) -> list[str]:
    """Write the planned members, reading the same archive again from its start."""
    made: set[str] = set()

    def make_dirs(rel: str) -> None:
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub in made:
                continue
            full = dest / sub
            if not full.is_dir():
                os.mkdir(full, 0o700)
            os.chmod(full, 0o755)  # explicit: mkdir's mode is masked by the umask
            made.add(sub)

    written: list[str] = []
    for index, member in enumerate(_members(tar)):
        path = plan.get(index)
        if path is None:
            continue
        if member.isdir():
            make_dirs(path)
            continue
        parent, _, _ = path.rpartition("/")
        if parent:
            make_dirs(parent)
        source = tar.extractfile(member)
        if source is None:  # cannot happen for a regular member; be explicit anyway
            raise BundleError(f"bundle member {path!r} has no data")
        # O_EXCL | O_NOFOLLOW: never write through anything already there.
        fd = os.open(dest / path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, _READ_SIZE)
            if out.tell() != member.size:
                raise BundleError(f"bundle member {path!r} is truncated: the archive is corrupt")
            os.fchmod(out.fileno(), (member.mode & 0o755) | 0o600)
        written.append(path)
    return sorted(written)


# --------------------------------------------------------------------------- processes


def _run_streaming(
    argv: Sequence[str],
    *,
    log: Log,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[int | None, str]:
    """Run ``argv``, feeding its merged output to ``log`` line by line.

    Returns:
        (exit code, or None when it ran past ``timeout`` and its process group
        was killed; the last output lines).
    """
    tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL_LINES)
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        # Its own process group, so a timeout kills everything it started.
        start_new_session=True,
    )

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            try:
                log(line)
            except Exception:  # noqa: BLE001 - a broken log callback must not hide the process's outcome
                pass

    reader = threading.Thread(target=pump, name="vastrpc-install-log", daemon=True)
    reader.start()
    try:
        code: int | None = proc.wait(timeout=max(timeout, 0.0))
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        code = None
    except BaseException:
        _kill_group(proc)
        raise
    # A grandchild that left the group could keep the pipe open: don't wait for it forever.
    reader.join(timeout=5)
    return code, "\n".join(tail)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# --------------------------------------------------------------------------- pip


def _clean_specs(packages: Sequence[str]) -> list[str]:
    return sorted({p.strip() for p in packages if p and p.strip()})


def requirements_key(packages: Sequence[str]) -> str:
    """Cache key of a pip environment: what is installed, for which Python and machine.

    Args:
        packages: Package specs; order, duplicates, surrounding spaces and empty
            entries do not change the key.

    Returns:
        A hex SHA-256.
    """
    payload = {
        "packages": _clean_specs(packages),
        "python": list(sys.version_info[:2]),
        "machine": platform.machine(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _installer(target: Path, specs: list[str]) -> tuple[list[str], str]:
    try:
        import uv

        uv_bin = uv.find_uv_bin()
    except (ImportError, FileNotFoundError):
        argv = [sys.executable, "-m", "pip", "install", "--no-input", "--disable-pip-version-check"]
        return [*argv, "--target", str(target), *specs], "pip"
    argv = [os.fspath(uv_bin), "pip", "install", "--color", "never", "--no-progress"]
    return [*argv, "--target", str(target), "--python", sys.executable, *specs], "uv"


def ensure_pip_env(
    packages: Sequence[str],
    cache_dir: Path,
    *,
    log: Log = print,
    timeout: float = 600,
) -> Path | None:
    """Install pip packages into a folder cached by their requirements key.

    The folder is ``cache_dir/<requirements_key>/site``; put it first on the
    serving process's ``PYTHONPATH``. It is installed with ``uv pip install
    --target`` (``pip install --target`` when uv is missing) into a temporary
    folder beside it, then renamed into place, so it exists only when complete.
    A lock file per key makes concurrent workers with the same requirements
    install once: the others wait, then reuse it. Blocking: run it in a thread.

    Args:
        packages: Package specs, e.g. ``["numpy==2.1", "requests"]``.
        cache_dir: Root of the environment cache.
        log: Receives the installer's output, line by line.
        timeout: Seconds allowed for waiting on another install plus installing.

    Returns:
        The ``site`` folder, or None when there are no packages.

    Raises:
        DeploymentError: (step ``"install"``) the install failed or timed out.
    """
    specs = _clean_specs(packages)
    if not specs:
        return None
    key = requirements_key(specs)
    env_dir = Path(cache_dir) / key
    site = env_dir / "site"
    if site.is_dir():
        log(f"pip packages already installed (cached at {site}): {' '.join(specs)}")
        return site

    deadline = time.monotonic() + timeout
    env_dir.mkdir(parents=True, exist_ok=True)
    with open(env_dir / ".lock", "a+b") as lock:
        _lock_until(lock, deadline, specs, timeout)
        try:
            if site.is_dir():  # another worker installed it while we waited
                log(f"pip packages installed by another worker (cached at {site}): {' '.join(specs)}")
                return site
            tmp = Path(tempfile.mkdtemp(prefix="site.tmp-", dir=env_dir))
            try:
                argv, tool = _installer(tmp, specs)
                log(f"installing pip packages with {tool}: {' '.join(specs)}")
                code, tail = _run_streaming(argv, log=log, timeout=deadline - time.monotonic())
                if code is None:
                    raise DeploymentError(
                        f"installing pip packages {', '.join(specs)} timed out after {timeout:g} s: "
                        "raise the timeout or install fewer/smaller packages",
                        step="install",
                        log_tail=tail,
                    )
                if code != 0:
                    raise DeploymentError(
                        f"could not install pip packages {', '.join(specs)} ({tool} exited with code {code}): "
                        "check that these names and versions exist for this Python and platform",
                        step="install",
                        log_tail=tail,
                    )
                os.rename(tmp, site)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return site


def _lock_until(lock: io.BufferedRandom, deadline: float, specs: list[str], timeout: float) -> None:
    # Polling instead of a blocking flock keeps the wait bounded by the timeout.
    while True:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise DeploymentError(
                    f"timed out after {timeout:g} s waiting for another worker to install pip packages "
                    f"{', '.join(specs)}",
                    step="install",
                ) from None
            time.sleep(0.1)


# --------------------------------------------------------------------------- apt


def _dpkg_installed(package: str) -> bool:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() == "install ok installed"


def _apt_lists_missing() -> bool:
    lists = Path("/var/lib/apt/lists")
    try:
        return not any("_Packages" in p.name for p in lists.iterdir())
    except OSError:
        return True


def ensure_apt(packages: Sequence[str], *, log: Log = print, timeout: float = 600) -> None:
    """Make sure apt packages are installed on this host.

    Already installed packages (per ``dpkg-query``) are not touched. Missing ones
    are installed with ``apt-get install -y --no-install-recommends`` when running
    as root with apt-get available (after ``apt-get update`` if the host has no
    package lists, as slim images do). Blocking: run it in a thread.

    Args:
        packages: Debian package names (``name`` or ``name=version``).
        log: Receives progress and apt's output, line by line.
        timeout: Seconds allowed for all apt commands together.

    Raises:
        DeploymentError: (step ``"install"``) packages are missing and this host
            cannot install them, or apt-get failed or timed out.
    """
    specs = _clean_specs(packages)
    if not specs:
        return
    missing = [p for p in specs if not _dpkg_installed(p)]
    if not missing:
        log(f"apt packages already installed: {' '.join(specs)}")
        return
    apt_get = shutil.which("apt-get")
    if apt_get is None or os.geteuid() != 0:
        why = "apt-get is not available" if apt_get is None else "this process is not root"
        raise DeploymentError(
            f"apt packages {', '.join(missing)} are required but missing, and this host cannot install them "
            f"({why}): install them on the host, or use a provider that builds images",
            step="install",
        )

    deadline = time.monotonic() + timeout
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if _apt_lists_missing():
        log("apt package lists are missing: running apt-get update")
        code, tail = _run_streaming([apt_get, "update"], log=log, timeout=deadline - time.monotonic(), env=env)
        if code != 0:
            raise _apt_error(missing, code, tail, timeout, "apt-get update")
    log(f"installing apt packages: {' '.join(missing)}")
    argv = [apt_get, "install", "-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=60", *missing]
    code, tail = _run_streaming(argv, log=log, timeout=deadline - time.monotonic(), env=env)
    if code != 0:
        raise _apt_error(missing, code, tail, timeout, "apt-get install")


def _apt_error(missing: list[str], code: int | None, tail: str, timeout: float, what: str) -> DeploymentError:
    if code is None:
        return DeploymentError(
            f"{what} for apt packages {', '.join(missing)} timed out after {timeout:g} s",
            step="install",
            log_tail=tail,
        )
    # Name the packages apt could not find when it says so; otherwise all we asked for.
    unknown = [p for p in missing if f"Unable to locate package {p}" in tail]
    named = unknown or missing
    return DeploymentError(
        f"could not install apt packages {', '.join(named)} ({what} exited with code {code}): "
        "check the package names exist in this host's distribution",
        step="install",
        log_tail=tail,
    )


# --------------------------------------------------------------------------- startup


def run_startup_commands(
    commands: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log: Log = print,
    timeout: float = 600,
) -> None:
    """Run startup commands with ``/bin/sh -c``, in order, stopping at the first failure.

    Blocking: run it in a thread.

    Args:
        commands: Shell command lines.
        cwd: Folder they run in (the extracted bundle).
        env: Their exact environment (the caller adds env vars and secrets);
            its values are never written to errors or logs by this function.
        log: Receives their output, line by line.
        timeout: Seconds allowed for all commands together; on expiry the
            running command's process group is killed.

    Raises:
        DeploymentError: (step ``"startup"``) a command exited non-zero or timed out.
    """
    deadline = time.monotonic() + timeout
    for index, command in enumerate(commands, 1):
        label = f"startup command {index} of {len(commands)} ({command!r})"
        log(f"running {label}")
        code, tail = _run_streaming(
            ["/bin/sh", "-c", command], log=log, timeout=deadline - time.monotonic(), cwd=Path(cwd), env=env
        )
        if code is None:
            raise DeploymentError(
                f"{label} timed out after {timeout:g} s (the limit for all startup commands): "
                "make it faster or raise the timeout",
                step="startup",
                log_tail=tail,
            )
        if code != 0:
            raise DeploymentError(f"{label} exited with code {code}", step="startup", log_tail=tail)
