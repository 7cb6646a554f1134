"""The control service SIGKILLed under load and restarted: calls keep succeeding, state and workers come back."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vastrpc.config import ClientConfig

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SOURCE = """
import os
from vastrpc import Deployment

app = Deployment(name="{name}")
app.configure_autoscaling(min_workers=2, max_workers=2)

@app.remote(benchmark_dataset=[{{}}])
async def whoami() -> int:
    return os.getpid()
"""


def _start(home: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vastrpc", "control", "serve", "--home", str(home)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    for _ in range(400):
        try:
            if json.loads((home / "control.json").read_text())["pid"] == proc.pid:
                return proc
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"the control service did not start:\n{log.read_text()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


async def test_control_killed_under_load_then_restarted(project_root: Path) -> None:
    home, log = project_root / "home", project_root / "control.log"
    control = _start(home, log)
    address = json.loads((home / "control.json").read_text())["address"]
    api_key = (home / "api_key").read_text().strip()
    folder = project_root / "proj"
    folder.mkdir()
    (folder / "restartable.py").write_text(SOURCE.format(name="restartable"))
    sys.path.insert(0, str(folder))
    try:
        import restartable  # noqa: PLC0415 - the deployment module of this test

        app = restartable.app
        app._config = ClientConfig(control_address=address, api_key=api_key, home=home)
        first = await app.ensure_ready()
        worker_pids = set()
        errors: list[BaseException] = []
        served = 0
        stop = asyncio.Event()

        async def load() -> None:
            nonlocal served
            while not stop.is_set():
                try:
                    worker_pids.add(await restartable.whoami())
                    served += 1
                except Exception as exc:  # counted: none is expected
                    errors.append(exc)
                await asyncio.sleep(0.005)

        callers = [asyncio.create_task(load()) for _ in range(4)]
        await asyncio.sleep(0.5)
        control.send_signal(signal.SIGKILL)
        control.wait(10)
        before = served
        await asyncio.sleep(2.0)  # the control service is down: calls go straight to the workers
        assert served > before + 20
        control = _start(home, log)
        assert json.loads((home / "control.json").read_text())["address"] == address  # same port back
        await asyncio.sleep(3.0)  # workers heartbeat again; the client's watch reconnects
        stop.set()
        await asyncio.gather(*callers)
        assert errors == []

        again = await app.ensure_ready()  # deploying again is idempotent: nothing changes
        assert (again.tier, again.endpoint_id, again.revision_id, again.workers_started) == (
            0,
            first.endpoint_id,
            first.revision_id,
            0,
        )
        listing = subprocess.run(
            [sys.executable, "-m", "vastrpc", "ls", "--json", "--control", address, "--api-key", api_key],
            capture_output=True,
            text=True,
            timeout=60,
        )
        (deployment,) = json.loads(listing.stdout)
        (endpoint,) = deployment["endpoints"]
        ready = [w for w in endpoint["workers"] if w["state"] == "WORKER_STATE_READY"]
        assert len(ready) == 2, endpoint  # the same two workers, re-registered; no duplicate endpoint
        agent_pids = {int(w["pid"]) for w in ready}
        await app.close()
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("restartable", None)
        control.terminate()
        control.wait(60)
    # No orphans: the restarted service stopped the workers it adopted.
    for pid in agent_pids | worker_pids:
        for _ in range(100):
            if not _alive(pid):
                break
            time.sleep(0.05)
        assert not _alive(pid), pid


@pytest.fixture
def project_root(tmp_path: Path) -> Path:
    return tmp_path
