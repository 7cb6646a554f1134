"""The spare agent: a later deployment's worker is the pre-started one, carrying nothing of an earlier deployment."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.control.providers.test_workeruser import CALLER
from vastrpc._workerenv import fits_spare, serving_environ

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

EARLIER_SECRET = "earlier-secret-7a8b9c"

# The earlier deployment: an env var and a secret of its own, set in its serving process too.
EARLIER = """
import os
from vastrpc import Deployment

app = Deployment(name="{name}")
app.image("python:3.11-slim").env(EARLIER_SETTING="earlier-visible").secrets(EARLIER_SECRET="SECRET_VALUE")

@app.remote(benchmark_dataset=[dict()])
async def mine() -> dict:
    os.environ["EARLIER_LEFT"] = "left-behind"  # set at run time: no later worker may see it
    return dict(secret=os.environ.get("EARLIER_SECRET"), setting=os.environ.get("EARLIER_SETTING"), pid=os.getpid())
"""

# The later one says what its serving process sees: its environment now and the one it started with.
LATER = """
import os
from vastrpc import Deployment

app = Deployment(name="{name}")
app.image("python:3.11-slim").env(LATER_SETTING="later-visible")

@app.remote(benchmark_dataset=[dict()])
async def seen() -> dict:
    with open("/proc/self/environ", "rb") as f:
        started = f.read().decode(errors="replace")
    return dict(environ=dict(os.environ), started=started, pid=os.getpid())
"""

WITH_PIP = """
from vastrpc import Deployment

app = Deployment(name="{name}")
app.image("python:3.11-slim").pip_install("six==1.16.0")

@app.remote(benchmark_dataset=[dict()])
async def version() -> str:
    import six
    return six.__version__
"""


async def _spare_ready(home: Path, taken: set[Path], timeout: float = 30.0) -> Path:
    """The spare agent's log once the provider has started one not in ``taken``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        spares = set((home / "logs" / "workers").glob("spare-*.log")) - taken
        if spares:
            return spares.pop()
        await asyncio.sleep(0.1)
    raise AssertionError(f"no spare agent started within {timeout:g} s")


async def _worker_log(project, app) -> tuple[dict, str]:
    (worker,) = await project.workers(app)
    return worker, await project.logs(worker["worker_id"])


@pytest.mark.parametrize("control_service", [{"env": CALLER}], indirect=True)
async def test_a_later_deployment_is_served_by_the_spare_that_carries_nothing_of_the_earlier_one(
    project, control_service
) -> None:
    home = control_service.home
    first_spare = await _spare_ready(home, set())
    earlier = project(EARLIER.replace("SECRET_VALUE", EARLIER_SECRET))
    mine = await earlier.mine()
    assert mine["secret"] == EARLIER_SECRET and mine["setting"] == "earlier-visible"
    _, log = await _worker_log(project, earlier.app)
    assert "the spare agent (pid" in log and "in the pre-started serving process" in log
    assert not first_spare.exists()  # its log became the worker's

    await _spare_ready(home, set())  # the next spare, started behind the first
    later = project(LATER)
    seen = await later.seen()
    worker, log = await _worker_log(project, later.app)
    assert "the spare agent (pid" in log and "in the pre-started serving process" in log
    assert seen["pid"] != mine["pid"]
    # The worker's agent is the spare process, started with nothing of any worker in its argv.
    argv = Path(f"/proc/{worker['pid']}/cmdline").read_bytes().split(b"\0")
    assert b"vastrpc.serve.spare" in argv and not any(b"token" in a or b"w-" in a for a in argv)
    environ, started = seen["environ"], seen["started"]
    assert environ["LATER_SETTING"] == "later-visible"  # its own environment, applied before its code ran
    for text in (repr(environ), started):
        leaked = [v for v in (*CALLER.values(), EARLIER_SECRET, "earlier-visible", "left-behind") if v in text]
        assert leaked == []
    for name in (*CALLER, "EARLIER_SECRET", "EARLIER_SETTING", "EARLIER_LEFT", "VASTRPC_WORKER_TOKEN", "VASTRPC_HOME"):
        assert name not in environ
    assert "PATH" in environ  # the allow-list still reaches it


async def test_a_deployment_with_pip_packages_takes_a_new_serving_process(project, control_service) -> None:
    await _spare_ready(control_service.home, set())
    mod = project(WITH_PIP)
    assert await mod.version() == "1.16.0"
    _, log = await _worker_log(project, mod.app)
    assert "a new serving process (the pre-started one cannot take this environment)" in log
    assert "in the pre-started serving process" not in log


def test_fits_spare_only_when_nothing_read_at_an_interpreters_start_differs(tmp_path: Path) -> None:
    base = serving_environ({"PATH": "/bin", "PYTHONPATH": "/src", "LANG": "C.UTF-8", "SECRET": "no"})
    assert "SECRET" not in base
    bundle = tmp_path / "bundle"
    env = {**base, "PYTHONPATH": f"{bundle}:/src", "MY_SETTING": "x", "CUDA_VISIBLE_DEVICES": "0"}
    assert fits_spare(env, base, bundle)
    assert not fits_spare({**env, "PYTHONPATH": f"/envs/k/site:{bundle}:/src"}, base, bundle)  # pip packages
    for name, value in (("PYTHONHASHSEED", "0"), ("LD_PRELOAD", "x.so"), ("LANG", "de_DE.UTF-8"), ("TZ", "UTC")):
        assert not fits_spare({**env, name: value}, base, bundle), name
    assert not fits_spare({**env, "MALLOC_ARENA_MAX": "2"}, base, bundle)
