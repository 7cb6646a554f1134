"""What a worker does to an extracted bundle before importing it: install packages, run startup commands.

Everything here is synchronous and may block for minutes (installs, startup
scripts). Workers run an asyncio program, so call these through
``await asyncio.to_thread(...)``; each one bounds itself with its ``timeout``.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vastrpc._errors import DeploymentError

__all__ = [
    "PythonTarget",
    "ensure_apt",
    "ensure_pip_env",
    "lock_until",
    "pip_site",
    "requirements_key",
    "run_startup_commands",
]

Log = Callable[[str], None]

_LOG_TAIL_LINES = 40


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


@dataclass(frozen=True)
class PythonTarget:
    """A CPython other than the agent's that packages are installed for: an image's.

    Attributes:
        version: ``(major, minor)``, e.g. ``(3, 13)``.
        machine: The image's machine, e.g. ``"x86_64"``.
        manylinux: The newest manylinux tag its glibc runs, e.g. ``"manylinux_2_28"``.
    """

    version: tuple[int, int]
    machine: str
    manylinux: str

    @property
    def label(self) -> str:
        """``"3.13"``."""
        return "{}.{}".format(*self.version)

    @property
    def uv_platform(self) -> str:
        """uv's ``--python-platform``, e.g. ``"x86_64-manylinux_2_28"``."""
        return f"{self.machine}-{self.manylinux}"


def requirements_key(packages: Sequence[str], target: PythonTarget | None = None) -> str:
    """Cache key of a pip environment: what is installed, for which Python and machine.

    Args:
        packages: Package specs; order, duplicates, surrounding spaces and empty
            entries do not change the key.
        target: The Python installed for, when not the agent's own.

    Returns:
        A hex SHA-256.
    """
    payload: dict[str, object] = {"packages": _clean_specs(packages)}
    if target is None:
        payload.update(python=list(sys.version_info[:2]), machine=platform.machine())
    else:
        payload.update(python=list(target.version), machine=target.machine, platform=target.manylinux)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _installer(target: Path, specs: list[str], python: PythonTarget | None) -> tuple[list[str], str]:
    # For another Python only wheels will do: an sdist would be built by this host's Python, for it.
    try:
        import uv

        uv_bin = uv.find_uv_bin()
    except (ImportError, FileNotFoundError):
        argv = [sys.executable, "-m", "pip", "install", "--no-input", "--disable-pip-version-check"]
        if python is not None:
            tag = f"{python.manylinux}_{python.machine}"
            argv += ["--python-version", python.label, "--platform", tag, "--only-binary=:all:"]
        return [*argv, "--target", str(target), *specs], "pip"
    argv = [os.fspath(uv_bin), "pip", "install", "--color", "never", "--no-progress", "--target", str(target)]
    if python is None:
        return [*argv, "--python", sys.executable, *specs], "uv"
    argv += ["--python-version", python.label, "--python-platform", python.uv_platform, "--only-binary", ":all:"]
    return [*argv, *specs], "uv"


def _from_uv_cache(argv: list[str], target: Path, log: Log, deadline: float) -> bool:
    """Install with uv's cache alone (``--offline``); False, ``target`` emptied again, when it lacks anything.

    Asking the package index costs uv about 0.2 s even when every wheel is cached; the cache
    is this worker user's, so what it holds was installed before on this host. Like the
    environment cache, this favours what the host has: an unpinned requirement gets the
    newest version uv has seen here, which a new release on the index does not displace.
    """
    lines: list[str] = []
    code, _ = _run_streaming(
        [argv[0], *argv[1:3], "--offline", *argv[3:]], log=lines.append, timeout=min(30.0, deadline - time.monotonic())
    )
    if code == 0:
        for line in lines:
            log(line)
        return True
    log("not all of them in uv's cache: asking the package index")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    return False


def pip_site(packages: Sequence[str], cache_dir: Path, target: PythonTarget | None = None) -> Path | None:
    """Where ``ensure_pip_env`` puts (or finds) these packages, known before they are installed; None: no packages."""
    specs = _clean_specs(packages)
    return Path(cache_dir) / requirements_key(specs, target) / "site" if specs else None


def ensure_pip_env(
    packages: Sequence[str],
    cache_dir: Path,
    *,
    target: PythonTarget | None = None,
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
        target: The Python to install for when not the agent's own (an image's): wheels
            only, for its version and platform.
        log: Receives the installer's output, line by line.
        timeout: Seconds allowed for waiting on another install plus installing.

    Returns:
        The ``site`` folder, or None when there are no packages.

    Raises:
        DeploymentError: (step ``"install"``) the install failed or timed out.
    """
    site = pip_site(packages, cache_dir, target)
    if site is None:
        return None
    specs = _clean_specs(packages)
    env_dir = site.parent
    if site.is_dir():
        log(f"pip packages already installed (cached at {site}): {' '.join(specs)}")
        return site

    deadline = time.monotonic() + timeout
    env_dir.mkdir(parents=True, exist_ok=True)
    with open(env_dir / ".lock", "a+b") as lock:
        waited = f"timed out after {timeout:g} s waiting for another worker to install pip packages {', '.join(specs)}"
        lock_until(lock, deadline, DeploymentError(waited, step="install"))
        try:
            if site.is_dir():  # another worker installed it while we waited
                log(f"pip packages installed by another worker (cached at {site}): {' '.join(specs)}")
                return site
            tmp = Path(tempfile.mkdtemp(prefix="site.tmp-", dir=env_dir))
            try:
                argv, tool = _installer(tmp, specs, target)
                where = f" for Python {target.label} ({target.uv_platform}, wheels only)" if target is not None else ""
                log(f"installing pip packages{where} with {tool}: {' '.join(specs)}")
                code: int | None = 0
                tail = ""
                if tool != "uv" or not _from_uv_cache(argv, tmp, log, deadline):
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
                        f"could not install pip packages {', '.join(specs)}{where} ({tool} exited with code {code}): "
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


def lock_until(lock: io.BufferedRandom, deadline: float, timed_out: DeploymentError) -> None:
    """Take an exclusive flock on ``lock``, waiting until ``deadline`` at most; past it, raise ``timed_out``."""
    # Polling instead of a blocking flock keeps the wait bounded by the timeout.
    while True:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise timed_out from None
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
        cwd: Folder they run in (the revision's bundle folder).
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
