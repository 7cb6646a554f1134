"""The unprivileged user local workers run as when the control service runs as root, and its folder.

A deployment's code runs in its worker's processes. Run as the control service's own user,
it could read the service's home (``api_key``, ``tls/ca.key``, ``state.db``) and, through
``/proc``, the service's environment. As root, the local provider runs every worker as a
separate system user (``vastrpc-worker`` unless told otherwise, created on first use) whose
files live in a folder of its own (``~vastrpc-worker/.vastrpc``), never under the service's
home. Where it cannot (not root, no usable interpreter for that user, asked not to), workers
run as the service's user and ``control serve`` says so when it starts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vastrpc._tls import TlsFiles

__all__ = ["DEFAULT_WORKER_USER", "WorkerUser", "choose_worker_user"]

log = logging.getLogger(__name__)

DEFAULT_WORKER_USER = "vastrpc-worker"

# Becomes the user (argv[1], argv[2]) and execs the rest: setpriv's work, where there is none.
_SWITCH = (
    "import os, sys; os.setgroups([]); os.setgid(int(sys.argv[2])); os.setuid(int(sys.argv[1])); "
    "os.execvp(sys.argv[3], sys.argv[3:])"
)

_RISK = (
    "a deployment's code can read this service's home (API key, CA key, state), its worker's token and "
    "the other deployments' files"
)


@dataclass(frozen=True)
class WorkerUser:
    """The user local workers run as, and where their files go.

    Attributes:
        name: Its login name.
        uid: Its user id.
        gid: Its primary group id.
        home: Its home directory (``HOME`` of its workers).
        root: The workers' vastrpc folder (``VASTRPC_HOME`` of the agents: bundles, pip
            environments, copies of the TLS files they need), owned by the user.
    """

    name: str
    uid: int
    gid: int
    home: Path
    root: Path

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run as this user, without supplementary groups (started by root).

        The switch happens in a program exec'd for it (``setpriv``, else this Python), not
        in the forked child of this process: a child that changes its user cannot be spawned
        with vfork, and a plain fork of the control service runs gRPC's fork handlers, which
        crash now and then in a process whose threads are inside gRPC.
        """
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            return [setpriv, f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--", *argv]
        return [sys.executable, "-c", _SWITCH, str(self.uid), str(self.gid), *argv]

    def environ(self) -> dict[str, str]:
        """The variables that name this user to its processes."""
        return {"HOME": str(self.home), "USER": self.name, "LOGNAME": self.name}

    def own(self, path: Path, mode: int) -> None:
        """Make ``path`` this user's, with ``mode``."""
        os.chown(path, self.uid, self.gid)
        os.chmod(path, mode)

    def prepare(self) -> None:
        """Create ``root`` (mode 0700, the user's)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.own(self.root, 0o700)

    def copy_tls(self, tls: TlsFiles, service_home: Path) -> TlsFiles:
        """Copies of the service's TLS files its workers use, readable by this user only.

        The CA certificate, the certificate and its key, never the CA's key: a worker
        serves calls with the service's certificate and presents it under mutual TLS. One
        folder per service home, so that two services' files never mix.
        """
        folder = self.root / "tls" / hashlib.sha256(str(service_home).encode()).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        self.own(folder.parent, 0o700)
        self.own(folder, 0o700)
        copies: dict[str, Path | None] = {}
        for name, source in (("ca.pem", tls.ca_file), ("cert.pem", tls.cert_file), ("key.pem", tls.key_file)):
            if source is None:
                copies[name] = None
                continue
            target = folder / name
            tmp = folder / f".{name}.tmp"
            shutil.copyfile(source, tmp)
            self.own(tmp, 0o600)
            os.replace(tmp, target)
            copies[name] = target
        return TlsFiles(
            ca_file=copies["ca.pem"],
            cert_file=copies["cert.pem"],
            key_file=copies["key.pem"],
            require_client_cert=tls.require_client_cert,
        )


def choose_worker_user(
    name: str | None, *, python: str, environ: Mapping[str, str]
) -> tuple[WorkerUser | None, list[str]]:
    """The user to run local workers as, and what ``control serve`` says when there is none.

    Args:
        name: The user asked for (``--worker-user``); None runs workers as this process's user.
        python: The interpreter workers run on: the user must be able to run it and import
            vastrpc with it.
        environ: The environment workers get (PATH, PYTHONPATH), to check that.

    Returns:
        (the user, no warnings), or (None, why workers run as this process's user and what
        that exposes, and what to do) when they cannot be isolated.
    """
    me = pwd.getpwuid(os.geteuid()).pw_name
    if name is None:
        return None, [f"workers run as {me}, this service's user (--no-worker-user): {_RISK}"]
    if os.geteuid() != 0:
        return None, [
            f"workers run as {me}, this service's user: it is not root, so it cannot run them as another user; "
            f"{_RISK}. Run the service as root (workers then run as {name}) or use --provider podman"
        ]
    if name in ("root", me):
        return None, [f"workers run as {name}, this service's user (--worker-user {name}): {_RISK}"]
    try:
        user = _user(name)
        user.prepare()
    except (OSError, subprocess.SubprocessError, KeyError) as exc:
        return None, [f"workers run as {me}: cannot use the user {name} ({exc}); {_RISK}"]
    problem = _cannot_run(user, python, environ)
    if problem:
        return None, [
            f"workers run as {me}: the user {name} cannot run {python} with vastrpc ({problem}); {_RISK}. "
            f"Install Python (and vastrpc) where {name} can read them, or make their folders traversable "
            "(chmod o+x on each folder above them, e.g. a home directory holding pyenv)"
        ]
    log.info("workers run as the user %s (uid %d), their files in %s", user.name, user.uid, user.root)
    return user, []


def _user(name: str) -> WorkerUser:
    """The user ``name``, created as a system user with a home directory when it does not exist."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd is None:
            raise KeyError(f"no such user, and no useradd to create it: create {name} yourself") from None
        nologin = shutil.which("nologin") or "/bin/false"
        done = subprocess.run(
            [useradd, "--system", "--user-group", "--create-home", "--shell", nologin, name],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0 and "already exists" not in done.stderr:  # another service created it meanwhile
            raise KeyError(f"useradd failed: {done.stderr.strip() or done.returncode}") from None
        log.info("created the system user %s for workers", name)
        entry = pwd.getpwnam(name)
    if entry.pw_uid == 0:
        raise KeyError(f"{name} has uid 0: that is root; give an unprivileged user")
    home = Path(entry.pw_dir)
    if not home.is_dir():
        home.mkdir(parents=True, mode=0o700)
        os.chown(home, entry.pw_uid, entry.pw_gid)
    return WorkerUser(entry.pw_name, entry.pw_uid, entry.pw_gid, home, home / ".vastrpc")


def _cannot_run(user: WorkerUser, python: str, environ: Mapping[str, str]) -> str:
    """Why ``user`` cannot import vastrpc with ``python`` (its last line of error); empty when it can."""
    env = {k: v for k, v in environ.items() if k in ("PATH", "PYTHONPATH")} | user.environ()
    try:
        done = subprocess.run(
            user.command([python, "-c", "import vastrpc.serve.agent"]),
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=user.home,
        )
    except OSError as exc:
        return exc.strerror or str(exc)
    except subprocess.TimeoutExpired:
        return "importing it took over 60 seconds"
    if done.returncode == 0:
        return ""
    lines = done.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit code {done.returncode}"
