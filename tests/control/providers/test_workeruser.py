"""Workers are isolated from the caller, the control service and each other: the attacks, through real processes."""

from __future__ import annotations

import os
import stat
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

REPO_ROOT = Path(__file__).resolve().parents[3]
# What the caller exports before starting the control service (the embedded default passes
# the caller's environment on to it): none of it may reach a worker.
CALLER = {
    "ATTACK_SECRET": "attack-6f1d2c",
    "AWS_SECRET_ACCESS_KEY": "aws-9b8a7c",
    "HF_TOKEN": "hf-1e2f3a",
    "CALLER_SETTING": "caller-5d4c",
}
DECLARED_SECRET = "declared-a1b2c3"

# Deployment A declares a secret and an env var; its function says what it sees.
DECLARES = """
import os
from vastrpc import Deployment

app = Deployment(name="{name}")
app.image("python:3.11-slim").env(A_SETTING="a-visible").secrets(A_SECRET="DECLARED_SECRET")

@app.remote(benchmark_dataset=[dict()])
async def mine() -> dict:
    return dict(secret=os.environ.get("A_SECRET"), setting=os.environ.get("A_SETTING"), uid=os.getuid())
"""

# Deployment B declares nothing; its code looks for everything it should not reach.
ATTACKER = """
import glob, os
from vastrpc import Deployment

app = Deployment(name="{name}")

def _read(path):
    try:
        with open(path, "rb") as f:
            f.read(64)
        return "read"
    except OSError as exc:
        return type(exc).__name__

@app.remote(benchmark_dataset=[dict()])
async def attack() -> dict:
    environs, paths = [], glob.glob("/proc/[0-9]*/environ")
    for path in paths:
        try:
            with open(path, "rb") as f:
                environs.append(f.read().decode(errors="replace"))
        except OSError:
            pass
    home = "CONTROL_HOME"
    agent = os.getppid()
    return dict(
        environ=dict(os.environ),
        cwd=os.getcwd(),
        uid=os.getuid(),
        pid=os.getpid(),
        environs=environs,
        processes=len(paths),
        files=dict((name, _read(os.path.join(home, name))) for name in ("api_key", "tls/ca.key", "state.db")),
        agent=dict((name, _read(f"/proc/{{agent}}/{{name}}")) for name in ("environ", "mem", "fd/0")),
    )
"""


def _others_can_run_python() -> bool:
    """Whether a user other than root can reach this interpreter, its packages and this checkout."""
    paths = [Path(os.path.realpath(sys.executable)), Path(sysconfig.get_paths()["purelib"]), REPO_ROOT]
    for path in paths:
        for folder in (path, *path.parents):
            if folder.is_dir() and not folder.stat().st_mode & stat.S_IXOTH:
                return False
    return True


needs_worker_user = pytest.mark.skipif(
    os.geteuid() != 0 or not _others_can_run_python(),
    reason="workers run as a separate user only under a root control service, on a Python that user can reach "
    "(.ci/run makes the folders above it traversable)",
)
WORKER_USER = {"worker_user": True, "args": ["--tls", "auto"], "env": CALLER}


def _values_leaked(text: str, *values: str) -> list[str]:
    return [v for v in values if v in text]


async def _deploy_both(project, home: Path):
    declares = project(DECLARES.replace("DECLARED_SECRET", DECLARED_SECRET))
    attacker = project(ATTACKER.replace("CONTROL_HOME", str(home)))
    await declares.app.ensure_ready()
    await attacker.app.ensure_ready()
    return await declares.mine(), await attacker.attack()


@pytest.mark.parametrize("control_service", [{"env": CALLER}], indirect=True)
async def test_a_workers_environment_holds_what_its_deployment_declared_and_nothing_of_the_callers(
    project, control_service
) -> None:
    mine, seen = await _deploy_both(project, control_service.home)
    assert mine["secret"] == DECLARED_SECRET and mine["setting"] == "a-visible"
    environ = seen["environ"]
    text = repr(environ)
    assert _values_leaked(text, *CALLER.values(), DECLARED_SECRET, control_service.api_key) == []
    for name in (*CALLER, "A_SECRET", "VASTRPC_HOME", "VASTRPC_WORKER_TOKEN", "VASTRPC_API_KEY", "VASTRPC_TLS_KEY"):
        assert name not in environ
    assert "PATH" in environ  # the allow-list still reaches it


async def test_control_serve_says_when_workers_are_not_isolated(control_service) -> None:
    # The fixture starts it with --no-worker-user.
    log = control_service.log_text()
    assert "workers are not isolated: workers run as" in log
    assert "(--no-worker-user)" in log and "can read this service's home (API key, CA key, state)" in log


@needs_worker_user
@pytest.mark.parametrize("control_service", [WORKER_USER], indirect=True)
async def test_a_deployments_code_cannot_read_another_deployments_secrets_or_the_services_credentials(
    project, control_service
) -> None:
    mine, seen = await _deploy_both(project, control_service.home)
    assert "workers are not isolated" not in control_service.log_text()
    assert mine["secret"] == DECLARED_SECRET
    # Both run as the unprivileged worker user, never as the service's root.
    assert mine["uid"] == seen["uid"] != 0
    # No process environment it can read holds the caller's variables, the other deployment's
    # secret, the API key or the home's path (it sees the processes; their environments are
    # closed to it, its own too: serving processes are not dumpable).
    readable = "\n".join(seen["environs"])
    assert seen["processes"] > 3
    assert _values_leaked(readable, *CALLER.values(), DECLARED_SECRET, control_service.api_key) == []
    assert str(control_service.home) not in readable + repr(seen["environ"]) + seen["cwd"]
    # The service's home: API key, CA key and state are closed to it.
    denied = "PermissionError"
    assert seen["files"] == {"api_key": denied, "tls/ca.key": denied, "state.db": denied}
    # Its agent (which holds the worker token): environment, memory and stdin are closed to it.
    assert seen["agent"] == {"environ": denied, "mem": denied, "fd/0": denied}
