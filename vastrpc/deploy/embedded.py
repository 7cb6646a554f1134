"""The embedded default: start or reuse a local control service process under the vastrpc home folder."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vastrpc._errors import ControlUnavailableError
from vastrpc.control.provider import package_pythonpath, pid_alive

__all__ = ["control_status", "ensure_control", "read_control_info", "stop_control"]

_HEALTH_TIMEOUT = 1.0
_LOG_TAIL_LINES = 30


def read_control_info(home: Path) -> dict[str, Any] | None:
    """The contents of ``home/control.json`` ({"address", "pid", "started_at"}), or None."""
    try:
        info = json.loads((Path(home) / "control.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int) or not isinstance(info.get("address"), str):
        return None
    return info


def _healthy(address: str, timeout: float = _HEALTH_TIMEOUT) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    except grpc.RpcError:
        return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


def _running_info(home: Path) -> dict[str, Any] | None:
    info = read_control_info(home)
    if info is None or not pid_alive(info["pid"]) or not _healthy(info["address"]):
        return None
    return info


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


def ensure_control(home: Path, *, timeout: float = 15) -> tuple[str, str]:
    """Reuse the control service running under ``home``, or start one; returns (address, api_key).

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
            return info["address"], _api_key(home)
        log_path = home / "control.log"
        env = dict(os.environ)
        if (pythonpath := package_pythonpath(env)) is not None:
            env["PYTHONPATH"] = pythonpath
        with open(log_path, "ab") as log:
            # A session of its own: the service outlives this process and its terminal's Ctrl-C.
            proc = subprocess.Popen(
                [sys.executable, "-m", "vastrpc", "control", "serve", "--home", str(home)],
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
            if info is not None and info["pid"] == proc.pid and _healthy(info["address"]):
                return info["address"], _api_key(home)
            time.sleep(0.05)
        proc.terminate()
        raise ControlUnavailableError(
            f"the embedded control service did not answer within {timeout:g}s; {log_path} ends with:\n"
            f"{_log_tail(log_path)}"
        )


def _is_control(info: dict[str, Any]) -> bool:
    """Whether control.json's pid is still a control service, not a recycled pid of something else."""
    if _healthy(info["address"]):
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
    info = read_control_info(Path(home).expanduser())
    if info is None or not pid_alive(info["pid"]) or not _is_control(info):
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
    """``{"address", "pid", "started_at", "home"}`` of the control service running under ``home``, or None."""
    home = Path(home).expanduser()
    info = _running_info(home)
    if info is None:
        return None
    return {**info, "home": str(home)}
