"""Shared fixtures: ``control_service`` starts a real control service process on a temporary home."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ControlServiceProcess:
    """A control service process started by the ``control_service`` fixture.

    Attributes:
        address: ``127.0.0.1:PORT`` it listens on.
        api_key: Its API key (from ``home/api_key``).
        home: Its home folder (state.db, bundles/, logs/, control.json).
        process: The ``python -m vastrpc control serve`` process.
        log_path: Where its stdout and stderr go.
    """

    address: str
    api_key: str
    home: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata presenting the API key."""
        return (("authorization", f"Bearer {self.api_key}"),)

    def log_text(self) -> str:
        """What the process has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def control_service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ControlServiceProcess]:
    """A real control service process (``--port 0``) on a fresh home under ``tmp_path``.

    Options through indirect parametrization, e.g.
    ``@pytest.mark.parametrize("control_service", [{"worker_command": [...]}], indirect=True)``:
    ``worker_command`` (argv prefix that starts a worker instead of ``python -m vastrpc worker``)
    and ``env`` (extra environment variables).
    """
    options = getattr(request, "param", None) or {}
    home = tmp_path / "home"
    log_path = tmp_path / "control.log"
    argv = [sys.executable, "-m", "vastrpc", "control", "serve", "--home", str(home), "--port", "0"]
    if options.get("worker_command"):
        argv += ["--worker-command", shlex.join(options["worker_command"])]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(options.get("env", {}))
    with log_path.open("ab") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 20
        info: dict[str, object] = {}
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"control service exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                info = json.loads((home / "control.json").read_text())
            except (OSError, ValueError):
                info = {}
            if info.get("pid") == process.pid:
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"control service did not write control.json within 20s:\n{log_path.read_text()}")
        api_key = (home / "api_key").read_text().strip()
        yield ControlServiceProcess(str(info["address"]), api_key, home, process, log_path)
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            returncode = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"control service did not stop within 30s of SIGTERM:\n{log_path.read_text()}")
    assert returncode == 0, f"control service exited with {returncode}:\n{log_path.read_text()}"
