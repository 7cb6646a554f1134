"""The embedded default: start or reuse a local control service process under the vastrpc home folder."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vastrpc._errors import ControlUnavailableError
from vastrpc._files import open_private_log
from vastrpc._grpc import sync_channel
from vastrpc._process import module_argv, package_pythonpath, pid_alive
from vastrpc._tls import TlsFiles
from vastrpc.config import ENV_DASHBOARD_PORT

__all__ = ["LocalControl", "control_status", "control_tls", "ensure_control", "read_control_info", "stop_control"]

_HEALTH_TIMEOUT = 1.0
_LOG_TAIL_LINES = 30


@dataclass(frozen=True)
class LocalControl:
    """What a client needs to reach the embedded control service.

    Attributes:
        address: ``host:port`` it listens on.
        api_key: Its API key.
        tls: The CA to trust for its certificate; None when it serves plaintext.
    """

    address: str
    api_key: str
    tls: TlsFiles | None


def read_control_info(home: Path) -> dict[str, Any] | None:
    """The contents of ``home/control.json`` ({"address", "pid", "started_at", "tls", "tls_ca"}), or None."""
    try:
        info = json.loads((Path(home) / "control.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int) or not isinstance(info.get("address"), str):
        return None
    return info


def control_tls(info: dict[str, Any], home: Path) -> TlsFiles | None:
    """How a local client reaches the service under ``home`` that wrote ``info`` (control.json); None: plaintext.

    It trusts the CA the service names. When the service requires client certificates and
    generated its own (``--tls auto``), the client presents the home's local certificate:
    whoever can read the home can read its API key too, so this grants nothing more.
    """
    if not info.get("tls"):
        return None
    ca = Path(info["tls_ca"]) if isinstance(info.get("tls_ca"), str) else None
    local = Path(home) / "tls"
    cert, key = local / "local.pem", local / "local.key"
    if info.get("tls_client_cert") and ca == local / "ca.pem" and cert.exists() and key.exists():
        return TlsFiles(ca_file=ca, cert_file=cert, key_file=key)
    # No CA recorded: its certificate comes from a CA the system already trusts.
    return TlsFiles(ca_file=ca)


def _healthy(info: dict[str, Any], home: Path, timeout: float = _HEALTH_TIMEOUT) -> bool:
    address, tls = info["address"], control_tls(info, home)
    try:
        channel = sync_channel(address, tls.channel_credentials() if tls else None)
    except OSError:  # its CA file is gone: not a service this home can use
        return False
    try:
        with channel:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    except grpc.RpcError:
        return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


def _running_info(home: Path) -> dict[str, Any] | None:
    info = read_control_info(home)
    if info is None or not pid_alive(info["pid"]) or not _healthy(info, home):
        return None
    return info


def _local(info: dict[str, Any], home: Path) -> LocalControl:
    return LocalControl(info["address"], _api_key(home), control_tls(info, home))


def _api_key(home: Path) -> str:
    try:
        key = (Path(home) / "api_key").read_text().strip()
    except OSError as exc:
        raise ControlUnavailableError(f"cannot read the control service's API key in {home}: {exc}") from None
    if not key:
        raise ControlUnavailableError(f"{home / 'api_key'} is empty")
    return key


@contextlib.contextmanager
def _locked(home: Path, timeout: float) -> Iterator[None]:
    """Hold ``home/control.lock``: of several processes starting the embedded service, one starts it."""
    with open(home / "control.lock", "a+") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ControlUnavailableError(
                        f"another process holds {home / 'control.lock'} for more than {timeout:g}s"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(empty log)"


def ensure_control(home: Path, *, timeout: float = 15) -> LocalControl:
    """Reuse the control service running under ``home``, or start one; returns how to reach it.

    A new service serves TLS (``--tls auto``: a local CA and certificate under ``home/tls``);
    one that is running already is reused as it runs (an older one may serve plaintext).
    Synchronous: the SDK calls it once per process through ``asyncio.to_thread``.

    Args:
        home: The vastrpc home folder.
        timeout: Seconds to wait for a new service to answer health checks.

    Raises:
        ControlUnavailableError: The service did not come up in time (with the tail of
            ``home/control.log``).
    """
    home = Path(home).expanduser()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _locked(home, timeout):
        info = _running_info(home)
        if info is not None:
            return _local(info, home)
        log_path = home / "control.log"
        env = dict(os.environ)
        if (pythonpath := package_pythonpath(env)) is not None:
            env["PYTHONPATH"] = pythonpath
        # The live web page is on by default here (loopback only, the API key required);
        # VASTRPC_DASHBOARD_PORT picks its port, or turns it off.
        dashboard = env.get(ENV_DASHBOARD_PORT) or "0"
        argv = [*module_argv("vastrpc"), "control", "serve", "--home", str(home), "--tls", "auto"]
        with open_private_log(log_path) as log:
            # A session of its own: the service outlives this process and its terminal's Ctrl-C.
            proc = subprocess.Popen(
                [*argv, "--dashboard-port", dashboard],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ControlUnavailableError(
                    f"the embedded control service exited with code {proc.returncode} on start; "
                    f"{log_path} ends with:\n{_log_tail(log_path)}"
                )
            info = read_control_info(home)
            if info is not None and info["pid"] == proc.pid and _healthy(info, home):
                return _local(info, home)
            time.sleep(0.05)
        proc.terminate()
        raise ControlUnavailableError(
            f"the embedded control service did not answer within {timeout:g}s; {log_path} ends with:\n"
            f"{_log_tail(log_path)}"
        )


def _is_control(info: dict[str, Any], home: Path) -> bool:
    """Whether control.json's pid is still a control service, not a recycled pid of something else."""
    if _healthy(info, home):
        return True
    try:
        cmdline = Path(f"/proc/{info['pid']}/cmdline").read_bytes()
    except OSError:
        return False
    return b"vastrpc" in cmdline and b"\0control\0serve" in cmdline


def stop_control(home: Path, *, timeout: float = 30) -> bool:
    """Stop the control service running under ``home``; False when none was running.

    It stops its workers first (their grace period), so this can take a while.
    """
    home = Path(home).expanduser()
    info = read_control_info(home)
    if info is None or not pid_alive(info["pid"]) or not _is_control(info, home):
        return False
    pid = info["pid"]
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    return True


def control_status(home: Path) -> dict[str, Any] | None:
    """control.json of the service running under ``home``, with ``"home"`` added; None when none runs."""
    home = Path(home).expanduser()
    info = _running_info(home)
    if info is None:
        return None
    return {**info, "home": str(home)}
